"""Masks: nested across passes, bit-packed, saved and loaded."""

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.pruning import ModelMasks, prune
from tests.conftest import build_tiny
from tests.pruning.cases import windows


def test_existing_masks_nest_across_steps():
    model = build_tiny("opt")
    calib = windows()
    first = prune(model, calibration=calib, method="sparsegpt", sparsity=0.3, progress=False)
    second = prune(
        model,
        calibration=calib,
        method="sparsegpt",
        sparsity=0.6,
        existing=first.masks,
        progress=False,
    )
    for name, mask in second.masks.items():
        assert torch.all(mask <= first.masks[name]), name
    assert abs(second.masks.sparsity() - 0.6) < 1e-3
    second.masks.check(model)


def test_mask_file_round_trip_and_corruption(tmp_path):
    a, b = torch.rand(5, 7) > 0.5, torch.rand(3, 16) > 0.3
    masks = ModelMasks({"a": a, "b": b})
    assert torch.equal(masks["a"], a) and torch.equal(masks["b"], b)
    assert masks.packed["a"].numel() == 5  # held as bits: ceil(35 / 8) bytes
    assert masks.layer_sparsity()["a"] == pytest.approx(float((~a).float().mean()))
    assert masks.sparsity() == pytest.approx(int((~a).sum() + (~b).sum()) / (35 + 48))
    masks.save(tmp_path / "m.safetensors")
    loaded = ModelMasks.load(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[n], masks[n]) for n in ("a", "b"))
    masks.shapes["a"] = (9, 9)  # 81 bits do not fit in 5 bytes
    masks.save(tmp_path / "short.safetensors")
    with pytest.raises(LLMPruneError, match="does not match its shape"):
        ModelMasks.load(tmp_path / "short.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(LLMPruneError, match="corrupt mask file"):
        ModelMasks.load(tmp_path / "bad.safetensors")
