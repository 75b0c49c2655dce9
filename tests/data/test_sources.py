import json

import pytest
import torch

from llmprune.data import calibration_windows, eval_windows, get_source, source_tokens
from llmprune.data.sources import paragraph_chunks
from llmprune.errors import LLMPruneError


def test_pydoc_splits_are_disjoint_and_cover_the_text():
    source = get_source("pydoc")
    train, evaluation = source.documents("train"), source.documents("eval")
    assert set(train).isdisjoint(evaluation)
    everything = source.documents("all")
    assert set(train) <= set(everything)
    whole = "\n\n".join(everything)
    assert all(paragraph in whole for chunk in evaluation for paragraph in chunk.split("\n\n"))
    share = sum(map(len, evaluation)) / sum(map(len, train + evaluation))
    assert 0.15 < share < 0.4
    # deterministic: same split every time
    assert get_source("pydoc").documents("eval") == evaluation


def test_calibration_and_eval_share_no_window(tiny_tokenizer):
    source = get_source("pydoc")
    seqlen = 32
    train_ids = source_tokens(tiny_tokenizer, source, "train")
    windows = eval_windows(source_tokens(tiny_tokenizer, source, "eval"), seqlen)
    train_windows = {
        tuple(train_ids[i : i + seqlen].tolist()) for i in range(train_ids.numel() - seqlen + 1)
    }
    assert not any(tuple(w.tolist()) in train_windows for w in windows)


def test_eval_windows_are_non_overlapping_and_drop_the_tail():
    ids = torch.arange(103)
    windows = eval_windows(ids, 10)
    assert windows.shape == (10, 10)
    assert torch.equal(windows.flatten(), torch.arange(100))
    assert eval_windows(ids, 10, max_windows=3).shape == (3, 10)


def test_calibration_windows_are_seeded_slices():
    ids = torch.arange(1000)
    first = calibration_windows(ids, 8, 16, seed=3)
    assert first.shape == (8, 16)
    assert torch.equal(first, calibration_windows(ids, 8, 16, seed=3))
    assert not torch.equal(first, calibration_windows(ids, 8, 16, seed=4))
    # each window is a contiguous slice of the stream
    assert torch.equal(first[:, 1:] - first[:, :-1], torch.ones(8, 15, dtype=torch.long))


def test_local_txt_and_jsonl_files(tmp_path):
    paragraphs = [f"Paragraph number {i} says something different." for i in range(200)]
    txt = tmp_path / "notes.txt"
    txt.write_text("\n\n".join(paragraphs))
    source = get_source(str(txt))
    assert "Paragraph number 0" in source.text("all")
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": p}) for p in paragraphs))
    assert get_source(str(jsonl)).text("all") == source.text("all").replace("\n\n", "\n\n")


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(LLMPruneError, match="unknown data source"):
        get_source("imagenet")
    with pytest.raises(LLMPruneError, match="no such text file"):
        get_source(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n  ")
    with pytest.raises(LLMPruneError, match="no text"):
        get_source(str(empty)).text("all")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": 1}\n')
    with pytest.raises(LLMPruneError, match="bad.jsonl:1"):
        get_source(str(bad)).text("all")


def test_hub_source_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(LLMPruneError, match="cannot load wikitext2"):
        get_source("wikitext2").text("eval")


def test_paragraph_chunks_respect_the_size_limit():
    text = "\n\n".join("word " * 100 for _ in range(50))
    chunks = paragraph_chunks(text, max_chars=1200)
    assert all(len(c) <= 1200 for c in chunks)
    assert "\n\n".join(chunks) == text


def test_short_text_errors():
    with pytest.raises(LLMPruneError, match="fewer than one window"):
        eval_windows(torch.arange(5), 10)
    with pytest.raises(LLMPruneError, match="fewer than seqlen"):
        calibration_windows(torch.arange(5), 2, 10)
