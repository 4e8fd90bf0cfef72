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

An optional structure term (weight `structure`, 0 in the paper's phases) is 1 - SSIM between
X_hat and the target in the log domain, with the Gaussian window of metrics.ssim_map. The
squared error alone is flat near its minimum in how much fine texture X_hat keeps, while
SSIM's contrast and structure factors are not: on real dates the model kept too little.
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
    structure: float = 0.0


ENERGY_WINDOW = 5
# SSIM's constants need the data's dynamic range: about 55 dB for Sentinel-1 intensities, which is
# 55 / (10 log10(e) * LOG_SCALE) = 6.3 units of the normalised log domain.
STRUCTURE_RANGE = 6.3
PHASE1 = LossWeights(mu=1.0, xi=0.01, lambda_tv=0.0)
# The bundled model's recipe: the paper's phase 1 plus local energy preservation.
PHASE1_BUNDLED = LossWeights(mu=1.0, xi=0.01, lambda_tv=0.0, energy=0.5)
PHASE2_MULTILOOK = LossWeights(mu=0.01, xi=1.0, lambda_tv=0.0)
PHASE2_SINGLELOOK = LossWeights(mu=0.01, xi=1.0, lambda_tv=1e-4)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def local_energy_error(clean: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                       sample_weight: torch.Tensor | None = None,
                       target_shift: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of log local mean intensity (normalised log units), windows mostly valid.

    sample_weight (batch, 1, 1, 1): 0 leaves a patch out of this term only. target_shift (batch,
    1, 1, 1): added to the target's log local mean, e.g. for a patch whose target is a temporal
    mean debiased per pixel in the log domain (multiplied by a gain): minus the log of that gain
    gives back the mean's own local intensity, which is unbiased.
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
    wanted = local_log_mean(target) + (0.0 if target_shift is None else target_shift)
    return _masked_mean((local_log_mean(clean) - wanted) ** 2, weight)


def local_structure_error(clean: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of 1 - SSIM (metrics.ssim_map's Gaussian window) over windows whose pixels are all used.

    sample_weight (batch, 1, 1, 1): 0 leaves a patch out of this term only.
    """
    import torch
    import torch.nn.functional as F

    from .metrics import SSIM_K1, SSIM_K2, SSIM_RADIUS, SSIM_SIGMA

    taps = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float32, device=clean.device)
    g = torch.exp(-0.5 * (taps / SSIM_SIGMA) ** 2)
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]

    def f(x):
        return F.conv2d(x, kernel)

    c1, c2 = (SSIM_K1 * STRUCTURE_RANGE) ** 2, (SSIM_K2 * STRUCTURE_RANGE) ** 2
    a, b = clean * mask, target * mask
    mu_a, mu_b = f(a), f(b)
    var_a = f(a * a) - mu_a**2
    var_b = f(b * b) - mu_b**2
    cov = f(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    weight = (f(mask) > 0.999).float()
    if sample_weight is not None:
        weight = weight * sample_weight
    return _masked_mean(1.0 - ssim, weight)


def despecknet_loss(
    clean: torch.Tensor,
    noise: torch.Tensor,
    noisy: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    weights: LossWeights,
    energy_weight: torch.Tensor | None = None,
    structure_weight: torch.Tensor | None = None,
    energy_shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """energy_weight, structure_weight: per-patch weights of the local energy and structure terms;
    energy_shift: per-patch shift of the energy term's target (see local_energy_error,
    local_structure_error)."""
    clean, noise = clean.float(), noise.float()
    fidelity = _masked_mean((clean - target) ** 2, mask)
    reconstruction = _masked_mean((clean + noise - noisy) ** 2, mask)
    total = weights.mu * fidelity + weights.xi * reconstruction
    parts = {"fidelity": fidelity.item(), "reconstruction": reconstruction.item()}
    if weights.energy:
        energy = local_energy_error(clean, target.float(), mask, energy_weight, energy_shift)
        total = total + weights.energy * energy
        parts["energy"] = energy.item()
    if weights.structure:
        structure = local_structure_error(clean, target.float(), mask, structure_weight)
        total = total + weights.structure * structure
        parts["structure"] = structure.item()
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
