"""Execute a recipe step by step in RUN_DIR, logging perplexity after every step.

    RUN_DIR/recipe.json              the validated recipe and its fingerprint
    RUN_DIR/log.jsonl                one line per finished step
    RUN_DIR/stage-03-finetune/       model + masks + stage.json, written atomically

A step's directory appears whole or not at all, so a run killed midway resumes
(`resume=True`) from the last finished step, and refuses a RUN_DIR made by another recipe.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from llmprune.errors import LLMPruneError
from llmprune.evaluate.perplexity import evaluate_text
from llmprune.export.checkpoint import load_masks, save_pruned
from llmprune.io import write_directory, write_json, write_text
from llmprune.models import LoadedModel, load_model
from llmprune.pruning import ModelMasks, prune
from llmprune.recipe import Recipe, Step, plan

STAGE_FILE = "stage.json"
RECIPE_FILE = "recipe.json"
LOG_FILE = "log.jsonl"


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
    write_json(record_path, {"fingerprint": recipe.fingerprint(), "recipe": recipe.model_dump()})


def finished_steps(root: Path, steps: list[Step]) -> int:
    """How many leading steps have a complete directory."""
    count = 0
    for index, step in enumerate(steps):
        if not (stage_dir(root, index, step) / STAGE_FILE).is_file():
            break
        count += 1
    return count


def starting_state(root: Path, recipe: Recipe, steps: list[Step], done: int):
    """The model and masks to continue from: the newest finished step that saved one."""
    for index in range(done - 1, -1, -1):
        directory = stage_dir(root, index, steps[index])
        if (directory / "config.json").is_file():
            loaded = load_model(directory, recipe.dtype, "cpu")
            return loaded, load_masks(directory) or ModelMasks()
    return load_model(recipe.model, recipe.dtype, "cpu"), ModelMasks()


def measure(loaded: LoadedModel, recipe: Recipe) -> float:
    loaded.model.to(recipe.device)
    result = evaluate_text(
        loaded,
        recipe.data,
        "eval",
        recipe.eval.seqlen,
        recipe.eval.max_windows,
        recipe.eval.batch_size,
        progress=False,
    )
    loaded.model.to("cpu")
    return result.perplexity


def execute(step: Step, loaded: LoadedModel, masks: ModelMasks) -> tuple[ModelMasks, dict]:
    """Run one step in place on `loaded`; return the masks after it and what it reports."""
    from llmprune.finetune import finetune

    if step.kind == "prune":
        result = prune(loaded.model, loaded.tokenizer, step.prune, existing=masks)
        return result.masks, {"sparsity": result.masks.sparsity(), "prune": result.to_dict()}
    if step.kind == "finetune":
        model, summary = finetune(loaded.model, loaded.tokenizer, step.finetune, masks)
        loaded.model = model
        return masks, {"sparsity": masks.sparsity(), "finetune": summary}
    return masks, {"sparsity": masks.sparsity()}


def drop_older_models(root: Path, steps: list[Step], upto: int) -> None:
    """keep_models: last — earlier steps keep their stage.json, not their weights."""
    for index in range(upto):
        directory = stage_dir(root, index, steps[index])
        for path in directory.glob("*.safetensors*"):
            path.unlink()
        (directory / "config.json").unlink(missing_ok=True)


def run_recipe(
    recipe: Recipe,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    echo=print,
) -> list[dict]:
    """Run (or resume) every step of `recipe` in `run_dir`; return the log records.

    Under `accelerate launch` / `torchrun` every process runs the steps (fine-tuning
    trains with DDP; pruning is deterministic, so all ranks agree) and only the main
    process writes, with a barrier after each step.
    """
    from accelerate import PartialState

    state = PartialState(cpu=recipe.device == "cpu")
    if not state.is_main_process:
        echo = silent
    steps = plan(recipe)
    root = Path(run_dir).resolve()
    if state.is_main_process:
        prepare_run_dir(root, recipe, resume, overwrite)
    state.wait_for_everyone()
    done = finished_steps(root, steps)
    if state.is_main_process:
        rebuild_log(root, steps, done)
    if done:
        echo(f"resuming after step {done} of {len(steps)}")
    loaded, masks = starting_state(root, recipe, steps, done)
    for index in range(done, len(steps)):
        step = steps[index]
        echo(f"[{index + 1}/{len(steps)}] {step.label}")
        start = time.perf_counter()
        masks, report = execute(step, loaded, masks)
        record = {
            "step": index + 1,
            "kind": step.kind,
            "label": step.label,
            **report,
            "perplexity": measure(loaded, recipe),
            "seconds": time.perf_counter() - start,
        }
        if state.is_main_process:
            save_step(root, index, step, loaded, masks, record)
            if recipe.keep_models == "last" and step.kind != "evaluate":
                drop_older_models(root, steps, index)
        state.wait_for_everyone()
        echo(f"    perplexity {record['perplexity']:.3f}  sparsity {record['sparsity']:.2%}")
    return read_log(root)


def silent(*_args, **_kwargs) -> None:
    """What processes other than the main one print."""


def save_step(root: Path, index: int, step: Step, loaded, masks, record: dict) -> None:
    directory = stage_dir(root, index, step)
    if step.kind == "evaluate":
        write_directory(directory, lambda tmp: write_json(tmp / STAGE_FILE, record), True)
    else:
        save_pruned(
            loaded.model,
            loaded.tokenizer,
            directory,
            masks,
            record,
            overwrite=True,
            extra_json={STAGE_FILE: record},
        )
    with open(root / LOG_FILE, "a") as handle:
        handle.write(json.dumps(log_line(record), default=str) + "\n")


def log_line(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("prune", "finetune")}


def rebuild_log(root: Path, steps: list[Step], done: int) -> None:
    """After a kill, the log holds exactly the finished steps (from their stage.json)."""
    lines = []
    for index in range(done):
        record = json.loads((stage_dir(root, index, steps[index]) / STAGE_FILE).read_text())
        lines.append(json.dumps(log_line(record), default=str))
    text = "".join(line + "\n" for line in lines)
    write_text(root / LOG_FILE, text)


def read_log(root: Path) -> list[dict]:
    path = Path(root) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
