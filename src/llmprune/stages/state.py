"""What flows from stage to stage: the model (in memory or as a checkpoint on disk) and
its masks, plus the inputs every stage shares (token windows made once).

A model stays on disk until a stage needs it in memory: a prune stage over a
safetensors directory can then stream it block by block instead of loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmprune.export.checkpoint import load_manifest
from llmprune.finetune.lora import ADAPTER_DIR
from llmprune.models import LoadedModel
from llmprune.models.loading import is_sparse_folder, resolve_source
from llmprune.pruning import ModelMasks
from llmprune.pruning.masks import MASKS_FILE


@dataclass
class ModelState:
    """The current model of a run: `loaded` in memory, or the checkpoint at `path`
    (None: still the run's input `source`), and the masks every later stage must keep."""

    source: str
    dtype: str = "float32"
    path: Path | None = None
    loaded: LoadedModel | None = None
    masks: ModelMasks = field(default_factory=ModelMasks)
    pristine: bool = True  # still the input's weights: dense pre-passes (OWL) may be shared
    manifest: dict | None = None  # what structured prunes removed, saved with the model

    def __post_init__(self) -> None:
        """A pruned checkpoint brings its masks (later stages must keep them too) and
        its structured-pruning manifest (later passes add to it)."""
        self.read_companions(self.path or local_dir(self.source))

    def read_companions(self, directory: Path | None) -> None:
        if directory is None:
            return
        if not len(self.masks) and (directory / MASKS_FILE).is_file():
            self.masks = ModelMasks.load(directory / MASKS_FILE)
        if self.manifest is None:
            self.manifest = load_manifest(directory)

    def load(self) -> LoadedModel:
        """The model in memory (on the CPU; stages move it to their device)."""
        if self.loaded is None:
            from llmprune.finetune.lora import load_with_adapter

            self.loaded = load_with_adapter(self.path or self.source, self.dtype)
        return self.loaded

    def on_disk(self) -> Path | None:
        """The local safetensors directory holding the current weights, if they are only
        there (the in-memory model, once loaded, is the truth)."""
        if self.loaded is not None:
            return None
        directory = self.path if self.path is not None else streamable_dir(self.source)
        if directory is not None and (directory / ADAPTER_DIR).is_dir():
            return None  # unmerged adapters: only the in-memory model has them
        return directory

    def changed(self, masks: ModelMasks | None = None) -> None:
        """A stage changed the weights in memory."""
        if masks is not None:
            self.masks = masks
        self.pristine = False

    def written_to(self, path: Path) -> None:
        """A stage wrote the current weights to `path` and holds none in memory."""
        self.loaded, self.path, self.pristine = None, path, False


def local_dir(source: str) -> Path | None:
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def streamable_dir(model_source: str | None) -> Path | None:
    """The local safetensors directory behind a source (GGUF files and the default model
    are converted copies in the cache), or None (hub unreachable...)."""
    location = resolve_source(model_source)
    path = Path(location)
    if is_sparse_folder(path):
        return None  # its tensors are encoded: it is rebuilt in memory
    if path.is_dir():
        return path if any(path.glob("*.safetensors")) else None
    try:
        from huggingface_hub import snapshot_download

        local = Path(
            snapshot_download(
                location, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]
            )
        )
    except Exception:  # unreachable hub, unknown id: the in-memory loader will explain
        return None
    return local if any(local.glob("*.safetensors")) else None


class SharedInputs:
    """Token windows and dense pre-passes, made once per run (or sweep) and reused.

    Keys hold everything the value depends on, so two stages asking for the same
    calibration (source, count, length, seed) get the very same tensor: the same point
    run through `prune`, `run` or `sweep` sees the same tokens.
    """

    def __init__(self, calibration: torch.Tensor | None = None) -> None:
        self.memo: dict[tuple, object] = {}
        self.fixed_calibration = calibration  # given token windows replace any sampling

    def get(self, key: tuple, make: Callable[[], object]):
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def calibration(self, tokenizer, config, context: int | None) -> torch.Tensor:
        from llmprune.data import configured_sample

        if self.fixed_calibration is not None:
            return self.fixed_calibration
        key = (
            "calibration",
            tokenizer_key(tokenizer),
            config.calib,
            config.nsamples,
            config.seqlen,
        )
        key += (config.seed, context)
        return self.get(key, lambda: configured_sample(tokenizer, config, context))

    def eval_windows(self, tokenizer, context: int | None, data: str, seqlen: int, max_windows):
        from llmprune.data import check_seqlen, eval_windows, get_source, source_tokens

        check_seqlen(seqlen, context)
        key = ("eval", tokenizer_key(tokenizer), data, seqlen, max_windows)
        return self.get(
            key,
            lambda: eval_windows(
                source_tokens(tokenizer, get_source(data), "eval"), seqlen, max_windows
            ),
        )

    def training(self, tokenizer, config) -> torch.Tensor:
        from llmprune.finetune.trainer import training_windows

        count = config.steps * config.batch_size * config.grad_accumulation
        key = ("train", tokenizer_key(tokenizer), config.data, count, config.seqlen, config.seed)
        return self.get(key, lambda: training_windows(tokenizer, config))


def tokenizer_key(tokenizer) -> tuple:
    """What identifies a tokenizer's output: copies of one tokenizer share windows."""
    return (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer))
