"""Mask-preserving fine-tuning on top of the transformers Trainer.

The Trainer brings AdamW, warmup and schedules, gradient accumulation and clipping,
bf16, and multi-process training: run the same code under `accelerate launch` or
`torchrun` and it trains with DDP. `MaskKeeper` re-applies the masks right after every
optimizer step, so pruned weights are exactly zero at every step, on every rank.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import (
    PrinterCallback,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from llmprune.data import calibration_windows, get_source, source_tokens
from llmprune.errors import LLMPruneError
from llmprune.finetune.config import FinetuneConfig
from llmprune.finetune.distill import ObjectiveTrainer, check_teacher
from llmprune.finetune.lora import add_lora, is_peft, mask_adapters, merge_lora
from llmprune.finetune.sharding import (
    check_split,
    fsdp_arguments,
    gathered,
    is_sharded,
    process_device,
    processes,
    shard_like,
)
from llmprune.finetune.teacher import TeacherSource, TopKCache, offloaded, resolve
from llmprune.finetune.trainable import count_trainable, trainable_names
from llmprune.models.layout import find_layout, storage_mask
from llmprune.pruning.allocation import matches
from llmprune.pruning.masks import ModelMasks

# parameters llmprune adds to a model for training (structure gates): always trained,
# at their own learning rate (`config.gate_lr`), and removed before the model is saved
ADDED_PREFIX = "llmprune_"


class MaskKeeper(TrainerCallback):
    """Keeps pruned weights at exactly zero through training, on every path.

    - gradients of pruned weights are zeroed as they are computed (a hook on each
      weight), so gradient clipping sees only the survivors' norm and AdamW's moments of
      pruned weights stay zero;
    - the weights are re-masked once before training and after every optimizer step
      (weight decay, or any optimizer that moves a zero-gradient weight).
    Layers are found by the masks' names through any peft wrapper, so base weights that
    train beside LoRA adapters are kept too.
    """

    def __init__(self, masks: ModelMasks, model: nn.Module):
        self.masks = masks
        self.model = model
        self.unpacked: dict | None = None  # on the weights' devices, unpacked once
        self.handles: list = []
        self.keeps: dict[str, torch.Tensor] = {}  # storage-order masks (sharded like weights)

    def on_train_begin(self, args, state, control, **kwargs):
        self.layers = find_layout(self.model).linears()
        self.unpacked = {}
        for name, mask in self.masks.items():
            weight = self.layers[name].weight
            if not is_sharded(weight):  # sharded: only this rank's slice goes to the device
                mask = mask.to(weight.device)
            self.unpacked[name] = mask
            keep = shard_like(storage_mask(self.layers[name], mask), weight)
            self.keeps[name] = keep
            if weight.requires_grad and not is_sharded(weight):
                self.handles.append(weight.register_hook(lambda grad, keep=keep: grad * keep))
        self.reapply()

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero every pruned weight (each rank its own shard under FSDP)."""
        for name, keep in self.keeps.items():
            self.layers[name].weight.mul_(keep)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights that no hook reached: FSDP assigns each
        sharded gradient after the backward pass, so the trainer calls this before
        clipping and the optimizer step."""
        for name, keep in self.keeps.items():
            grad = self.layers[name].weight.grad
            if is_sharded(grad):
                grad.mul_(keep)

    def tighten(self, name: str, mask: torch.Tensor) -> None:
        """Replace a layer's mask by a smaller one during training (gradual pruning): the
        weights, the gradient hook and the saved masks all follow."""
        mask = mask.to(self.unpacked[name].device) & self.unpacked[name]
        self.unpacked[name] = mask
        self.masks[name] = mask
        module = self.layers[name]
        self.keeps[name].copy_(shard_like(storage_mask(module, mask), module.weight))
        with torch.no_grad():
            module.weight.mul_(self.keeps[name])

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.reapply()

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self.handles:
            handle.remove()
        self.handles, self.unpacked, self.keeps = [], None, {}


class WindowDataset(torch.utils.data.Dataset):
    """Fixed-length token windows as causal-LM examples (labels = inputs); `numbered` adds
    each window's index (to find its cached teacher log-probabilities)."""

    def __init__(self, windows: torch.Tensor, numbered: bool = False):
        self.windows = windows
        self.numbered = numbered

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> dict:
        ids = self.windows[index]
        item = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
        if self.numbered:
            item["window"] = torch.tensor(index)
        return item


def training_windows(tokenizer, config: FinetuneConfig) -> torch.Tensor:
    """Enough random windows from the train split for every step of the run, on every
    process (each process trains on its own windows: batch_size is per process)."""
    count = config.steps * config.batch_size * config.grad_accumulation * processes()
    ids = source_tokens(tokenizer, get_source(config.data), "train")
    return calibration_windows(ids, count, config.seqlen, seed=config.seed + 1)


def training_arguments(
    config: FinetuneConfig, output_dir: str, model: nn.Module | None = None
) -> TrainingArguments:
    sharding = fsdp_arguments(model) if config.sharding == "fsdp" and model is not None else {}
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accumulation,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup,
        lr_scheduler_type=config.scheduler,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=config.precision == "bf16",
        use_cpu=config.device == "cpu",
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, config.steps // 10),
        seed=config.seed,
        data_seed=config.seed,
        dataloader_drop_last=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        **sharding,
    )


def lora_targets(model: nn.Module, masks: ModelMasks, config: FinetuneConfig) -> list[str]:
    """The layers that get adapters: `lora_targets` globs if given, else the pruned linears
    (all linears of a dense model); plus the LM head for `lora_head`."""
    linears = list(find_layout(model).linears())
    for pattern in config.lora_targets:
        if not any(matches(name, [pattern]) for name in linears):
            raise LLMPruneError(f"LoRA target {pattern!r} matches no linear layer of the model")
    names: list[str] = []
    if "lora" in config.trainable:
        if config.lora_targets:
            names = [name for name in linears if matches(name, config.lora_targets)]
        else:
            names = list(masks) if len(masks) else linears
    if "lora_head" in config.trainable:
        head = model.get_output_embeddings()
        names += [name for name, module in model.named_modules() if module is head]
    return names


def finetune(
    model: nn.Module,
    tokenizer,
    config: FinetuneConfig,
    masks: ModelMasks | None = None,
    windows: torch.Tensor | None = None,
    keeper: Callable[[ModelMasks, nn.Module], MaskKeeper] = MaskKeeper,
    teacher: TeacherSource = None,
) -> tuple[nn.Module, dict]:
    """Train `model` as `config` says; return the (merged) model and a summary.

    `keeper` makes the callback that keeps the masks (a gradual pruner also grows them).
    With `config.distill` > 0 the loss mixes in the KL to `teacher`'s logits (`teacher`:
    the model, or what loads it); with `distill_topk` the teacher runs once, its top-k
    log-probabilities are cached on disk and it is freed before training — when it was
    given as a loader; a module the caller passed stays the caller's (and, offloaded, is
    converted in place).

    Every pruned weight is exactly 0 at every step and at the end (checked), whichever
    parts train. With LoRA, the returned model has the adapters merged through the masks
    unless `config.merge_lora` is False (then it is the peft model).
    """
    masks = masks or ModelMasks()
    # the adapters' initial values come from the global RNG: seed it here, so a stage gives
    # the same result whatever ran before it in this process (a resumed run included)
    set_seed(config.seed)
    windows = windows if windows is not None else training_windows(tokenizer, config)
    check_split(len(windows), config.batch_size)
    if config.sharding == "fsdp" and config.uses_lora:
        raise LLMPruneError(
            "sharding: fsdp trains full weights and PERP parts; train LoRA adapters "
            "without sharding (data parallel)"
        )
    parts = [p for p in config.trainable if p not in ("lora", "lora_head")]
    chosen = trainable_names(model, parts) if parts else set()
    keep = {id(p) for n, p in model.named_parameters() if n in chosen}
    train_model = model
    masked_adapters = 0
    if config.uses_lora:
        if is_peft(model):
            raise LLMPruneError(
                "the model already has unmerged LoRA adapters: train them with trainable "
                "[all], or merge them (merge_lora: true) in the stage that added them"
            )
        targets = lora_targets(model, masks, config)
        train_model = add_lora(model, targets, config.lora_rank, config.lora_alpha)
        if config.masked_lora:
            masked_adapters = mask_adapters(train_model, masks)
    # peft freezes the base model; PERP parts chosen beside LoRA train again (same tensors)
    for name, param in train_model.named_parameters():
        added = name.startswith(ADDED_PREFIX)
        param.requires_grad_(id(param) in keep or added or (config.uses_lora and "lora_" in name))
    counts = count_trainable(train_model)
    custom = keeper is not MaskKeeper  # a gradual pruner or gate trainer runs on dense models too
    callbacks = [keeper(masks, train_model)] if len(masks) or custom else []
    penalty = getattr(callbacks[0], "penalty", None) if callbacks else None
    start = time.perf_counter()
    teacher = resolve(teacher) if config.distills else None
    if config.distills:
        if teacher is None:
            raise LLMPruneError("distillation needs a teacher model")
        check_teacher(teacher, model)
        device = process_device(config.device)
        if config.teacher_offload:
            teacher = offloaded(teacher, device)
    cache = None
    with tempfile.TemporaryDirectory() as scratch:
        if config.distill_topk:
            if not config.teacher_offload:
                teacher = teacher.to(device)
            cache = TopKCache.build(
                teacher,
                windows,
                config.distill_topk,
                config.distill_temperature,
                Path(scratch) / "teacher-topk.safetensors",
                device=device,
            )
            teacher = None  # freed: training reads the cache
        trainer = ObjectiveTrainer(
            model=train_model,
            args=training_arguments(config, scratch, train_model),
            train_dataset=WindowDataset(windows, numbered=cache is not None),
            callbacks=callbacks,
            teacher=teacher,
            weight=config.distill,
            temperature=config.distill_temperature,
            hidden_weight=config.distill_hidden,
            teacher_cache=cache,
            penalty=penalty,
            after_backward=callbacks[0].mask_gradients if callbacks else None,
            group_lrs={ADDED_PREFIX: config.gate_lr} if hasattr(config, "gate_lr") else {},
        )
        trainer.remove_callback(PrinterCallback)  # the summary reports the loss instead
        output = trainer.train()
        world_size = trainer.args.world_size
        del trainer  # its optimizer state goes before a sharded model is gathered
    gc.collect()
    sharded = any(is_sharded(p) for p in train_model.parameters())
    if config.sharding == "fsdp" and world_size > 1 and not sharded:
        raise LLMPruneError(
            "sharding: fsdp was asked for but the weights were not sharded (FSDP2 through "
            "accelerate and transformers' fsdp_config); pruned gradients were not masked"
        )
    model = gathered(train_model)
    if config.uses_lora and config.merge_lora:
        model = merge_lora(train_model, masks)
    elif len(masks):
        masks.check(model)
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    summary = {
        **counts,
        "trainable_fraction": counts["trainable"] / counts["total"],
        "train_loss": output.training_loss,
        "steps": config.steps,
        "warmup_steps": config.warmup,
        "masked_lora_layers": masked_adapters,
        "world_size": world_size,
        "sharded": sharded,
        "seconds": time.perf_counter() - start,
    }
    return model, summary
