"""Distillation from the dense model while fine-tuning (or pruning while training), and
the Trainer whose objective adds it (and any weight penalty) to the language-model loss.

The student's loss becomes (1 − α)·CE + α·T²·KL(p_teacher^T ‖ p_student^T) over every
token, with p^T = softmax(logits / T) (Hinton et al. 2015; the T² keeps gradient sizes
comparable across temperatures). The teacher runs without gradients on the same batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from llmprune.errors import LLMPruneError
from llmprune.finetune.sharding import enable_on_cpu
from llmprune.finetune.teacher import TopKCache


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T²·KL(teacher ‖ student) of the temperature-softened distributions, per token."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def topk_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_indices: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T²·KL over the teacher's top-k tokens plus one bucket for the rest of the vocabulary.

    `teacher_logprobs` are log p_T of the k tokens at `teacher_indices` ([..., k], from the
    full softmax, so their sum is below 1); the rest bucket holds 1 − Σ p for the teacher
    and 1 − Σ q for the student. Exact when k covers the vocabulary, zero when the student
    is the teacher, and the student's mass outside the top k is still pushed down.
    """
    vocab = student_logits.shape[-1]
    k = teacher_indices.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    student = student.gather(1, teacher_indices.reshape(-1, k).long())
    teacher = teacher_logprobs.float().reshape(-1, k)
    rest_teacher = torch.log1p(-teacher.exp().sum(-1).clamp(max=1 - 1e-7))
    rest_student = torch.log1p(-student.exp().sum(-1).clamp(max=1 - 1e-7))
    teacher = torch.cat([teacher, rest_teacher[:, None]], dim=1)
    student = torch.cat([student, rest_student[:, None]], dim=1)
    kl = (teacher.exp() * (teacher - student)).sum(-1).mean()
    return kl * temperature**2


def check_teacher(teacher: nn.Module, student: nn.Module) -> None:
    ours = student.get_output_embeddings().weight.shape[0]
    theirs = teacher.get_output_embeddings().weight.shape[0]
    if ours != theirs:
        raise LLMPruneError(
            f"the teacher has a vocabulary of {theirs} tokens and the student {ours}: "
            "distillation needs the same tokenizer"
        )


class ObjectiveTrainer(Trainer):
    """A Trainer whose loss can mix in a teacher's logits and add a penalty (L1, group
    lasso) on the weights: loss = (1 − α)·CE + α·T²·KL + penalty().

    Each micro-batch's loss is a mean over its tokens (windows have one length, no
    padding), so the Trainer divides it by the gradient-accumulation steps itself."""

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        teacher: nn.Module | None = None,
        weight: float = 0.0,
        temperature: float = 1.0,
        hidden_weight: float = 0.0,
        penalty: Callable[[], torch.Tensor] | None = None,
        after_backward: Callable[[], None] | None = None,
        teacher_cache: TopKCache | None = None,
        group_lrs: dict[str, float] | None = None,
        **kwargs,
    ):
        self.group_lrs = group_lrs or {}  # parameter-name prefix -> its own learning rate
        super().__init__(*args, **kwargs)
        self.teacher = None
        self.hidden_weight = hidden_weight
        if teacher is not None and (weight > 0 or hidden_weight > 0):
            self.teacher = teacher.eval()
            if not hasattr(teacher, "_hf_hook"):  # an offloaded teacher places itself
                self.teacher = self.teacher.to(self.args.device)
            for param in self.teacher.parameters():
                param.requires_grad_(False)
        self.teacher_cache = teacher_cache
        self.weight, self.temperature, self.penalty = weight, temperature, penalty
        self.after_backward = after_backward

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        enable_on_cpu(self)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step; then gradients no hook could reach are masked (FSDP), before
        the Trainer clips them and steps."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.after_backward is not None:
            self.after_backward()
        return loss

    def create_optimizer(self, *args, **kwargs):
        """The Trainer's optimizer, with the parameters of each prefix in a group of their
        own learning rate (no weight decay): gate logits move much faster than weights."""
        optimizer = super().create_optimizer(*args, **kwargs)
        for prefix, lr in self.group_lrs.items():
            chosen = [
                p
                for n, p in self.model.named_parameters()
                if n.startswith(prefix) and p.requires_grad
            ]
            if not chosen:
                continue
            ids = {id(p) for p in chosen}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            optimizer.add_param_group({"params": chosen, "lr": lr, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        window_ids = inputs.pop("window", None)
        hidden = self.teacher is not None and self.hidden_weight > 0
        outputs = model(**inputs, output_hidden_states=hidden)
        loss = outputs.loss
        if self.teacher_cache is not None and self.weight > 0:
            logprobs, indices = self.teacher_cache.rows(window_ids.cpu())
            device = outputs.logits.device
            kl = topk_distillation_loss(
                outputs.logits, logprobs.to(device), indices.to(device), self.temperature
            )
            loss = (1.0 - self.weight) * loss + self.weight * kl
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs.get("attention_mask"),
                    output_hidden_states=hidden,
                )
            if self.weight > 0:
                kl = distillation_loss(outputs.logits, teacher.logits, self.temperature)
                loss = (1.0 - self.weight) * loss + self.weight * kl
            if hidden:  # the last hidden states: blocks may differ in number after a cut
                mse = F.mse_loss(
                    outputs.hidden_states[-1].float(), teacher.hidden_states[-1].float()
                )
                loss = loss + self.hidden_weight * mse
        if self.penalty is not None:
            loss = loss + self.penalty()
        return (loss, outputs) if return_outputs else loss
