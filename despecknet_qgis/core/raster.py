"""GDAL helpers: opening inputs, windows, validity masks, band statistics, a bounded block
cache, and outputs that appear only when complete and read back intact.

GDAL reports most write failures (a full disk, an I/O error) only through its error
handler: `WriteArray` still returns success while the block sits in the cache, and the
failure happens later when the block is flushed. An output therefore records GDAL's
failures for its whole life, flushes and closes its partial file, opens it again and reads
every band back before it takes its final name (see `RasterOutput.finish`).
"""
from __future__ import annotations

import math
import os
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from . import domain as dm
from .defaults import GDAL_CACHE_BYTES
from .errors import InputError, OutputError
from .files import check_output_path, commit_files, partial_path, remove_quietly, remove_stale_partials
from .files import same_file
from .progress import Progress

CREATION_OPTIONS = {
    # NUM_THREADS: GDAL compresses blocks on all cores when it flushes them (the output's last
    # blocks, written after the network's last pass: 0.15 s -> 0.09 s for 2048x2048 on two cores).
    "GTiff": ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "PREDICTOR=3", "ZLEVEL=1", "BIGTIFF=IF_SAFER",
              "NUM_THREADS=ALL_CPUS"],
}
# Read-back of a finished output: runs of blocks decoded on all cores (GDAL 3.6 and later; older
# versions ignore the option with a warning). 0.05 s for 2048x2048 against 0.10 block by block.
READ_BACK_OPTIONS = {"GTiff": ["NUM_THREADS=ALL_CPUS"]}
READ_BACK_BYTES = 2 * 2**20  # per read: a run of blocks along a row of blocks, whatever the raster's size


def is_gdal_name(path: str) -> bool:
    """True for a GDAL dataset name that is not a plain file: /vsizip/, /vsicurl/, NETCDF:..., etc."""
    return bool(path) and (path.startswith("/vsi") or (":" in path[2:] and not os.path.exists(path)))


def open_quietly(name: str) -> gdal.Dataset | None:
    """The raster dataset `name` read-only, or None, without GDAL printing why it cannot open it."""
    with _quiet_gdal():
        return gdal.OpenEx(name, gdal.OF_RASTER | gdal.OF_READONLY)


def gdal_can_open(path: str) -> bool:
    """True when GDAL opens `path` as a raster (a file, a /vsi*/ name, a sub-dataset, a VRT)."""
    if not path or os.path.isdir(path):
        return False
    ds = open_quietly(path)
    return ds is not None and ds.RasterCount > 0


def open_raster(path: str, progress: Progress | None = None) -> gdal.Dataset:
    """Opens any GDAL raster dataset name: a file, /vsizip/, /vsicurl/, a sub-dataset, a VRT.

    A Sentinel-1 product is calibrated first (sentinel1.resolve_input), `progress` checked for
    cancellation meanwhile."""
    if not path:
        raise InputError("No input raster given: choose a raster file or a GDAL dataset name.")
    from .sentinel1 import resolve_input

    # a Sentinel-1 product (folder, zip, manifest.safe): its sigma0, held against pruning while `ds` lives
    path, in_use = resolve_input(path, progress=progress, hold=True)
    if os.path.isdir(path):
        raise InputError(f"Input raster {path} is a folder: choose a raster file in it.")
    ds = open_quietly(path)
    if ds is not None and ds.RasterCount > 0:
        if in_use is not None:
            weakref.finalize(ds, in_use.close)  # the product stays in the cache while this dataset lives
        return ds
    if in_use is not None:
        in_use.close()
    if not is_gdal_name(path) and not os.path.exists(path):
        raise InputError(f"Input raster {path!r} does not exist: check the path.")
    if is_gdal_name(path):
        raise InputError(f"GDAL cannot open the input {path!r} as a raster: check the name (for /vsizip/, the "
                         f"zip's path followed by the raster's path inside it) and that the source is reachable.")
    raise InputError(f"{path} is not a raster GDAL can read: choose a GeoTIFF or another GDAL raster.")


class _quiet_gdal:
    def __enter__(self):
        gdal.PushErrorHandler("CPLQuietErrorHandler")

    def __exit__(self, *exc):
        gdal.PopErrorHandler()


class GdalErrorLog:
    """Records GDAL's failures (CE_Failure, CE_Fatal) in this thread while it is pushed.

    GDAL's error handlers are a per-thread stack; handlers pushed above this one (a quiet
    handler around an open) take their errors, and pop before this one does.
    """

    def __init__(self):
        self.failures: list[str] = []
        self._pushed = False

    def _handler(self, err_class, err_no, message):  # noqa: ARG002 - GDAL's handler signature
        if err_class >= gdal.CE_Failure:
            self.failures.append(str(message).strip())

    def push(self) -> "GdalErrorLog":
        if not self._pushed:
            gdal.PushErrorHandler(self._handler)
            self._pushed = True
        return self

    def pop(self) -> None:
        if self._pushed:
            gdal.PopErrorHandler()
            self._pushed = False

    def since(self, mark: int) -> list[str]:
        return self.failures[mark:]


_CACHE_LOCK = threading.Lock()
_cache_users: list = []  # [previous limit, number of runs inside] while any run is inside


@contextmanager
def gdal_cache_limit(nbytes: int = GDAL_CACHE_BYTES):
    """Bound GDAL's block cache for a run (its default, 5 % of RAM, grows with the image); restored after.

    The limit is the process's: runs in several threads (a threaded batch) share one bound, and the
    last one out restores the limit the first one found. Each restoring its own left QGIS's cache at
    the bound when the runs overlapped."""
    with _CACHE_LOCK:
        if not _cache_users:
            _cache_users[:] = [gdal.GetCacheMax(), 0]
        _cache_users[1] += 1
        if gdal.GetCacheMax() > nbytes:
            gdal.SetCacheMax(nbytes)
    try:
        yield
    finally:
        with _CACHE_LOCK:
            _cache_users[1] -= 1
            if _cache_users[1] == 0:
                previous = _cache_users[0]
                _cache_users.clear()
                if gdal.GetCacheMax() != previous:
                    gdal.SetCacheMax(previous)


def data_bands(ds: gdal.Dataset, source: str) -> list[int]:
    """The bands that hold values, not an alpha band (a warped or RGBA GeoTIFF's transparency, which was
    despeckled as a second polarisation and taken as a second date): what "every band" means."""
    bands = [b for b in range(1, ds.RasterCount + 1)
             if ds.GetRasterBand(b).GetColorInterpretation() != gdal.GCI_AlphaBand]
    if not bands:
        raise InputError(f"{source} has only an alpha band (transparency), no values: give the raster of values.")
    return bands


def band_numbers(path: str) -> list[int]:
    """`path`'s bands of values (data_bands), opened and checked as every input is."""
    return data_bands(open_raster(path), path)


def check_bands(ds: gdal.Dataset, bands: list[int] | None, source: str) -> list[int]:
    if not bands:
        return data_bands(ds, source)
    bad = [b for b in bands if not 1 <= b <= ds.RasterCount]
    if bad:
        raise InputError(f"{source} has {ds.RasterCount} band(s); band(s) {bad} do not exist.")
    return list(bands)


@dataclass(frozen=True)
class Window:
    x: int
    y: int
    w: int
    h: int

    def grown(self, margin: int, width: int, height: int) -> "Window":
        x0, y0 = max(0, self.x - margin), max(0, self.y - margin)
        x1, y1 = min(width, self.x + self.w + margin), min(height, self.y + self.h + margin)
        return Window(x0, y0, x1 - x0, y1 - y0)

    def within(self, outer: "Window") -> tuple[slice, slice]:
        """Slices of `outer`'s array that cover this window."""
        return slice(self.y - outer.y, self.y - outer.y + self.h), slice(self.x - outer.x, self.x - outer.x + self.w)


def windows(width: int, height: int, size: int) -> list[Window]:
    return [
        Window(x, y, min(size, width - x), min(size, height - y))
        for y in range(0, height, size)
        for x in range(0, width, size)
    ]


def read(band: gdal.Band, win: Window) -> np.ndarray:
    data = band.ReadAsArray(win.x, win.y, win.w, win.h)
    if data is None:
        raise InputError(f"Reading window {win} failed: {gdal.GetLastErrorMsg()}")
    return data


def scaled(band: gdal.Band, values: np.ndarray) -> np.ndarray:
    """Physical values: raw x scale + offset where the band declares them (e.g. Int16 holding dB x 100
    with scale 0.01), as QGIS shows them. Nodata is compared with the raw values, before this."""
    scale, offset = band.GetScale(), band.GetOffset()
    if scale in (None, 1.0) and offset in (None, 0.0):
        return values
    return values * (1.0 if scale is None else scale) + (0.0 if offset is None else offset)


def nodata_of(band: gdal.Band) -> float | None:
    """The band's declared nodata as its pixels hold it: a Float32 band's rounded to Float32, as GDAL
    compares it (an ENVI or VRT nodata of 9999.9 never equals the stored 9999.900390625 as a double)."""
    nd = band.GetNoDataValue()
    if nd is None:
        return None
    if band.DataType in (gdal.GDT_Float32, gdal.GDT_CFloat32) and math.isfinite(nd) and abs(nd) <= FLOAT32_MAX:
        return float(np.float32(nd))
    return float(nd)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def has_pixel_mask(band: gdal.Band) -> bool:
    """Whether the band has a GDAL mask besides its nodata value: an internal or .msk mask, an alpha band."""
    return not band.GetMaskFlags() & (gdal.GMF_ALL_VALID | gdal.GMF_NODATA)


def pixel_mask(band: gdal.Band, win: Window) -> np.ndarray | None:
    """The band's GDAL mask over `win` (True: data), or None where it has none besides its nodata
    value, which valid_mask handles. Masked pixels were read as data (a fill of 12345 despeckled)."""
    if not has_pixel_mask(band):
        return None
    mask = band.GetMaskBand().ReadAsArray(win.x, win.y, win.w, win.h)
    if mask is None:
        raise InputError(f"Reading the mask of window {win} failed: {gdal.GetLastErrorMsg()}")
    return mask > 0


def band_valid(band: gdal.Band, win: Window, values: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels of a window that carry data: not nodata (valid_mask), not masked by the band's GDAL mask."""
    valid = valid_mask(values, nodata)
    mask = pixel_mask(band, win)
    return valid if mask is None else valid & mask


def is_complex(band: gdal.Band) -> bool:
    """CInt16, CInt32, CFloat32, CFloat64: single-look complex values z, despeckled as |z|²."""
    return bool(gdal.DataTypeIsComplex(band.DataType))


def input_nodata(band: gdal.Band, domain: str, zero_is_nodata: bool = False) -> float | None:
    """What counts as nodata in an input band: its declared nodata, else 0 when `zero_is_nodata`.

    Sentinel-1 GRD borders are 0 with no nodata declared; read as signal, ln 0 drives the
    network to bright halos next to them. A physical intensity or amplitude is never exactly
    0, but 0 dB is a valid decibel value, so zeros stay data in the decibel domain.
    """
    declared = nodata_of(band)
    if declared is None and zero_is_nodata and (domain != "decibel" or is_complex(band)):
        return 0.0
    return declared


def values_as_intensity(values: np.ndarray, domain: str, source: str = "the input") -> np.ndarray:
    """Pixel values as intensity (float64): complex z as |z|² (never its real part alone), else by `domain`."""
    if np.iscomplexobj(values):
        if domain == "decibel":
            raise InputError(f"{source} has complex values, which cannot be decibels: set `domain` to intensity "
                             "(|z|² is despeckled and written as intensity) or amplitude (written as |z|).")
        return values.real.astype(np.float64) ** 2 + values.imag.astype(np.float64) ** 2
    return dm.to_intensity(values.astype(np.float64, copy=False), domain)


def read_intensity(band: gdal.Band, win: Window, domain: str, zero_is_nodata: bool = False,
                   source: str = "The input", checked: bool = False,
                   within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A window as intensity (float64) and its validity (not nodata, finite); invalid pixels hold 1.

    Complex bands are read as |z|²; `zero_is_nodata` makes zeros nodata where none is declared.
    Negative and overflowing values are refused, unless `checked`: the band's statistics pass
    (band_statistics) has already scanned every pixel for them (despeckle's windows).
    `within`: only these pixels of the window count (a polygon's), the others are invalid and unchecked.
    """
    values = read(band, win)
    if not np.iscomplexobj(values):
        values = values.astype(np.float64)
    valid = band_valid(band, win, values, input_nodata(band, domain, zero_is_nodata)) & np.isfinite(values)
    if within is not None:
        valid &= within
    physical = scaled(band, values)
    if not checked:
        check_not_negative(physical, domain, source, valid)
    intensity = values_as_intensity(np.where(valid, physical, 1.0), domain)
    if not checked:
        check_intensity_finite(intensity, valid, values, domain, source)
    return intensity, valid


def check_not_negative(values: np.ndarray, domain: str, name: str, valid: np.ndarray | None = None) -> None:
    """Intensities and amplitudes are never negative: a band that has some is in dB (or holds an
    undeclared fill value). Speckle statistics and quality gave numbers for dB read as intensity.
    `valid`: the pixels of `values` to look at (all when None)."""
    if domain not in ("intensity", "amplitude") or np.iscomplexobj(values) or not values.size:
        return
    negative = values < 0 if valid is None else (values < 0) & valid
    if negative.any():
        raise InputError(
            f"{name} has negative values ({values[negative].min():g}), impossible for {domain}. "
            "If the values are in dB, set `domain` to decibel; otherwise declare them nodata."
        )


def check_intensity_finite(intensity: np.ndarray, valid: np.ndarray, values: np.ndarray, domain: str, name: str) -> None:
    """Values that overflow once read as intensity (an undeclared fill value such as 9999 dB) are refused
    like undeclared infinite ones: they made the network's output infinite and blamed the model."""
    bad = valid & ~np.isfinite(intensity)
    if bad.any():
        raise InputError(f"{name} has values too large to be {domain} ({values[bad].flat[0]!r} is infinite as an "
                         "intensity): a fill value that is not declared nodata? Declare it the band's nodata "
                         "(gdal_translate -a_nodata), or check the input domain.")


@dataclass
class BandStats:
    band: int
    offset: float
    valid_pixels: int
    looks: float | None = None  # equivalent number of looks of the flattest blocks (point_targets.LooksEstimator)


def band_statistics(ds, band_index: int, domain: str, source: str, tile: int, progress: Progress, share: float = 0.0,
                    done: float = 0.0, zero_is_nodata: bool = False) -> BandStats:
    """Validate a band's values, compute its normalisation offset (mean of ln I) and estimate its looks, window by window.

    Args:
        ds: the open dataset; band_index: 1-based band; domain: one of domain.DOMAINS;
        source: the name used in messages; tile: window size (at most STATISTICS_WINDOW); progress: reports
        `done` .. `done + share` percent and checks for cancellation; zero_is_nodata: zeros
        are nodata where the band declares none (see input_nodata).

    Raises:
        InputError: undeclared NaN or infinite values, negative intensities or amplitudes,
        or no valid pixel at all.
    """
    band = ds.GetRasterBand(band_index)
    nodata = input_nodata(band, domain, zero_is_nodata)
    from .point_targets import LOOKS_BLOCK

    # Windows on the looks estimator's block grid, so that it sees the same blocks whatever the tile
    # size, and at most STATISTICS_WINDOW a side: larger arrays made the pass slower (0.15 s against
    # 0.06 s for 2048x2048 at tile 1024, memory freshly mapped for each window's arrays).
    side = min(tile, STATISTICS_WINDOW)
    wins = windows(ds.RasterXSize, ds.RasterYSize, -(-side // LOOKS_BLOCK) * LOOKS_BLOCK)
    # The pass runs before any network pass, on one core unless split: a second thread on its own
    # handle of the dataset takes every other window (0.095 s -> 0.075 s for 2048x2048; the looks
    # estimator's Python part holds the GIL). The parts are merged in order, so the result does not
    # depend on timing.
    name = f"{source} band {band_index}"
    other = _second_handle(ds) if len(wins) > 1 and STATISTICS_THREADS > 1 else None
    if other is None:
        parts = [_StatisticsPart(ds, band, wins, nodata, domain, name)]
    else:
        parts = [_StatisticsPart(ds, band, wins[0::2], nodata, domain, name),
                 _StatisticsPart(other, other.GetRasterBand(band_index), wins[1::2], nodata, domain, name)]
    _run_parts(parts, progress, share, done, len(wins))
    log_mean, looks = parts[0].log_mean, parts[0].looks
    for part in parts[1:]:
        log_mean.merge(part.log_mean)
        looks.merge(part.looks)
    if log_mean.count == 0:
        raise InputError(f"{source} band {band_index} has no valid pixel (all nodata or zero): nothing to despeckle.")
    return BandStats(band_index, log_mean.value, log_mean.count, looks.looks())


STATISTICS_THREADS = 2
STATISTICS_WINDOW = 512


def check_receptive_field(ds: gdal.Dataset, field: int, source: str) -> None:
    """The raster is at least the network's receptive field on each side (smaller ones have no valid tile)."""
    if ds.RasterXSize < field or ds.RasterYSize < field:
        raise InputError(f"{source} is {ds.RasterXSize}x{ds.RasterYSize} pixels, smaller than the network's "
                         f"receptive field ({field}x{field}): use a larger raster.")


def statistics_of(path: str, band: int, domain: str, tile: int, progress: Progress, zero_is_nodata: bool = False,
                  receptive_field: int | None = None) -> BandStats:
    """One band's statistics from a path: open, check the band (and the size, given a receptive field), one pass.

    For the callers that need nothing else from the raster (the batch path's statistics task, phase 2's
    choice of base model); tiled_predict keeps its dataset open and calls band_statistics itself.
    """
    ds = open_raster(path, progress.without_percent())
    check_bands(ds, [band], path)
    if receptive_field is not None:
        check_receptive_field(ds, receptive_field, path)
    with gdal_cache_limit():
        return band_statistics(ds, band, domain, path, tile, progress, zero_is_nodata=zero_is_nodata)


def _second_handle(ds):
    """The same dataset opened again (GDAL handles are not shared between threads), or None."""
    name = ds.GetDescription()
    if not name or ds.GetDriver().ShortName == "MEM":
        return None
    with _quiet_gdal():
        other = gdal.OpenEx(name, gdal.OF_RASTER | gdal.OF_READONLY)
    if other is None or (other.RasterXSize, other.RasterYSize, other.RasterCount) != \
            (ds.RasterXSize, ds.RasterYSize, ds.RasterCount):
        return None
    return other


class _StatisticsPart:
    """The statistics of some windows of a band, read through one GDAL handle (`ds` kept open with its band)."""

    def __init__(self, ds, band, wins: list[Window], nodata, domain: str, name: str):
        from .point_targets import LooksEstimator

        self.ds, self.band, self.wins, self.nodata, self.domain, self.name = ds, band, wins, nodata, domain, name
        self.log_mean, self.looks = dm.LogMean(), LooksEstimator()
        self.done = 0
        self.error: tuple[int, InputError] | None = None  # (window's place in this part, error)

    def run(self, stop, between=None) -> None:
        """Scan the windows in order until done, an error, or `stop` is set; `between()` before each."""
        for k, win in enumerate(self.wins):
            if stop.is_set():
                return
            if between is not None:
                between()
            try:
                self._scan(win)
            except InputError as exc:
                self.error = (k, exc)
                return
            self.done += 1

    def _scan(self, win: Window) -> None:
        values = read(self.band, win)
        if not np.iscomplexobj(values):
            values = values.astype(np.float64)
        valid = band_valid(self.band, win, values, self.nodata)
        values = scaled(self.band, values)
        v = values[valid]
        if not np.isfinite(v).all():
            raise InputError(
                f"{self.name} has NaN or infinite values that are not declared nodata. "
                "Set the band's nodata value (e.g. with gdal_translate -a_nodata nan) or fill them."
            )
        check_not_negative(v, self.domain, self.name)
        intensity = values_as_intensity(values, self.domain, self.name)
        check_intensity_finite(intensity, valid, values, self.domain, self.name)
        self.log_mean.add(intensity, valid)
        self.looks.add(intensity, valid, win.y, win.x)


def _run_parts(parts: list[_StatisticsPart], progress: Progress, share: float, done: float, total: int) -> None:
    """The first part in this thread (progress and cancellation between its windows), the others in threads.

    Raises:
        InputError: the bad window that comes first in the band; Cancelled.
    """
    import threading

    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), name="despecknet-statistics", daemon=True)
               for p in parts[1:]]

    def between():
        progress.check()
        if any(p.error for p in parts):
            stop.set()
        progress.set(done + share * sum(p.done for p in parts) / total)

    for t in threads:
        t.start()
    try:
        parts[0].run(stop, between)
        for t in threads:
            while t.is_alive():
                t.join(0.2)
                progress.check()
    finally:
        stop.set()
        for t in threads:
            t.join()
    errors = [(k * len(parts) + i, exc) for i, p in enumerate(parts) if p.error for k, exc in [p.error]]
    if errors:
        raise min(errors, key=lambda e: e[0])[1]
    progress.set(done + share)


def _gcps(ds: gdal.Dataset) -> list[tuple[float, float, float, float]]:
    if ds.GetGeoTransform(can_return_null=True) is not None:
        return []
    return [(round(g.GCPPixel, 6), round(g.GCPLine, 6), round(g.GCPX, 9), round(g.GCPY, 9)) for g in ds.GetGCPs()]


def _rpcs(ds: gdal.Dataset) -> dict:
    return {} if georeferencing_of(ds) != "rpc" else {k: v.strip() for k, v in ds.GetMetadata("RPC").items()}


GRID_TOLERANCE = 1e-4  # pixels: geotransforms closer than this at every corner are one grid (rounding in a round trip)


def same_geotransform(a, b, width: int, height: int) -> bool:
    """Whether two geotransforms place a width x height raster's corners within GRID_TOLERANCE pixels."""
    if a is None or b is None:
        return a is None and b is None
    pixel = min(math.hypot(a[1], a[4]), math.hypot(a[2], a[5])) or 1.0
    for col, row in ((0, 0), (width, 0), (0, height), (width, height)):
        ax, ay = a[0] + col * a[1] + row * a[2], a[3] + col * a[4] + row * a[5]
        bx, by = b[0] + col * b[1] + row * b[2], b[3] + col * b[4] + row * b[5]
        if not math.hypot(ax - bx, ay - by) <= GRID_TOLERANCE * pixel:
            return False
    return True


def check_same_grid(ref: gdal.Dataset, ref_name: str, other: gdal.Dataset, other_name: str) -> None:
    """Rasters used pixel by pixel together must share size, geotransform (or GCPs, or RPCs) and CRS."""
    if (other.RasterXSize, other.RasterYSize) != (ref.RasterXSize, ref.RasterYSize):
        raise InputError(
            f"{other_name} is {other.RasterXSize}x{other.RasterYSize} pixels but {ref_name} is "
            f"{ref.RasterXSize}x{ref.RasterYSize}: they must cover the same pixel grid (co-register or resample)."
        )
    if not same_geotransform(other.GetGeoTransform(can_return_null=True), ref.GetGeoTransform(can_return_null=True),
                             ref.RasterXSize, ref.RasterYSize):
        raise InputError(f"{other_name} has another geotransform than {ref_name}: put them on the same pixel grid.")
    gcps = _gcps(ref)  # rasters georeferenced by GCPs only (Sentinel-1 GRD): the same points in the same CRS
    if _gcps(other) != gcps or (gcps and not _same_srs(other.GetGCPSpatialRef(), ref.GetGCPSpatialRef())):
        raise InputError(f"{other_name} has other ground control points than {ref_name}: they are not on the same "
                         "pixel grid (despeckle or calibrate both from the same product, or warp both).")
    if _rpcs(other) != _rpcs(ref):  # rasters georeferenced by RPCs only: each date has its own
        raise InputError(f"{other_name} has other RPCs (rational polynomial coefficients) than {ref_name}: they are "
                         "not on the same pixel grid (orthorectify or co-register both).")
    if not _same_srs(other.GetSpatialRef(), ref.GetSpatialRef()):
        raise InputError(f"{other_name} has another CRS than {ref_name}: reproject it onto the same grid.")


def _same_srs(a, b) -> bool:
    return (a is None) == (b is None) and (a is None or bool(a.IsSame(b)))


def with_nodata(values: np.ndarray, keep: np.ndarray, nodata: float | None) -> np.ndarray:
    """`values` with `nodata` outside `keep` (unchanged when the band declares no nodata)."""
    if nodata is None:
        return values
    return np.where(keep, values, math.nan if math.isnan(nodata) else nodata)


def output_nodata_of(ds: gdal.Dataset, bands: list[int], domain: str, output_domain: str,
                     zero_is_nodata: bool = False) -> list[float | None]:
    """The nodata value each output band of `bands` declares (output_nodata of the input's).

    A band with a GDAL mask gets NaN, so that its masked pixels stay nodata. And where the dataset's
    bands would get different values, all get NaN: a GeoTIFF holds one nodata value, and GDAL kept the
    last band's for every band with a warning only (band 1's fill of 0 then read as data). Decided
    over all of the dataset's bands, so that one-band runs of a scene (the batch) agree.
    """
    def one(band):
        nd = output_nodata(input_nodata(band, domain, zero_is_nodata), output_domain)
        return math.nan if nd is None and has_pixel_mask(band) else nd

    every = [one(ds.GetRasterBand(b)) for b in range(1, ds.RasterCount + 1)]
    if len({"nan" if v is not None and math.isnan(v) else v for v in every}) > 1:
        return [math.nan] * len(bands)
    return [every[b - 1] for b in bands]


def output_nodata(nodata: float | None, output_domain: str) -> float | None:
    """The nodata value an output in `output_domain` declares for an input's `nodata`.

    The input's value is kept where the output can never hold it as data (NaN, or at most 0
    for intensity and amplitude, far below any decibel value); otherwise NaN, e.g. the 0
    of a GRD border becomes NaN in a decibel output, where 0 dB is data.
    """
    if nodata is None or math.isnan(nodata):
        return nodata
    impossible = nodata <= -1000.0 if output_domain == "decibel" else nodata <= 0.0
    return nodata if impossible else math.nan


def shifted_geolocation(items: dict, x0: int, y0: int) -> dict:
    """GEOLOCATION metadata for a window starting at column x0, row y0: the arrays stay, the window's first
    pixel is further into them (an image pixel p is array sample (p - PIXEL_OFFSET) / PIXEL_STEP)."""
    out = {str(k): str(v) for k, v in items.items()}
    for key, offset in (("PIXEL_OFFSET", x0), ("LINE_OFFSET", y0)):
        out[key] = f"{float(out.get(key, 0) or 0) - offset:.17g}"
    return out


def _rectangle_text(xmin: float, ymin: float, xmax: float, ymax: float) -> str:
    """A rectangle as a user reads it: x then y ranges, to the centimetre of a projected CRS and the
    micro-degree of a geographic one (`:g` printed 4412345.6 as 4.41235e+06)."""
    def number(v: float) -> str:
        return f"{v:.6f}".rstrip("0").rstrip(".") if math.isfinite(v) else str(v)

    return f"x {number(xmin)} to {number(xmax)}, y {number(ymin)} to {number(ymax)}"


def raster_bounds(ds: gdal.Dataset) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the raster's footprint through its geotransform (rotated ones included)."""
    gt = ds.GetGeoTransform()
    xs, ys = zip(*[(gt[0] + c * gt[1] + r * gt[2], gt[3] + c * gt[4] + r * gt[5])
                   for c in (0, ds.RasterXSize) for r in (0, ds.RasterYSize)])
    return min(xs), min(ys), max(xs), max(ys)


def window_of_extent(ds: gdal.Dataset, xmin: float, ymin: float, xmax: float, ymax: float, source: str = "the input") -> Window:
    """The pixel window of `ds` that covers a rectangle in its CRS (every pixel it touches).

    North-up rasters map the rectangle exactly; others (rotated, or georeferenced by GCPs or
    RPCs only) through `world_to_pixel`, on points along the rectangle's edges.

    Raises:
        InputError: the rectangle cannot be placed on the raster, or misses it.
    """
    asked = _rectangle_text(xmin, ymin, xmax, ymax)
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise InputError(f"`extent` ({asked}) has a coordinate that is not a finite "
                         "number: give four finite coordinates, or leave the extent empty.")
    gt = ds.GetGeoTransform(can_return_null=True)
    if gt is not None and gt[2] == 0 and gt[4] == 0:
        cols = sorted(((xmin - gt[0]) / gt[1], (xmax - gt[0]) / gt[1]))
        rows = sorted(((ymin - gt[3]) / gt[5], (ymax - gt[3]) / gt[5]))
    else:
        steps = np.linspace(0.0, 1.0, 33)
        xs = np.concatenate([xmin + (xmax - xmin) * steps, np.full(33, xmax), xmax - (xmax - xmin) * steps, np.full(33, xmin)])
        ys = np.concatenate([np.full(33, ymin), ymin + (ymax - ymin) * steps, np.full(33, ymax), ymax - (ymax - ymin) * steps])
        c, r = world_to_pixel(ds)(xs, ys)
        placed = np.isfinite(c) & np.isfinite(r)
        if not placed.any():
            raise InputError(f"`extent` ({asked}) cannot be placed on {source}'s "
                             "georeferencing: give it in the raster's CRS, or warp the raster first.")
        cols, rows = (c[placed].min(), c[placed].max()), (r[placed].min(), r[placed].max())
    # An edge on a pixel boundary does not take the next pixel, also when the extent was reprojected
    # from another CRS (corners of a 10x10 window in EPSG:4326 overshot a UTM grid by 2.3e-4 pixel).
    eps = 1e-3
    x0, x1 = max(0, math.floor(cols[0] + eps)), min(ds.RasterXSize, math.ceil(cols[1] - eps))
    y0, y1 = max(0, math.floor(rows[0] + eps)), min(ds.RasterYSize, math.ceil(rows[1] - eps))
    if x1 <= x0 or y1 <= y0:
        covers = f", which covers {_rectangle_text(*raster_bounds(ds))}" if gt is not None else ""
        raise InputError(f"`extent` ({asked}) does not overlap {source}{covers}: "
                         "draw it over the raster (in the raster's CRS) or leave it empty.")
    return Window(x0, y0, x1 - x0, y1 - y0)


# QGIS shows a raster without any georeferencing with this geotransform (y grows upwards, as on a map):
# what is drawn over it is placed with it too (GDAL's own default is (0, 1, 0, 0, 0, 1)).
QGIS_UNREFERENCED_GEOTRANSFORM = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def georeferencing_of(ds: gdal.Dataset) -> str:
    """How the raster is placed on the map: "geotransform", "gcps", "rpc" or "none" (QGIS's order)."""
    if ds.GetGeoTransform(can_return_null=True) is not None:
        return "geotransform"
    if ds.GetGCPCount() >= 3:
        return "gcps"
    if ds.GetMetadata("RPC"):
        return "rpc"
    return "none"


def world_to_pixel(ds: gdal.Dataset):
    """A function (xs, ys) -> (columns, rows) from where QGIS shows the raster to fractional pixel
    coordinates (NaN where a point cannot be placed).

    Through the geotransform where there is one; rasters georeferenced by GCPs only (a
    Sentinel-1 GRD, and the plugin's outputs of one) through GDAL's GCP transformer, in the GCPs'
    CRS, and by RPCs only (ICEYE, TerraSAR-X and other GeoTIFFs with rational polynomials) through
    GDAL's RPC transformer, in longitude and latitude: QGIS shows them there. A raster with none of
    these is placed as QGIS shows it, column = x and row = -y.
    """
    kind = georeferencing_of(ds)
    if kind in ("gcps", "rpc"):
        with _quiet_gdal():
            transformer = gdal.Transformer(ds, None, ["SRC_METHOD=RPC"] if kind == "rpc" else [])

        def through_transformer(xs, ys):
            xs, ys = np.atleast_1d(np.asarray(xs, float)), np.atleast_1d(np.asarray(ys, float))
            with _quiet_gdal():
                points, ok = transformer.TransformPoints(1, [(float(x), float(y)) for x, y in zip(xs, ys)])
            cols = np.array([p[0] if k else np.nan for p, k in zip(points, ok)])
            rows = np.array([p[1] if k else np.nan for p, k in zip(points, ok)])
            return cols, rows

        return through_transformer
    inv = gdal.InvGeoTransform(ds.GetGeoTransform() if kind == "geotransform" else QGIS_UNREFERENCED_GEOTRANSFORM)

    def affine(xs, ys):
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        return inv[0] + inv[1] * xs + inv[2] * ys, inv[3] + inv[4] * xs + inv[5] * ys

    return affine


def windows_in(region: Window, size: int) -> list[Window]:
    """Tiles of `size` covering `region`, in the raster's pixel coordinates."""
    return [Window(region.x + w.x, region.y + w.y, w.w, w.h) for w in windows(region.w, region.h, size)]


def valid_mask(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels that carry data: not the band's nodata value (NaN nodata included)."""
    if nodata is None:
        return np.ones(values.shape, bool)
    if np.isnan(nodata):
        return ~np.isnan(values)
    return values != nodata


RASTER_OUTPUT_EXTENSIONS = ("tif", "tiff")


def driver_for(path: str, argument: str = "output") -> str:
    """GTiff, the one format written: a single file that holds the grid, CRS, nodata, band names and
    metadata, so the checked partial file is the whole output once renamed. Formats that keep
    these in sidecar files (SAGA, ENVI, BIL, ERS...) were reported written but could not be opened."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext in RASTER_OUTPUT_EXTENSIONS:
        return "GTiff"
    raise OutputError(f"`{argument}` {path}: rasters are written as GeoTIFF only (one file that keeps the grid, CRS, "
                      "nodata, band names and provenance). Give a .tif file name; convert the result afterwards "
                      "(Raster > Conversion > Translate) if another format is needed.")


CLOSE_WAIT_S = 10.0


def wait_until_closed(path: str, fail=None, timeout: float | None = None) -> None:
    """Return once no descriptor of this process has `path` open (Linux's /proc; elsewhere at once).

    GDAL writes a TIFF's last blocks and its directory when the dataset closes, and the dataset
    closes when its last reference goes, not when `ds = None` runs. In a threaded batch another
    thread was seen to hold one and close the file 10-50 ms later: a calibrated Sentinel-1 product
    moved into place in between read as all zeros ("no valid pixel") in the task that opened it.
    Calls `fail(reason)` when the file is still open after `timeout` seconds (None: CLOSE_WAIT_S);
    without `fail`, raises OutputError.
    """
    import gc
    import time

    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return
    timeout = CLOSE_WAIT_S if timeout is None else timeout
    target = os.path.realpath(path)  # as /proc shows it: symbolic links in the folder resolved
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            return
        open_here = False
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) == target:
                    open_here = True
                    break
            except OSError:  # closed meanwhile
                continue
        if not open_here:
            return
        if time.monotonic() > deadline:
            if fail is None:
                raise OutputError(f"Writing {path} did not finish: the file is still open in this process "
                                  f"{timeout:g} s after it was closed. Nothing was put in place; run it again.")
            fail(f"the file is still open in this process {timeout:g} s after it was closed, so its last "
                 "blocks may not be written")
            return
        gc.collect()  # a reference cycle that holds the dataset
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def shifted_rpc(rpc: dict, x0: int, y0: int) -> dict:
    """RPC metadata for the window of a raster that starts at column x0, row y0."""
    rpc = dict(rpc)
    for key, shift in (("SAMP_OFF", x0), ("LINE_OFF", y0)):
        if shift and key in rpc:
            rpc[key] = repr(float(rpc[key].split()[0]) - shift)
    return rpc


class RasterOutput:
    """A raster (Float32 unless told) written beside its destination under a hidden partial name.

    `finish()` flushes and closes it, then checks GDAL's recorded failures and reads the
    file back; `commit()` does that and moves it into place; `discard()` (also on any
    exception inside a `with` block) deletes it. A destination never holds a half-written
    or unreadable file, and a file already there stays untouched unless the new one is whole.
    `errors` is the GdalErrorLog shared by a set of outputs (Outputs); without one, the
    output records into its own.
    """

    def __init__(self, path: str, like: gdal.Dataset, bands: int, nodata: list[float | None], data_type: str = "Float32",
                 errors: GdalErrorLog | None = None, argument: str = "output", region: Window | None = None,
                 descriptions: list[str] | None = None, metadata: dict[str, str] | None = None,
                 band_metadata: list[dict[str, str]] | None = None, units: list[str] | None = None):
        """A new raster on `like`'s grid, or on the part of it that `region` covers.

        `write` takes windows in `like`'s pixel coordinates either way. `descriptions` are the
        band names (VV, VH); `metadata` goes into the dataset's default metadata domain,
        `band_metadata` (one dict per band) into each band's; `units` are the bands' unit types.
        """
        self.path = check_output_path(path, argument)
        driver_name = driver_for(path, argument)
        remove_stale_partials(self.path)
        self.tmp = partial_path(self.path)
        self._own_errors = errors is None
        self.errors = (errors or GdalErrorLog()).push()
        self._mark = len(self.errors.failures)
        self.finished = self.committed = self.handed_over = False
        self.bands = bands
        self.region = region or Window(0, 0, like.RasterXSize, like.RasterYSize)
        self.driver_name = driver_name
        self.float32 = data_type == "Float32"
        self.size = (self.region.w, self.region.h)
        driver = gdal.GetDriverByName(driver_name)
        floating = data_type in ("Float32", "Float64")
        self.ds = driver.Create(
            self.tmp, self.region.w, self.region.h, bands, gdal.GetDataTypeByName(data_type),
            [o for o in CREATION_OPTIONS.get(driver_name, []) if floating or not o.startswith("PREDICTOR")],
        )
        if self.ds is None:
            failure = (self.errors.since(self._mark) or [gdal.GetLastErrorMsg()])[-1]
            self._release()
            remove_quietly(self.tmp)
            raise OutputError(f"Cannot create {path}: {failure}")
        x0, y0 = self.region.x, self.region.y
        gt = like.GetGeoTransform(can_return_null=True)
        geolocation = like.GetMetadata("GEOLOCATION")
        if gt is None and (x0 or y0) and georeferencing_of(like) == "none" and not geolocation:
            # a window of a raster QGIS places with its default grid (y = -row) stays where it was drawn
            gt = QGIS_UNREFERENCED_GEOTRANSFORM
        if gt is not None:
            self.ds.SetGeoTransform((gt[0] + x0 * gt[1] + y0 * gt[2], gt[1], gt[2],
                                     gt[3] + x0 * gt[4] + y0 * gt[5], gt[4], gt[5]))
        if like.GetProjection():
            # the spatial reference itself, not its WKT1: a dynamic CRS keeps its coordinate epoch
            self.ds.SetSpatialRef(like.GetSpatialRef())
        elif like.GetGCPCount():
            gcps = [gdal.GCP(g.GCPX, g.GCPY, g.GCPZ, g.GCPPixel - x0, g.GCPLine - y0, g.Info, g.Id) for g in like.GetGCPs()]
            self.ds.SetGCPs(gcps, like.GetGCPProjection())
        rpc = like.GetMetadata("RPC")
        if rpc:  # ICEYE, TerraSAR-X and other GeoTIFFs placed by rational polynomials: without them, nowhere
            self.ds.SetMetadata(shifted_rpc(rpc, x0, y0), "RPC")
        if geolocation:  # swath products (netCDF, HDF5) placed by longitude and latitude arrays
            self.ds.SetMetadata(shifted_geolocation(geolocation, x0, y0), "GEOLOCATION")
        if metadata:
            self.ds.SetMetadata({str(k): str(v) for k, v in metadata.items()})
        for i, nd in enumerate(nodata, start=1):
            if nd is not None:
                self.ds.GetRasterBand(i).SetNoDataValue(float(nd))
            if descriptions and descriptions[i - 1]:
                self.ds.GetRasterBand(i).SetDescription(descriptions[i - 1])
            if band_metadata and band_metadata[i - 1]:
                # the source's statistics (QGIS writes them beside an input it displays) are not this output's:
                # copied, they set QGIS's stretch and gdalinfo's min/max (a dB output showed 0.157 to 2.8e7)
                self.ds.GetRasterBand(i).SetMetadata({str(k): str(v) for k, v in band_metadata[i - 1].items()
                                                      if not str(k).upper().startswith("STATISTICS_")})
            if units and units[i - 1]:
                self.ds.GetRasterBand(i).SetUnitType(units[i - 1])

    def _adopt(self, errors: GdalErrorLog) -> None:
        """Record into a shared log from now on (its own log is the top of GDAL's stack here)."""
        self.errors.pop()
        self.errors, self._own_errors = errors, False
        self._mark = len(errors.failures)

    def band(self, i: int) -> gdal.Band:
        return self.ds.GetRasterBand(i)

    def write(self, i: int, win: Window, data: np.ndarray) -> None:
        if self.float32 and data.dtype == np.float64:
            data = self._as_float32(data)
        try:
            status = self.band(i).WriteArray(data, win.x - self.region.x, win.y - self.region.y)
        except RuntimeError as exc:  # GDAL with exceptions enabled by someone else
            self._fail(str(exc))
        if status != 0:
            self._fail(gdal.GetLastErrorMsg())
        failures = self.errors.since(self._mark)
        if failures:
            self._fail(failures[0])

    def _as_float32(self, data: np.ndarray) -> np.ndarray:
        """`data` as Float32, refused where values do not fit (they became inf or 0, reported as success)."""
        with np.errstate(over="ignore", under="ignore"):
            cast = data.astype(np.float32)
        if np.isfinite(cast).all() and cast.all():  # the usual case, two passes
            return cast
        lost = np.isfinite(data) & (~np.isfinite(cast) | ((cast == 0) & (data != 0)))
        if lost.any():
            raise OutputError(
                f"{self.path} cannot hold values such as {data[lost].flat[0]:g} as Float32 (from about 1.4e-45 to "
                "3.4e38): nothing was written. Choose a Float64 output, or check the input's units and scale.")
        return cast

    def _fail(self, detail: str) -> None:
        raise OutputError(
            f"Writing {self.path} failed ({detail.strip() or 'unknown GDAL error'}). Is the disk full? "
            "Nothing was written there; a file already at that path is unchanged."
        )

    def finish(self) -> str:
        """Flush, close and read the partial file back; raises OutputError if anything failed."""
        try:
            self.ds.FlushCache()
            self.ds = None  # closing writes the last blocks and the TIFF directory
        except RuntimeError as exc:
            self.ds = None
            self._fail(str(exc))
        failures = self.errors.since(self._mark)
        if failures:
            self._fail(failures[0])
        wait_until_closed(self.tmp, self._fail)
        self._read_back()
        self.finished = True
        return self.tmp

    def _read_back(self) -> None:
        """Open the finished file again and decode every block of every band."""
        try:
            ds = gdal.OpenEx(self.tmp, gdal.OF_RASTER | gdal.OF_READONLY,
                             open_options=READ_BACK_OPTIONS.get(self.driver_name, []))
        except RuntimeError as exc:
            self._fail(str(exc))
        if ds is None:
            self._fail((self.errors.since(self._mark) or ["the file cannot be opened again"])[0])
        if (ds.RasterXSize, ds.RasterYSize) != self.size or ds.RasterCount != self.bands:
            self._fail(f"read back as {ds.RasterXSize}x{ds.RasterYSize}x{ds.RasterCount}")
        width, height = self.size
        for i in range(1, ds.RasterCount + 1):
            band = ds.GetRasterBand(i)
            block_cols, block_rows = band.GetBlockSize()
            block_bytes = block_cols * block_rows * gdal.GetDataTypeSize(band.DataType) // 8
            cols = max(1, READ_BACK_BYTES // max(block_bytes, 1)) * block_cols
            for y in range(0, height, block_rows):
                for x in range(0, width, cols):
                    try:
                        data = band.ReadRaster(x, y, min(cols, width - x), min(block_rows, height - y))
                    except RuntimeError as exc:
                        self._fail(str(exc))
                    if data is None:
                        where = f"band {i} at pixel ({x}, {y}) cannot be read back"
                        self._fail((self.errors.since(self._mark) or [where])[0])
        ds = None
        failures = self.errors.since(self._mark)
        if failures:
            self._fail(failures[0])

    def hand_over(self) -> str:
        """Finish, and leave the partial file to the caller, who moves it into place together with
        others (files.commit_files) or removes it."""
        try:
            self.finish()
        except BaseException:
            self.discard()
            raise
        self.handed_over = True
        self._release()
        return self.tmp

    def commit(self) -> str:
        if not self.finished:
            self.finish()
        try:
            commit_files([(self.tmp, self.path)])
            self.committed = True
        finally:
            self._release()
        return self.path

    def discard(self) -> None:
        self.ds = None
        remove_quietly(self.tmp)
        self._release()

    def _release(self) -> None:
        if self._own_errors:
            self.errors.pop()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not (self.committed or self.handed_over):
            self.discard()
        return False


class Outputs:
    """Several RasterOutputs that appear together or not at all.

    Takes functions that create them (None for an output not asked for), so that a
    failure to create the second one still removes the first one's partial file. One
    GdalErrorLog records GDAL's failures for all of them, from the first creation to the
    end of the `with` block. `commit()` finishes (flushes, closes, reads back) every output
    before any of them takes its final name, then moves them all or none into place.
    """

    def __init__(self, *makers):
        self.outputs = []
        self.errors = GdalErrorLog().push()
        try:
            for make in makers:
                out = make() if make is not None else None
                if out is not None and out._own_errors:
                    out._adopt(self.errors)
                self.outputs.append(out)
            paths = [o.path for o in self.outputs if o is not None]
            for i, p in enumerate(paths):
                if any(same_file(p, q) for q in paths[i + 1:]):
                    raise OutputError(f"Two outputs are the same file {p}: choose different files.")
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __enter__(self):
        return self.outputs

    def commit(self) -> None:
        present = [out for out in self.outputs if out is not None]
        for out in present:
            out.finish()
        commit_files([(out.tmp, out.path) for out in present])
        for out in present:
            out.committed = True

    def __exit__(self, exc_type, exc, tb):
        for out in self.outputs:
            if out is not None and not out.committed:
                out.discard()
        self.errors.pop()
        return False


def read_band(path: str, band: int = 1) -> np.ndarray:
    """A whole band as float64: for small rasters (tools, tests), never inside a streamed job."""
    ds = open_raster(path)  # the dataset must outlive the band read from it
    return ds.GetRasterBand(band).ReadAsArray().astype(np.float64)


def write_raster(path: str, bands, geotransform=(0.0, 10.0, 0.0, 0.0, 0.0, -10.0), epsg: int | None = None,
                 nodata: float | None = None, data_type: int = gdal.GDT_Float32, options=()) -> str:
    """Write a 2-D array, or a list of them, as a GeoTIFF (small rasters: tools, tests, samples)."""
    from osgeo import osr

    bands = [bands] if np.ndim(bands) == 2 else list(bands)
    h, w = bands[0].shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, len(bands), data_type, list(options))
    ds.SetGeoTransform(tuple(geotransform))
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for i, b in enumerate(bands, start=1):
        band = ds.GetRasterBand(i)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(b)
    ds = None
    return str(path)
