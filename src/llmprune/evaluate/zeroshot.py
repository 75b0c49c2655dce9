"""Zero-shot accuracy through lm-evaluation-harness, with an offline last-word task.

Users with the Hub run the papers' tasks (lambada_openai, hellaswag, arc_easy, piqa,
winogrande, boolq, ...) by name. Offline, `llmprune_lastword` is a LAMBADA-style task
built deterministically from the evaluation text: predict the final word of a passage
from everything before it. It is written as local JSONL plus a task YAML and loaded
through lm-eval's own TaskManager, so the same code path runs either way.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from llmprune.errors import LLMPruneError

LASTWORD_TASK = "llmprune_lastword"
MIN_WORDS = 25
MAX_CONTEXT_WORDS = 160
WORD = re.compile(r"^[A-Za-z]{3,}$")


def lastword_examples(text: str, limit: int | None = None) -> list[dict]:
    """(context, target) pairs: each sentence end in a prose paragraph whose final word is
    a plain word, with at least MIN_WORDS words of the paragraph before it as context."""
    examples = []
    for paragraph in text.split("\n\n"):
        if not paragraph.strip():
            continue
        letters = sum(ch.isalpha() or ch.isspace() for ch in paragraph) / len(paragraph)
        if letters < 0.85:  # skip code, tables and grammar listings
            continue
        words = paragraph.split()
        for end, word in enumerate(words):
            if not word.endswith(".") or end < MIN_WORDS:
                continue
            target = word[:-1]
            if not WORD.match(target):
                continue
            context = " ".join(words[max(0, end - MAX_CONTEXT_WORDS) : end])
            examples.append({"context": context, "target": target})
            if limit is not None and len(examples) >= limit:
                return examples
    return examples


TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_lastword_task(directory: Path, data: str = "pydoc") -> Path:
    """Write the offline task (JSONL + YAML) into `directory`; return the directory."""
    from llmprune.data import get_source

    directory.mkdir(parents=True, exist_ok=True)
    examples = lastword_examples(get_source(data).text("eval"))
    if not examples:
        raise LLMPruneError(f"the {data} evaluation text has no passages for {LASTWORD_TASK}")
    jsonl = directory / f"{LASTWORD_TASK}.jsonl"
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in examples))
    yaml_text = TASK_YAML.format(task=LASTWORD_TASK, data=jsonl.resolve())
    (directory / f"{LASTWORD_TASK}.yaml").write_text(yaml_text)
    return directory


def task_manager(directory: Path, data: str = "pydoc"):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(write_lastword_task(directory, data)))


def check_tasks(tasks: list[str], manager) -> None:
    known = set(manager.all_tasks)
    unknown = [task for task in tasks if task not in known]
    if unknown:
        raise LLMPruneError(f"unknown zero-shot task {unknown[0]!r} (lm-eval has no such task)")


def zero_shot(
    model,
    tokenizer,
    tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    workdir: Path | None = None,
    data: str = "pydoc",
) -> dict[str, dict[str, float]]:
    """Accuracy (and whatever else each task reports) of `model` on `tasks`."""
    import tempfile

    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise LLMPruneError("zero-shot evaluation needs lm-eval: pip install lm-eval") from None
    tasks = tasks or [LASTWORD_TASK]
    with tempfile.TemporaryDirectory() as scratch:
        manager = task_manager(Path(workdir or scratch), data)
        check_tasks(tasks, manager)
        # lm-eval warns that a model object (not a hub id) was passed: that is the intent.
        logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
        wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        output = simple_evaluate(
            model=wrapped,
            tasks=tasks,
            task_manager=manager,
            limit=limit,
            log_samples=False,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
    results = {}
    for task, metrics in output["results"].items():
        results[task] = {
            key.split(",")[0]: float(value)
            for key, value in metrics.items()
            if isinstance(value, int | float) and "stderr" not in key
        }
    return results
