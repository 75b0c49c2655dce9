"""The settings and services every stage receives besides the model state."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from llmprune.stages.state import SharedInputs


class EvalSettings(BaseModel):
    """How a model is measured: perplexity windows and, if asked, zero-shot tasks."""

    model_config = ConfigDict(extra="forbid")
    data: str | None = Field(default=None, description="Text source; default: the run's data.")
    seqlen: int = Field(default=512, ge=2, description="Tokens per evaluation window.")
    max_windows: int | None = Field(default=None, ge=1, description="Evaluate at most this many.")
    batch_size: int = Field(default=4, ge=1, description="Windows per forward pass.")
    zero_shot: list[str] = Field(default_factory=list, description="lm-eval tasks.")
    zero_shot_limit: int | None = Field(default=None, ge=1, description="Examples per task.")
    after_each: bool = Field(default=True, description="Measure after every model change.")


@dataclass
class StageContext:
    """Run-wide settings, shared inputs, and where a stage may write.

    `workdir` is the stage's own directory while it is being written (it appears whole
    or not at all); `scratch` makes a directory that lives as long as the run.
    """

    data: str = "pydoc"
    device: str = "cpu"
    eval: EvalSettings = field(default_factory=EvalSettings)
    stream: bool = True
    progress: bool = False
    is_main: bool = True  # False on the other processes of a torchrun / accelerate run
    inputs: SharedInputs = field(default_factory=SharedInputs)
    echo: Callable[..., None] = print
    workdir: Path | None = None
    scratch_root: Path | None = None  # a run without a run directory keeps stage files here
    outputs: list[Path] = field(default_factory=list)  # checkpoints written by save stages
    log: list[dict] = field(default_factory=list)  # the records of the steps done so far

    def output_dir(self, name: str) -> Path:
        """Where a stage writes files of its own: its stage directory, else a new directory
        in the run's scratch space."""
        if self.workdir is not None:
            return self.workdir
        if self.scratch_root is None:
            raise RuntimeError("this run has no place for stage files")
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch_root))

    def in_scratch(self, path: Path | None) -> bool:
        """Whether `path` is the run's own temporary space (its files may be moved away)."""
        if path is None or self.scratch_root is None:
            return False
        return self.scratch_root.resolve() in path.resolve().parents
