"""The save stage: the current model as a checkpoint `from_pretrained` loads, with its
masks (`masks.safetensors`) and the run's record (`llmprune.json`), written atomically."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from llmprune.export.checkpoint import RECORD_FILE, STAGE_FILE, check_output_path, save_pruned
from llmprune.io import write_directory, write_json
from llmprune.models.loading import resolve_source
from llmprune.provenance import environment
from llmprune.stages.context import StageContext
from llmprune.stages.state import ModelState


class SaveStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = Field(description="Output directory.")
    overwrite: bool = Field(default=False, description="Replace a non-empty output.")

    @property
    def label(self) -> str:
        return f"save {self.out}"


def input_files(source: str) -> list[Path]:
    """The files behind a model source, for the output guard: what the user named (a
    directory, a .gguf file) and the converted copy the run reads (smollm2, GGUF)."""
    location = Path(resolve_source(source))
    named = Path(source).expanduser()
    return [location, named] if named.exists() else [location]


def check(config, state: ModelState) -> Path:
    """Before any work: the output may not overwrite the input or, unasked, other work."""
    for source in input_files(state.source):
        out = check_output_path(config.out, source, config.overwrite)
    return out


def execute(config: SaveStage, state: ModelState, ctx: StageContext) -> dict:
    out = check(config, state)
    record = {"model": state.source, "environment": environment(), "steps": ctx.log}
    source = state.on_disk()
    if source is None:  # in memory, or weights only a loader can read (hub, .bin)
        save_pruned(state.load(), out, state.masks, record, None, True, state.manifest)
    else:
        owned = ctx.in_scratch(source)
        write_directory(out, lambda tmp: fill_from(source, tmp, record, owned), True)
        if owned:
            state.path = out  # the files moved: the current weights now live here
    ctx.outputs.append(out)
    return {"out": str(out)}


def fill_from(source: Path, tmp: Path, record: dict, move: bool) -> None:
    """The files of a checkpoint on disk: moved out of the run's scratch space, or linked
    (copied across file systems) from a directory the run must keep."""
    for item in source.iterdir():
        if item.name in (RECORD_FILE, STAGE_FILE) or item.name.startswith("."):
            continue
        target = tmp / item.name
        if move:
            shutil.move(item, target)
        elif item.is_dir():
            shutil.copytree(item, target)
        else:
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
    write_json(tmp / RECORD_FILE, record)
