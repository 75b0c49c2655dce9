"""Mask-preserving fine-tuning on top of the transformers Trainer.

The Trainer brings AdamW, warmup and schedules, gradient accumulation and clipping,
bf16, and multi-process training: run the same code under `accelerate launch` or
`torchrun` and it trains with DDP. `MaskKeeper` re-applies the masks right after every
optimizer step, so pruned weights are exactly zero at every step, on every rank.
"""

from __future__ import annotations

import tempfile
import time

import torch
from torch import nn
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from llmprune.data import calibration_windows, get_source, source_tokens
from llmprune.finetune.config import FinetuneConfig
from llmprune.finetune.lora import add_lora, merge_lora
from llmprune.finetune.trainable import count_trainable, trainable_names
from llmprune.pruning.masks import ModelMasks


class MaskKeeper(TrainerCallback):
    """Zero the pruned weights after each optimizer step (and once before training)."""

    def __init__(self, masks: ModelMasks):
        self.masks = masks
        self.unpacked: dict | None = None  # on the weights' devices, unpacked once

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.unpacked = self.masks.on_devices(model)
            self.masks.apply(model, self.unpacked)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.masks.apply(model, self.unpacked)

    def on_train_end(self, args, state, control, **kwargs):
        self.unpacked = None


class WindowDataset(torch.utils.data.Dataset):
    """Fixed-length token windows as causal-LM examples (labels = inputs)."""

    def __init__(self, windows: torch.Tensor):
        self.windows = windows

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> dict:
        ids = self.windows[index]
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def training_windows(tokenizer, config: FinetuneConfig) -> torch.Tensor:
    """Enough random windows from the train split for every step of the run."""
    count = config.steps * config.batch_size * config.grad_accumulation
    ids = source_tokens(tokenizer, get_source(config.data), "train")
    return calibration_windows(ids, count, config.seqlen, seed=config.seed + 1)


def training_arguments(config: FinetuneConfig, output_dir: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accumulation,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
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
    )


def lora_targets(model: nn.Module, masks: ModelMasks, patterns: list[str]) -> list[str]:
    """The layers that get adapters: `patterns` if given, else the pruned linears."""
    from llmprune.errors import LLMPruneError
    from llmprune.models.layout import find_layout
    from llmprune.pruning.allocation import matches

    linears = list(find_layout(model).linears())
    for pattern in patterns:
        if not any(matches(name, [pattern]) for name in linears):
            raise LLMPruneError(f"LoRA target {pattern!r} matches no linear layer of the model")
    if patterns:
        return [name for name in linears if matches(name, patterns)]
    return list(masks) if len(masks) else linears


def finetune(
    model: nn.Module,
    tokenizer,
    config: FinetuneConfig,
    masks: ModelMasks | None = None,
    windows: torch.Tensor | None = None,
) -> tuple[nn.Module, dict]:
    """Train `model` as `config` says; return the (merged) model and a summary.

    With masks, every pruned weight is still exactly 0 at the end (checked). With LoRA,
    the returned model has the adapters merged through the masks unless
    `config.merge_lora` is False (then it is the peft model).
    """
    masks = masks or ModelMasks()
    windows = windows if windows is not None else training_windows(tokenizer, config)
    parts = [p for p in config.trainable if p != "lora"]
    chosen = trainable_names(model, parts) if parts else set()
    keep = {id(p) for n, p in model.named_parameters() if n in chosen}
    train_model = model
    if config.uses_lora:
        targets = lora_targets(model, masks, config.lora_targets)
        train_model = add_lora(model, targets, config.lora_rank, config.lora_alpha)
    # peft freezes the base model; PERP parts chosen beside LoRA train again (same tensors)
    for name, param in train_model.named_parameters():
        param.requires_grad_(id(param) in keep or "lora_" in name)
    counts = count_trainable(train_model)
    callbacks = [] if config.uses_lora else [MaskKeeper(masks)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(
            model=train_model,
            args=training_arguments(config, scratch),
            train_dataset=WindowDataset(windows),
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # the summary reports the loss instead
        output = trainer.train()
        world_size = trainer.args.world_size
    model = train_model
    if config.uses_lora and config.merge_lora:
        model = merge_lora(train_model, masks)
    elif len(masks) and not config.uses_lora:
        masks.check(model)
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    summary = {
        **counts,
        "trainable_fraction": counts["trainable"] / counts["total"],
        "train_loss": output.training_loss,
        "steps": config.steps,
        "world_size": world_size,
        "seconds": time.perf_counter() - start,
    }
    return model, summary
