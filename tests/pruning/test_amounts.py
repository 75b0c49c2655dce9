"""Amounts: one parser for 0.5 and 2:4, one [0, 1) rule."""

import pytest

from llmprune.errors import LLMPruneError
from llmprune.pruning.amounts import NM, Sparsity, parse_amount, parse_pattern


def test_amounts_reject_bad_values():
    with pytest.raises(LLMPruneError, match=r"\[0, 1\)"):
        Sparsity(1.0)
    with pytest.raises(LLMPruneError, match=r"\[0, 1\)"):
        Sparsity(-0.1)
    with pytest.raises(LLMPruneError, match="N < M"):
        parse_pattern("4:4")
    with pytest.raises(LLMPruneError, match="like 2:4"):
        parse_pattern("half")
    with pytest.raises(LLMPruneError, match="does not divide"):
        NM(2, 4).check_divides(10, "model.layers.0.mlp.up_proj")


def test_one_parser_for_every_way_of_writing_an_amount():
    assert parse_amount("0.5") == parse_amount(0.5) == Sparsity(0.5)
    assert parse_amount(" 2 : 4 ") == NM(2, 4)
    assert parse_amount(NM(4, 8)) == NM(4, 8)
    for bad in ("half", float("nan"), None, True, "1.0"):
        with pytest.raises(LLMPruneError):
            parse_amount(bad)
