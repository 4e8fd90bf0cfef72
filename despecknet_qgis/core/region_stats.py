"""ENL and coefficient of variation of rasters inside polygons (homogeneous areas drawn by a user).

Polygons come as WKT in the raster's CRS (the QGIS layer reprojects). Each polygon is
rasterised on the raster's grid over its bounding window only, so memory depends on
the polygon, not on the raster. Nodata and pixels outside the raster are excluded.
A Gamma law fitted by maximum likelihood gives the number of looks seen in the sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, ogr

from . import domain as dm
from .defaults import ZERO_IS_NODATA
from .errors import InputError, translate_errors
from .progress import SILENT, Progress
from .raster import Window, check_bands, gdal_cache_limit, open_raster, read_intensity, world_to_pixel

MIN_PIXELS = 30  # below this ENL and Cx are too noisy to mean much: warn


@dataclass
class RegionStats:
    raster: str
    polygon: int
    pixels: int
    mean: float
    std: float
    enl: float
    cv: float
    gamma_looks: float
    values: np.ndarray | None = None  # the intensity sample, for histograms

    @property
    def too_small(self) -> bool:
        return self.pixels < MIN_PIXELS


def gamma_looks(values: np.ndarray) -> float:
    """Maximum-likelihood shape L of a Gamma law with free mean (L = looks for speckle)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[v > 0]
    if v.size < 2:
        return float("nan")
    return _gamma_shape(math.log(v.mean()) - float(np.log(v).mean()))


def _gamma_shape(s: float) -> float:
    """The Gamma shape whose ln(mean) - mean(ln) is `s` (Newton's method from Minka's start)."""
    from scipy.special import digamma, polygamma

    if s <= 0:
        return float("inf")
    L = (3 - s + math.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)  # Minka's starting point
    for _ in range(50):
        step = (math.log(L) - float(digamma(L)) - s) / (1 / L - float(polygamma(1, L)))
        L = max(L - step, 1e-6)
        if abs(step) < 1e-10 * L:
            break
    return float(L)


def pixel_geometry(geometry: ogr.Geometry, to_pixel) -> ogr.Geometry:
    """The geometry in fractional pixel coordinates (columns, rows), its edges densified first so that
    a non-affine georeferencing (GCPs) bends them as it bends the image."""
    g = geometry.Clone()
    minx, maxx, miny, maxy = g.GetEnvelope()
    span = max(maxx - minx, maxy - miny)
    if span > 0:
        g.Segmentize(span / 64)

    def move(part):
        if part.GetGeometryCount():
            for k in range(part.GetGeometryCount()):
                move(part.GetGeometryRef(k))
            return
        n = part.GetPointCount()
        if n:
            pts = np.array([part.GetPoint_2D(k) for k in range(n)])
            cols, rows = to_pixel(pts[:, 0], pts[:, 1])
            for k in range(n):
                part.SetPoint_2D(k, float(cols[k]), float(rows[k]))

    move(g)
    return g


def polygon_window(pixel_polygon: ogr.Geometry, width: int, height: int) -> Window | None:
    """The pixels that a polygon in pixel coordinates (pixel_geometry) touches, clipped to the raster."""
    minx, maxx, miny, maxy = pixel_polygon.GetEnvelope()
    if not all(math.isfinite(v) for v in (minx, maxx, miny, maxy)):
        return None
    c0, c1 = max(0, int(math.floor(minx))), min(width, int(math.ceil(maxx)))
    r0, r1 = max(0, int(math.floor(miny))), min(height, int(math.ceil(maxy)))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def polygon_mask(pixel_polygon: ogr.Geometry, win: Window) -> np.ndarray:
    """Pixels of `win` whose centre lies inside a polygon in pixel coordinates."""
    mem = gdal.GetDriverByName("MEM").Create("", win.w, win.h, 1, gdal.GDT_Byte)
    mem.SetGeoTransform((win.x, 1.0, 0.0, win.y, 0.0, 1.0))
    ds = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = ds.CreateLayer("p", geom_type=ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(pixel_polygon)
    layer.CreateFeature(feature)
    gdal.PushErrorHandler("CPLQuietErrorHandler")  # neither has a CRS: both are in pixel coordinates
    try:
        gdal.RasterizeLayer(mem, [1], layer, burn_values=[1])
    finally:
        gdal.PopErrorHandler()
    return mem.GetRasterBand(1).ReadAsArray().astype(bool)


@translate_errors
@gdal_cache_limit()
def region_statistics(raster: str, polygons_wkt: list[str], band: int = 1, domain: str = "intensity",
                      keep_values: bool = False, zero_is_nodata: bool = ZERO_IS_NODATA,
                      progress: Progress | None = None) -> list[RegionStats]:
    """Statistics of the intensity inside each polygon (WKT in the raster's CRS).

    Complex bands count as |z|²; zeros of a band that declares no nodata are nodata with
    `zero_is_nodata` (raster.input_nodata), as in despeckle_raster. The pixels are read in strips
    (memory does not grow with the polygon); `progress` is checked for cancellation between them.
    `keep_values` keeps a sample of at most KEPT_VALUES intensities per polygon for its histogram.
    """
    dm.check_domain(domain, raster)
    progress = progress or SILENT
    ds = open_raster(raster, progress)
    b = ds.GetRasterBand(check_bands(ds, [band], raster)[0])
    to_pixel = world_to_pixel(ds)
    results = []
    for i, wkt in enumerate(polygons_wkt):
        geometry = ogr.CreateGeometryFromWkt(wkt)
        if geometry is None or geometry.IsEmpty():
            raise InputError(f"Polygon {i + 1} has no usable geometry.")
        pixel_polygon = pixel_geometry(geometry, to_pixel)
        win = polygon_window(pixel_polygon, ds.RasterXSize, ds.RasterYSize)
        moments = _Moments()
        kept = []
        if win is not None:
            # The polygon's bounding window in strips: a polygon over a whole image (or two small parts
            # at opposite corners) needed about 29 bytes a pixel of that window at once.
            rows = max(1, STRIP_PIXELS // win.w)
            every = max(1, -(-win.w * win.h // KEPT_VALUES))  # the histogram's sample: at most KEPT_VALUES
            for y in range(win.y, win.y + win.h, rows):
                progress.check()
                strip = Window(win.x, y, win.w, min(rows, win.y + win.h - y))
                intensity, inside = read_intensity(b, strip, domain, zero_is_nodata, f"{raster} band {band}",
                                                   within=polygon_mask(pixel_polygon, strip))
                sample = intensity[inside]
                if keep_values and sample.size:
                    kept.append(sample[(-moments.n) % every::every].copy())  # a copy: a view kept the strip
                moments.add(sample)
        n = moments.n
        results.append(RegionStats(
            raster=raster, polygon=i, pixels=n,
            mean=moments.mean if n else float("nan"),
            std=moments.std if n > 1 else float("nan"),
            enl=moments.enl if n > 1 else float("nan"),
            cv=moments.cv if n > 1 else float("nan"),
            gamma_looks=moments.gamma_looks if n > 1 else float("nan"),
            values=(np.concatenate(kept) if kept else np.array([])) if keep_values else None,
        ))
    return results


STRIP_PIXELS = 1 << 20  # pixels of a polygon's window read at once (about 30 MB of arrays)
KEPT_VALUES = 1 << 20  # values kept for a polygon's histogram (keep_values): every k-th of the window's


class _Moments:
    """Count, mean and sum of squared deviations (merged strip by strip, Chan et al.) and the mean log
    of the positive values: what the mean, std, ENL, CV and the Gamma looks need, in constant memory."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.positive, self.positive_sum, self.log_sum = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        k = int(v.size)
        if not k:
            return
        mu = float(v.mean())
        m2 = float(((v - mu) ** 2).sum())
        total = self.n + k
        delta = mu - self.mean
        self.mean += delta * k / total
        self.m2 += m2 + delta * delta * self.n * k / total
        self.n = total
        p = v[v > 0]
        self.positive += int(p.size)
        self.positive_sum += float(p.sum())
        self.log_sum += float(np.log(p).sum())

    @property
    def variance(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    @property
    def enl(self) -> float:  # as metrics.enl
        return self.mean**2 / self.variance if self.variance > 0 else float("inf")

    @property
    def cv(self) -> float:  # as metrics.coefficient_of_variation
        return self.std / self.mean if self.mean != 0 else float("nan")

    @property
    def gamma_looks(self) -> float:  # as gamma_looks
        if self.positive < 2:
            return float("nan")
        return _gamma_shape(math.log(self.positive_sum / self.positive) - self.log_sum / self.positive)
