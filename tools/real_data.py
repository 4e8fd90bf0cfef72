"""The real Sentinel-1 single-look dates of ../shared/data (never committed), shared by training and benchmark.

Each site has REAL_DATES co-registered 256x256 amplitude dates. Training may use rows
[0, TRAIN_ROWS) of every site (make_model.py --real-fraction); `make bench-quality` scores
the real dates on rows [TRAIN_ROWS, 256) only, so its real figures stay held out from any
model trained here.
"""
from __future__ import annotations

import math
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "s1_single_look")
REAL_SITES = ("lely", "limagne")
REAL_DATES = 5
TRAIN_ROWS = 128


def available(real_dir: str = REAL_DIR, sites: tuple[str, ...] = REAL_SITES) -> bool:
    return os.path.isdir(real_dir) and all(os.path.exists(os.path.join(real_dir, f"{s}_{d}.npy"))
                                           for s in sites for d in range(1, REAL_DATES + 1))


def first_scored_row(site: str, trained_sites: tuple[str, ...] = REAL_SITES) -> int:
    """Rows before this one may have trained a model here: a site training never used is scored whole."""
    return TRAIN_ROWS if site in trained_sites else 0


def site_stack(site: str, real_dir: str = REAL_DIR) -> np.ndarray:
    """(dates, rows, cols) float64 intensity (the files hold amplitudes)."""
    return np.stack([np.load(os.path.join(real_dir, f"{site}_{d}.npy")).astype(np.float64) ** 2
                     for d in range(1, REAL_DATES + 1)])


def log_bias_of_mean(dates: int, looks: float = 1.0) -> float:
    """E[ln(mean of `dates` L-look intensities)] - ln X = digamma(dates L) - ln(dates L)."""
    from scipy.special import digamma

    n = dates * looks
    return float(digamma(n) - math.log(n))


def leave_one_out(stack: np.ndarray, d: int) -> np.ndarray:
    """Mean intensity of every date but d: a reference whose speckle is independent of date d."""
    return (stack.sum(axis=0) - stack[d]) / (stack.shape[0] - 1)
