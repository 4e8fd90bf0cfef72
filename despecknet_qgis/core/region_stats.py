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
from . import metrics as mt
from .defaults import ZERO_IS_NODATA
from .errors import InputError, translate_errors
from .raster import Window, check_bands, input_nodata, open_raster, read, scaled, valid_mask, values_as_intensity

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
    from scipy.special import digamma, polygamma

    v = np.asarray(values, dtype=np.float64)
    v = v[v > 0]
    if v.size < 2:
        return float("nan")
    s = math.log(v.mean()) - float(np.log(v).mean())
    if s <= 0:
        return float("inf")
    L = (3 - s + math.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)  # Minka's starting point
    for _ in range(50):
        step = (math.log(L) - float(digamma(L)) - s) / (1 / L - float(polygamma(1, L)))
        L = max(L - step, 1e-6)
        if abs(step) < 1e-10 * L:
            break
    return float(L)


def polygon_window(geometry: ogr.Geometry, geotransform, width: int, height: int) -> Window | None:
    minx, maxx, miny, maxy = geometry.GetEnvelope()
    inv = gdal.InvGeoTransform(geotransform)
    cols, rows = [], []
    for x, y in ((minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy)):
        c, r = gdal.ApplyGeoTransform(inv, x, y)
        cols.append(c)
        rows.append(r)
    c0, c1 = max(0, int(math.floor(min(cols)))), min(width, int(math.ceil(max(cols))))
    r0, r1 = max(0, int(math.floor(min(rows)))), min(height, int(math.ceil(max(rows))))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def polygon_mask(geometry: ogr.Geometry, geotransform, win: Window, srs_wkt: str) -> np.ndarray:
    """Pixels of `win` whose centre lies inside the polygon."""
    mem = gdal.GetDriverByName("MEM").Create("", win.w, win.h, 1, gdal.GDT_Byte)
    gt = list(geotransform)
    gt[0] = geotransform[0] + win.x * geotransform[1] + win.y * geotransform[2]
    gt[3] = geotransform[3] + win.x * geotransform[4] + win.y * geotransform[5]
    mem.SetGeoTransform(gt)
    if srs_wkt:
        mem.SetProjection(srs_wkt)
    ds = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = ds.CreateLayer("p", geom_type=ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(geometry)
    layer.CreateFeature(feature)
    gdal.RasterizeLayer(mem, [1], layer, burn_values=[1])
    return mem.GetRasterBand(1).ReadAsArray().astype(bool)


@translate_errors
def region_statistics(raster: str, polygons_wkt: list[str], band: int = 1, domain: str = "intensity",
                      keep_values: bool = False, zero_is_nodata: bool = ZERO_IS_NODATA) -> list[RegionStats]:
    """Statistics of the intensity inside each polygon (WKT in the raster's CRS).

    Complex bands count as |z|²; zeros of a band that declares no nodata are nodata with
    `zero_is_nodata` (raster.input_nodata), as in despeckle_raster.
    """
    dm.check_domain(domain)
    ds = open_raster(raster)
    b = ds.GetRasterBand(check_bands(ds, [band], raster)[0])
    nodata = input_nodata(b, domain, zero_is_nodata)
    gt = ds.GetGeoTransform()
    results = []
    for i, wkt in enumerate(polygons_wkt):
        geometry = ogr.CreateGeometryFromWkt(wkt)
        if geometry is None or geometry.IsEmpty():
            raise InputError(f"Polygon {i + 1} has no usable geometry.")
        win = polygon_window(geometry, gt, ds.RasterXSize, ds.RasterYSize)
        if win is None:
            sample = np.array([])
        else:
            values = read(b, win)
            inside = polygon_mask(geometry, gt, win, ds.GetProjection()) & valid_mask(values, nodata) & np.isfinite(values)
            sample = values_as_intensity(scaled(b, values)[inside], domain, f"{raster} band {band}")
        n = int(sample.size)
        results.append(RegionStats(
            raster=raster, polygon=i, pixels=n,
            mean=float(sample.mean()) if n else float("nan"),
            std=float(sample.std(ddof=1)) if n > 1 else float("nan"),
            enl=mt.enl(sample) if n > 1 else float("nan"),
            cv=mt.coefficient_of_variation(sample) if n > 1 else float("nan"),
            gamma_looks=gamma_looks(sample) if n > 1 else float("nan"),
            values=sample if keep_values else None,
        ))
    return results
