"""The finetune stage: recovery training that keeps every mask of the run."""

from __future__ import annotations

from llmprune.finetune import FinetuneConfig, finetune
from llmprune.stages.context import StageContext
from llmprune.stages.state import ModelState


def execute(config: FinetuneConfig, state: ModelState, ctx: StageContext) -> dict:
    loaded = state.load()
    windows = ctx.inputs.training(loaded.tokenizer, config)
    loaded.model, summary = finetune(loaded.model, loaded.tokenizer, config, state.masks, windows)
    state.changed()
    return {"finetune": summary}
