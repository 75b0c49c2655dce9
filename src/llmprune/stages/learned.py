"""The learned stage: train hard-concrete gates on heads, FFN channels and blocks with
the model, then cut it to what they learned (added to the model's manifest)."""

from __future__ import annotations

from llmprune.stages.context import StageContext
from llmprune.stages.finetune import teacher_for
from llmprune.stages.state import ModelState
from llmprune.stages.structured import add_pass
from llmprune.structured.learned import LearnedConfig, learn_structure
from llmprune.structured.prune import model_parameters


def execute(config: LearnedConfig, state: ModelState, ctx: StageContext) -> dict:
    loaded = state.load()
    windows = ctx.inputs.training(loaded.tokenizer, config)
    before = model_parameters(loaded.model)
    loaded.model, masks, summary = learn_structure(
        loaded.model, loaded.tokenizer, config, state.masks, windows, teacher_for(config, state)
    )
    after = model_parameters(loaded.model)
    structure = summary["structure"]
    add_pass(
        state,
        {"learned": config.label, "parameters": {"before": before, "after": after}, **structure},
    )
    state.changed(masks)
    summary["structure"] = {k: v for k, v in structure.items() if k != "layers"}
    return {"learned": summary, "parameters": after}
