"""Despeckling quality measures (definitions in the project's METHOD.md)."""
from __future__ import annotations

import numpy as np


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
