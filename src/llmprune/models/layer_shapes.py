"""Models whose blocks differ in width (a structured prune with per-layer widths).

A transformers config holds one FFN width and one head count for every block, so a
model whose blocks keep different numbers of channels or heads records, in its config,
the shape of every linear that differs from what the config alone would build
(`llmprune_layer_shapes`) and the attention attributes that follow from its head counts
(`llmprune_layer_attributes`). Loading builds the family's own model and resizes those
modules before the weights are read: llmprune does so natively (no file is executed),
and plain transformers through `modeling_llmprune.py`, written beside the weights and
named in the config's `auto_map` (`trust_remote_code=True`). That file is generated from
the very function below, so both paths build the same model.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from torch import nn

from llmprune.errors import LLMPruneError
from llmprune.io import write_text

SHAPES_KEY = "llmprune_layer_shapes"
ATTRIBUTES_KEY = "llmprune_layer_attributes"
MODELING_FILE = "modeling_llmprune.py"
MODELING_CLASS = "PrunedForCausalLM"


def apply_layer_shapes(model, config) -> None:
    """Resize the modules the config lists to their recorded (out, in) shapes and set the
    recorded attributes; weights are left uninitialised for the checkpoint to fill."""
    import torch
    from transformers.pytorch_utils import Conv1D

    for name, (rows, cols) in (getattr(config, "llmprune_layer_shapes", None) or {}).items():
        old = model.get_submodule(name)
        kind = {"dtype": old.weight.dtype, "device": old.weight.device}
        bias = getattr(old, "bias", None) is not None
        if isinstance(old, Conv1D):
            new = Conv1D(rows, cols).to(**kind)
        else:
            new = torch.nn.Linear(cols, rows, bias=bias, **kind)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    for name, values in (getattr(config, "llmprune_layer_attributes", None) or {}).items():
        module = model.get_submodule(name)
        for attribute, value in values.items():
            setattr(module, attribute, value)


def has_layer_shapes(config) -> bool:
    return bool(getattr(config, SHAPES_KEY, None))


LAYER_ATTRIBUTES = ("num_key_value_groups", "num_heads", "num_key_value_heads")


def check_layer_shapes(config, source: str) -> None:
    """Refuse per-layer shape records that are not what llmprune writes: module paths of
    plain names and dots, (out, in) pairs of positive ints, and only the head-count
    attributes with int values. A checkpoint's config is data from a stranger."""
    shapes = getattr(config, SHAPES_KEY, None) or {}
    attributes = getattr(config, ATTRIBUTES_KEY, None) or {}

    def bad(what: str) -> LLMPruneError:
        return LLMPruneError(f"{source}: {what} in {SHAPES_KEY} / {ATTRIBUTES_KEY} of its config")

    def path_ok(name) -> bool:  # e.g. model.layers.3.mlp.down_proj: no dunders, no code
        parts = name.split(".") if isinstance(name, str) else [""]
        return all(p.isdigit() or (p.isidentifier() and not p.startswith("_")) for p in parts)

    if not isinstance(shapes, dict) or not isinstance(attributes, dict):
        raise bad("not a mapping")
    for name, shape in shapes.items():
        pair = isinstance(shape, (list, tuple)) and len(shape) == 2
        if not path_ok(name) or not pair or not all(type(v) is int and v > 0 for v in shape):
            raise bad(f"a bad entry {name!r}: {shape!r}")
    for name, values in attributes.items():
        if not path_ok(name) or not isinstance(values, dict):
            raise bad(f"a bad entry {name!r}")
        for attribute, value in values.items():
            if attribute not in LAYER_ATTRIBUTES or type(value) is not int or value <= 0:
                raise bad(f"a bad attribute {attribute!r} of {name}")


def check_targets(model, config, source: str) -> None:
    """Every resized module must be a linear layer of this model (Linear or Conv1D)."""
    from transformers.pytorch_utils import Conv1D

    for name in getattr(config, SHAPES_KEY, None) or {}:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise LLMPruneError(f"{source}: the model has no layer {name}") from None
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise LLMPruneError(f"{source}: {name} is not a linear layer")


def resize_checked(model, config, source: str) -> None:
    """`apply_layer_shapes` on a model llmprune builds, with one-line errors."""
    check_layer_shapes(config, source)
    check_targets(model, config, source)
    try:
        apply_layer_shapes(model, config)
    except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
        raise LLMPruneError(f"{source}: per-layer shapes do not fit the model: {exc}") from None


def pruned_class(base: type, source: str = "the model") -> type:
    """`base` (a family's ForCausalLM) building per-layer widths from its config, after
    checking them (errors name `source`)."""

    class Pruned(base):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            resize_checked(self, config, source)

    Pruned.__name__ = Pruned.__qualname__ = base.__name__
    return Pruned


def record_layer_shapes(model: nn.Module, shapes: dict, attributes: dict) -> None:
    """Write per-layer shapes into the model's config; with none, take them out again (the
    model is uniform). The auto_map for plain transformers is set when it is saved."""
    config = model.config
    if shapes or attributes:
        setattr(config, SHAPES_KEY, {name: list(shape) for name, shape in shapes.items()})
        setattr(config, ATTRIBUTES_KEY, attributes)
        return
    for key in (SHAPES_KEY, ATTRIBUTES_KEY):
        if hasattr(config, key):
            delattr(config, key)
    auto_map = dict(getattr(config, "auto_map", None) or {})
    if auto_map.get("AutoModelForCausalLM") == f"{MODELING_FILE[:-3]}.{MODELING_CLASS}":
        del auto_map["AutoModelForCausalLM"]
        if auto_map:
            config.auto_map = auto_map
        elif hasattr(config, "auto_map"):
            delattr(config, "auto_map")


def family_class_name(config) -> str:
    """The family's own ForCausalLM, by model type (never a name from the checkpoint)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", None))
    if not isinstance(name, str) or not name.isidentifier():
        raise LLMPruneError(f"no transformers class for model type {config.model_type!r}")
    return name


def modeling_source(base_name: str) -> str:
    """The modeling file for plain transformers: the family's class plus the resize."""
    if not base_name.isidentifier():
        raise LLMPruneError(f"not a class name: {base_name!r}")
    resize = inspect.getsource(apply_layer_shapes)
    return (
        '"""Written by llmprune: a pruned model whose blocks differ in width. The config\n'
        "lists the shape of every resized linear; this class builds the family's model and\n"
        'resizes those modules before the weights load (trust_remote_code=True)."""\n\n'
        f"from transformers import {base_name} as Base\n\n\n"
        f"{resize}\n\n"
        f"class {MODELING_CLASS}(Base):\n"
        "    def __init__(self, config, *args, **kwargs):\n"
        "        super().__init__(config, *args, **kwargs)\n"
        "        apply_layer_shapes(self, config)\n"
    )


def write_modeling_file(directory: str | Path, config) -> None:
    """Ship the modeling file beside a checkpoint whose config has per-layer shapes, and
    point the saved config's auto_map at it (and only at it) and its architecture at the
    family's class: whatever another tool wrote there before is replaced."""
    if not has_layer_shapes(config):
        return
    base = family_class_name(config)
    write_text(Path(directory) / MODELING_FILE, modeling_source(base))
    path = Path(directory) / "config.json"
    saved = json.loads(path.read_text())
    saved["auto_map"] = {"AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{MODELING_CLASS}"}
    saved["architectures"] = [base]
    write_text(path, json.dumps(saved, indent=2, sort_keys=True) + "\n")
