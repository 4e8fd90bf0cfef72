"""Despeckle rasters of any size, tile by tile, with a deSpeckNet ONNX model.

Each tile is read with a margin of at least the network's receptive radius and only
its centre is kept, so tiled and whole-image predictions agree to float rounding and
memory depends on the tile size alone. A first pass over the band computes the
normalisation offset (mean of ln I) and rejects bad values before any output exists.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import domain as dm
from .errors import DespeckNetError
from .inference import Despeckler
from .progress import SILENT, Progress
from .raster import Outputs, RasterOutput, check_bands, nodata_of, open_raster, read, read_intensity, same_file, valid_mask, windows

STATS_SHARE = 5.0  # percent of the progress bar for the statistics pass


@dataclass
class BandStats:
    band: int
    offset: float
    valid_pixels: int


@dataclass
class DespeckleReport:
    output: str
    noise_output: str | None
    provider: str
    bands: list[BandStats] = field(default_factory=list)
    seconds: float = 0.0
    tiles: int = 0


def band_statistics(ds, band_index: int, domain: str, source: str, tile: int, progress: Progress, share: float, done: float) -> BandStats:
    """Validate a band's values and compute its normalisation offset, window by window."""
    band = ds.GetRasterBand(band_index)
    nodata = nodata_of(band)
    log_mean = dm.LogMean()
    wins = windows(ds.RasterXSize, ds.RasterYSize, tile)
    for k, win in enumerate(wins):
        progress.check()
        values = read(band, win).astype(np.float64)
        valid = valid_mask(values, nodata)
        v = values[valid]
        if not np.isfinite(v).all():
            raise DespeckNetError(
                f"{source} band {band_index} has NaN or infinite values that are not declared nodata. "
                "Set the band's nodata value (e.g. with gdal_translate -a_nodata nan) or fill them."
            )
        if domain in ("intensity", "amplitude") and (v < 0).any():
            raise DespeckNetError(
                f"{source} band {band_index} has negative values ({v.min():g}), impossible for {domain}. "
                "If the values are in dB, set INPUT_DOMAIN to decibel; otherwise declare them nodata."
            )
        intensity = dm.to_intensity(values, domain)
        log_mean.add(intensity, valid)
        progress.set(done + share * (k + 1) / len(wins))
    if log_mean.count == 0:
        raise DespeckNetError(
            f"{source} band {band_index} has no valid pixel (all nodata or zero): nothing to despeckle."
        )
    return BandStats(band_index, log_mean.value, log_mean.count)


def despeckle_raster(
    input_path: str,
    output_path: str,
    despeckler: Despeckler,
    bands: list[int] | None = None,
    domain: str = "intensity",
    tile_size: int = 512,
    overlap: int | None = None,
    noise_path: str | None = None,
    progress: Progress = SILENT,
) -> DespeckleReport:
    dm.check_domain(domain)
    started = time.perf_counter()
    for out in filter(None, (output_path, noise_path)):
        if same_file(out, input_path):
            raise DespeckNetError(f"The output {out} is the input raster: choose another file, the input is never overwritten.")
    if noise_path and same_file(noise_path, output_path):
        raise DespeckNetError("OUTPUT and OUTPUT_NOISE are the same file: choose two different files.")
    radius = despeckler.radius
    overlap = radius if overlap is None else overlap
    if overlap < radius:
        raise DespeckNetError(f"OVERLAP must be at least the model's receptive radius ({radius} pixels) for seamless tiles.")
    if tile_size < 16:
        raise DespeckNetError("TILE_SIZE must be at least 16 pixels.")

    ds = open_raster(input_path)
    bands = check_bands(ds, bands, input_path)
    field_size = despeckler.info.receptive_field
    if ds.RasterXSize < field_size or ds.RasterYSize < field_size:
        raise DespeckNetError(
            f"{input_path} is {ds.RasterXSize}x{ds.RasterYSize} pixels, smaller than the network's "
            f"receptive field ({field_size}x{field_size}): use a larger raster."
        )
    share = STATS_SHARE / len(bands)
    stats = [band_statistics(ds, b, domain, input_path, tile_size, progress, share, i * share) for i, b in enumerate(bands)]
    nodata = [nodata_of(ds.GetRasterBand(b)) for b in bands]

    tiles = windows(ds.RasterXSize, ds.RasterYSize, tile_size)
    total = len(tiles) * len(bands)
    outputs = Outputs(lambda: RasterOutput(output_path, ds, len(bands), nodata),
                      (lambda: RasterOutput(noise_path, ds, len(bands), nodata)) if noise_path else None)
    with outputs as (out, noise_out):
        done = 0
        for win in tiles:
            outer = win.grown(overlap, ds.RasterXSize, ds.RasterYSize)
            inner = win.within(outer)
            for i, (b, st, nd) in enumerate(zip(bands, stats, nodata), start=1):
                progress.check()
                intensity, valid = read_intensity(ds.GetRasterBand(b), outer, domain)
                clean, noise = despeckler.predict(dm.network_input(intensity, valid, st.offset), with_noise=noise_out is not None)
                keep = valid[inner]
                result = dm.from_intensity(dm.denormalise(clean[inner], st.offset), domain)
                out.write(i, win, _with_nodata(result, keep, nd))
                if noise_out is not None:
                    noise_out.write(i, win, _with_nodata(dm.speckle_from_log(noise[inner], domain), keep, nd))
                done += 1
                progress.set(STATS_SHARE + (100.0 - STATS_SHARE) * done / total)
        outputs.commit()
    return DespeckleReport(
        output=output_path,
        noise_output=noise_path,
        provider=despeckler.provider,
        bands=stats,
        seconds=time.perf_counter() - started,
        tiles=len(tiles),
    )


def _with_nodata(values: np.ndarray, keep: np.ndarray, nodata: float | None) -> np.ndarray:
    if nodata is None:
        return values
    return np.where(keep, values, math.nan if math.isnan(nodata) else nodata)
