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
from pathlib import Path

from torch import nn

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


def pruned_class(base: type) -> type:
    """`base` (a family's ForCausalLM) building per-layer widths from its config."""

    class Pruned(base):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            apply_layer_shapes(self, config)

    Pruned.__name__ = Pruned.__qualname__ = base.__name__
    return Pruned


def record_layer_shapes(model: nn.Module, shapes: dict, attributes: dict) -> None:
    """Write per-layer shapes into the model's config, with the auto_map that lets plain
    transformers load it (trust_remote_code) through the shipped modeling file; with no
    shapes, take both out again (the model is uniform)."""
    config = model.config
    auto_map = dict(getattr(config, "auto_map", None) or {})
    auto_map.pop("AutoModelForCausalLM", None)
    if shapes or attributes:
        auto_map["AutoModelForCausalLM"] = f"{MODELING_FILE[:-3]}.{MODELING_CLASS}"
    setattr(config, SHAPES_KEY, {name: list(shape) for name, shape in shapes.items()})
    setattr(config, ATTRIBUTES_KEY, attributes)
    config.auto_map = auto_map or None
    if not (shapes or attributes):
        for key in (SHAPES_KEY, ATTRIBUTES_KEY):
            delattr(config, key)


def modeling_source(base_name: str) -> str:
    """The modeling file for plain transformers: the family's class plus the resize."""
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
    """Ship the modeling file beside a checkpoint whose config has per-layer shapes."""
    if not has_layer_shapes(config):
        return
    base = (getattr(config, "architectures", None) or [None])[0]
    if base is None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        base = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]
    write_text(Path(directory) / MODELING_FILE, modeling_source(base))
