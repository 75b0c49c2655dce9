"""The finetune stage: recovery training that keeps every mask of the run."""

from __future__ import annotations

from llmprune.finetune import FinetuneConfig, finetune
from llmprune.finetune.teacher import TeacherSource
from llmprune.stages.context import StageContext
from llmprune.stages.state import ModelState


def execute(config: FinetuneConfig, state: ModelState, ctx: StageContext) -> dict:
    loaded = state.load()
    windows = ctx.inputs.training(loaded.tokenizer, config)
    loaded.model, summary = finetune(
        loaded.model,
        loaded.tokenizer,
        config,
        state.masks,
        windows,
        teacher=teacher_for(config, state),
    )
    state.changed()
    return {"finetune": summary}


def teacher_for(config: FinetuneConfig, state: ModelState) -> TeacherSource:
    """What loads the model to distil from: the config's, else the run's input (the dense
    model). Loaded only when training starts, so that a cached teacher can be freed."""
    if not config.distills:
        return None
    from llmprune.models import load_model

    return lambda: load_model(config.teacher or state.source, dtype=state.dtype).model
