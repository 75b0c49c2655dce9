"""Checks on the real pretrained SmolLM2-135M (marked `real`; deselect with -m 'not real')."""

import math

import pytest

from llmprune.evaluate.perplexity import evaluate_text
from llmprune.models import find_layout

pytestmark = pytest.mark.real


def test_real_model_perplexity_is_finite_and_low(real_model):
    result = evaluate_text(real_model, "pydoc", "eval", seqlen=256, max_windows=8, progress=False)
    assert math.isfinite(result.perplexity)
    assert result.perplexity < 30
    assert result.tokens == 8 * 255


def test_real_model_layout(real_model):
    layout = find_layout(real_model.model)
    assert layout.blocks_path == "model.layers"
    assert layout.num_blocks == 30
    assert len(layout.linears()) == 30 * 7
