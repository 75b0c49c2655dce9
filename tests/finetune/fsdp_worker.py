"""Prune a tiny LLaMA, fine-tune it sharded (FSDP2) or in one process, save what it gives.

Run under torchrun with 2 CPU processes (`fsdp`), or plainly (`single`, batch 4 = the
two processes' 2 + 2 windows per step), for each family named (`llama,gpt2`).
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))

from llmprune.finetune import MaskKeeper, finetune, make_finetune_config  # noqa: E402
from llmprune.pruning import prune  # noqa: E402
from tests.conftest import build_tiny  # noqa: E402


class MomentProbe(MaskKeeper):
    """The run's mask keeper, also counting AdamW first moments at pruned positions (they
    stay zero only if pruned gradients were zeroed before the step, on every shard)."""

    moments_at_pruned = 0

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        super().on_optimizer_step(args, state, control, **kwargs)
        for name, keep in self.keeps.items():
            moment = optimizer.state[self.layers[name].weight]["exp_avg"]
            pruned = ~keep.to_local() if hasattr(keep, "to_local") else ~keep
            local = moment.to_local() if hasattr(moment, "to_local") else moment
            MomentProbe.moments_at_pruned += int((local[pruned] != 0).sum())


def main() -> None:
    out, mode, families = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    for family in families:
        train(out, mode, family)


def train(out: str, mode: str, family: str) -> None:
    MomentProbe.moments_at_pruned = 0
    rank = int(os.environ.get("RANK", "0"))
    model = build_tiny(family)
    result = prune(model, method="magnitude", sparsity=0.5, progress=False)
    windows = torch.randint(0, 500, (16, 24), generator=torch.Generator().manual_seed(0))
    sharded = mode == "fsdp"
    config = make_finetune_config(
        steps=4,
        learning_rate=1e-3,
        batch_size=2 if sharded else 4,
        seqlen=24,
        weight_decay=0.1,  # moves every weight, so masks must be re-applied on each shard
        sharding="fsdp" if sharded else "none",
    )
    model, summary = finetune(
        model, None, config, result.masks, windows=windows, keeper=MomentProbe
    )
    weights = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file(
        {n: t for n, t in weights.items() if "lm_head" not in n},
        os.path.join(out, f"{family}-{mode}{rank}.safetensors"),
    )
    report = {
        "rank": rank,
        "world_size": summary["world_size"],
        "sharded": summary["sharded"],
        "class": type(model).__name__,
        "moments_at_pruned": MomentProbe.moments_at_pruned,
        "violations": len(result.masks.violations(model)),
        "sparsity": result.masks.sparsity(),
        "zeros_in_masked_layers": sum(
            int((weights[f"{name}.weight"] == 0).sum()) for name in result.masks
        ),
        "masked_weights": sum(weights[f"{name}.weight"].numel() for name in result.masks),
    }
    with open(os.path.join(out, f"{family}-{mode}{rank}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
