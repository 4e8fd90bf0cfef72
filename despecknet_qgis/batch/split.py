"""One huge band on several workers: statistics once, windows of tile rows in parallel, one writer.

The core's `despeckle_raster` normalises a band by statistics of the whole band (the mean
of ln I, the looks of its flattest blocks) and then despeckles tile by tile, each tile read
with a margin of at least the receptive radius. A window of whole tile rows therefore
gives exactly the core's values when it uses the core's tile grid, margin and the band's
statistics. So a split band is:

1. one statistics task (`core.raster.band_statistics`, the core's own pass);
2. one task per window of `rows` tile rows, each writing its rows to a part file (Float32,
   the same conversion as the core's output) under a hidden partial name, then renamed;
3. one writer task per scene that copies the parts, a tile row at a time, into a
   `core.raster.RasterOutput` (the core's output: creation options, georeferencing, nodata,
   read back before it takes its name).

Memory: a task holds one tile with margins; the writer one tile row. Each tile is made by
the core loop's own `tiled_predict.despeckle_window`; tests/test_batch.py checks the result
against `despeckle_raster` bit for bit. Core options this module does not know disable the split
(the band then runs as one task): see `split_supported`.
"""
from __future__ import annotations

import os
import time

from ..core.errors import InputError
from ..core.files import remove_dead_partials, remove_quietly
from ..core.progress import Progress
from .tasks import _cancel_check, _failure, _mark_done, _reuse, clear_marker, load_despeckler, worker_name

KNOWN_OPTIONS = {"domain", "tile_size", "overlap", "point_targets", "looks", "zero_is_nodata", "output_domain"}


def split_supported(options: dict) -> str | None:
    """None when a band can be split with these options, else why not."""
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        return f"the core options {unknown} are not known to the split path (core/tiled_predict.py changed)"
    return None


def stripes(height: int, tile_size: int, rows: int) -> list[tuple[int, int]]:
    """(y0, y1) pixel rows of windows of `rows` tile rows on the core's tile grid."""
    step = tile_size * max(1, rows)
    return [(y, min(height, y + step)) for y in range(0, height, step)]


def _option_values(options: dict) -> dict:
    """The known options as given, else the core's defaults (one source for the split and the core)."""
    from .options import core_parameters

    defaults = {n: p.default for n, p in core_parameters().items()}
    return {k: options.get(k, defaults.get(k)) for k in KNOWN_OPTIONS}


def _settings(options: dict, despeckler) -> dict:
    from ..core import point_targets as pt
    from ..core.defaults import TILE_SIZE

    s = _option_values(options)
    s["tile_size"] = s["tile_size"] or TILE_SIZE
    s["point_targets"] = True if s["point_targets"] is None else s["point_targets"]
    s["output_domain"] = s["output_domain"] or s["domain"]
    if s["overlap"] is None:
        s["overlap"] = despeckler.radius + (pt.MARGIN if s["point_targets"] else 0)
    if s["overlap"] < despeckler.radius:
        raise InputError(f"`overlap` must be at least the model's receptive radius ({despeckler.radius} pixels) "
                         "for seamless tiles.")
    return s


def band_stats(job: dict) -> dict:
    """The band's statistics, as the core computes them (one task per split band)."""
    from ..core import domain as dm
    from ..core.raster import statistics_of

    started = time.perf_counter()
    try:
        despeckler = load_despeckler(job["model"], job["model_sha256"], job["device"], job.get("threads"),
                                     bool(job.get("noise")), job.get("precision", "auto"))
        s = _settings(job.get("options", {}), despeckler)
        dm.check_domain(s["domain"], job["input"])
        progress = Progress(is_cancelled=_cancel_check(job.get("cancel")))
        stats = statistics_of(job["input"], job["band"], s["domain"], s["tile_size"], progress,
                              s["zero_is_nodata"], despeckler.info.receptive_field)
        return {"status": "done", "stats": stats, "seconds": time.perf_counter() - started, "worker": worker_name()}
    except Exception as exc:  # noqa: BLE001 - a result, not a crash
        return _failure(exc, started)


def despeckle_window(job: dict, stats: dict) -> dict:
    """Rows job["y0"]:job["y1"] of one band, tile by tile as the core does, into a part file."""
    from ..core.raster import RasterOutput, Window, gdal_cache_limit, open_raster, output_nodata_of, windows
    from ..core.tiled_predict import despeckle_window

    started = time.perf_counter()
    if stats.get("status") != "done":
        return {**stats, "seconds": 0.0}
    reused = _reuse(job)
    if reused is not None:
        return reused
    try:
        noise = bool(job.get("noise"))  # the speckle estimate goes to band 2 of the window file
        despeckler = load_despeckler(job["model"], job["model_sha256"], job["device"], job.get("threads"), noise,
                                     job.get("precision", "auto"))
        s = _settings(job.get("options", {}), despeckler)
        st = stats["stats"]
        despeckler = despeckler.for_looks(s["looks"] or st.looks)  # the bundled multi-look model where it applies
        progress = Progress(is_cancelled=_cancel_check(job.get("cancel")))
        ds = open_raster(job["input"], progress.without_percent())
        band = ds.GetRasterBand(job["band"])
        nd = output_nodata_of(ds, [job["band"]], s["domain"], s["output_domain"], s["zero_is_nodata"])[0]
        width, height = ds.RasterXSize, ds.RasterYSize
        y0, y1 = job["y0"], job["y1"]
        os.makedirs(os.path.dirname(job["output"]), exist_ok=True)
        remove_dead_partials(os.path.dirname(job["output"]))  # window files of killed tasks were never removed
        # Written, read back and moved into place as every raster output is (RasterOutput).
        with RasterOutput(job["output"], ds, 2 if noise else 1, [nd] * (2 if noise else 1), argument="window file",
                          region=Window(0, y0, width, y1 - y0)) as out, gdal_cache_limit():
            for win in (w for w in windows(width, height, s["tile_size"]) if y0 <= w.y < y1):
                progress.check()
                result, speckle, _ = despeckle_window(despeckler, band, win, s["overlap"], st, s["domain"], nd,
                                                   point_targets=s["point_targets"], looks=s["looks"],
                                                   with_noise=noise, zero_is_nodata=s["zero_is_nodata"],
                                                   output_domain=s["output_domain"])
                out.write(1, win, result)
                if noise:
                    out.write(2, win, speckle)
            out.commit()
        result = {"status": "done", "seconds": time.perf_counter() - started, "worker": worker_name(),
                  "provider": despeckler.provider, "part": job["output"], "model_version": despeckler.info.version,
                  "model_path": despeckler.path, "looks": s["looks"] or st.looks,
                  "precision": despeckler.precision}
        _mark_done(job, result)
        return result
    except Exception as exc:  # noqa: BLE001 - a result, not a crash
        return _failure(exc, started)


def write_split(job: dict, windows_done: list[dict]) -> dict:
    """The scene's outputs from its windows: job["windows"] lists (band index, y0, y1, part path)."""
    from ..core.raster import Outputs, RasterOutput, Window, gdal_cache_limit, open_raster
    from ..core.tiled_predict import output_layout

    started = time.perf_counter()
    failed = [w for w in windows_done if w.get("status") != "done"]
    if failed:
        status = "cancelled" if all(w.get("status") == "cancelled" for w in failed) else "failed"
        return {"status": status, "error": failed[0].get("error"), "seconds": time.perf_counter() - started,
                "worker": worker_name()}
    reused = _reuse(job)
    if reused is not None:
        return reused
    try:
        from osgeo import gdal

        ds = open_raster(job["input"])
        bands = job["bands"]
        s = _option_values(job.get("options", {}))
        # Each band's model, from its first window (the bundled models are chosen per band).
        first = {}
        for (i, _, _, _), w in zip(job["windows"], windows_done):
            first.setdefault(i, w)
        used = [first.get(i, windows_done[0]) for i in range(1, len(bands) + 1)]
        layout = output_layout(ds, bands, s["domain"], s["output_domain"] or s["domain"], s["zero_is_nodata"],
                               job["input"], [w.get("model_path") or job["model"] for w in used],
                               [w.get("model_version", "?") for w in used],
                               job.get("model_sha256") if job["model"] else None, point_targets=s["point_targets"],
                               precision=windows_done[0].get("precision", "fp32"), looks=[w.get("looks") for w in used])
        noise = job.get("noise_output")
        step = job["tile_size"]

        def output(path, argument, what):
            return RasterOutput(path, ds, len(bands), layout["nodata"], argument=argument,
                                descriptions=layout["descriptions"],
                                metadata={**layout["metadata"], "DESPECKNET_CONTENT": what},
                                band_metadata=layout["band_metadata"],
                                units=layout["units"] if what == "despeckled" else None)

        outputs = Outputs(lambda: output(job["output"], "output_path", "despeckled"),
                          (lambda: output(noise, "noise_path", "estimated speckle")) if noise else None)
        with gdal_cache_limit(), outputs as (out, noise_out):
            for i, y0, y1, part in job["windows"]:
                src = gdal.Open(part)
                if src is None:
                    raise InputError(f"The window file {part} is missing: run the batch again.")
                for y in range(y0, y1, step):
                    h = min(step, y1 - y)
                    out.write(i, Window(0, y, ds.RasterXSize, h), src.GetRasterBand(1).ReadAsArray(0, y - y0, None, h))
                    if noise_out is not None:
                        noise_out.write(i, Window(0, y, ds.RasterXSize, h),
                                        src.GetRasterBand(2).ReadAsArray(0, y - y0, None, h))
                src = None
            outputs.commit()
        seconds = time.perf_counter() - started + sum(w.get("seconds") or 0 for w in windows_done)
        result = {"status": "done", "seconds": seconds, "worker": worker_name(),
                  "provider": windows_done[0].get("provider"),
                  "window_workers": sorted({w.get("worker") for w in windows_done})}
        _mark_done(job, result)
        for _, _, _, part in job["windows"]:
            remove_quietly(part)
            clear_marker(part)
        return result
    except Exception as exc:  # noqa: BLE001 - a result
        return _failure(exc, started)
