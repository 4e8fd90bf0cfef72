"""Despeckling quality measures (definitions in the method description in ../shared, beside the project).

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

from .dependencies import import_module

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
    """inf for a perfect estimate; NaN where the peak is 0 (a constant reference has no range to compare with)."""
    if peak <= 0:
        return math.nan
    return float(10 * math.log10(peak**2 / mse)) if mse > 0 else math.inf


def despeckling_gain(mse_noisy: float, mse_estimate: float) -> float:
    """DG = 10 log10(MSE(Y, X) / MSE(X_hat, X)); infinite for a perfect estimate, NaN when the noisy
    image is the reference itself (nothing to despeckle)."""
    if mse_estimate == 0:
        return math.inf
    if mse_noisy == 0:
        return math.nan
    return float(10 * math.log10(mse_noisy / mse_estimate))


def epi_from_gradients(sum_grad_estimate: float, sum_grad_reference: float) -> float:
    """EPI = 1 - |1 - GP| with GP = sum|grad X_hat| / sum|grad X|, and 0 when GP >= 2."""
    if sum_grad_reference == 0:
        return 1.0 if sum_grad_estimate == 0 else 0.0
    gp = sum_grad_estimate / sum_grad_reference
    return float(1.0 - abs(1.0 - gp)) if gp < 2 else 0.0


def valid_neighbourhood(valid: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood is all valid (the array's own edges repeat outwards, as
    the filters' do: the raster's border is no nodata)."""
    ndimage = import_module("scipy.ndimage", "Quality metrics")
    return ndimage.minimum_filter(valid.astype(np.uint8), 2 * radius + 1, mode="nearest").astype(bool)


def sobel_magnitude(image: np.ndarray) -> np.ndarray:
    ndimage = import_module("scipy.ndimage", "Quality metrics")  # imported where used: the provider loads without it

    return np.hypot(ndimage.sobel(image, axis=0, mode="nearest"), ndimage.sobel(image, axis=1, mode="nearest"))


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """Local SSIM (Gaussian 11x11 window, sigma 1.5)."""
    ndimage = import_module("scipy.ndimage", "Quality metrics")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    f = lambda x: ndimage.gaussian_filter(x, SSIM_SIGMA, truncate=SSIM_RADIUS / SSIM_SIGMA, mode="reflect")  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    var_a = f(a * a) - mu_a**2
    var_b = f(b * b) - mu_b**2
    cov = f(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def c_nn(image: np.ndarray, row: int, col: int, valid: np.ndarray | None = None) -> float:
    """10 log10 of a target's value over the mean of its valid neighbours (up to 8).

    `valid` marks pixels that carry data (nodata neighbours are left out, not counted as
    some value). NaN when the target itself is invalid or has no valid neighbour; -inf for
    a zero target, +inf for a positive target among zero neighbours.
    """
    r0, r1, c0, c1 = max(row - 1, 0), min(row + 2, image.shape[0]), max(col - 1, 0), min(col + 2, image.shape[1])
    window = image[r0:r1, c0:c1].astype(np.float64)
    ok = np.isfinite(window) if valid is None else valid[r0:r1, c0:c1] & np.isfinite(window)
    centre = (row - r0, col - c0)
    if not ok[centre]:
        return float("nan")
    ok[centre] = False
    if not ok.any():
        return float("nan")
    target, neighbours = float(window[centre]), float(window[ok].mean())
    if target == 0.0:
        return float("-inf")
    if neighbours == 0.0:
        return float("inf")
    return float(10 * math.log10(target / neighbours))


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


# --- Regions and ratio-image measures used by the quality benchmark (tools/bench_quality.py) ---


def most_homogeneous_windows(image: np.ndarray, valid: np.ndarray | None = None, size: int = 16, count: int = 8,
                             step: int | None = None) -> list[tuple[slice, slice]]:
    """The `count` non-overlapping size x size windows of lowest coefficient of variation.

    Candidate windows lie on a grid of `step` (size // 2 by default) and must be entirely
    valid and positive. They are taken greedily from the lowest std/mean upwards, skipping
    any that overlaps one already taken. Used to find areas where ENL is meaningful when
    no map of homogeneous parcels exists (choose them on an image independent of the one
    measured, e.g. a temporal reference, or selection bias inflates the measured ENL).
    """
    img = np.asarray(image, dtype=np.float64)
    ok = np.ones(img.shape, bool) if valid is None else np.asarray(valid, bool)
    ok = ok & np.isfinite(img) & (img > 0)
    step = step or max(1, size // 2)
    candidates = []
    for r in range(0, img.shape[0] - size + 1, step):
        for c in range(0, img.shape[1] - size + 1, step):
            if ok[r : r + size, c : c + size].all():
                w = img[r : r + size, c : c + size]
                candidates.append((w.std() / w.mean(), r, c))
    candidates.sort()
    taken = np.zeros(img.shape, bool)
    out = []
    for _, r, c in candidates:
        if len(out) == count:
            break
        if not taken[r : r + size, c : c + size].any():
            taken[r : r + size, c : c + size] = True
            out.append((slice(r, r + size), slice(c, c + size)))
    return out


def quantise_by_rank(values: np.ndarray, valid: np.ndarray, levels: int = 16) -> np.ndarray:
    """Equal-population grey levels 0..levels-1 of the valid values (-1 elsewhere); ties share a level."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, -1, np.int64)
    data = v[valid]
    if data.size == 0:
        return out
    edges = np.quantile(data, np.linspace(0.0, 1.0, levels + 1)[1:-1])
    out[valid] = np.searchsorted(edges, data, side="right")
    return out


GLCM_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def glcm_homogeneity(levels: np.ndarray, offsets=GLCM_OFFSETS) -> float:
    """Haralick's homogeneity sum p(i,j) / (1 + (i-j)^2) of the grey-level co-occurrence matrix.

    `levels` holds integer grey levels, negative where invalid; pairs with an invalid member
    are left out. The matrix is pooled over the given (row, column) offsets (distance 1 in
    four directions by default) and is symmetric, so the value is the mean of
    1 / (1 + (a - b)^2) over all valid neighbour pairs (a, b): 1 for a constant image.
    """
    g = np.asarray(levels)
    total, count = 0.0, 0
    h, w = g.shape
    for dr, dc in offsets:
        r0, r1, c0, c1 = max(0, -dr), h - max(0, dr), max(0, -dc), w - max(0, dc)
        a, b = g[r0:r1, c0:c1], g[r0 + dr : r1 + dr, c0 + dc : c1 + dc]  # each pixel and its neighbour at (dr, dc)
        both = (a >= 0) & (b >= 0)
        d = (a[both] - b[both]).astype(np.float64)
        total += float((1.0 / (1.0 + d * d)).sum())
        count += int(both.sum())
    return total / count if count else float("nan")


def ratio_structure(ratio: np.ndarray, valid: np.ndarray, levels: int = 16, shuffles: int = 8, seed: int = 0) -> float:
    """Structure left in a ratio image Y / X_hat: delta_h of Gomez, Ospina and Frery (2017).

    "Unassisted quantitative evaluation of despeckling filters", Remote Sensing 9(4), 389:
    delta_h = 100 |h_o - h_g| / h_o, where h_o is the GLCM homogeneity of the ratio image
    and h_g the mean homogeneity of `shuffles` random permutations of its valid pixels
    (which keep the marginal law and destroy any spatial structure). 0 means the ratio
    looks like white speckle; edges, texture or point targets removed by a filter leave
    correlated structure in the ratio and raise delta_h. Spatially correlated speckle
    (over-sampled products) gives delta_h > 0 even for a perfect filter: compare with
    the value of the true reflectivity's ratio. Here the grey levels are equal-population
    quantiles of the valid ratio values (`levels` of them), not a linear scaling, so the
    value does not depend on the ratio's heavy tail or on a radiometric gain.
    """
    ok = np.asarray(valid, bool) & np.isfinite(ratio)
    q = quantise_by_rank(ratio, ok, levels)
    h_o = glcm_homogeneity(q)
    rng = np.random.default_rng(seed)
    h_g = []
    for _ in range(shuffles):
        s = q.copy()
        s[ok] = rng.permutation(q[ok])
        h_g.append(glcm_homogeneity(s))
    return float(100.0 * abs(h_o - float(np.mean(h_g))) / h_o) if h_o > 0 else float("nan")


def ratio_first_order(noisy_areas: list[np.ndarray], ratio_areas: list[np.ndarray]) -> float:
    """First-order residual r_ENL,mu of Gomez et al. (2017) over homogeneous areas.

    For each area i: r_ENL = |ENL(Y_i) - ENL(ratio_i)| / ENL(Y_i) (in a homogeneous area an
    ideal ratio is the speckle itself, with the ENL of the noisy data) and
    r_mu = |1 - mean(ratio_i)|. Returns the mean over areas of (r_ENL + r_mu) / 2 (the
    paper sums over areas; the mean keeps the value independent of how many there are).
    0 is ideal.
    """
    terms = []
    for y, r in zip(noisy_areas, ratio_areas):
        e_y, e_r = enl(y), enl(r)
        if not (np.isfinite(e_y) and np.isfinite(e_r)) or e_y == 0:
            continue
        terms.append((abs(e_y - e_r) / e_y + abs(1.0 - float(np.mean(r)))) / 2.0)
    return float(np.mean(terms)) if terms else float("nan")


def m_index(noisy_areas: list[np.ndarray], ratio_areas: list[np.ndarray], ratio: np.ndarray, valid: np.ndarray,
            **structure_args) -> float:
    """Gomez et al. (2017) M = r_ENL,mu + delta_h: 0 for a ratio image that is pure speckle, higher is worse."""
    return ratio_first_order(noisy_areas, ratio_areas) + ratio_structure(ratio, valid, **structure_args)
