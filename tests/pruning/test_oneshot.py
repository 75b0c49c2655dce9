"""prune() on whole models of every family: exact sparsity, bad options refused up front."""

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.models import find_layout, weight_matrix
from llmprune.pruning import prune
from tests.conftest import FAMILIES, build_tiny
from tests.pruning.cases import windows


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "options",
    [
        dict(method="magnitude", sparsity=0.5),
        dict(method="wanda", pattern="2:4"),
        dict(method="sparsegpt", sparsity=0.7),
    ],
)
def test_every_family_prunes_to_the_exact_sparsity(family, options):
    model = build_tiny(family)
    result = prune(model, calibration=windows(), progress=False, batch_size=3, **options)
    result.masks.check(model)
    fraction = 0.5 if "pattern" in options else options["sparsity"]
    layout = find_layout(model)
    assert set(result.masks) == set(layout.linears())
    for name, module in layout.linears().items():
        zeros = int((weight_matrix(module) == 0).sum())
        assert abs(zeros - round(weight_matrix(module).numel() * fraction)) <= 1, name
    logits = model(input_ids=windows(1)).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="prunezilla", sparsity=0.5), "unknown method 'prunezilla'"),
        (dict(method="wanda", sparsity=1.0), r"sparsity must be in \[0, 1\)"),
        (dict(method="wanda", pattern="4:2"), "N < M"),
        (dict(method="wanda", pattern="3:7"), "M=7 does not divide"),
        (dict(method="wanda"), "give a sparsity"),
        (dict(method="wanda", sparsity=0.5, ignore=["*"]), "no linear layer matches"),
    ],
)
def test_bad_options_are_refused_before_any_change(options, message):
    model = build_tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LLMPruneError, match=message):
        prune(model, calibration=windows(), progress=False, **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
