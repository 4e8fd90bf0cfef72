"""Temporal reference labels: the clean target of phase 1, from a stack of co-registered dates.

Per pixel, over M dates (intensity): mean and sample standard deviation. A pixel is
stable, and its label is the temporal mean, when the chosen rule says so; otherwise it
is nodata in the label. Rules:

- "paper": sample standard deviation Z <= nu, in the data's own units (the paper's nu = 0.1).
  Only meaningful for data scaled like the paper's; on other scalings it keeps all or nothing.
- "db_std": standard deviation of the dB values <= a threshold in dB (the authors used 2 dB).
  Independent of calibration scale, but its sensible threshold depends on the number of looks.
- "speckle_test": the temporal coefficient of variation CV^2 = s^2 / mean^2 is compared with
  the (1 - alpha) quantile of CV^2 that pure L-look speckle gives for M dates (Monte Carlo,
  exact for independent Gamma speckle). Independent of calibration and adapted to L; L is
  given or estimated from the stack. The default choice.

MULTILOOK k > 1 averages the label over the stable pixels of a k x k window (recommended
with few dates). Everything streams by windows: memory holds a few windows of the stack.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import domain as dm
from .errors import DespeckNetError
from .progress import SILENT, Progress
from .raster import Outputs, RasterOutput, check_bands, check_same_grid, open_raster, read_intensity, same_file, windows

RULES = ("speckle_test", "db_std", "paper")
LABEL_NODATA = float("nan")
MASK_NODATA = 255


@dataclass
class Date:
    path: str
    band: int = 1


@dataclass
class LabelReport:
    stable_fraction: float
    valid_pixels: int
    looks: float | None
    threshold: float
    rule: str


def cv2_quantile(dates: int, looks: float, alpha: float, samples: int = 200_000, seed: int = 12345) -> float:
    """(1 - alpha) quantile of s^2/mean^2 for `dates` independent L-look Gamma samples."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(looks, 1.0 / looks, (samples, dates))
    cv2 = x.var(axis=1, ddof=1) / x.mean(axis=1) ** 2
    return float(np.quantile(cv2, 1.0 - alpha))


def estimate_looks(cv2_values: np.ndarray, dates: int) -> float:
    """L whose speckle-only CV^2 lower quartile matches the stack's: changes only raise CV^2."""
    observed = float(np.quantile(cv2_values, 0.25))
    rng = np.random.default_rng(7)
    candidates = np.geomspace(0.5, 200.0, 60)
    quartiles = []
    for L in candidates:
        x = rng.gamma(L, 1.0 / L, (20_000, dates))
        quartiles.append(np.quantile(x.var(axis=1, ddof=1) / x.mean(axis=1) ** 2, 0.25))
    # quartiles decrease with L
    return float(np.interp(-observed, -np.array(quartiles), candidates))


def _stack_dates(paths: list[str], band: int | None) -> list[Date]:
    if len(paths) == 1:
        ds = open_raster(paths[0])
        if ds.RasterCount < 2:
            raise DespeckNetError("A single input must be a multi-band raster whose bands are the dates; give at least 2 dates.")
        return [Date(paths[0], b) for b in range(1, ds.RasterCount + 1)]
    dates = []
    for p in paths:
        ds = open_raster(p)
        dates.append(Date(p, check_bands(ds, [band or 1], p)[0]))
    return dates


def _check_grid(dates: list[Date]):
    ref = open_raster(dates[0].path)
    for d in dates[1:]:
        check_same_grid(ref, dates[0].path, open_raster(d.path), d.path)
    return ref


def _read_stack(dates, win, domain, datasets):
    stack, valid = [], None
    for d, ds in zip(dates, datasets):
        intensity, ok = read_intensity(ds.GetRasterBand(d.band), win, domain)
        stack.append(intensity)
        valid = ok if valid is None else valid & ok
    stack = np.stack(stack)
    if domain in ("intensity", "amplitude") and (stack[:, valid] < 0).any():
        raise DespeckNetError(f"The stack has negative {domain} values: if they are dB, set INPUT_DOMAIN to decibel.")
    return stack, valid


def _statistics(stack, rule):
    mean = stack.mean(axis=0)
    std = stack.std(axis=0, ddof=1)
    if rule == "paper":
        return mean, std
    if rule == "db_std":
        with np.errstate(divide="ignore"):
            return mean, (10 * np.log10(np.maximum(stack, 1e-30))).std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return mean, np.where(mean > 0, std**2 / mean**2, np.inf)


def temporal_label(
    inputs: list[str],
    output: str,
    mask_output: str | None = None,
    band: int | None = None,
    domain: str = "intensity",
    rule: str = "speckle_test",
    threshold: float | None = None,
    looks: float | None = None,
    alpha: float = 0.01,
    multilook: int = 1,
    window: int = 512,
    progress: Progress = SILENT,
) -> LabelReport:
    """Write the label (same domain as the inputs, nodata NaN where unstable) and the mask.

    threshold: nu for "paper" (default 0.1), dB for "db_std" (default 2.0); for
    "speckle_test" the threshold comes from `looks` and `alpha`.
    """
    dm.check_domain(domain)
    if rule not in RULES:
        raise DespeckNetError(f"Unknown stability rule {rule!r}: use one of {', '.join(RULES)}.")
    if multilook < 1 or multilook % 2 == 0:
        raise DespeckNetError("MULTILOOK must be an odd window size (1, 3, 5, ...).")
    dates = _stack_dates(list(inputs), band)
    if len(dates) < 2:
        raise DespeckNetError("A temporal label needs at least 2 dates (the paper used 22 to 29).")
    for out in filter(None, (output, mask_output)):
        for d in dates:
            if same_file(out, d.path):
                raise DespeckNetError(f"The output {out} is one of the inputs: choose another file.")
    ref = _check_grid(dates)
    datasets = [open_raster(d.path) for d in dates]
    width, height = ref.RasterXSize, ref.RasterYSize
    tiles = windows(width, height, window)
    M = len(dates)

    if rule == "speckle_test":
        if looks is None:
            # Estimate L from a sample of windows spread over the image (bounded memory).
            sample = []
            for win in tiles[:: max(1, len(tiles) // 16)]:
                stack, valid = _read_stack(dates, win, domain, datasets)
                cv2 = _statistics(stack, rule)[1][valid]
                sample.append(cv2[np.isfinite(cv2)][:: max(1, cv2.size // 20000)])
            sample = np.concatenate(sample) if sample else np.array([])
            if sample.size == 0:
                raise DespeckNetError("The stack has no pixel valid on every date.")
            looks = estimate_looks(sample, M)
            progress.info(f"estimated number of looks L = {looks:.2f}")
        elif looks <= 0:
            raise DespeckNetError("LOOKS must be positive.")
        threshold = cv2_quantile(M, looks, alpha)
    elif threshold is None:
        threshold = 0.1 if rule == "paper" else 2.0

    half = multilook // 2
    stable_count = valid_count = 0
    outputs = Outputs(lambda: RasterOutput(output, ref, 1, [LABEL_NODATA]),
                      (lambda: RasterOutput(mask_output, ref, 1, [MASK_NODATA], data_type="Byte")) if mask_output else None)
    with outputs as (label_out, mask_out):
        for k, win in enumerate(tiles):
            progress.check()
            outer = win.grown(half, width, height)
            inner = win.within(outer)
            stack, valid = _read_stack(dates, outer, domain, datasets)
            mean, stat = _statistics(stack, rule)
            stable = valid & (stat <= threshold)
            if half:
                from scipy.ndimage import uniform_filter

                num = uniform_filter(np.where(stable, mean, 0.0), multilook, mode="constant")
                den = uniform_filter(stable.astype(np.float64), multilook, mode="constant")
                mean = np.where(den > 0, num / np.maximum(den, 1e-12), mean)
            s, v = stable[inner], valid[inner]
            stable_count += int(s.sum())
            valid_count += int(v.sum())
            label_out.write(1, win, np.where(s, dm.from_intensity(mean[inner], domain), np.nan))
            if mask_out is not None:
                mask_out.write(1, win, np.where(v, s.astype(np.uint8), MASK_NODATA))
            progress.set(100.0 * (k + 1) / len(tiles))
        if valid_count == 0:
            raise DespeckNetError("The stack has no pixel valid on every date: nothing to label.")
        outputs.commit()
    return LabelReport(stable_count / valid_count, valid_count, looks, float(threshold), rule)
