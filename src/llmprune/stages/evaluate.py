"""The evaluate stage, and `measure`: the one way any command measures a model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llmprune.evaluate.perplexity import PerplexityResult, perplexity
from llmprune.models import LoadedModel
from llmprune.models.streaming import NotStreamable
from llmprune.stages.context import EvalSettings, StageContext
from llmprune.stages.state import ModelState


class EvaluateStage(BaseModel):
    """Measure the current model (or, with `reference`, the run's input model); fields left
    unset take the run's `eval` settings."""

    model_config = ConfigDict(extra="forbid")
    reference: bool = Field(default=False, description="Measure the input (dense) model.")
    data: str | None = None
    seqlen: int | None = Field(default=None, ge=2)
    max_windows: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    zero_shot: list[str] | None = None
    zero_shot_limit: int | None = Field(default=None, ge=1)

    def settings(self, run: EvalSettings) -> EvalSettings:
        changes = self.model_dump(exclude={"reference"}, exclude_none=True)
        return run.model_copy(update=changes)

    @property
    def label(self) -> str:
        return "evaluate (dense)" if self.reference else "evaluate"


def measure(loaded: LoadedModel, settings: EvalSettings, ctx: StageContext) -> dict:
    """Perplexity on the eval split, and zero-shot accuracy when tasks are asked for."""
    data = settings.data or ctx.data
    windows = ctx.inputs.eval_windows(
        loaded.tokenizer, loaded.context_length, data, settings.seqlen, settings.max_windows
    )
    device = loaded.model.device
    loaded.model.to(ctx.device)
    try:
        ppl = perplexity(loaded.model, windows, settings.batch_size, progress=ctx.progress)
        numbers = perplexity_numbers(ppl, data, streamed=False)
        if settings.zero_shot:
            from llmprune.evaluate.zeroshot import zero_shot

            numbers["zero_shot"] = zero_shot(
                loaded.model,
                loaded.tokenizer,
                settings.zero_shot,
                settings.zero_shot_limit,
                data=data,
            )
    finally:
        loaded.model.to(device)
    return numbers


def perplexity_numbers(ppl: PerplexityResult, data: str, streamed: bool) -> dict:
    return {
        "perplexity": ppl.perplexity,
        "eval_tokens": ppl.tokens,
        "eval": {"data": data, "seqlen": ppl.seqlen, "windows": ppl.windows, "streamed": streamed},
    }


def measure_state(state: ModelState, settings: EvalSettings, ctx: StageContext) -> dict:
    """`measure`, streamed block by block when the weights are only on disk (perplexity
    only; zero-shot tasks need the model in memory)."""
    directory = state.on_disk() if ctx.stream and not settings.zero_shot else None
    if directory is not None:
        try:
            return measure_streamed(directory, state.dtype, settings, ctx)
        except NotStreamable as exc:
            ctx.echo(f"    not streamed ({exc}); evaluating in memory")
    return measure(state.load(), settings, ctx)


def measure_streamed(directory, dtype: str, settings: EvalSettings, ctx: StageContext) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from llmprune.evaluate.streamed import streamed_perplexity
    from llmprune.models.loading import max_context

    data = settings.data or ctx.data
    tokenizer = AutoTokenizer.from_pretrained(directory)
    context = max_context(AutoConfig.from_pretrained(directory))
    windows = ctx.inputs.eval_windows(
        tokenizer, context, data, settings.seqlen, settings.max_windows
    )
    ppl = streamed_perplexity(
        directory, windows, dtype, settings.batch_size, ctx.device, ctx.progress
    )
    return perplexity_numbers(ppl, data, streamed=True)


def execute(config: EvaluateStage, state: ModelState, ctx: StageContext) -> dict:
    settings = config.settings(ctx.eval)
    if config.reference:
        reference = ModelState(source=state.source, dtype=state.dtype)
        return {**measure_state(reference, settings, ctx), "sparsity": reference.masks.sparsity()}
    return measure_state(state, settings, ctx)
