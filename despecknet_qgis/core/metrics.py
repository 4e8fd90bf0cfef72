"""Despeckling quality measures (definitions in the project's METHOD.md).

No-reference (on a homogeneous area): ENL, coefficient of variation, and the ratio image
Y / X_hat (MoR should be 1, VoR close to 1/L). Full-reference, against a clean X:
PSNR on 8-bit scaled images (the paper's), PSNR and SSIM on dB values, despeckling gain
DG, edge preservation EPI, and C_NN for strong scatterers. Whole-raster versions stream
window by window with the margins the filters need.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # Gaussian window 11x11, as in Wang et al. (2004)
SSIM_K1, SSIM_K2 = 0.01, 0.03


def enl(values: np.ndarray) -> float:
    """Equivalent number of looks mean^2 / variance of an intensity sample (higher = smoother)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    var = v.var(ddof=1) if v.size > 1 else 0.0
    return float(v.mean() ** 2 / var) if var > 0 else float("inf")


def coefficient_of_variation(values: np.ndarray) -> float:
    """std / mean of a sample (lower = smoother)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return float(v.std(ddof=1) / v.mean()) if v.size > 1 and v.mean() != 0 else float("nan")


def psnr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """PSNR computed on dB values, peak = the reference's dB range (ranks despeckling sensibly)."""
    e, r = 10 * np.log10(estimate), 10 * np.log10(reference)
    mse = np.mean((e - r) ** 2)
    peak = r.max() - r.min()
    return float(10 * np.log10(peak**2 / mse)) if mse > 0 else float("inf")


def to_8bit(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The paper's 8-bit scaling: [lo, hi] of the reference -> [0, 255]."""
    return np.clip((image - lo) / (hi - lo) * 255.0, 0.0, 255.0) if hi > lo else np.zeros_like(image)


def psnr(mse: float, peak: float = 255.0) -> float:
    return float(10 * math.log10(peak**2 / mse)) if mse > 0 else math.inf


def despeckling_gain(mse_noisy: float, mse_estimate: float) -> float:
    """DG = 10 log10(MSE(Y, X) / MSE(X_hat, X)); infinite for a perfect estimate."""
    if mse_estimate == 0:
        return math.inf
    return float(10 * math.log10(mse_noisy / mse_estimate))


def epi_from_gradients(sum_grad_estimate: float, sum_grad_reference: float) -> float:
    """EPI = 1 - |1 - GP| with GP = sum|grad X_hat| / sum|grad X|, and 0 when GP >= 2."""
    if sum_grad_reference == 0:
        return 1.0 if sum_grad_estimate == 0 else 0.0
    gp = sum_grad_estimate / sum_grad_reference
    return float(1.0 - abs(1.0 - gp)) if gp < 2 else 0.0


def sobel_magnitude(image: np.ndarray) -> np.ndarray:
    return np.hypot(ndimage.sobel(image, axis=0, mode="nearest"), ndimage.sobel(image, axis=1, mode="nearest"))


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """Local SSIM (Gaussian 11x11 window, sigma 1.5)."""
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    f = lambda x: ndimage.gaussian_filter(x, SSIM_SIGMA, truncate=SSIM_RADIUS / SSIM_SIGMA, mode="reflect")  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    var_a = f(a * a) - mu_a**2
    var_b = f(b * b) - mu_b**2
    cov = f(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def c_nn(image: np.ndarray, row: int, col: int) -> float:
    """10 log10 of a target's value over the mean of its 8 neighbours."""
    r0, r1, c0, c1 = max(row - 1, 0), min(row + 2, image.shape[0]), max(col - 1, 0), min(col + 2, image.shape[1])
    window = image[r0:r1, c0:c1].astype(np.float64)
    neighbours = (window.sum() - image[row, col]) / (window.size - 1)
    return float(10 * math.log10(image[row, col] / neighbours))


@dataclass
class RatioStats:
    """Mean and variance of the ratio image Y / X_hat over valid pixels (streamed)."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, ratio: np.ndarray) -> None:
        r = ratio[np.isfinite(ratio)].astype(np.float64)
        self.count += r.size
        self.total += float(r.sum())
        self.total_sq += float((r * r).sum())

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def variance(self) -> float:
        if self.count < 2:
            return float("nan")
        return (self.total_sq - self.count * self.mean**2) / (self.count - 1)
