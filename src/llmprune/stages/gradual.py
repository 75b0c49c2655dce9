"""The gradual stage: fine-tuning that prunes as it trains, keeping every earlier mask."""

from __future__ import annotations

from llmprune.gradual import GradualConfig, gradual_prune
from llmprune.stages.context import StageContext
from llmprune.stages.finetune import teacher_for
from llmprune.stages.state import ModelState


def execute(config: GradualConfig, state: ModelState, ctx: StageContext) -> dict:
    loaded = state.load()
    windows = ctx.inputs.training(loaded.tokenizer, config)
    loaded.model, masks, summary = gradual_prune(
        loaded.model, loaded.tokenizer, config, state.masks, windows, teacher_for(config, state)
    )
    state.changed(masks)
    return {"gradual": summary}
