"""deSpeckNet's loss: mu*MSE(T, X_hat) + xi*MSE(Y, X_hat*N_hat) + lambda*TV(X_hat).

All terms are computed in the network's normalised log domain (see domain.py), where
X_hat * N_hat is the sum of the branch outputs. `mask` (1 = use, 0 = ignore) removes
pixels from every term: unknown label pixels in phase 1, nodata in both phases. Each
term is a mean over the pixels it uses, so the weights do not depend on patch size.
TV is the mean absolute difference between horizontal and vertical neighbours.
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


PHASE1 = LossWeights(mu=1.0, xi=0.01, lambda_tv=0.0)
PHASE2_MULTILOOK = LossWeights(mu=0.01, xi=1.0, lambda_tv=0.0)
PHASE2_SINGLELOOK = LossWeights(mu=0.01, xi=1.0, lambda_tv=1e-4)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def despecknet_loss(
    clean: torch.Tensor,
    noise: torch.Tensor,
    noisy: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    clean, noise = clean.float(), noise.float()
    fidelity = _masked_mean((clean - target) ** 2, mask)
    reconstruction = _masked_mean((clean + noise - noisy) ** 2, mask)
    total = weights.mu * fidelity + weights.xi * reconstruction
    parts = {"fidelity": fidelity.item(), "reconstruction": reconstruction.item()}
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
