"""How pruning changes what a model writes, not only its loss.

Pruned models hallucinate less but omit and repeat more (Chrysostomou et al. 2024, in
the lecture). `compare` generates greedily from a dense and a pruned model on the same
prompts and reports, per model: repetition (distinct-n, repeated n-gram rate), length,
and agreement with the dense text (ROUGE-L F1 from the `rouge-score` package).

In summarization mode the prompts are documents from the evaluation text followed by
"TL;DR:", and each summary is also scored for faithfulness to its document. The
built-in scorer is lexical (the share of the summary's word bigrams found in the
document); users with the Hub plug in a model-based one (SummaC, AlignScore, ...) as
`module:function` taking (documents, summaries) and returning scores in [0, 1]. The
hallucination risk ratio is (1 - faithfulness) of a model over that of the dense one:
below 1, as in the lecture's table, means less risk than dense.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from itertools import islice

import torch

from llmprune.errors import LLMPruneError


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: list[str], n: int) -> float:
    """Unique n-grams / all n-grams (1.0 = no repetition; 0 n-grams counts as 1.0)."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_rate(tokens: list[str], n: int) -> float:
    """Share of n-grams that already occurred earlier in the same text."""
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    seen, repeats = set(), 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def rouge_l(reference: str, candidate: str) -> float:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise LLMPruneError("ROUGE-L needs rouge-score: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return scorer.score(reference, candidate)["rougeL"].fmeasure


def text_metrics(text: str) -> dict[str, float]:
    words = text.split()
    return {
        "words": len(words),
        "distinct_1": distinct_n(words, 1),
        "distinct_2": distinct_n(words, 2),
        "repeated_3gram_rate": repeated_ngram_rate(words, 3),
    }


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 64, chat: bool = False
) -> list[str]:
    """Greedy continuations (fixed length unless the model ends the text).

    With `chat`, each prompt is a user turn in the tokenizer's chat template, which is
    how instruction-tuned models are meant to be asked.
    """
    if chat and not getattr(tokenizer, "chat_template", None):
        raise LLMPruneError("this tokenizer has no chat template; leave out --chat")
    device = next(model.parameters()).device
    outputs = []
    for prompt in prompts:
        if chat:
            turn = [{"role": "user", "content": prompt}]
            prompt = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not chat).input_ids
        ids = ids.to(device)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        outputs.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return outputs


def eval_paragraphs(data: str) -> Iterator[str]:
    """Paragraphs of the evaluation text that start with a letter, whitespace collapsed."""
    from llmprune.data import get_source

    for paragraph in get_source(data).text("eval").split("\n\n"):
        text = " ".join(paragraph.split())
        if text[:1].isalpha():
            yield text


def default_prompts(data: str = "pydoc", count: int = 16) -> list[str]:
    """The opening sentence of the first prose paragraphs of the evaluation text."""
    sentences = (text.split(". ")[0] for text in eval_paragraphs(data))
    return [s + "." for s in islice((s for s in sentences if 8 <= len(s.split()) <= 40), count)]


def summarise(
    texts: list[str],
    references: list[str],
    documents: list[str] | None = None,
    scorer: Callable[[list[str], list[str]], list[float]] | None = None,
) -> dict[str, float]:
    """Mean of each metric over prompts, ROUGE-L against the reference (dense) texts,
    and, given the source documents, mean faithfulness of the texts to them.

    A summary of fewer than MIN_SUMMARY_WORDS words says nothing that could be unfaithful:
    it counts in `empty_rate` (an omission signal), not in `faithfulness`, which is None
    when no summary is long enough to score.
    """
    per_text = [text_metrics(t) for t in texts]
    summary = {key: sum(m[key] for m in per_text) / len(per_text) for key in per_text[0]}
    summary["rouge_l_vs_dense"] = sum(map(rouge_l, references, texts)) / len(texts)
    if documents is not None:
        pairs = [(d, t) for d, t in zip(documents, texts, strict=True) if is_scorable(t)]
        summary["empty_rate"] = 1.0 - len(pairs) / len(texts)
        summary["faithfulness"] = None
        if pairs:
            docs, kept = [d for d, _ in pairs], [t for _, t in pairs]
            scores = list((scorer or lexical_faithfulness)(docs, kept))
            if len(scores) != len(kept) or not all(0.0 <= float(x) <= 1.0 for x in scores):
                raise LLMPruneError(
                    "a faithfulness scorer must return one score in [0, 1] per text"
                )
            summary["faithfulness"] = sum(map(float, scores)) / len(scores)
    return summary


MIN_SUMMARY_WORDS = 3


def is_scorable(text: str) -> bool:
    return len(text.split()) >= MIN_SUMMARY_WORDS


SUMMARY_CUE = "\n\nTL;DR:"
SUMMARY_REQUEST = "Summarize this text in one sentence.\n\n"


def summary_prompt(document: str, chat: bool = False) -> str:
    """A chat request for instruction-tuned models, the "TL;DR:" cue for base models."""
    return SUMMARY_REQUEST + document if chat else document + SUMMARY_CUE


def summarization_documents(data: str = "pydoc", count: int = 16) -> list[str]:
    """Whole prose paragraphs of the eval text, 60 to 200 words each."""
    return list(islice((t for t in eval_paragraphs(data) if 60 <= len(t.split()) <= 200), count))


def supported_fraction(document: str, summary: str, n: int = 2) -> float:
    """Share of the summary's word n-grams that occur in the document (1.0 if it has none).

    Lower means more content the document does not support: a lexical proxy for
    hallucination that needs no model, blind to paraphrase.
    """
    grams = ngrams(summary.lower().split(), n)
    if not grams:
        return 1.0
    source = set(ngrams(document.lower().split(), n))
    return sum(gram in source for gram in grams) / len(grams)


def lexical_faithfulness(documents: list[str], summaries: list[str]) -> list[float]:
    return [supported_fraction(d, s) for d, s in zip(documents, summaries, strict=True)]


def load_scorer(spec: str) -> Callable[[list[str], list[str]], list[float]]:
    """`lexical`, or `module:function` importable here, taking (documents, summaries)."""
    if spec == "lexical":
        return lexical_faithfulness
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise LLMPruneError(f"faithfulness scorer must be 'lexical' or module:function: {spec!r}")
    try:
        scorer = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise LLMPruneError(f"cannot load faithfulness scorer {spec!r}: {exc}") from None
    return scorer


def risk_ratios(summary: dict[str, dict[str, float]], dense: str) -> None:
    """Add each model's hallucination risk relative to the dense model, in place."""
    dense_faithfulness = summary[dense]["faithfulness"]
    for metrics in summary.values():
        ratio = None
        if metrics["faithfulness"] is not None and dense_faithfulness not in (None, 1.0):
            ratio = (1.0 - metrics["faithfulness"]) / (1.0 - dense_faithfulness)
        metrics["hallucination_risk_ratio"] = ratio


def side_by_side(prompts: list[str], columns: dict[str, list[str]]) -> str:
    blocks = []
    for index, prompt in enumerate(prompts):
        lines = [f"=== prompt {index + 1}: {prompt}"]
        for name, texts in columns.items():
            lines.append(f"--- {name}:\n{texts[index].strip()}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
