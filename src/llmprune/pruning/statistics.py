"""What each method learns from calibration, accumulated streaming over batches.

Each accumulator takes the inputs a linear layer saw (`add_batch(x)` with x of shape
[..., in_features]) and never keeps the activations themselves.
"""

from __future__ import annotations

import torch

from llmprune.errors import LLMPruneError


def flat_inputs(x: torch.Tensor, layer: str) -> torch.Tensor:
    """Inputs as [tokens, in_features] in float32, refusing NaN/Inf."""
    x = x.detach().reshape(-1, x.shape[-1]).float()
    if not torch.isfinite(x).all():
        raise LLMPruneError(f"NaN/Inf in the calibration activations entering layer {layer}")
    return x


DAMPING_RETRIES = 6


def inverse_hessian_factor(hessian: torch.Tensor, damping: float, layer: str = "?") -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damping · mean(diag H).

    If H + λI is not positive definite, λ grows tenfold up to DAMPING_RETRIES times;
    after that the layer is named in an error instead of silently falling back.
    """
    if not torch.isfinite(hessian).all():
        raise LLMPruneError(f"NaN/Inf in the Hessian of layer {layer}")
    mean_diag = float(torch.diag(hessian).mean())
    scale = damping * (mean_diag if mean_diag > 0 else 1.0)
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for _ in range(DAMPING_RETRIES + 1):
        factor, info = torch.linalg.cholesky_ex(hessian + scale * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                return upper
        scale *= 10.0
    raise LLMPruneError(
        f"the Hessian of layer {layer} is singular even with dampening {scale / 10:.3g}; "
        "use more calibration samples or a larger --dampening"
    )


def with_dead_inputs_fixed(hessian: torch.Tensor) -> torch.Tensor:
    """A float32 copy of H with H_jj = 1 where input j never fired (keeps H invertible)."""
    H = hessian.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    return H


class Statistic:
    """The base of every accumulator: counts the tokens a layer saw."""

    def __init__(self, in_features: int, layer: str, device: torch.device | str = "cpu"):
        self.in_features = in_features
        self.layer = layer
        self.device = torch.device(device)
        self.tokens = 0

    def add_batch(self, x: torch.Tensor) -> None:
        self.tokens += x.numel() // x.shape[-1]

    @classmethod
    def bytes_for(cls, in_features: int) -> int:
        """Memory one accumulator holds for a layer of `in_features` inputs."""
        return 0

    @classmethod
    def working_bytes(cls, in_features: int) -> int:
        """Memory the pruning maths needs on top while it handles one such layer."""
        return 0


class InputNorms(Statistic):
    """Per-input-channel squared L2 norms ‖X_j‖² (Wanda, Sun et al. 2023; OWL)."""

    def __init__(self, in_features: int, layer: str, device: torch.device | str = "cpu"):
        super().__init__(in_features, layer, device)
        self.squared = torch.zeros(in_features, dtype=torch.float64, device=self.device)

    def add_batch(self, x: torch.Tensor) -> None:
        x = flat_inputs(x, self.layer)
        self.squared += x.pow(2).sum(dim=0).double()
        self.tokens += x.shape[0]

    @classmethod
    def bytes_for(cls, in_features: int) -> int:
        return in_features * 8

    @property
    def norms(self) -> torch.Tensor:
        """‖X_j‖₂ over every calibration token, per input channel."""
        return self.squared.sqrt().float()


class Hessian(Statistic):
    """The layer-wise Hessian H = 2 X Xᵀ / tokens of SparseGPT (Frantar & Alistarh 2023).

    Kept as a running sum and normalised on read, so batches of any size stream in.
    """

    def __init__(self, in_features: int, layer: str, device: torch.device | str = "cpu"):
        super().__init__(in_features, layer, device)
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=self.device)
        self._factors: dict[float, torch.Tensor] = {}

    def add_batch(self, x: torch.Tensor) -> None:
        x = flat_inputs(x, self.layer)
        self.sum.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    @classmethod
    def bytes_for(cls, in_features: int) -> int:
        return in_features * in_features * 4

    @classmethod
    def working_bytes(cls, in_features: int) -> int:
        """H, its fixed copy, the dampened matrix and the Cholesky factors: ~4 in×in."""
        return 4 * cls.bytes_for(in_features)

    @property
    def matrix(self) -> torch.Tensor:
        if self.tokens == 0:
            raise LLMPruneError(f"layer {self.layer} saw no calibration tokens")
        return self.sum * (2.0 / self.tokens)

    def inverse_factor(self, damping: float) -> torch.Tensor:
        """Upper Cholesky factor of the dampened H⁻¹, computed once per damping: layers fed
        the same input (q/k/v, gate/up) share this Hessian and so this factor."""
        if damping not in self._factors:
            fixed = with_dead_inputs_fixed(self.matrix)
            self._factors[damping] = inverse_hessian_factor(fixed, damping, self.layer)
        return self._factors[damping]


class ChannelMoments(Statistic):
    """Per-input-channel sum and sum of squares: ‖X_j‖ (Wanda-sp), the mean and the
    variance across tokens (FLAP's fluctuation and its bias compensation)."""

    def __init__(self, in_features: int, layer: str, device: torch.device | str = "cpu"):
        super().__init__(in_features, layer, device)
        self.sum = torch.zeros(in_features, dtype=torch.float64, device=self.device)
        self.squared = torch.zeros(in_features, dtype=torch.float64, device=self.device)

    def add_batch(self, x: torch.Tensor) -> None:
        x = flat_inputs(x, self.layer).double()
        self.sum += x.sum(dim=0)
        self.squared += x.pow(2).sum(dim=0)
        self.tokens += x.shape[0]

    @classmethod
    def bytes_for(cls, in_features: int) -> int:
        return in_features * 16

    def _checked_tokens(self) -> int:
        if self.tokens == 0:
            raise LLMPruneError(f"layer {self.layer} saw no calibration tokens")
        return self.tokens

    @property
    def norms(self) -> torch.Tensor:
        return self.squared.sqrt().float()

    @property
    def mean(self) -> torch.Tensor:
        return (self.sum / self._checked_tokens()).float()

    @property
    def variance(self) -> torch.Tensor:
        """Variance over tokens (the sample variance FLAP uses, with n - 1)."""
        n = self._checked_tokens()
        centred = self.squared - self.sum.pow(2) / n
        return (centred / max(n - 1, 1)).clamp_min(0).float()
