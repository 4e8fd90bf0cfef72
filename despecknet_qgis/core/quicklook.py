"""PNG quick-looks in dB, for people: the demo and the docs look at results this way."""
from __future__ import annotations

import numpy as np
from osgeo import gdal


def db_to_byte(intensity: np.ndarray, lo_db: float, hi_db: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        v = 10.0 * np.log10(intensity)
    v = np.nan_to_num(v, nan=lo_db, neginf=lo_db, posinf=hi_db)
    return np.clip((v - lo_db) / (hi_db - lo_db) * 255.0, 0, 255).astype(np.uint8)


def db_range(intensity: np.ndarray, percentiles=(1.0, 99.0)) -> tuple[float, float]:
    valid = intensity[np.isfinite(intensity) & (intensity > 0)]
    lo, hi = np.percentile(10.0 * np.log10(valid), percentiles)
    return float(lo), float(hi)


def write_png(path: str, images: list[np.ndarray], lo_db: float, hi_db: float, gap: int = 4) -> None:
    """Side-by-side greyscale panels of intensity images, one dB stretch for all."""
    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = np.full((h, w), 255, np.uint8)
    x = 0
    for im in images:
        canvas[: im.shape[0], x : x + im.shape[1]] = db_to_byte(im, lo_db, hi_db)
        x += im.shape[1] + gap
    mem = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
    mem.GetRasterBand(1).WriteArray(canvas)
    gdal.GetDriverByName("PNG").CreateCopy(path, mem)
