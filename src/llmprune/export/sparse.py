"""A sparse checkpoint whose size falls with sparsity: bitmask + packed values per layer.

Layout of an exported folder:

    llmprune_sparse.json   format, the model's config, and how each pruned linear is stored
    sparse.safetensors     per pruned linear "L": L.weight.compressed (non-zeros, row major),
                           L.weight.bitmask (uint8 [rows, ceil(cols/8)], little bit order per
                           row), L.weight.row_offsets (int64 [rows]), L.weight.shape — the
                           encoding of compressed-tensors' legacy `sparse-bitmask`; an N:M
                           layer stores exactly N values per group of M ([rows, cols·N/M],
                           zeros where a group kept fewer) and the bitmask of those slots
    dense.safetensors      every other tensor, unchanged (tied tensors once)
    tokenizer files, generation_config.json

There is no config.json, so plain transformers refuses the folder ("no file named
config.json") instead of loading random weights; `load_sparse` (and every llmprune
command through `load_model`) rebuilds the model, `densify` writes a plain checkpoint.
Bytes per weight at density d: 0.125 + 4d with fp32 values (0.53x dense at 50 %), 0.125 +
2d with bf16 values. Weights are stored in the (out, in) orientation of `weight_matrix`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmprune.errors import LLMPruneError
from llmprune.io import write_directory, write_json
from llmprune.models.layer_shapes import resize_checked
from llmprune.models.layout import find_layout, set_weight_matrix, weight_matrix
from llmprune.pruning.amounts import NM

FORMAT = "llmprune-sparse-bitmask"
INDEX_FILE = "llmprune_sparse.json"
SPARSE_FILE = "sparse.safetensors"
DENSE_FILE = "dense.safetensors"
VALUE_DTYPES = {"model": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pack_rows(mask: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, ceil(cols/8)], bit j of byte k of a row = column 8k + j (little order)."""
    bits = np.packbits(mask.cpu().numpy().astype(bool), axis=-1, bitorder="little")
    return torch.from_numpy(np.ascontiguousarray(bits))


def unpack_rows(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    bits = np.unpackbits(bitmask.numpy(), axis=-1, count=cols, bitorder="little")
    return torch.from_numpy(bits).bool()


def encode_bitmask(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """Non-zeros of an (out, in) matrix, row major, with their bitmask and row offsets."""
    keep = matrix != 0
    counts = keep.sum(dim=1)
    offsets = torch.cumsum(counts, 0) - counts
    return {
        "compressed": matrix[keep].contiguous(),
        "bitmask": pack_rows(keep),
        "row_offsets": offsets.to(torch.int64),
        "shape": torch.tensor(matrix.shape, dtype=torch.int64),
    }


def nm_slots(matrix: torch.Tensor, pattern: NM, layer: str) -> torch.Tensor:
    """Exactly N slots per group of M: every non-zero, then the first zeros to fill up."""
    rows, cols = matrix.shape
    if cols % pattern.m:
        raise LLMPruneError(
            f"{layer}: {cols} input channels do not split into groups of {pattern.m}"
        )
    groups = (matrix != 0).view(rows, cols // pattern.m, pattern.m)
    worst = int(groups.sum(dim=-1).max()) if groups.numel() else 0
    if worst > pattern.n:
        raise LLMPruneError(
            f"{layer} is not {pattern}: a group of {pattern.m} holds {worst} non-zeros"
        )
    # rank positions: non-zeros first (stable), keep the first n of each group
    order = torch.argsort((~groups).to(torch.int8), dim=-1, stable=True)
    slots = torch.zeros_like(groups)
    slots.scatter_(-1, order[..., : pattern.n], True)
    return slots.view(rows, cols)


def encode_nm(matrix: torch.Tensor, pattern: NM, layer: str) -> dict[str, torch.Tensor]:
    slots = nm_slots(matrix, pattern, layer)
    rows = matrix.shape[0]
    return {
        "compressed": matrix[slots].view(rows, -1).contiguous(),
        "bitmask": pack_rows(slots),
        "shape": torch.tensor(matrix.shape, dtype=torch.int64),
    }


def decode(tensors: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
    """The dense (out, in) matrix, after checking that the parts agree with each other."""
    rows, cols = (int(v) for v in tensors["shape"])
    bitmask, values = tensors["bitmask"], tensors["compressed"]
    if bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != (rows, -(-cols // 8)):
        raise LLMPruneError(f"{layer}.weight.bitmask does not fit the shape [{rows}, {cols}]")
    keep = unpack_rows(bitmask, cols)
    counts = keep.sum(dim=1)
    if int(counts.sum()) != values.numel():
        raise LLMPruneError(
            f"{layer}.weight.bitmask marks {int(counts.sum())} weights but "
            f"{layer}.weight.compressed holds {values.numel()}"
        )
    offsets = tensors.get("row_offsets")
    if offsets is not None and not torch.equal(offsets, torch.cumsum(counts, 0) - counts):
        raise LLMPruneError(f"{layer}.weight.row_offsets disagree with its bitmask")
    matrix = torch.zeros(rows, cols, dtype=values.dtype)
    matrix[keep] = values.flatten()
    return matrix


def layer_encodings(model, pattern: NM | None) -> dict[str, dict]:
    """How each linear with zeros is stored: N:M when asked, or when the layer is exactly
    N:M-pruned (every group of M holds at most N non-zeros and the density is N/M);
    otherwise bitmask. Layers without a zero stay dense."""
    from llmprune.evaluate.sparsity import nm_pattern

    encodings = {}
    for name, module in find_layout(model).linears().items():
        matrix = weight_matrix(module)
        zeros = int((matrix == 0).sum())
        if not zeros:
            continue
        found = pattern or exact_nm(nm_pattern(matrix), zeros / matrix.numel())
        if found is not None:
            encodings[name] = {"encoding": "nm", "n": found.n, "m": found.m}
        else:
            encodings[name] = {"encoding": "bitmask"}
    return encodings


def exact_nm(text: str | None, sparsity: float) -> NM | None:
    """The detected N:M pattern if the layer is pruned exactly to it, else None."""
    if text is None:
        return None
    n, m = (int(part) for part in text.split(":"))
    return NM(n, m) if 0 < n < m and abs(sparsity - (1 - n / m)) < 1e-9 else None


def export_sparse(loaded, out: Path, pattern: NM | None = None, values: str = "model") -> dict:
    """Write `loaded` as a sparse folder into `out` (atomically); return what it holds."""
    if values not in VALUE_DTYPES:
        raise LLMPruneError(f"unknown values dtype {values!r}; choose {', '.join(VALUE_DTYPES)}")
    model = loaded.model
    encodings = layer_encodings(model, pattern)
    linears = find_layout(model).linears()
    sparse, rounding = {}, 0.0
    for name, spec in encodings.items():
        matrix = weight_matrix(linears[name]).detach().cpu()
        parts = (
            encode_nm(matrix, NM(spec["n"], spec["m"]), name)
            if spec["encoding"] == "nm"
            else encode_bitmask(matrix)
        )
        if VALUE_DTYPES[values] is not None:
            stored = parts["compressed"].to(VALUE_DTYPES[values])
            rounding = max(
                rounding, float((stored.float() - parts["compressed"].float()).abs().max())
            )
            parts["compressed"] = stored
        sparse.update({f"{name}.weight.{part}": tensor for part, tensor in parts.items()})
    dense, seen = {}, {}
    for key, tensor in model.state_dict().items():
        if key.removesuffix(".weight") in encodings and key.endswith(".weight"):
            continue
        pointer = (tensor.data_ptr(), tuple(tensor.shape))
        if pointer in seen:  # tied: stored once, tied again on load
            continue
        seen[pointer] = key
        dense[key] = tensor.detach().cpu().contiguous()
    index = {
        "format": FORMAT,
        "version": 1,
        "config": model.config.to_dict(),
        "values": values,
        "layers": encodings,
    }

    def fill(tmp: Path) -> None:
        save_file(sparse, str(tmp / SPARSE_FILE), metadata={"format": FORMAT})
        save_file(dense, str(tmp / DENSE_FILE), metadata={"format": "pt"})
        write_json(tmp / INDEX_FILE, index)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)

    write_directory(out, fill, overwrite=True)
    return {"layers": len(encodings), "values": values, "max_rounding": rounding}


def is_sparse_folder(path: str | Path) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


def read_index(directory: Path) -> dict:
    try:
        index = json.loads((directory / INDEX_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LLMPruneError(f"corrupt {directory / INDEX_FILE}: {exc}") from None
    if index.get("format") != FORMAT:
        raise LLMPruneError(f"{directory} is not an llmprune sparse folder ({index.get('format')})")
    return index


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors only: a pickle is never opened."""
    if not path.is_file():
        raise LLMPruneError(f"{path.parent} has no {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise LLMPruneError(f"corrupt {path}: {str(exc).splitlines()[0]}") from None


@torch.no_grad()
def load_sparse(directory: str | Path, dtype: torch.dtype = torch.float32):
    """Rebuild the model of a sparse folder: every tensor checked before the model exists."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmprune.models.loading import LoadedModel

    directory = Path(directory)
    index = read_index(directory)
    config_values = dict(index["config"])
    config = AutoConfig.for_model(config_values.pop("model_type"), **config_values)
    sparse = read_tensors(directory / SPARSE_FILE)
    matrices = {}
    for name in index["layers"]:
        parts = {}
        for part in ("compressed", "bitmask", "shape", "row_offsets"):
            key = f"{name}.weight.{part}"
            if key in sparse:
                parts[part] = sparse[key]
            elif part != "row_offsets":
                raise LLMPruneError(f"{directory / SPARSE_FILE} has no tensor {key}")
        matrices[name] = decode(parts, name)
    dense = read_tensors(directory / DENSE_FILE)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    resize_checked(model, config, str(directory))
    missing, unexpected = model.load_state_dict(dense, strict=False)
    linears = find_layout(model).linears()
    for name, matrix in matrices.items():
        if name not in linears:
            raise LLMPruneError(f"{name} is not a linear layer of a {config.model_type} model")
        target = weight_matrix(linears[name])
        if tuple(target.shape) != tuple(matrix.shape):
            raise LLMPruneError(
                f"{name}.weight is {list(matrix.shape)} in the folder, "
                f"{list(target.shape)} in its config"
            )
        set_weight_matrix(linears[name], matrix)
    model.tie_weights()
    stored = {f"{name}.weight" for name in matrices}
    absent = [k for k in missing if k not in stored and not tied(model, k)]
    if absent or unexpected:
        raise LLMPruneError(
            f"{directory / DENSE_FILE}: tensor {(absent or unexpected)[0]} "
            f"{'missing' if absent else 'not in the model'}"
        )
    model.eval()
    has_tokenizer = any(
        (directory / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")
    )
    tokenizer = AutoTokenizer.from_pretrained(directory) if has_tokenizer else None
    return LoadedModel(model=model, tokenizer=tokenizer, source=str(directory))


def tied(model, key: str) -> bool:
    """Whether `key` shares its tensor with another parameter (tied embeddings)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tensor = params.get(key)
    return tensor is not None and any(
        other is tensor for name, other in params.items() if name != key
    )
