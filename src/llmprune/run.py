"""The stage executor: runs a plan of steps over one model state.

Two ways to run a plan:
- `execute_plan`: steps share a scratch directory that disappears after the run; only
  save stages leave files (`llmprune prune`, sweep points).
- `run_recipe`: every step is written into RUN_DIR atomically, so a killed run resumes:

      RUN_DIR/recipe.json              the validated recipe and its fingerprint
      RUN_DIR/log.jsonl                one line per finished step
      RUN_DIR/stage-03-finetune/       model + masks + stage.json (the step's record)

Every step gives one record: {"step", "kind", "label", "seconds", "sparsity", what its
stage reports (e.g. "perplexity", "prune": {...}), and "perplexity" after any step that
changed the model when `eval.after_each` is on}. A checkpoint's `llmprune.json` is
{"model": the input, "steps": [records]}.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from llmprune.errors import LLMPruneError
from llmprune.export.checkpoint import (
    RECORD_FILE,
    STAGE_FILE,
    load_manifest,
    load_masks,
    write_checkpoint,
)
from llmprune.io import write_directory, write_json, write_text
from llmprune.provenance import environment
from llmprune.pruning import ModelMasks
from llmprune.recipe import Recipe, plan
from llmprune.stages import ModelState, StageContext, Step
from llmprune.stages.evaluate import measure_state

RECIPE_FILE = "recipe.json"
LOG_FILE = "log.jsonl"


def run_step(index: int, step: Step, state: ModelState, ctx: StageContext) -> dict:
    """Execute one step on `state`; return its record."""
    start = time.perf_counter()
    if step.spec.main_only and not ctx.is_main:
        report = {"skipped": "not the main process"}
    else:
        report = step.spec.execute(step.config, state, ctx)
    record = {"step": index + 1, "kind": step.kind, "label": step.label, **report}
    if step.spec.changes_model and ctx.eval.after_each:
        record.update(measure_state(state, ctx.eval, ctx))
    record.setdefault("sparsity", state.masks.sparsity())
    record["seconds"] = time.perf_counter() - start
    return record


def check_plan(steps: list[Step], state: ModelState) -> None:
    """Cheap checks (output paths...) before any step runs, so bad input costs nothing."""
    for step in steps:
        if step.spec.check is not None:
            step.spec.check(step.config, state)


def execute_plan(
    steps: list[Step], state: ModelState, ctx: StageContext, scratch_near: Path | None = None
) -> list[dict]:
    """Run `steps` in order; stage files live in a scratch directory (beside
    `scratch_near` when given, so that a save stage can move files by renaming)."""
    check_plan(steps, state)
    parent = Path(scratch_near).resolve().parent if scratch_near is not None else None
    if parent is not None and not parent.is_dir():
        parent = None  # never create the user's directories before the work succeeds
    with tempfile.TemporaryDirectory(prefix=".llmprune-scratch-", dir=parent) as scratch:
        ctx.scratch_root = Path(scratch)
        for index, step in enumerate(steps):
            ctx.echo(f"[{index + 1}/{len(steps)}] {step.label}")
            ctx.log.append(run_step(index, step, state, ctx))
            refresh_records(state, ctx)
        ctx.scratch_root = None
    return ctx.log


def refresh_records(state: ModelState, ctx: StageContext) -> None:
    """Checkpoints saved earlier in the run carry the whole run's record, later steps too."""
    if ctx.is_main:
        for out in ctx.outputs:
            record = {"model": state.source, "environment": environment(), "steps": ctx.log}
            write_json(out / RECORD_FILE, record)


def stage_dir(root: Path, index: int, step: Step) -> Path:
    return root / f"stage-{index + 1:02d}-{step.kind}"


def prepare_run_dir(root: Path, recipe: Recipe, resume: bool, overwrite: bool) -> None:
    """Create RUN_DIR, or check that it belongs to this recipe when resuming."""
    record_path = root / RECIPE_FILE
    if root.exists() and any(root.iterdir()):
        if resume:
            if not record_path.is_file():
                raise LLMPruneError(f"{root} is not a run directory (no {RECIPE_FILE})")
            saved = json.loads(record_path.read_text())
            if saved.get("fingerprint") != recipe.fingerprint():
                raise LLMPruneError(f"{root} was made by a different recipe; refusing to resume")
            return
        if not overwrite:
            raise LLMPruneError(f"{root} exists; pass --resume to continue it or --overwrite")
        if not record_path.is_file():
            raise LLMPruneError(f"{root} is not a run directory; refusing to overwrite it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json(
        record_path,
        {
            "fingerprint": recipe.fingerprint(),
            "recipe": recipe.model_dump(),
            "environment": environment(),
        },
    )


def finished_steps(root: Path, steps: list[Step]) -> int:
    """How many leading steps have a complete directory."""
    count = 0
    for index, step in enumerate(steps):
        if not (stage_dir(root, index, step) / STAGE_FILE).is_file():
            break
        count += 1
    return count


def starting_state(root: Path, recipe: Recipe, steps: list[Step], done: int) -> ModelState:
    """The model and masks to continue from: the newest finished step that saved one."""
    state = ModelState(source=recipe.model, dtype=recipe.dtype)
    for index in range(done - 1, -1, -1):
        directory = stage_dir(root, index, steps[index])
        if (directory / "config.json").is_file():
            state.path, state.pristine = directory, False
            state.masks = load_masks(directory) or ModelMasks()
            state.manifest = load_manifest(directory)
            break
    return state


def drop_older_models(root: Path, steps: list[Step], upto: int, keep: Path | None) -> None:
    """keep_models: last — earlier steps keep their stage.json, not their weights."""
    for index in range(upto):
        directory = stage_dir(root, index, steps[index])
        if keep is not None and directory.resolve() == keep.resolve():
            continue
        for path in directory.glob("*.safetensors*"):
            path.unlink()
        (directory / "config.json").unlink(missing_ok=True)
        shutil.rmtree(directory / "adapter", ignore_errors=True)


def run_recipe(
    recipe: Recipe,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    echo=print,
    progress: bool = False,
) -> list[dict]:
    """Run (or resume) every step of `recipe` in `run_dir`; return the log records.

    Under `accelerate launch` / `torchrun` every process runs the steps (fine-tuning
    trains with DDP; pruning is deterministic, so all ranks agree) and only the main
    process writes, with a barrier after each step.
    """
    from accelerate import PartialState

    process = PartialState(cpu=recipe.device == "cpu")
    if not process.is_main_process:
        echo = silent
    steps = plan(recipe)
    root = Path(run_dir).resolve()
    if not resume:  # output paths of save stages, before RUN_DIR is made
        check_plan(steps, ModelState(source=recipe.model, dtype=recipe.dtype))
    if process.is_main_process:
        prepare_run_dir(root, recipe, resume, overwrite)
    process.wait_for_everyone()
    done = finished_steps(root, steps)
    if process.is_main_process:
        rebuild_log(root, steps, done)
    process.wait_for_everyone()
    if done:
        echo(f"resuming after step {done} of {len(steps)}")
    state = starting_state(root, recipe, steps, done)
    check_plan(steps[done:], state)
    ctx = recipe.context(echo=echo, progress=progress, is_main=process.is_main_process)
    ctx.log = read_log(root)
    for index in range(done, len(steps)):
        step = steps[index]
        echo(f"[{index + 1}/{len(steps)}] {step.label}")
        directory = stage_dir(root, index, step)
        with tempfile.TemporaryDirectory(prefix=".stage-", dir=root) as scratch:
            ctx.scratch_root = Path(scratch)
            record = write_step(directory, index, step, state, ctx, process.is_main_process)
        process.wait_for_everyone()
        if step.spec.changes_model:
            state.path = directory  # the main process saved the step's model there
        ctx.log.append(record)
        refresh_records(state, ctx)
        if process.is_main_process:
            with open(root / LOG_FILE, "a") as handle:
                handle.write(json.dumps(log_line(record), default=str) + "\n")
            if recipe.keep_models == "last" and step.spec.changes_model:
                drop_older_models(root, steps, index, state.path)
        echo(summary_line(record))
    return read_log(root)


def write_step(
    directory: Path, index: int, step: Step, state: ModelState, ctx: StageContext, main: bool
) -> dict:
    """Run a step inside its directory-to-be; the directory appears only when complete.

    Processes other than the main one run the step in a private directory they drop.
    """
    record: dict = {}

    def fill(tmp: Path) -> None:
        ctx.workdir = tmp
        try:
            record.update(run_step(index, step, state, ctx))
        finally:
            ctx.workdir = None
        written = state.path == tmp  # a streamed prune wrote its checkpoint here
        if step.spec.changes_model and main and not written:
            write_checkpoint(tmp, state.load(), state.masks, state.manifest)
        write_json(tmp / STAGE_FILE, record)

    if main:
        write_directory(directory, fill, overwrite=True)
    else:
        with tempfile.TemporaryDirectory(dir=ctx.scratch_root) as private:
            fill(Path(private))
    return record


def summary_line(record: dict) -> str:
    ppl = record.get("perplexity")
    shown = f"perplexity {ppl:.3f}  " if ppl is not None else ""
    return f"    {shown}sparsity {record['sparsity']:.2%}"


def silent(*_args, **_kwargs) -> None:
    """What processes other than the main one print."""


def log_line(record: dict) -> dict:
    """A record without its stage's details, for log.jsonl."""
    return {k: v for k, v in record.items() if not isinstance(v, dict) or k == "eval"}


def rebuild_log(root: Path, steps: list[Step], done: int) -> None:
    """After a kill, the log holds exactly the finished steps (from their stage.json)."""
    lines = []
    for index in range(done):
        record = json.loads((stage_dir(root, index, steps[index]) / STAGE_FILE).read_text())
        lines.append(json.dumps(log_line(record), default=str))
    write_text(root / LOG_FILE, "".join(line + "\n" for line in lines))


def read_log(root: Path) -> list[dict]:
    path = Path(root) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
