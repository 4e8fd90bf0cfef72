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
  given or estimated from the stack. Weak against gradual change (a few dB over the dates).
- "omnibus" (the default): the omnibus likelihood-ratio test for equal Gamma means over the
  M dates (Conradsen et al. 2016, single-polarisation case) on the per-date geometric mean
  of a `test_window` x `test_window` window, combined (Bonferroni, alpha/2 each) with a
  log-linear trend test on the same series. For M dates X_1..X_M of L-look intensity
  (Gamma, shape L, means mu_i), H0: all mu_i equal, the likelihood ratio is
      Q = M^{ML} prod X_i^L / (sum X_i)^{ML},  -2 ln Q = 2 L (M ln mean(X) - sum ln X_i),
  and P(-2 rho ln Q <= z) ~ P(chi2_{M-1} <= z) with rho = (M - 1) / E[-2 ln Q], the exact
  mean under H0 (Box's rho = 1 - (M + 1)/(6 M L) to first order in 1/L; see omnibus_pvalue
  for Box's full approximation with omega2, which is liberal below a few looks).
  The geometric window mean multiplies the looks (more power against a few-dB ramp) and,
  unlike the arithmetic mean, its speckle law does not depend on the reflectivity of the
  neighbours (texture, point targets), so one ENL holds for every stable pixel. That ENL is
  estimated on the window-averaged stack itself, as L is on the raw one, so spatially
  correlated speckle is accounted for. The trend test: the slope of ln(window mean) over
  the date index, divided by its standard error under H0 (variance trigamma(ENL)); it needs
  the dates in time order (in any other order it only loses power). Pixels whose window is
  cut by the image edge or by nodata use the ENL of that many pixels (interpolated).
  A pixel zero on some date is never stable, and is left out of its neighbours' windows.

`multilook` k > 1 averages the label over the stable pixels of a k x k window (recommended
with few dates). Everything streams by windows: memory holds a few windows of the stack.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import domain as dm
from .defaults import ZERO_IS_NODATA
from .errors import InputError, OutputError, translate_errors
from .files import same_dataset
from .model_info import inherited, provenance
from .progress import SILENT, Progress
from .raster import Outputs, RasterOutput, check_bands, check_same_grid, data_bands, gdal_cache_limit, open_raster, read_intensity, same_file, windows

RULES = ("speckle_test", "db_std", "paper", "omnibus")  # new rules go at the end: enum indices
DEFAULT_RULE = "omnibus"
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
    window_looks: float | None = None  # omnibus rule: ENL of a full test window's mean


def cv2_quantile(dates: int, looks: float, alpha: float, samples: int = 200_000, seed: int = 12345) -> float:
    """(1 - alpha) quantile of s^2/mean^2 for `dates` independent L-look Gamma samples."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(looks, 1.0 / looks, (samples, dates))
    cv2 = x.var(axis=1, ddof=1) / x.mean(axis=1) ** 2
    return float(np.quantile(cv2, 1.0 - alpha))


LOOKS_SEARCH = (0.5, 1000.0)  # estimate_looks' range


def estimate_looks(cv2_values: np.ndarray, dates: int) -> float:
    """L whose speckle-only CV^2 lower quartile matches the stack's: changes only raise CV^2."""
    observed = float(np.quantile(cv2_values, 0.25))
    rng = np.random.default_rng(7)
    candidates = np.geomspace(*LOOKS_SEARCH, 70)
    quartiles = []
    for L in candidates:
        x = rng.gamma(L, 1.0 / L, (20_000, dates))
        quartiles.append(np.quantile(x.var(axis=1, ddof=1) / x.mean(axis=1) ** 2, 0.25))
    # quartiles decrease with L
    return float(np.interp(-observed, -np.array(quartiles), candidates))


def inverse_trigamma(value: float) -> float:
    """L such that trigamma(L) = value: the Gamma ENL whose log has that variance."""
    from scipy.optimize import brentq
    from scipy.special import polygamma

    return float(brentq(lambda x: float(polygamma(1, x)) - value, 1e-4, 1e8, xtol=1e-10, rtol=1e-12))


def omnibus_statistic(logs: np.ndarray, looks) -> np.ndarray:
    """-2 ln Q of the omnibus test for equal Gamma means, from the logs of M dates (axis 0).

    -2 ln Q = 2 L (M ln mean(X) - sum ln X): Q = M^{ML} prod X_i^L / (sum X_i)^{ML}.
    """
    from scipy.special import logsumexp

    M = logs.shape[0]
    return 2.0 * np.asarray(looks) * (M * (logsumexp(logs, axis=0) - np.log(M)) - logs.sum(axis=0))


def omnibus_pvalue(m2lnq, dates: int, looks, correction: str = "exact") -> np.ndarray:
    """P(-2 ln Q >= observed) under H0, from P(-2 rho ln Q <= z) ~ P(chi2_{M-1} <= z).

    correction "box": Box's approximation as in Conradsen et al. 2016 (p = 1):
    rho = 1 - (M + 1) / (6 M L) and the second-order term omega2 = -(M - 1)/4 (1 - 1/rho)^2,
    P ~ P(chi2_f <= z) + omega2 (P(chi2_{f+4} <= z) - P(chi2_f <= z)), f = M - 1.
    "exact" (the rule's): rho = (M - 1) / E[-2 ln Q] with the exact mean for Gamma data,
    E[-2 ln Q] = 2 L M (psi(M L) - ln(M L) - psi(L) + ln L), of which Box's rho is the
    first-order expansion in 1/L; no omega2. Both agree from a few looks on; with fewer,
    Box's is liberal (Monte Carlo: 1.3 % rejected at 1 % for L = 1, 3.5 % for L = 0.7)
    while the exact mean keeps 0.8-1.0 %.
    """
    from scipy.special import digamma
    from scipy.stats import chi2

    looks = np.asarray(looks, dtype=np.float64)
    f = dates - 1
    if correction == "box":
        rho = 1.0 - (dates + 1) / (6.0 * dates * looks)
        omega2 = -(dates - 1) / 4.0 * (1.0 - 1.0 / rho) ** 2
        z = rho * np.asarray(m2lnq)
        sf = chi2.sf(z, f)
        return sf - omega2 * (sf - chi2.sf(z, f + 4))
    mean = 2.0 * looks * dates * (digamma(dates * looks) - np.log(dates * looks) - digamma(looks) + np.log(looks))
    return chi2.sf(f / mean * np.asarray(m2lnq), f)


def omnibus_critical(dates: int, looks: float, alpha: float) -> float:
    """-2 ln Q above which the omnibus test rejects at risk alpha."""
    from scipy.optimize import brentq

    hi = 1.0
    while omnibus_pvalue(hi, dates, looks) > alpha:
        hi *= 2.0
    return float(brentq(lambda v: float(omnibus_pvalue(v, dates, looks)) - alpha, 0.0, hi, xtol=1e-10))


def trend_z(logs: np.ndarray, log_variance) -> np.ndarray:
    """Slope of the logs over the date index (axis 0), in standard errors under H0."""
    M = logs.shape[0]
    t = np.arange(M, dtype=np.float64) - (M - 1) / 2.0
    slope = np.tensordot(t, logs, axes=(0, 0)) / (t @ t)
    return slope / np.sqrt(np.asarray(log_variance) / (t @ t))


def window_logs(stack: np.ndarray, valid: np.ndarray, window: int):
    """Per date, the mean of ln(intensity) over the usable pixels of a window x window
    neighbourhood (ln of the geometric mean), and how many pixels each mean has.

    Usable: valid and positive on every date (0 is no Gamma intensity: such a pixel is
    never called stable)."""
    from scipy.ndimage import uniform_filter

    usable = valid & (stack > 0).all(axis=0)
    logs = np.log(np.where(usable, stack, 1.0))  # 0 where unusable
    if window == 1:
        return logs, usable, usable.astype(np.int64)
    area = window * window
    count = np.rint(uniform_filter(usable.astype(np.float64), window, mode="constant") * area).astype(np.int64)
    sums = uniform_filter(logs, (0, window, window), mode="constant") * area
    return sums / np.maximum(count, 1), usable, count


def window_looks_table(looks: float, full_looks: float, window: int) -> np.ndarray:
    """ENL of the window mean of n = 0..window^2 usable pixels: the number of independent
    samples, trigamma(L) / trigamma(L_window), is interpolated linearly in n."""
    from scipy.special import polygamma

    area = window * window
    if area == 1:
        return np.array([looks, looks])
    gain = float(polygamma(1, looks)) / float(polygamma(1, full_looks))
    table = [looks]
    for n in range(1, area + 1):
        independent = 1.0 + (gain - 1.0) * (n - 1) / (area - 1)
        table.append(inverse_trigamma(float(polygamma(1, looks)) / independent))
    table[-1] = full_looks
    return np.array(table)


def _window_cv2(logs: np.ndarray, count: np.ndarray, window: int) -> np.ndarray:
    """CV^2 over time of the full windows' geometric means (scale-free: logs are centred)."""
    full = count == window * window
    g = np.exp(logs[:, full] - logs[:, full].mean(axis=0))
    return g.var(axis=0, ddof=1) / g.mean(axis=0) ** 2


def omnibus_risk(dates: int, alpha: float) -> float:
    """The omnibus test's share of `alpha`: half, the trend test taking the other half; all of it for two
    dates, where the trend test is the omnibus test again and runs not at all."""
    return alpha if dates == 2 else alpha / 2


def _omnibus_stable(stack, valid, window, table, alpha):
    """Pixels where neither the omnibus test nor the trend test rejects (alpha/2 each)."""
    from scipy.special import polygamma
    from scipy.stats import norm

    logs, usable, count = window_logs(stack, valid, window)
    looks = table[count]
    dates = stack.shape[0]
    p_omnibus = omnibus_pvalue(omnibus_statistic(logs, looks), dates, looks)
    stable = usable & (p_omnibus >= omnibus_risk(dates, alpha))
    if dates == 2:
        return stable
    z = trend_z(logs, polygamma(1, looks))
    return stable & (np.abs(z) <= norm.isf(alpha / 4))


def _stack_dates(paths: list[str], band: int | None) -> list[Date]:
    if len(paths) == 1:
        ds = open_raster(paths[0])
        bands = data_bands(ds, paths[0])
        if len(bands) < 2:
            raise InputError("A single input of `inputs` must be a multi-band raster whose bands are the dates; give at least 2 dates.")
        return [Date(paths[0], b) for b in bands]
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
        intensity, ok = read_intensity(ds.GetRasterBand(d.band), win, domain, ZERO_IS_NODATA,  # GRD borders
                                       source=f"{d.path} band {d.band}")
        stack.append(intensity)
        valid = ok if valid is None else valid & ok
    stack = np.stack(stack)
    if domain in ("intensity", "amplitude") and (stack[:, valid] < 0).any():
        raise InputError(f"The stack has negative {domain} values: if they are dB, set `domain` to decibel.")
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


def _sample(tiles, dates, domain, datasets, rule, test_window=1, progress: Progress = SILENT):
    """CV^2 of the raw stack, and (omnibus) of the full windows' geometric means, on a
    sample of windows spread over the image (bounded memory), to estimate numbers of looks."""
    raw, win, offsets = [], [], []
    for tile in tiles[:: max(1, len(tiles) // 16)]:
        progress.check()  # about 16 windows of every date: seconds each on a long stack of large windows
        stack, valid = _read_stack(dates, tile, domain, datasets)
        cv2 = _statistics(stack, "speckle_test")[1][valid]
        raw.append(cv2[np.isfinite(cv2)][:: max(1, cv2.size // 20000)])
        usable = valid & (stack > 0).all(axis=0)
        date_logs = np.log(stack[:, usable][:, :: max(1, int(usable.sum()) // 20000)])
        m = date_logs.shape[0]
        offsets.append((date_logs - date_logs.mean(axis=0)) * m / (m - 1))  # each date against the mean of the others
        if rule == "omnibus" and test_window > 1:
            logs, _, count = window_logs(stack, valid, test_window)
            w = _window_cv2(logs, count, test_window)
            win.append(w[np.isfinite(w)][:: max(1, w.size // 20000)])
    raw = np.concatenate(raw) if raw else np.array([])
    if raw.size == 0:
        raise InputError("The stack has no pixel valid on every date: check that the dates cover the same area and what "
                         "their nodata values are.")
    # the mean, not the median: the log of speckle is skewed, its median off by a few tenths of a dB
    offsets_db = 10.0 / np.log(10.0) * np.concatenate(offsets, axis=1).mean(axis=1)
    return Sample(raw, np.concatenate(win) if win else np.array([]), offsets_db)


@dataclass
class Sample:
    """What the sampled windows say: CV² of the raw stack and of the window means, and each date's level."""
    cv2: np.ndarray
    window_cv2: np.ndarray
    offsets_db: np.ndarray  # per date, mean of 10 log10(X_t / geometric mean of the other dates)


DATE_OFFSET_DB = 1.0  # a whole date this much brighter or darker than the others is reported
LOOKS_IMPLAUSIBLE = 30.0  # more than any SAR product gives a pixel: the stack is not plain speckle
# Temporal speckle is at least one look: fewer estimated means most pixels change (a whole scene
# replaced between dates was estimated at 0.72 looks, and the test then kept 53 % of its 6 dB changes).
LOOKS_BELOW_SPECKLE = 0.9
POWER_STEP_DB = 6.0  # the change the omnibus rule's detection rate is reported for (and 3 dB beside it)


def check_dates(sample: Sample, dates: list, progress: Progress) -> None:
    """Warn about whole dates off the others' level; the stability tests cannot tell a calibration
    difference from speckle (a date 3 dB off lowered the estimated looks and let every pixel pass)."""
    for d, off in zip(dates, sample.offsets_db):
        if abs(off) > DATE_OFFSET_DB:
            progress.info(f"Warning: {d.path} band {d.band} is {off:+.1f} dB {'above' if off > 0 else 'below'} the "
                          "other dates on average: a calibration difference (check that every date is "
                          "calibrated the same way, e.g. sigma0) or a change of the whole scene (season, soil "
                          "moisture). The label averages it in where the tests call pixels stable.")


def check_looks(estimated: float, progress: Progress) -> None:
    """Estimated looks that no plain SAR stack gives: refused at the top of the search, warned above LOOKS_IMPLAUSIBLE."""
    causes = ("dates that are copies of one another, dates already despeckled or averaged, amplitude or dB values read "
              "as intensity (set `domain`), or stable bright targets over much of the image")
    if estimated >= LOOKS_SEARCH[1] * 0.999:
        raise InputError(f"The dates hardly vary over time (estimated looks {estimated:.0f}, the top of the search): "
                         f"likely causes are {causes}. Give `looks` if the dates are right.")
    if estimated < LOOKS_BELOW_SPECKLE:
        progress.info(f"Warning: estimated looks L = {estimated:.2f}, below the one look of any SAR intensity: the "
                      "dates vary more than speckle over most of the image (a change of most of the scene, or dates "
                      "not co-registered). The estimate takes that variation for speckle, which lets changed "
                      "pixels pass as stable: give `looks` (1 for single-look dates) if you know it.")
    if estimated > LOOKS_IMPLAUSIBLE:
        progress.info(f"Warning: estimated looks L = {estimated:.1f}, more than a SAR product gives: likely causes are "
                      f"{causes}. Too many looks makes the tests strict (stable pixels masked); give `looks` if "
                      "you know it.")


def omnibus_detection(dates: int, window_looks: float, alpha: float, step_db: float, samples: int = 20_000,
                      seed: int = 3) -> float:
    """Share of pixels whose step of `step_db` on the last half of the dates the omnibus rule (omnibus and
    trend tests, as applied) rejects: Monte Carlo on Gamma window means of `window_looks`."""
    rng = np.random.default_rng(seed)
    level = np.ones(dates)
    level[dates - dates // 2:] = 10.0 ** (step_db / 10.0)
    stack = rng.gamma(window_looks, 1.0 / window_looks, (dates, samples, 1)) * level[:, None, None]
    stable = _omnibus_stable(stack, np.ones((samples, 1), bool), 1, np.array([window_looks, window_looks]), alpha)
    return 1.0 - float(stable.mean())


def check_power(dates: int, window_looks: float, alpha: float, progress: Progress) -> float:
    """Says how often the omnibus rule catches a plain change with these dates and looks, and warns where it
    misses most of them (5 single-look dates: a 6 dB change on 2 of them passes as stable in most pixels)."""
    caught = omnibus_detection(dates, window_looks, alpha, POWER_STEP_DB)
    smaller = omnibus_detection(dates, window_looks, alpha, POWER_STEP_DB / 2)
    what = (f"a {POWER_STEP_DB:g} dB change on the last {dates // 2} of the {dates} dates is caught in {100 * caught:.0f} "
            f"% of pixels ({POWER_STEP_DB / 2:g} dB: {100 * smaller:.0f} %)")
    if caught < 0.5:
        progress.info(f"Warning: with {dates} dates and {window_looks:.1f} looks in a test window, {what}: changed "
                      "pixels will enter the label as stable. More dates, a larger `test_window` (more looks, coarser "
                      "mask) or a higher `alpha` catch more; check the stable mask.")
    else:
        progress.info(f"detection: {what}")
    return caught


LABEL_LOOKS = (0.1, 1e5)  # looks of one date that the stability tests can be computed for


@translate_errors
@gdal_cache_limit()
def temporal_label(
    inputs: list[str],
    output: str,
    mask_output: str | None = None,
    band: int | None = None,
    domain: str = "intensity",
    rule: str = DEFAULT_RULE,
    threshold: float | None = None,
    looks: float | None = None,
    alpha: float = 0.01,
    multilook: int = 1,
    test_window: int = 3,
    window: int = 512,
    progress: Progress = SILENT,
) -> LabelReport:
    """Write the label (same domain as the inputs, nodata NaN where unstable) and the mask.

    threshold: nu for "paper" (default 0.1), dB for "db_std" (default 2.0); for
    "speckle_test" the threshold comes from `looks` and `alpha`; for "omnibus" the report's
    threshold is the critical -2 ln Q of a full test window at risk alpha/2.
    looks: L of one date (estimated from the stack when None). With "omnibus" and
    test_window > 1, the window mean's ENL is L times the gain in looks measured on the
    stack (the speckle may be spatially correlated).
    """
    dm.check_domain(domain, *inputs)
    if rule not in RULES:
        raise InputError(f"Unknown stability `rule` {rule!r}: use one of {', '.join(RULES)}.")
    if multilook < 1 or multilook % 2 == 0:
        raise InputError("`multilook` must be an odd window size (1, 3, 5, ...).")
    if rule == "omnibus" and (test_window < 1 or test_window % 2 == 0):
        raise InputError("`test_window` must be an odd window size (1, 3, 5, ...).")
    if window < max(multilook, test_window, 1):
        raise InputError(f"`window` ({window} pixels) must be at least the test and multilook windows "
                         f"({max(multilook, test_window)}): it is the size of the blocks the stack is read in.")
    if rule in ("speckle_test", "omnibus") and not 0 < alpha < 1:
        raise InputError("`alpha` must lie between 0 and 1.")
    # The tests' thresholds have no solution far outside this (1e-9 looks: a raw "f(a) and f(b) must have
    # different signs"; 1e-3: a NaN threshold that called nothing stable, reported as success).
    if looks is not None and not LABEL_LOOKS[0] <= looks <= LABEL_LOOKS[1]:
        raise InputError(f"`looks` must be from {LABEL_LOOKS[0]:g} to {LABEL_LOOKS[1]:g} (got {looks:g}): the "
                         "equivalent number of looks of one date, e.g. 1 for single-look, about 4.4 for GRD.")
    dates = _stack_dates(list(inputs), band)
    if len(dates) < 2:
        raise InputError("A temporal label needs at least 2 dates in `inputs` (the paper used 22 to 29).")
    for i, a in enumerate(dates):
        for b in dates[i + 1:]:
            if same_dataset(a.path, b.path) and a.band == b.band:  # the same date twice would look perfectly stable
                raise InputError(f"{a.path} and {b.path} are the same date: give each date once.")
    for out in filter(None, (output, mask_output)):
        for d in dates:
            if same_file(out, d.path):
                raise OutputError(f"The output {out} is one of the inputs: choose another file.")
    ref = _check_grid(dates)
    datasets = [open_raster(d.path) for d in dates]
    width, height = ref.RasterXSize, ref.RasterYSize
    tiles = windows(width, height, window)
    M = len(dates)

    full_looks = None
    # every rule: about 16 windows of every date, to check the dates' levels and estimate the looks
    sample = _sample(tiles, dates, domain, datasets, rule, test_window, progress)
    check_dates(sample, dates, progress)
    estimated = None
    if looks is None and rule in ("speckle_test", "omnibus"):
        looks = estimated = estimate_looks(sample.cv2, M)
        progress.info(f"estimated number of looks L = {looks:.2f}")
        check_looks(looks, progress)
    if rule == "speckle_test":
        threshold = cv2_quantile(M, looks, alpha)
    elif rule == "omnibus":
        if test_window > 1:
            win_cv2 = sample.window_cv2
            estimated = estimated or estimate_looks(sample.cv2, M)
            if win_cv2.size < 100:
                progress.info(f"too few pixels with a full {test_window}x{test_window} window valid on every date "
                              "to measure its number of looks: the omnibus test runs per pixel")
                test_window = 1
            if test_window > 1:
                from scipy.special import polygamma

                gain = float(polygamma(1, estimated)) / float(polygamma(1, estimate_looks(win_cv2, M)))
                full_looks = inverse_trigamma(float(polygamma(1, looks)) / max(gain, 1.0))
                progress.info(f"number of looks of the {test_window}x{test_window} window mean = {full_looks:.1f}")
        if test_window == 1:
            full_looks = looks
        table = window_looks_table(looks, full_looks, test_window)
        threshold = omnibus_critical(M, full_looks, omnibus_risk(M, alpha))
        check_power(M, full_looks, alpha, progress)
    elif threshold is None:
        threshold = 0.1 if rule == "paper" else 2.0

    half = multilook // 2
    margin = half + (test_window // 2 if rule == "omnibus" else 0)
    stable_count = valid_count = 0
    # band names and provenance, as every output of the plugin (and how a batch folder scan skips them)
    name = ref.GetRasterBand(dates[0].band).GetDescription() or ""
    # every date named (it named the first only), and the looks and window the tests used
    meta = {**inherited(ref.GetMetadata()), **provenance(
        "despecknet:temporallabel", dates[0].path, dates=len(dates), rule=rule, alpha=alpha, multilook=multilook,
        input_domain=domain, output_domain=domain,
        date_sources=", ".join(f"{os.path.basename(str(d.path).rstrip('/')) or d.path}:{d.band}" for d in dates),
        **({"looks": f"{looks:.2f}"} if looks else {}), **({"test_window": test_window} if rule == "omnibus" else {}))}
    # the first date's band items (polarisation) on both; its unit on the label, which is in its domain
    first_band = ref.GetRasterBand(dates[0].band)
    band_items, unit = [inherited(first_band.GetMetadata())], first_band.GetUnitType()
    first_band = None
    outputs = Outputs(lambda: RasterOutput(output, ref, 1, [LABEL_NODATA], descriptions=[name],
                                           metadata={**meta, "DESPECKNET_CONTENT": "temporal label"},
                                           band_metadata=band_items, units=[unit]),
                      (lambda: RasterOutput(mask_output, ref, 1, [MASK_NODATA], data_type="Byte",
                                            descriptions=[f"stable {name}".strip()], band_metadata=band_items,
                                            metadata={**meta, "DESPECKNET_CONTENT": "stable mask (1 stable, 0 changed)"}))
                      if mask_output else None)
    with outputs as (label_out, mask_out):
        for k, win in enumerate(tiles):
            progress.check()
            outer = win.grown(margin, width, height)
            inner = win.within(outer)
            stack, valid = _read_stack(dates, outer, domain, datasets)
            if rule == "omnibus":
                mean = stack.mean(axis=0)
                stable = valid & _omnibus_stable(stack, valid, test_window, table, alpha)
            else:
                mean, stat = _statistics(stack, rule)
                # a date at 0 is no SAR intensity (a hole the dates do not declare): never averaged as stable
                stable = valid & (stat <= threshold) & (stack > 0).all(axis=0)
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
            raise InputError("The stack has no pixel valid on every date: nothing to label. Check that the dates cover the "
                             "same area and what their nodata values are.")
        outputs.commit()
    return LabelReport(stable_count / valid_count, valid_count, looks, float(threshold), rule, full_looks)
