"""deSpeckNet's loss: mu*MSE(T, X_hat) + xi*MSE(Y, X_hat*N_hat) + lambda*TV(X_hat).

All terms are computed in the network's normalised log domain (see domain.py), where
X_hat * N_hat is the sum of the branch outputs. `mask` (1 = use, 0 = ignore) removes
pixels from every term: unknown label pixels in phase 1, nodata in both phases. Each
term is a mean over the pixels it uses, so the weights do not depend on patch size.
TV is the mean absolute difference between horizontal and vertical neighbours.

An optional energy term (weight `energy`, 0 in the paper's phases) compares the local
mean intensity of X_hat and of the target over ENERGY_WINDOW x ENERGY_WINDOW windows,
in the log domain. A log-domain MSE alone estimates the geometric mean, which keeps
flat areas right but shrinks bright, uncertain pixels: point scatterers lose energy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is only needed by the caller's tensors; no import at plugin load
    import torch



@dataclass(frozen=True)
class LossWeights:
    mu: float
    xi: float
    lambda_tv: float
    energy: float = 0.0


ENERGY_WINDOW = 5
PHASE1 = LossWeights(mu=1.0, xi=0.01, lambda_tv=0.0)
# The bundled model's recipe: the paper's phase 1 plus local energy preservation.
PHASE1_BUNDLED = LossWeights(mu=1.0, xi=0.01, lambda_tv=0.0, energy=0.5)
PHASE2_MULTILOOK = LossWeights(mu=0.01, xi=1.0, lambda_tv=0.0)
PHASE2_SINGLELOOK = LossWeights(mu=0.01, xi=1.0, lambda_tv=1e-4)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def local_energy_error(clean: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                       sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of log local mean intensity (normalised log units), windows mostly valid.

    sample_weight (batch, 1, 1, 1): 0 leaves a patch out of this term only, e.g. a patch whose
    target is a noisy temporal mean, debiased per pixel in the log domain: its local mean
    intensity carries that per-pixel correction as a bias.
    """
    import torch
    import torch.nn.functional as F

    from .domain import LOG_SCALE

    k = ENERGY_WINDOW

    def local_log_mean(z):
        # Subtracting the patch maximum keeps exp() finite whatever the network outputs.
        top = z.detach().amax(dim=(-2, -1), keepdim=True)
        pooled = F.avg_pool2d(torch.exp(LOG_SCALE * (z - top)) * mask, k, stride=1)
        return torch.log(pooled.clamp_min(1e-30)) / LOG_SCALE + top

    coverage = F.avg_pool2d(mask, k, stride=1)
    weight = (coverage > 0.99).float()
    if sample_weight is not None:
        weight = weight * sample_weight
    return _masked_mean((local_log_mean(clean) - local_log_mean(target)) ** 2, weight)


def despecknet_loss(
    clean: torch.Tensor,
    noise: torch.Tensor,
    noisy: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    weights: LossWeights,
    energy_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """energy_weight: per-patch weight of the local energy term (see local_energy_error)."""
    clean, noise = clean.float(), noise.float()
    fidelity = _masked_mean((clean - target) ** 2, mask)
    reconstruction = _masked_mean((clean + noise - noisy) ** 2, mask)
    total = weights.mu * fidelity + weights.xi * reconstruction
    parts = {"fidelity": fidelity.item(), "reconstruction": reconstruction.item()}
    if weights.energy:
        energy = local_energy_error(clean, target.float(), mask, energy_weight)
        total = total + weights.energy * energy
        parts["energy"] = energy.item()
    if weights.lambda_tv:
        mx = mask[..., :, 1:] * mask[..., :, :-1]
        my = mask[..., 1:, :] * mask[..., :-1, :]
        tv = _masked_mean((clean[..., :, 1:] - clean[..., :, :-1]).abs(), mx) + _masked_mean(
            (clean[..., 1:, :] - clean[..., :-1, :]).abs(), my
        )
        total = total + weights.lambda_tv * tv
        parts["tv"] = tv.item()
    parts["total"] = total.item()
    return total, parts
