"""The export stage: the current model as a sparse folder whose size falls with sparsity."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmprune.export.sparse import export_sparse
from llmprune.pruning.amounts import parse_pattern
from llmprune.pruning.config import checked
from llmprune.stages import save
from llmprune.stages.context import StageContext
from llmprune.stages.state import ModelState


class ExportStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = Field(description="Output directory.")
    format: Literal["sparse"] = Field(default="sparse", description="sparse (bitmask + values)")
    pattern: str | None = Field(
        default=None, description="Store every pruned layer as N:M (refused if one is not)."
    )
    values: Literal["model", "bf16", "fp16"] = Field(
        default="model", description="dtype of the stored non-zeros (bf16 rounds, reported)."
    )
    overwrite: bool = Field(default=False, description="Replace a non-empty output.")

    @field_validator("pattern")
    @classmethod
    def is_nm(cls, value: str | None) -> str | None:
        if value is not None:
            checked(parse_pattern, value)
        return value

    @property
    def label(self) -> str:
        return f"export {self.format} {self.out}"


def execute(config: ExportStage, state: ModelState, ctx: StageContext) -> dict:
    out = save.check(config, state)  # the same output guard as a save
    loaded = state.load()
    pattern = parse_pattern(config.pattern) if config.pattern else None
    report = export_sparse(loaded, out, pattern, config.values)
    stored = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    tensors = {p.data_ptr(): p for p in loaded.model.state_dict().values()}.values()
    dense = sum(t.numel() * t.element_size() for t in tensors)
    return {"out": str(out), **report, "bytes": stored, "dense_bytes": dense}
