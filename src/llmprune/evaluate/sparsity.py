"""How sparse a model is: per prunable layer, in total, and whether N:M patterns hold."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from llmprune.models.layout import find_layout, weight_matrix

NM_GROUP_SIZES = (4, 8, 16)


@dataclass
class LayerSparsity:
    name: str
    shape: tuple[int, int]
    numel: int
    zeros: int
    nm_pattern: str | None

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "sparsity": self.sparsity}


def nm_pattern(matrix: torch.Tensor) -> str | None:
    """The tightest "N:M" the (out, in) matrix obeys with N <= M/2, or None.

    Groups are M consecutive input channels of one row, as sparse tensor cores read them.
    """
    rows, cols = matrix.shape
    nonzero = matrix != 0
    for group in NM_GROUP_SIZES:
        if cols % group:
            continue
        most = int(nonzero.view(rows, cols // group, group).sum(dim=-1).max())
        if most <= group // 2:
            return f"{most}:{group}"
    return None


@torch.no_grad()
def layer_sparsity(model: torch.nn.Module) -> list[LayerSparsity]:
    """Sparsity of every prunable linear in the decoder blocks."""
    report = []
    for name, module in find_layout(model).linears().items():
        matrix = weight_matrix(module)
        zeros = int((matrix == 0).sum())
        report.append(
            LayerSparsity(
                name=name,
                shape=tuple(matrix.shape),
                numel=matrix.numel(),
                zeros=zeros,
                nm_pattern=nm_pattern(matrix) if zeros else None,
            )
        )
    return report


def sparsity_summary(model: torch.nn.Module) -> dict:
    """Totals for reports: sparsity over prunable layers and over all parameters."""
    layers = layer_sparsity(model)
    prunable = sum(layer.numel for layer in layers)
    prunable_zeros = sum(layer.zeros for layer in layers)
    parameters = {id(p): p for p in model.parameters()}  # tied weights count once
    total = sum(p.numel() for p in parameters.values())
    total_zeros = sum(int((p == 0).sum()) for p in parameters.values())
    return {
        "parameters": total,
        "nonzero_parameters": total - total_zeros,
        "prunable_parameters": prunable,
        "prunable_sparsity": prunable_zeros / prunable if prunable else 0.0,
        "model_sparsity": total_zeros / total if total else 0.0,
        "layers": [layer.to_dict() for layer in layers],
    }
