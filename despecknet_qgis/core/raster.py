"""GDAL helpers: opening inputs, windows, validity masks and outputs that appear only when complete."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from . import domain as dm
from .errors import DespeckNetError

CREATION_OPTIONS = {
    "GTiff": ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "PREDICTOR=3", "ZLEVEL=1", "BIGTIFF=IF_SAFER"],
}


def open_raster(path: str) -> gdal.Dataset:
    if not path or not os.path.exists(path):
        raise DespeckNetError(f"Input raster {path!r} does not exist.")
    with _quiet_gdal():
        ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
    if ds is None or ds.RasterCount == 0:
        raise DespeckNetError(f"{path} is not a raster GDAL can read: choose a GeoTIFF or another GDAL raster.")
    return ds


class _quiet_gdal:
    def __enter__(self):
        gdal.PushErrorHandler("CPLQuietErrorHandler")

    def __exit__(self, *exc):
        gdal.PopErrorHandler()


def check_bands(ds: gdal.Dataset, bands: list[int] | None, source: str) -> list[int]:
    if not bands:
        return list(range(1, ds.RasterCount + 1))
    bad = [b for b in bands if not 1 <= b <= ds.RasterCount]
    if bad:
        raise DespeckNetError(f"{source} has {ds.RasterCount} band(s); band(s) {bad} do not exist.")
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
        raise DespeckNetError(f"Reading window {win} failed: {gdal.GetLastErrorMsg()}")
    return data


def nodata_of(band: gdal.Band) -> float | None:
    nd = band.GetNoDataValue()
    return None if nd is None else float(nd)


def read_intensity(band: gdal.Band, win: Window, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """A window as intensity (float64) and its validity (not nodata, finite); invalid pixels hold 1."""
    values = read(band, win).astype(np.float64)
    valid = valid_mask(values, nodata_of(band)) & np.isfinite(values)
    return dm.to_intensity(np.where(valid, values, 1.0), domain), valid


def check_same_grid(ref: gdal.Dataset, ref_name: str, other: gdal.Dataset, other_name: str) -> None:
    """Rasters used pixel by pixel together must share size, geotransform and CRS."""
    if (other.RasterXSize, other.RasterYSize) != (ref.RasterXSize, ref.RasterYSize):
        raise DespeckNetError(
            f"{other_name} is {other.RasterXSize}x{other.RasterYSize} pixels but {ref_name} is "
            f"{ref.RasterXSize}x{ref.RasterYSize}: they must cover the same pixel grid (co-register or resample)."
        )
    if other.GetGeoTransform() != ref.GetGeoTransform():
        raise DespeckNetError(f"{other_name} has another geotransform than {ref_name}: put them on the same pixel grid.")
    a, b = other.GetSpatialRef(), ref.GetSpatialRef()
    if (a is None) != (b is None) or (a is not None and not a.IsSame(b)):
        raise DespeckNetError(f"{other_name} has another CRS than {ref_name}: reproject it onto the same grid.")


def valid_mask(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels that carry data: not the band's nodata value (NaN nodata included)."""
    if nodata is None:
        return np.ones(values.shape, bool)
    if np.isnan(nodata):
        return ~np.isnan(values)
    return values != nodata


def driver_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext in ("tif", "tiff"):
        return "GTiff"
    for i in range(gdal.GetDriverCount()):
        drv = gdal.GetDriver(i)
        meta = drv.GetMetadata() or {}
        if meta.get("DCAP_RASTER") == "YES" and meta.get("DCAP_CREATE") == "YES":
            if ext and ext in (meta.get("DMD_EXTENSIONS") or "").split():
                return drv.ShortName
    raise DespeckNetError(f"Cannot write {path}: no GDAL driver creates '.{ext}' rasters. Use a .tif output.")


class RasterOutput:
    """A raster (Float32 unless told) written beside its destination under a hidden temporary name.

    `commit()` closes it and moves it into place; `discard()` (also on any exception
    inside a `with` block) deletes it. A destination never holds a half-written file.
    """

    def __init__(self, path: str, like: gdal.Dataset, bands: int, nodata: list[float | None], data_type: str = "Float32"):
        self.path = os.path.abspath(path)
        driver_name = driver_for(path)
        directory, name = os.path.split(self.path)
        if not os.path.isdir(directory):
            raise DespeckNetError(f"Output folder {directory} does not exist.")
        stem, ext = os.path.splitext(name)
        self.tmp = os.path.join(directory, f".{stem}.partial-{uuid.uuid4().hex[:8]}{ext}")
        driver = gdal.GetDriverByName(driver_name)
        self.ds = driver.Create(
            self.tmp, like.RasterXSize, like.RasterYSize, bands, gdal.GetDataTypeByName(data_type),
            [o for o in CREATION_OPTIONS.get(driver_name, []) if data_type == "Float32" or not o.startswith("PREDICTOR")],
        )
        if self.ds is None:
            raise DespeckNetError(f"Cannot create {path}: {gdal.GetLastErrorMsg()}")
        gt = like.GetGeoTransform(can_return_null=True)
        if gt is not None:
            self.ds.SetGeoTransform(gt)
        if like.GetProjection():
            self.ds.SetProjection(like.GetProjection())
        elif like.GetGCPCount():
            self.ds.SetGCPs(like.GetGCPs(), like.GetGCPProjection())
        for i, nd in enumerate(nodata, start=1):
            if nd is not None:
                self.ds.GetRasterBand(i).SetNoDataValue(float(nd))

    def band(self, i: int) -> gdal.Band:
        return self.ds.GetRasterBand(i)

    def write(self, i: int, win: Window, data: np.ndarray) -> None:
        if self.band(i).WriteArray(data, win.x, win.y) != 0:
            raise DespeckNetError(f"Writing {self.path} failed: {gdal.GetLastErrorMsg()}")

    def commit(self) -> str:
        self.ds.FlushCache()
        self.ds = None
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.ds = None
        for p in (self.tmp, self.tmp + ".aux.xml"):
            if os.path.exists(p):
                os.remove(p)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or self.ds is not None:
            self.discard()
        return False


class Outputs:
    """Several RasterOutputs that appear together or not at all.

    Takes functions that create them (None for an output not asked for), so that a
    failure to create the second one still removes the first one's temporary file.
    """

    def __init__(self, *makers):
        self.outputs = []
        try:
            for make in makers:
                self.outputs.append(make() if make is not None else None)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __enter__(self):
        return self.outputs

    def commit(self) -> None:
        for out in self.outputs:
            if out is not None:
                out.commit()

    def __exit__(self, exc_type, exc, tb):
        for out in self.outputs:
            if out is not None and out.ds is not None:
                out.discard()
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


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
