"""What a result was made with: package versions, threads, machine — saved beside results
so that numbers can be compared run to run (the seed and config are in each record)."""

from __future__ import annotations

import platform
import sys
from functools import cache
from importlib import metadata

PACKAGES = ("llmprune", "torch", "transformers", "peft", "safetensors", "accelerate")


@cache
def environment() -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "packages": versions,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
