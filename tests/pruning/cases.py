"""Shared cases for the pruning tests: token windows and layers with correlated inputs."""

import torch

from llmprune.data import calibration_windows
from llmprune.pruning.magnitude import magnitude_prune
from llmprune.pruning.sparsegpt import sparsegpt_prune
from llmprune.pruning.statistics import Hessian, InputNorms
from llmprune.pruning.wanda import wanda_prune


def windows(count=8, seqlen=32, seed=0):
    return calibration_windows(
        torch.randint(0, 500, (4000,), generator=torch.Generator().manual_seed(seed)),
        count,
        seqlen,
        seed,
    )


def correlated_inputs(tokens=2048, features=96, seed=0):
    """Activations with outlier channels and correlations, like a transformer's."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, features // 4, generator=g)
    mix = torch.randn(features // 4, features, generator=g)
    x = base @ mix + 0.3 * torch.randn(tokens, features, generator=g)
    x[:, :3] *= 20.0  # outlier features
    return x


def layer_case(seed=0, rows=64, features=96):
    g = torch.Generator().manual_seed(seed + 100)
    weight = torch.randn(rows, features, generator=g)
    x = correlated_inputs(features=features, seed=seed)
    norms, hessian = InputNorms(features, "L"), Hessian(features, "L")
    for chunk in x.split(500):
        norms.add_batch(chunk)
        hessian.add_batch(chunk)
    return weight, x, norms, hessian


def all_methods(weight, norms, hessian, amount, existing=None):
    return {
        "magnitude": magnitude_prune(weight, amount, existing),
        "wanda": wanda_prune(weight, norms.norms, amount, existing),
        "sparsegpt": sparsegpt_prune(weight, hessian.matrix, amount, existing, blocksize=32),
    }
