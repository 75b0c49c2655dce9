"""Save a pruned model as a plain `save_pretrained` directory plus its masks and a record.

The directory loads with `AutoModelForCausalLM.from_pretrained` alone; `masks.safetensors`
(bit-packed) and `llmprune.json` (how it was made) ride along for later stages.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmprune.errors import LLMPruneError
from llmprune.io import write_directory, write_json
from llmprune.models.layer_shapes import write_modeling_file
from llmprune.pruning.masks import MASKS_FILE, ModelMasks

RECORD_FILE = "llmprune.json"  # how a checkpoint was made: the run's step records
STAGE_FILE = "stage.json"  # one step's record inside a run directory
MANIFEST_FILE = "pruning_manifest.json"  # what structured prunes kept, scored and removed


def check_output_path(out: str | Path, source: str | Path | None, overwrite: bool) -> Path:
    """Refuse to write over the input model or, without `overwrite`, over existing work."""
    out = Path(out).expanduser().resolve()
    if source is not None:
        src = Path(str(source)).expanduser()
        if src.exists():
            src = src.resolve()
            src_dir = src.parent if src.is_file() else src
            if out == src_dir or out in src_dir.parents:
                raise LLMPruneError(f"output {out} would overwrite the input model {src}")
    if out.exists() and not out.is_dir():
        raise LLMPruneError(f"output {out} exists and is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LLMPruneError(f"output {out} exists and is not empty; pass --overwrite to replace it")
    return out


def write_checkpoint(
    directory: Path, loaded, masks: ModelMasks | None, manifest: dict | None = None
) -> None:
    """Model (base weights + unmerged `adapter/` if any), tokenizer, masks and the
    structured-pruning manifest into an existing directory; callers make it atomic."""
    from llmprune.finetune.lora import save_with_adapter

    save_with_adapter(loaded.model, Path(directory))
    write_modeling_file(directory, loaded.model.config)  # per-layer widths only
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(directory)
    if masks is not None and len(masks):
        masks.save(Path(directory) / MASKS_FILE)
    if manifest:
        write_json(Path(directory) / MANIFEST_FILE, manifest)


def save_pruned(
    loaded,
    out: str | Path,
    masks: ModelMasks | None = None,
    record: dict | None = None,
    source: str | Path | None = None,
    overwrite: bool = False,
    manifest: dict | None = None,
) -> Path:
    """Write model, tokenizer, masks and record into `out` atomically."""
    out = check_output_path(out, source, overwrite)

    def fill(tmp: Path) -> None:
        write_checkpoint(tmp, loaded, masks, manifest)
        write_json(tmp / RECORD_FILE, record or {})

    return write_directory(out, fill, overwrite=overwrite)


def load_masks(directory: str | Path) -> ModelMasks | None:
    """The masks saved beside a pruned model, or None for a dense one."""
    path = Path(directory) / MASKS_FILE
    return ModelMasks.load(path) if path.is_file() else None


def load_manifest(directory: str | Path) -> dict | None:
    """The structured-pruning manifest saved beside a model, or None."""
    path = Path(directory) / MANIFEST_FILE
    return read_json_file(path) if path.is_file() else None


def load_record(directory: str | Path) -> dict:
    path = Path(directory) / RECORD_FILE
    return read_json_file(path) if path.is_file() else {}


def read_json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LLMPruneError(f"corrupt {path}: {exc}") from None
