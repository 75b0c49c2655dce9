"""Run under torchrun with 2 CPU processes: prune, fine-tune with DDP, report per rank."""

import hashlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))

from llmprune.finetune import finetune, make_finetune_config  # noqa: E402
from llmprune.pruning import prune  # noqa: E402
from tests.conftest import build_tiny  # noqa: E402


def main() -> None:
    out = sys.argv[1]
    rank = int(os.environ.get("RANK", "0"))
    model = build_tiny("llama")
    result = prune(model, method="magnitude", sparsity=0.5, progress=False)
    windows = torch.randint(0, 500, (16, 24), generator=torch.Generator().manual_seed(0))
    config = make_finetune_config(steps=4, learning_rate=1e-3, batch_size=2, seqlen=24)
    model, summary = finetune(model, None, config, result.masks, windows=windows)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().numpy().tobytes())
    report = {
        "rank": rank,
        "world_size": summary["world_size"],
        "sha": digest.hexdigest(),
        "violations": len(result.masks.violations(model)),
        "loss": summary["train_loss"],
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
