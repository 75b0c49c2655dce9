"""`llmprune compare`: how pruning changes what a model writes, on the same prompts.

Greedy generations from the dense model and each pruned one, scored for repetition,
length and agreement with the dense text; with `summarize`, prompts are documents to
summarise and summaries are scored for faithfulness to their document, with the
hallucination risk ratio against the dense model.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from llmprune.errors import LLMPruneError
from llmprune.evaluate import behaviour
from llmprune.io import write_json, write_text
from llmprune.models import load_model
from llmprune.provenance import environment

CONFIG_FILE = "compare_config.json"
BASE_COLUMNS = ["words", "distinct_1", "distinct_2", "repeated_3gram_rate", "rouge_l_vs_dense"]
SUMMARY_COLUMNS = ["empty_rate", "faithfulness", "hallucination_risk_ratio"]


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: str | None = Field(default=None, description="A text file, one prompt a line.")
    count: int = Field(default=16, ge=1, description="Default prompts to use.")
    max_new_tokens: int = Field(default=64, ge=1, description="Tokens generated per prompt.")
    data: str = Field(default="pydoc", description="Text the default prompts come from.")
    summarize: bool = Field(
        default=False, description="Prompts are documents + 'TL;DR:'; score faithfulness."
    )
    faithfulness: str = Field(
        default="lexical", description="'lexical' or module:function(documents, summaries)."
    )
    chat: bool = Field(
        default=False, description="Wrap prompts in the chat template (instruction-tuned)."
    )

    @property
    def columns(self) -> list[str]:
        return BASE_COLUMNS + (SUMMARY_COLUMNS if self.summarize else [])


def read_prompts(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise LLMPruneError(f"no such prompt file: {file}")
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def prompts_for(config: CompareConfig) -> tuple[list[str], list[str] | None]:
    """The prompts, and for summarization the documents they ask about."""
    texts = read_prompts(config.prompts) if config.prompts is not None else None
    documents = None
    if config.summarize:
        documents = texts or behaviour.summarization_documents(config.data, config.count)
        texts = [behaviour.summary_prompt(document, config.chat) for document in documents]
    elif texts is None:
        texts = behaviour.default_prompts(config.data, config.count)
    if not texts:
        raise LLMPruneError("no prompts to generate from")
    return texts, documents


def run_compare(dense: str, pruned: list[str], out: str | Path, config: CompareConfig) -> dict:
    """Generate from every model, score, and write compare.json / .md, side_by_side.txt."""
    from llmprune.report import markdown_table

    out = Path(out)
    scorer = behaviour.load_scorer(config.faithfulness) if config.summarize else None
    texts, documents = prompts_for(config)
    outputs = {}
    for source in [dense, *pruned]:
        loaded = load_model(source)
        outputs[source] = behaviour.generate(
            loaded.model, loaded.tokenizer, texts, config.max_new_tokens, config.chat
        )
    summary = {
        source: behaviour.summarise(outputs[source], outputs[dense], documents, scorer)
        for source in outputs
    }
    if config.summarize:
        behaviour.risk_ratios(summary, dense)
    write_json(out / "compare.json", {"prompts": texts, "summary": summary, "outputs": outputs})
    made = {"dense": dense, "pruned": pruned, "environment": environment()}
    write_json(out / CONFIG_FILE, {**made, **config.model_dump()})
    write_text(out / "side_by_side.txt", behaviour.side_by_side(texts, outputs))
    rows = [{"model": source, **metrics} for source, metrics in summary.items()]
    write_text(out / "compare.md", markdown_table(rows, ["model", *config.columns]))
    return summary
