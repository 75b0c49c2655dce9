"""Distillation from a teacher's logits: the loss, a student equal to its teacher, and a
teacher of another vocabulary."""

import copy
import math

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.finetune import finetune, make_finetune_config
from llmprune.finetune.distill import distillation_loss, topk_distillation_loss
from llmprune.finetune.teacher import TopKCache
from tests.conftest import VOCAB, build_tiny

WINDOWS = torch.randint(0, VOCAB, (16, 32), generator=torch.Generator().manual_seed(4))


def test_the_loss_is_zero_for_equal_logits_and_the_kl_otherwise():
    logits = torch.randn(2, 3, 7)
    assert distillation_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p_teacher = (3/4, 1/4)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(kl, rel=1e-5)
    # T² scaling: the softened KL times T²
    soft = torch.softmax(teacher / 2.0, dim=-1)[0]
    kl_t = sum(p * math.log(p / 0.5) for p in soft.tolist()) * 4.0
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(kl_t, rel=1e-5)


def test_a_student_equal_to_its_teacher_has_zero_loss():
    student = build_tiny("llama")
    config = make_finetune_config(steps=1, batch_size=2, seqlen=32, distill=1.0, warmup_steps=0)
    twin = copy.deepcopy(student)
    _, summary = finetune(student, None, config, windows=WINDOWS, teacher=twin)
    assert summary["train_loss"] == pytest.approx(0.0, abs=1e-7)
    other = build_tiny("llama", rms_norm_eps=1e-3)  # the same weights, another function
    with torch.no_grad():
        other.model.embed_tokens.weight.mul_(3.0)
    _, summary = finetune(build_tiny("llama"), None, config, windows=WINDOWS, teacher=other)
    assert summary["train_loss"] > 1e-3


def test_distilling_from_the_dense_model_while_pruning_reaches_the_target():
    from llmprune.gradual import gradual_prune, make_gradual_config

    dense = build_tiny("llama")
    config = make_gradual_config(
        sparsity=0.5, steps=6, start_step=1, every=5, batch_size=2, seqlen=32, distill=0.5
    )
    _, masks, summary = gradual_prune(
        copy.deepcopy(dense), None, config, windows=WINDOWS, teacher=dense
    )
    assert masks.sparsity() == pytest.approx(0.5, abs=1e-3)
    assert summary["train_loss"] > 0


def test_a_teacher_with_another_vocabulary_is_refused():
    config = make_finetune_config(steps=1, batch_size=2, seqlen=32, distill=0.5)
    teacher = build_tiny("llama", vocab_size=VOCAB + 8)
    with pytest.raises(LLMPruneError, match="vocabulary"):
        finetune(build_tiny("llama"), None, config, windows=WINDOWS, teacher=teacher)


def test_hidden_state_distillation_is_zero_for_a_twin_and_positive_otherwise():
    config = make_finetune_config(
        steps=1, batch_size=2, seqlen=32, distill_hidden=1.0, warmup_steps=0
    )
    student = build_tiny("llama")
    _, summary = finetune(student, None, config, windows=WINDOWS, teacher=copy.deepcopy(student))
    plain = make_finetune_config(steps=1, batch_size=2, seqlen=32, warmup_steps=0)
    _, alone = finetune(build_tiny("llama"), None, plain, windows=WINDOWS)
    assert summary["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-5)  # MSE 0
    other = build_tiny("llama")
    with torch.no_grad():
        other.model.norm.weight.mul_(2.0)
    _, summary = finetune(build_tiny("llama"), None, config, windows=WINDOWS, teacher=other)
    assert summary["train_loss"] > alone["train_loss"] + 1e-3


def test_topk_loss_is_the_full_kl_when_k_covers_the_vocabulary_and_zero_for_a_twin():
    student = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(1))
    teacher = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(2))
    full = distillation_loss(student, teacher, 2.0)
    logprobs, indices = torch.log_softmax(teacher / 2.0, -1).topk(11, dim=-1)
    assert topk_distillation_loss(student, logprobs, indices, 2.0).item() == pytest.approx(
        full.item(), rel=1e-4
    )
    # top 3 of 11: a lower bound of the full KL (the rest merged into one bucket) ...
    logprobs, indices = torch.log_softmax(teacher / 2.0, -1).topk(3, dim=-1)
    partial = topk_distillation_loss(student, logprobs, indices, 2.0).item()
    assert 0 < partial < full.item()
    # ... and zero when the student is the teacher
    twin = topk_distillation_loss(teacher, logprobs, indices, 2.0).item()
    assert twin == pytest.approx(0.0, abs=1e-6)


def test_a_cached_teacher_gives_the_same_training_as_a_live_one_at_full_k(tmp_path):
    teacher = build_tiny("llama")
    with torch.no_grad():
        teacher.model.norm.weight.mul_(2.0)  # another function than the student's
    cache = TopKCache.build(teacher, WINDOWS, k=VOCAB, temperature=2.0, path=tmp_path / "t")
    logprobs, indices = cache.rows(torch.tensor([3, 0]))
    assert logprobs.shape == (2, 32, VOCAB) and indices.dtype == torch.int32
    expected = torch.log_softmax(teacher(input_ids=WINDOWS[[3, 0]]).logits / 2.0, -1)
    assert torch.allclose(logprobs, expected.topk(VOCAB, dim=-1).values, atol=1e-5)

    live = make_finetune_config(steps=2, batch_size=2, seqlen=32, distill=0.5, warmup_steps=0)
    cached = make_finetune_config(**{**live.model_dump(), "distill_topk": VOCAB})
    _, with_teacher = finetune(build_tiny("llama"), None, live, windows=WINDOWS, teacher=teacher)
    loads = []

    def load_teacher():
        loads.append(1)
        return copy.deepcopy(teacher)

    model, from_cache = finetune(
        build_tiny("llama"), None, cached, windows=WINDOWS, teacher=load_teacher
    )
    assert loads == [1]  # loaded once, for the cache, and not held through training
    assert from_cache["train_loss"] == pytest.approx(with_teacher["train_loss"], rel=1e-4)
    small = make_finetune_config(**{**live.model_dump(), "distill_topk": 8})
    _, top8 = finetune(build_tiny("llama"), None, small, windows=WINDOWS, teacher=teacher)
    assert 0 < top8["train_loss"] < with_teacher["train_loss"]


def test_an_offloaded_teacher_gives_the_same_loss():
    teacher = build_tiny("llama")
    with torch.no_grad():
        teacher.model.norm.weight.mul_(2.0)
    config = make_finetune_config(steps=2, batch_size=2, seqlen=32, distill=0.5, warmup_steps=0)
    _, plain = finetune(build_tiny("llama"), None, config, windows=WINDOWS, teacher=teacher)
    offload = make_finetune_config(**{**config.model_dump(), "teacher_offload": True})
    _, moved = finetune(
        build_tiny("llama"), None, offload, windows=WINDOWS, teacher=copy.deepcopy(teacher)
    )
    assert moved["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-6)


def test_bad_distillation_options_are_refused():
    with pytest.raises(LLMPruneError, match="give distill > 0"):
        make_finetune_config(distill_topk=8)
    with pytest.raises(LLMPruneError, match="no distill_topk"):
        make_finetune_config(distill=0.5, distill_hidden=1.0, distill_topk=8)
