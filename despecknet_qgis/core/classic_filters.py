"""Classic adaptive speckle filters, for comparing the deep result with what SNAP users know.

All work on intensity I (any calibration scale; amplitude and dB inputs are converted, and
the output is in the input's domain), with L the speckle's equivalent number of looks
(given, or estimated from the band's flattest blocks as despeckle does) and
Cu² = 1/L the squared coefficient of variation of L-look intensity speckle. Local
statistics count only valid pixels (not nodata, finite), so nodata never leaks into its
neighbours.

- boxcar: the mean of the N x N window.
- lee (Lee 1980): m + w (I - m), w = 1 - Cu² / Ci² clipped to [0, 1], with the local mean m,
  variance v and Ci² = v / m² of the N x N window (as SNAP's and OTB's Lee): a bright point,
  Ci² >> Cu², is kept whole.
- kuan (Kuan et al. 1985): the same with w = (1 - Cu² / Ci²) / (1 + Cu²), the linear MMSE weight
  for multiplicative noise; at a bright point it tends to L / (L + 1), half of it on 1-look data.
- refined_lee (Lee 1981): Kuan's weight, computed on one of eight edge-aligned halves of
  a 7 x 7 window: the direction of the strongest gradient of the nine 3 x 3 sub-window
  means, and the side whose mean is closer to the centre's.
- lee_sigma (improved sigma filter, Lee et al. 2009): a 3 x 3 Lee estimate x0 sets the
  sigma range [a1 x0, a2 x0], where [a1, a2] holds the probability `sigma` of the L-look
  Gamma law with mean 1 inside it; Kuan's MMSE weight is computed on the window's pixels
  within that range, with the speckle variance of the truncated law. (The 2009 paper's
  separate point-target step is not part of it.)
- gamma_map (Lopes et al. 1990): with Ci² = v / m², m where Ci² <= Cu², I where
  Ci² >= 2 Cu², otherwise the Gamma-MAP root (b m + sqrt(b² m² + 4 a L m I)) / (2 a),
  a = (1 + Cu²) / (Ci² - Cu²), b = a - L - 1.
- frost (Frost et al. 1982): weights exp(-K Ci² d) over the N x N window, d the distance
  to the centre in pixels, K the damping factor.

Rasters are streamed window by window with a margin of N // 2 pixels (3 for refined Lee);
the raster's own edges are mirrored, so the result does not depend on the window size and
memory does not grow with the image.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import domain as dm
from .defaults import TILE_RANGE, TILE_SIZE, ZERO_IS_NODATA, Range
from .dependencies import import_module
from .errors import InputError, translate_errors
from .files import check_outputs
from .model_info import inherited, provenance
from .progress import SILENT, Progress
from .raster import Outputs, RasterOutput, band_statistics, check_bands, gdal_cache_limit, open_raster
from .raster import output_nodata_of
from .raster import read_intensity, windows, with_nodata

# New methods go at the end: Processing stores the method as its index in this tuple.
METHODS = ("boxcar", "lee", "refined_lee", "lee_sigma", "gamma_map", "frost", "kuan")
METHOD_LABELS = ("Boxcar (mean)", "Lee", "Refined Lee (7x7, edge-aligned)", "Lee sigma (improved, 2009)",
                 "Gamma-MAP", "Frost", "Kuan")
WINDOW_SIZE = 7
WINDOW_RANGE = Range(3, 31)
REFINED_LEE_WINDOW = 7
DAMPING = 2.0  # Frost's K, SNAP's default
DAMPING_RANGE = Range(0.01, 100.0)
SIGMA = 0.9  # Lee sigma: probability inside the sigma range
SIGMA_RANGE = Range(0.5, 0.99)
STATS_SHARE = 5.0  # percent of the progress bar for the statistics pass


def _ndimage():
    return import_module("scipy.ndimage", "Classic filters")


@dataclass
class ClassicFilterReport:
    output: str
    method: str
    looks: list[float | None] = field(default_factory=list)  # per band, None for boxcar
    seconds: float = 0.0
    tiles: int = 0


# --- local statistics over valid pixels ----------------------------------------------------

def _window_sum(a: np.ndarray, kernel) -> np.ndarray:
    """Sum of `a` under `kernel` (an odd size, or a weight array), mirrored at the edges.

    Direct sums, not running ones (ndimage.uniform_filter): a running sum keeps the rounding
    error of a bright target for the rest of its row, which made the variance of -40 dB water
    next to a +40 dB target wrong by up to 170 % (Gamma-MAP 630 %) and different tile by tile.
    """
    nd = _ndimage()
    if isinstance(kernel, int):
        ones = np.ones(kernel)
        return nd.correlate1d(nd.correlate1d(a, ones, 0, mode="reflect"), ones, 1, mode="reflect")
    return nd.correlate(a, kernel, mode="reflect")


def _local_mean_var(intensity: np.ndarray, valid: np.ndarray, kernel) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the valid pixels under `kernel` (an odd size, or a weight array)."""
    w = valid.astype(np.float64)
    x = intensity * w
    n, s1, s2 = (_window_sum(a, kernel) for a in (w, x, x * intensity))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, s1 / n, 0.0)
        var = np.where(n > 0, np.maximum(s2 / n - mean * mean, 0.0), 0.0)
    return mean, var


def _mmse(intensity, mean, var, cu2):
    """Kuan's linear minimum mean-square-error estimate, weight (v - m² Cu²) / (v (1 + Cu²)) in [0, 1]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(var > 0, (var - mean * mean * cu2) / (var * (1.0 + cu2)), 0.0)
    b = np.clip(b, 0.0, 1.0)
    return mean + b * (intensity - mean)


def _shifts(radius: int):
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def _padded(a: np.ndarray, radius: int) -> np.ndarray:
    return np.pad(a, radius, mode="symmetric")  # the same mirror as ndimage's mode="reflect"


def _view(padded: np.ndarray, radius: int, dy: int, dx: int, shape) -> np.ndarray:
    return padded[radius + dy: radius + dy + shape[0], radius + dx: radius + dx + shape[1]]


# --- the filters: intensity and validity of a window in, estimate of the same shape out ------

def boxcar(intensity, valid, looks=None, window_size=WINDOW_SIZE, **_):
    return _local_mean_var(intensity, valid, window_size)[0]


def lee(intensity, valid, looks, window_size=WINDOW_SIZE, **_):
    mean, var = _local_mean_var(intensity, valid, window_size)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(var > 0, 1.0 - mean * mean / (looks * var), 0.0)  # 1 - Cu² / Ci²
    return mean + np.clip(w, 0.0, 1.0) * (intensity - mean)


def kuan(intensity, valid, looks, window_size=WINDOW_SIZE, **_):
    mean, var = _local_mean_var(intensity, valid, window_size)
    return _mmse(intensity, mean, var, 1.0 / looks)


def _refined_lee_masks() -> list[np.ndarray]:
    i, j = np.mgrid[0:7, 0:7]
    halves = [j <= 3, j >= 3, i <= 3, i >= 3, j >= i, j <= i, i + j <= 6, i + j >= 6]
    return [h.astype(np.float64) for h in halves]


def _block_kernel(bi: int, bj: int) -> np.ndarray:
    k = np.zeros((7, 7))
    k[2 * bi: 2 * bi + 3, 2 * bj: 2 * bj + 3] = 1.0
    return k


def refined_lee(intensity, valid, looks, window_size=REFINED_LEE_WINDOW, **_):
    if window_size != REFINED_LEE_WINDOW:
        raise InputError(f"Refined Lee works on 7x7 windows (Lee 1981): set `window_size` to 7 (got {window_size}).")
    m = [[_local_mean_var(intensity, valid, _block_kernel(bi, bj))[0] for bj in range(3)] for bi in range(3)]
    gradients = np.stack([
        np.abs(m[0][2] + m[1][2] + m[2][2] - m[0][0] - m[1][0] - m[2][0]),  # vertical edge
        np.abs(m[2][0] + m[2][1] + m[2][2] - m[0][0] - m[0][1] - m[0][2]),  # horizontal edge
        np.abs(m[0][1] + m[0][2] + m[1][2] - m[1][0] - m[2][0] - m[2][1]),  # edge along the main diagonal
        np.abs(m[0][0] + m[0][1] + m[1][0] - m[1][2] - m[2][1] - m[2][2]),  # edge along the anti-diagonal
    ])
    direction = np.argmax(gradients, axis=0)
    c = m[1][1]
    # the side whose sub-window mean is closer to the centre's: 0 first half, 1 second half
    side = np.stack([
        np.abs(c - m[1][0]) >= np.abs(c - m[1][2]),
        np.abs(c - m[0][1]) >= np.abs(c - m[2][1]),
        np.abs(c - m[0][2]) >= np.abs(c - m[2][0]),
        np.abs(c - m[0][0]) >= np.abs(c - m[2][2]),
    ])
    choice = 2 * direction + np.take_along_axis(side, direction[None], axis=0)[0].astype(int)
    mean = np.zeros_like(intensity)
    var = np.zeros_like(intensity)
    for k, mask in enumerate(_refined_lee_masks()):
        where = choice == k
        if where.any():
            km, kv = _local_mean_var(intensity, valid, mask)
            mean[where], var[where] = km[where], kv[where]
    return _mmse(intensity, mean, var, 1.0 / looks)


def sigma_range(looks: float, sigma: float = SIGMA) -> tuple[float, float, float]:
    """(a1, a2, eta²): the interval of the L-look Gamma law of mean 1 that holds probability `sigma`
    and whose truncated law still has mean 1, and that truncated law's variance (Lee et al. 2009)."""
    special = import_module("scipy.special", "Classic filters")
    optimize = import_module("scipy.optimize", "Classic filters")
    cdf = lambda shape, u: special.gammainc(shape, looks * u)  # noqa: E731 - Gamma(shape, rate L)

    def upper(a1):
        return special.gammaincinv(looks, min(cdf(looks, a1) + sigma, 1.0 - 1e-15)) / looks

    def mean_minus_one(a1):  # u p_L(u) = p_{L+1}(u) for the rate-L Gamma law
        a2 = upper(a1)
        return (cdf(looks + 1, a2) - cdf(looks + 1, a1)) / sigma - 1.0

    hi = special.gammaincinv(looks, 1.0 - sigma) / looks * (1 - 1e-9)
    a1 = optimize.brentq(mean_minus_one, 0.0, hi, xtol=1e-12)
    a2 = upper(a1)
    second = (looks + 1) / looks * (cdf(looks + 2, a2) - cdf(looks + 2, a1)) / sigma  # E[u²] inside
    return float(a1), float(a2), float(max(second - 1.0, 0.0))


def lee_sigma(intensity, valid, looks, window_size=WINDOW_SIZE, sigma=SIGMA, **_):
    a1, a2, eta2 = sigma_range(looks, sigma)
    m3, v3 = _local_mean_var(intensity, valid, 3)
    prior = _mmse(intensity, m3, v3, 1.0 / looks)
    lo, hi = a1 * prior, a2 * prior
    r = window_size // 2
    pi, pv = _padded(intensity, r), _padded(valid, r)
    n = np.zeros_like(intensity)
    s1 = np.zeros_like(intensity)
    s2 = np.zeros_like(intensity)
    for dy, dx in _shifts(r):
        v = _view(pi, r, dy, dx, intensity.shape)
        sel = _view(pv, r, dy, dx, intensity.shape) & (v >= lo) & (v <= hi)
        n += sel
        s1 += np.where(sel, v, 0.0)
        s2 += np.where(sel, v * v, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, s1 / n, prior)
        var = np.where(n > 0, np.maximum(s2 / n - mean * mean, 0.0), 0.0)
    return np.where(n > 0, _mmse(intensity, mean, var, eta2), prior)


def gamma_map(intensity, valid, looks, window_size=WINDOW_SIZE, **_):
    mean, var = _local_mean_var(intensity, valid, window_size)
    cu2 = 1.0 / looks
    with np.errstate(divide="ignore", invalid="ignore"):
        ci2 = np.where(mean > 0, var / (mean * mean), 0.0)
        alpha = (1.0 + cu2) / (ci2 - cu2)
        b = alpha - looks - 1.0
        root = (b * mean + np.sqrt(np.maximum(b * b * mean * mean + 4.0 * alpha * looks * mean * intensity, 0.0))) / (2.0 * alpha)
    return np.where(ci2 <= cu2, mean, np.where(ci2 >= 2.0 * cu2, intensity, root))


def frost(intensity, valid, looks=None, window_size=WINDOW_SIZE, damping=DAMPING, **_):
    mean, var = _local_mean_var(intensity, valid, window_size)
    with np.errstate(divide="ignore", invalid="ignore"):
        ci2 = np.where(mean > 0, var / (mean * mean), 0.0)
    r = window_size // 2
    pi, pv = _padded(intensity, r), _padded(valid, r)
    num = np.zeros_like(intensity)
    den = np.zeros_like(intensity)
    for dy, dx in _shifts(r):
        weight = np.exp(-damping * ci2 * math.hypot(dy, dx)) * _view(pv, r, dy, dx, intensity.shape)
        num += weight * _view(pi, r, dy, dx, intensity.shape)
        den += weight
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, intensity)


FILTERS = {"boxcar": boxcar, "lee": lee, "refined_lee": refined_lee, "lee_sigma": lee_sigma, "gamma_map": gamma_map,
           "frost": frost, "kuan": kuan}
NEEDS_LOOKS = {"lee", "kuan", "refined_lee", "lee_sigma", "gamma_map"}


def margin_of(method: str, window_size: int) -> int:
    return REFINED_LEE_WINDOW // 2 if method == "refined_lee" else window_size // 2


def check_arguments(method: str, window_size: int, looks: float | None, damping: float, sigma: float) -> None:
    """Raises InputError for an unknown method or a number out of its range."""
    if method not in FILTERS:
        raise InputError(f"Unknown `method` {method!r}: use one of {', '.join(METHODS)}.")
    WINDOW_RANGE.check(window_size, "window_size", "pixels")
    if int(window_size) % 2 != 1:
        raise InputError(f"`window_size` must be odd (got {window_size}): the window is centred on the pixel.")
    if method == "refined_lee" and window_size != REFINED_LEE_WINDOW:
        raise InputError(f"Refined Lee works on 7x7 windows (Lee 1981): set `window_size` to 7 (got {window_size}).")
    if looks is not None and not looks > 0:
        raise InputError(f"`looks` must be positive (got {looks:g}); leave it empty to estimate it from the image.")
    DAMPING_RANGE.check(damping, "damping")
    SIGMA_RANGE.check(sigma, "sigma")


def filter_intensity(intensity: np.ndarray, valid: np.ndarray, method: str, looks: float | None = None,
                     window_size: int = WINDOW_SIZE, damping: float = DAMPING, sigma: float = SIGMA) -> np.ndarray:
    """One array of intensities (and its validity) filtered whole; invalid pixels of the result are undefined."""
    check_arguments(method, window_size, looks, damping, sigma)
    if method in NEEDS_LOOKS and looks is None:
        raise InputError(f"The {method} filter needs the speckle's number of `looks`.")
    intensity = np.where(valid, np.asarray(intensity, np.float64), 1.0)
    return FILTERS[method](intensity, np.asarray(valid, bool), looks, window_size=window_size, damping=damping,
                           sigma=sigma)


@translate_errors
def classic_filter_raster(
    input_path: str,
    output_path: str,
    method: str = "lee",
    bands: list[int] | None = None,
    domain: str = "intensity",
    window_size: int = WINDOW_SIZE,
    looks: float | None = None,
    damping: float = DAMPING,
    sigma: float = SIGMA,
    tile_size: int = TILE_SIZE,
    progress: Progress = SILENT,
    zero_is_nodata: bool = ZERO_IS_NODATA,
) -> ClassicFilterReport:
    """Filter `input_path` into `output_path` with a classic speckle filter, window by window.

    Args:
        input_path: any raster GDAL reads; bands: 1-based bands (None: all), each filtered on its own.
        output_path: a GeoTIFF written beside its destination and moved into place once complete
            and read back; georeferencing, CRS and nodata are those of the input.
        method: one of METHODS; domain: "intensity", "amplitude" or "decibel" (the output's too).
        window_size: odd, WINDOW_RANGE (refined Lee: 7); looks: the speckle's equivalent number
            of looks (None: estimated per band from its flattest 16x16 blocks); damping: Frost's K;
            sigma: the probability inside Lee sigma's range.
        tile_size: pixels per processing window side (TILE_RANGE); the result does not depend on it.
        progress: progress, log and cancellation.
        zero_is_nodata: zeros of a band that declares no nodata are nodata (raster.input_nodata),
            as in despeckle_raster, so that both compare on the same pixels.

    Returns:
        ClassicFilterReport: the output, method, looks used per band, timing.

    Raises:
        InputError, OutputError (checked before any work), MissingPackageError (scipy), Cancelled.
    """
    started = time.perf_counter()
    dm.check_domain(domain, input_path)
    check_arguments(method, window_size, looks, damping, sigma)
    TILE_RANGE.check(tile_size, "tile_size", "pixels")
    _ndimage()  # scipy, before any work
    check_outputs({"output_path": output_path}, {"input_path": input_path})
    ds = open_raster(input_path, progress.without_percent())
    bands = check_bands(ds, bands, input_path)
    margin = margin_of(method, window_size)
    with gdal_cache_limit():
        share = STATS_SHARE / len(bands)
        stats = [band_statistics(ds, b, domain, input_path, tile_size, progress, share, i * share,
                                 zero_is_nodata=zero_is_nodata) for i, b in enumerate(bands)]
        used = []
        for st in stats:
            band_looks = looks or st.looks
            if method in NEEDS_LOOKS and not band_looks:
                raise InputError(f"The looks of {input_path} band {st.band} cannot be estimated (no fully valid "
                                 "16x16 block): give `looks`.")
            used.append(band_looks if method in NEEDS_LOOKS else None)
        for b, n in zip(bands, used):
            if n:
                progress.info(f"band {b}: {'given' if looks else 'estimated'} equivalent number of looks {n:.2f}")
        nodata = output_nodata_of(ds, bands, domain, domain, zero_is_nodata)
        tiles = windows(ds.RasterXSize, ds.RasterYSize, tile_size)
        total = len(tiles) * len(bands)
        metadata = {**inherited(ds.GetMetadata()), **provenance(
            "despecknet:classicfilter", input_path, method=method, window_size=window_size,
            looks=", ".join(f"{n:.2f}" if n else "-" for n in used), input_domain=domain, output_domain=domain,
            zero_is_nodata="yes" if zero_is_nodata else "no")}
        outputs = Outputs(lambda: RasterOutput(output_path, ds, len(bands), nodata, argument="output_path",
                                               descriptions=[ds.GetRasterBand(b).GetDescription() or "" for b in bands],
                                               metadata=metadata,
                                               band_metadata=[inherited(ds.GetRasterBand(b).GetMetadata()) for b in bands],
                                               units=[ds.GetRasterBand(b).GetUnitType() for b in bands]))
        with outputs as (out,):
            done = 0
            for win in tiles:
                outer = win.grown(margin, ds.RasterXSize, ds.RasterYSize)
                inner = win.within(outer)
                for i, (b, n, nd) in enumerate(zip(bands, used, nodata), start=1):
                    progress.check()
                    intensity, valid = read_intensity(ds.GetRasterBand(b), outer, domain, zero_is_nodata)
                    estimate = FILTERS[method](intensity, valid, n, window_size=window_size, damping=damping,
                                               sigma=sigma)
                    keep = valid[inner]
                    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                        # rounding can leave -1e-16 beside valid zeros: NaN as amplitude, neither data nor nodata
                        result = dm.from_intensity(np.maximum(estimate[inner], 0.0), domain)
                    out.write(i, win, with_nodata(result, keep, nd))
                    done += 1
                    progress.set(STATS_SHARE + (100.0 - STATS_SHARE) * done / total)
            outputs.commit()
    return ClassicFilterReport(output_path, method, used, time.perf_counter() - started, len(tiles))
