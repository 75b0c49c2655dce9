"""Sweeps, reports, zero-shot through lm-eval, and behaviour comparisons."""

import copy
import json

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.evaluate.behaviour import (
    distinct_n,
    generate,
    lexical_faithfulness,
    load_scorer,
    repeated_ngram_rate,
    risk_ratios,
    rouge_l,
    summarise,
    summary_prompt,
    supported_fraction,
    text_metrics,
)
from llmprune.evaluate.zeroshot import LASTWORD_TASK, lastword_examples, zero_shot
from llmprune.pruning import prune
from llmprune.report import render_report, rows, table_columns, zero_shot_stderr
from llmprune.sweep import SweepConfig, parse_range, run_sweep
from tests.conftest import build_tiny


def quick_sweep(model_dir, out, method: str = "magnitude", **options) -> list[dict]:
    """One point (method at 50 %) on a tiny model, with tiny calibration and evaluation."""
    settings = dict(nsamples=2, seqlen=32, eval_windows=2, sparsity="0.5", pattern=[]) | options
    config = SweepConfig(model=str(model_dir), methods=[method], **settings)
    return run_sweep(config, out, echo=lambda *_: None)


def test_sweep_writes_tables_and_plots_and_reruns_for_free(tmp_path, tiny_model_dirs):
    out = tmp_path / "sweep"
    said = []
    config = SweepConfig(
        model=str(tiny_model_dirs["llama"]),
        methods=["magnitude", "wanda"],
        sparsity="0.3,0.6",
        pattern=["2:4"],
        owl=True,
        nsamples=4,
        seqlen=32,
        eval_windows=3,
    )
    points = run_sweep(config, out, echo=said.append)
    assert len(points) == 1 + 2 * 3 + 2  # dense, 2 methods x (2 + 2:4), wanda+OWL x 2
    render_report(out)
    for name in (
        "results.json",
        "results.csv",
        "results.md",
        "report.md",
        "perplexity_vs_sparsity.png",
        "owl_block_sparsity.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "perplexity_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    table = json.loads((out / "results.json").read_text())
    wanda_06 = [
        r
        for r in table
        if r["method"] == "wanda" and r["amount"] == "0.6" and r["allocation"] == "uniform"
    ]
    assert wanda_06[0]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert "| wanda | owl | 0.6 |" in (out / "results.md").read_text()
    count = len(said)
    run_sweep(config, out, echo=said.append)
    assert len(said) == count  # nothing left to do


def test_sweep_bad_input(tmp_path, tiny_model_dirs):
    with pytest.raises(LLMPruneError, match=r"\[0, 1\)"):
        parse_range("0.5:1.0:0.25")
    with pytest.raises(LLMPruneError, match="look like"):
        parse_range("lots")
    assert parse_range("0.1:0.3:0.1") == [0.1, 0.2, 0.3]
    out = tmp_path / "sweep"
    quick_sweep(tiny_model_dirs["gpt2"], out)
    with pytest.raises(LLMPruneError, match="holds a sweep of"):
        quick_sweep(tiny_model_dirs["opt"], out)
    with pytest.raises(LLMPruneError, match="swept with nsamples=2, not 8"):
        quick_sweep(tiny_model_dirs["gpt2"], out, "wanda", nsamples=8)
    assert not (out / "points" / "wanda@0.5.json").exists()


def test_sweep_with_recovery_keeps_masks_and_reports_both(tmp_path, tiny_model_dirs):
    out = tmp_path / "sweep"
    options = dict(recover=["norms"], recover_steps=3, recover_lr=5e-3)
    points = quick_sweep(tiny_model_dirs["llama"], out, **options)
    pruned = next(p for p in points if p["method"] == "magnitude")
    recovered = pruned["recovered"]
    assert recovered["sparsity_measured"] == pytest.approx(0.5, abs=1e-3)
    assert recovered["finetune"]["steps"] == 3
    assert 0 < recovered["finetune"]["trainable_fraction"] < 0.01
    assert recovered["perplexity"] != pruned["perplexity"]
    assert "dense" not in [p["method"] for p in points if "recovered" in p]
    render_report(out)
    assert "ppl_recovered" in (out / "results.md").read_text()
    with pytest.raises(LLMPruneError, match="swept with recovery="):
        quick_sweep(tiny_model_dirs["llama"], out)


def test_report_columns_and_zero_shot_error_bars():
    def point(method, amount, ppl, accs, **extra):
        zero = {task: {"acc": acc, "sample_len": 101} for task, acc in accs.items()}
        return {"method": method, "amount": amount, "perplexity": ppl, "zero_shot": zero, **extra}

    points = [
        point("dense", "0", 20.0, {"a": 0.5, "b": 0.7}, sparsity=0.0),
        point("wanda", "0.5", 30.0, {"a": 0.5, "b": 0.3}, sparsity=0.5),
        point("wanda", "2:4", 50.0, {"a": 0.4, "b": 0.2}, pattern="2:4"),
    ]
    table = rows(points)
    assert [r["ppl_vs_dense"] for r in table] == pytest.approx([1.0, 1.5, 2.5])
    assert table[1]["zero_shot_acc"] == pytest.approx(0.4)
    assert table_columns(table)[5:9] == ["ppl_vs_dense", "a", "b", "zero_shot_acc"]
    # one task: acc 0.5 over 101 examples -> sqrt(0.25 / 100) = 0.05
    assert zero_shot_stderr({"zero_shot": {"a": {"acc": 0.5, "sample_len": 101}}}) == 0.05
    # two tasks: the mean's error is sqrt(0.0025 + 0.0021) / 2
    assert zero_shot_stderr(points[1]) == pytest.approx((0.0025 + 0.0021) ** 0.5 / 2)


def test_repetition_metrics_match_a_hand_count():
    words = ["the", "cat", "sat", "on", "the", "cat", "sat", "on", "the", "mat"]
    # bigrams: the-cat, cat-sat, sat-on, on-the, the-cat, cat-sat, sat-on, on-the, the-mat
    assert distinct_n(words, 2) == pytest.approx(5 / 9)
    assert distinct_n(words, 1) == pytest.approx(5 / 10)
    # trigrams: the-cat-sat, cat-sat-on, sat-on-the, on-the-cat, then 3 repeats, on-the-mat
    assert repeated_ngram_rate(words, 3) == pytest.approx(3 / 8)
    assert text_metrics(" ".join(words))["words"] == 10


def test_compare_of_a_text_with_itself_is_perfect_agreement():
    texts = ["a pruned model may repeat itself", "or it may omit things"]
    summary = summarise(texts, texts)
    assert summary["rouge_l_vs_dense"] == pytest.approx(1.0)
    assert rouge_l("a b c d", "a b x d") == pytest.approx(0.75)


def half_scorer(documents: list[str], summaries: list[str]) -> list[float]:
    """A stand-in for a model-based faithfulness scorer, loaded as module:function."""
    return [0.5 for _ in summaries]


def test_faithfulness_lexical_count_plug_in_and_risk_ratio():
    # bigrams of the summary: the-cat, cat-sat, sat-on (in the document), on-a, a-hat (not)
    assert supported_fraction("The cat sat on the mat", "the cat sat on a hat") == 0.6
    assert load_scorer("lexical") is lexical_faithfulness
    assert load_scorer("tests.test_sweep_report:half_scorer") is half_scorer
    for spec, message in [("nonsense", "module:function"), ("no_such_mod:f", "cannot load")]:
        with pytest.raises(LLMPruneError, match=message):
            load_scorer(spec)
    with pytest.raises(LLMPruneError, match="one score in"):
        summarise(["a b c"], ["a b c"], ["a b c"], scorer=lambda docs, texts: [2.0])
    texts = ["a b c", "x y w", "z"]
    dense = summarise(texts, texts, ["a b c d", "x z", "z"])
    # "a b c": both bigrams in its document; "x y w": neither; "z": too short to score
    assert dense["faithfulness"] == pytest.approx((1.0 + 0.0) / 2)
    assert dense["empty_rate"] == pytest.approx(1 / 3)
    silent = summarise(["", "ok"], ["", "ok"], ["doc one", "doc two"])
    assert silent["faithfulness"] is None and silent["empty_rate"] == 1.0
    summary = {"dense": {"faithfulness": 0.8}, "pruned": {"faithfulness": 0.9}}
    risk_ratios(summary, "dense")
    assert summary["pruned"]["hallucination_risk_ratio"] == pytest.approx(0.5)
    assert summary["dense"]["hallucination_risk_ratio"] == pytest.approx(1.0)
    nothing = {"dense": {"faithfulness": 0.8}, "pruned": {"faithfulness": None}}
    risk_ratios(nothing, "dense")
    assert nothing["pruned"]["hallucination_risk_ratio"] is None


def test_chat_prompts_go_through_the_chat_template(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}[user] {{ m['content'] }}{% endfor %} [bot]"
    model = build_tiny("llama")
    chat = generate(model, tokenizer, ["the list type"], max_new_tokens=5, chat=True)
    plain = generate(model, tokenizer, ["[user] the list type [bot]"], max_new_tokens=5)
    assert chat == plain and len(chat[0].split()) > 0
    assert summary_prompt("Doc.", chat=True).endswith("\n\nDoc.")
    assert summary_prompt("Doc.").endswith("TL;DR:")


def test_lastword_task_scores_dense_and_pruned_models_through_lm_eval(tiny_tokenizer):
    examples = lastword_examples("\n\n".join(["word " * 30 + "ending."] * 3))
    assert examples[0]["target"] == "ending" and len(examples[0]["context"].split()) == 30
    dense = build_tiny("llama")
    sparse = build_tiny("llama")
    prune(sparse, method="magnitude", sparsity=0.9, progress=False)
    for model in (dense, sparse):
        results = zero_shot(model, tiny_tokenizer, limit=8, batch_size=4)
        metrics = results[LASTWORD_TASK]
        assert 0.0 <= metrics["acc"] <= 1.0
        assert metrics["perplexity"] > 1.0


def test_unknown_zero_shot_task_is_refused(tiny_tokenizer):
    with pytest.raises(LLMPruneError, match="unknown zero-shot task 'lambada_klingon'"):
        zero_shot(build_tiny("gpt2"), tiny_tokenizer, ["lambada_klingon"])


@pytest.mark.real
def test_real_model_lastword_accuracy_drops_when_heavily_pruned(real_model):
    import copy

    dense = zero_shot(real_model.model, real_model.tokenizer, limit=40)[LASTWORD_TASK]["acc"]
    sparse_model = copy.deepcopy(real_model.model)
    prune(sparse_model, method="magnitude", sparsity=0.9, progress=False)
    sparse = zero_shot(sparse_model, real_model.tokenizer, limit=40)[LASTWORD_TASK]["acc"]
    assert dense > 0.2
    assert sparse < dense
    assert torch.isfinite(torch.tensor(dense))
