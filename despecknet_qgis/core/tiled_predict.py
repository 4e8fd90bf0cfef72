"""Despeckle rasters of any size, tile by tile, with a deSpeckNet ONNX model.

Each tile is read with a margin of at least the network's receptive radius and only
its centre is kept, so tiled and whole-image predictions agree to float rounding and
memory depends on the tile size alone. A first pass over the band computes the
normalisation offset (mean of ln I) and rejects bad values before any output exists.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import domain as dm
from .defaults import TILE_RANGE, TILE_SIZE, ZERO_IS_NODATA, available_memory, largest_tile, tile_memory
from .errors import InputError, ModelError, ResourceError, translate_errors
from .files import check_outputs
from . import point_targets as pt
from .inference import Despeckler
from .progress import SILENT, Progress
from .raster import BandStats, Outputs, RasterOutput, band_statistics, check_bands, check_receptive_field, gdal_cache_limit, is_complex
from .raster import open_raster, output_nodata_of, read_intensity, window_of_extent, windows, windows_in, with_nodata

OUTPUT_TYPES = ("Float32", "Float64")

STATS_SHARE = 5.0  # percent of the progress bar for the statistics pass


@dataclass
class DespeckleReport:
    output: str
    noise_output: str | None
    provider: str
    bands: list[BandStats] = field(default_factory=list)
    precision: str = "fp32"  # "bf16": the CPU's fast path (core/bf16.py)
    seconds: float = 0.0
    tiles: int = 0
    network_seconds: float = 0.0  # inside the network; the rest is reading, statistics, point targets, writing
    models: list = field(default_factory=list)  # the model file's name used for each band
    point_targets_restored: list = field(default_factory=list)  # per band: pixels given their measured intensity
    pixels: int = 0  # written per band (the EXTENT's window, or the whole raster)


def check_tile_size(tile_size: int, overlap: int, branches: int = 1, memory: int | None = None) -> int:
    """`tile_size` within TILE_RANGE and small enough for the memory available now.

    Raises:
        InputError: outside the range; ResourceError: the network pass of one tile would
        take more than half the available memory.
    """
    TILE_RANGE.check(tile_size, "tile_size", "pixels")
    memory = available_memory() if memory is None else memory
    if memory is not None and tile_size > largest_tile(overlap, branches, memory):
        need = tile_memory(tile_size, overlap, branches)
        raise ResourceError(
            f"`tile_size` {tile_size} needs about {need / 2**30:.1f} GiB for the network, but only "
            f"{memory / 2**30:.1f} GiB of memory is available: use at most {largest_tile(overlap, branches, memory)} "
            "(the result does not depend on the tile size)."
        )
    return tile_size


@translate_errors
def despeckle_raster(
    input_path: str,
    output_path: str,
    despeckler: Despeckler,
    bands: list[int] | None = None,
    domain: str = "intensity",
    tile_size: int = TILE_SIZE,
    overlap: int | None = None,
    noise_path: str | None = None,
    progress: Progress = SILENT,
    point_targets: bool = True,
    looks: float | None = None,
    zero_is_nodata: bool = ZERO_IS_NODATA,
    output_domain: str | None = None,
    output_type: str = "Float32",
    extent: tuple[float, float, float, float] | None = None,
    algorithm: str = "despecknet:despeckle",
) -> DespeckleReport:
    """Despeckle `input_path` into `output_path` (and the speckle estimate into `noise_path`).

    Args:
        input_path: any raster GDAL reads; bands: 1-based bands (None: all), each despeckled on its own.
        output_path, noise_path: GeoTIFFs written beside their destination and moved into place
            together once complete and read back; noise_path None skips the speckle branch.
        despeckler: a loaded model; domain: "intensity", "amplitude" or "decibel".
        tile_size: pixels per tile side (TILE_RANGE, and bounded by the available memory).
        overlap: margin read around each tile, at least the model's receptive radius (default: that
            radius plus the point-target test's window, for a result that does not depend on tiling).
        progress: progress, log and cancellation (SIGTERM included, see progress.py).
        point_targets: put back the measured intensity of bright point targets that the network
            shrinks (core/point_targets.py); looks: the speckle's looks for that test and for the
            choice between the bundled models (Despeckler.for_looks; None: estimated per band
            from its flattest blocks).
        zero_is_nodata: pixels equal to 0 in a band that declares no nodata are nodata (GRD
            borders); not in the decibel domain, where 0 dB is data.
        output_domain: the outputs' domain (None: `domain`); complex bands (read as |z|²)
            count as `domain` intensity or amplitude.
        output_type: "Float32" or "Float64".
        extent: (xmin, ymin, xmax, ymax) in the raster's CRS: only the pixels it touches are
            despeckled and written, the margins read from around it; the statistics still
            come from the whole band, so the result equals that window of a whole-image run.
        algorithm: what made the outputs, for their provenance metadata.

    Returns:
        DespeckleReport: outputs, execution provider, per-band statistics and timing.

    Raises:
        InputError, OutputError (checked before any work), ModelError (non-finite or
        wrongly shaped network output), ResourceError, Cancelled.
    """
    dm.check_domain(domain, input_path)
    output_domain = dm.check_domain(output_domain or domain)
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"Unknown `output_type` {output_type!r}: use one of {', '.join(OUTPUT_TYPES)}.")
    if looks is not None and not (np.isfinite(looks) and looks > 0):
        raise InputError(f"`looks` must be a positive number (got {looks!r}); leave it empty to estimate it per band.")
    started = time.perf_counter()
    network_before = getattr(despeckler, "network_seconds", 0.0)
    check_outputs({"output_path": output_path, "noise_path": noise_path},
                  {"input_path": input_path, "model_path": getattr(despeckler, "path", None)})
    radius = despeckler.radius
    point_target_margin = pt.MARGIN if point_targets else 0
    overlap = radius + point_target_margin if overlap is None else overlap
    if overlap < radius:
        raise InputError(f"`overlap` must be at least the model's receptive radius ({radius} pixels) for seamless tiles.")
    check_tile_size(tile_size, overlap, branches=2 if noise_path else 1)

    ds = open_raster(input_path, progress.without_percent())
    bands = check_bands(ds, bands, input_path)
    check_receptive_field(ds, despeckler.info.receptive_field, input_path)
    region = window_of_extent(ds, *extent, source=input_path) if extent is not None else None
    with gdal_cache_limit():
        share = STATS_SHARE / len(bands)
        stats = [band_statistics(ds, b, domain, input_path, tile_size, progress, share, i * share, zero_is_nodata=zero_is_nodata)
                 for i, b in enumerate(bands)]
        # The bundled models: the multi-look one for bands with enough looks (model_info).
        networks = [despeckler.for_looks(looks or st.looks) for st in stats]
        layout = output_layout(ds, bands, domain, output_domain, zero_is_nodata, input_path,
                               [n.path for n in networks], [n.info.version for n in networks],
                               model_sha256=", ".join(dict.fromkeys(n.sha256 for n in networks)),
                               point_targets=point_targets, algorithm=algorithm,
                               precision=despeckler.precision, self_ensemble=despeckler.self_ensemble,
                               looks=[looks or st.looks for st in stats])
        for b in layout["no_point_targets"]:
            progress.info(f"Warning: band {b}: its looks cannot be estimated (no fully valid 16x16 block), so bright "
                          "point targets are not restored there; give `looks` (the image's number of looks) to "
                          "restore them.")
        nodata = layout["nodata"]

        tiles = windows_in(region, tile_size) if region else windows(ds.RasterXSize, ds.RasterYSize, tile_size)
        total = len(tiles) * len(bands)

        def output(path, argument, what):
            return RasterOutput(path, ds, len(bands), nodata, data_type=output_type, argument=argument, region=region,
                                descriptions=layout["descriptions"], metadata={**layout["metadata"], "DESPECKNET_CONTENT": what},
                                band_metadata=layout["band_metadata"],
                                units=layout["units"] if what == "despeckled" else None)

        outputs = Outputs(lambda: output(output_path, "output_path", "despeckled"),
                          (lambda: output(noise_path, "noise_path", "estimated speckle")) if noise_path else None)
        with outputs as (out, noise_out):
            done = 0
            restored = dict.fromkeys(range(1, len(bands) + 1), 0)
            band_of = {b: ds.GetRasterBand(b) for b in bands}  # fetched here, so the reading thread only reads
            jobs = [(win, i, b, st, nd, net) for win in tiles
                    for i, (b, st, nd, net) in enumerate(zip(bands, stats, nodata, networks), 1)]

            def read_job(job):
                win, _, b, _, _, _ = job
                return read_intensity(band_of[b], win.grown(overlap, ds.RasterXSize, ds.RasterYSize), domain,
                                      zero_is_nodata, checked=True)

            # Post-processing and writing stay in this thread, where GDAL's error handler sees write
            # failures. Running them beside the next window's network pass was slower on two cores
            # (1.22 s per Mpixel against 1.06, 2048x2048 in bf16): a third busy thread stalls the
            # network's two at every layer.
            for (win, i, b, st, nd, net), window_data in read_ahead(jobs, read_job):
                progress.check()
                result, speckle, targets = despeckle_window(
                    net, band_of[b], win, overlap, st, domain, nd,
                    point_targets=point_targets, looks=looks, with_noise=noise_out is not None,
                    zero_is_nodata=zero_is_nodata, output_domain=output_domain, window_data=window_data)
                restored[i] += targets
                out.write(i, win, result)
                if noise_out is not None:
                    noise_out.write(i, win, speckle)
                done += 1
                progress.set(STATS_SHARE + (100.0 - STATS_SHARE) * done / total)
            if point_targets:
                for i, b in enumerate(bands, 1):
                    if b not in layout["no_point_targets"]:
                        out.band(i).SetMetadataItem("DESPECKNET_POINT_TARGETS_RESTORED", str(restored[i]))
                        progress.info(f"band {b}: {restored[i]} pixel(s) given their measured intensity as point "
                                      f"targets (brighter than speckle allows at a false-alarm rate of "
                                      f"{pt.DEFAULT_PFA:g} per pixel)")
            outputs.commit()
    return DespeckleReport(
        output=output_path,
        noise_output=noise_path,
        provider=despeckler.provider,
        precision=despeckler.precision,
        models=[os.path.basename(n.path) for n in networks],
        bands=stats,
        seconds=time.perf_counter() - started,
        tiles=len(tiles),
        network_seconds=getattr(despeckler, "network_seconds", 0.0) - network_before,
        point_targets_restored=list(restored.values()) if point_targets else [],
        pixels=sum(w.w * w.h for w in tiles),
    )


def output_layout(ds, bands: list[int], domain: str, output_domain: str, zero_is_nodata: bool, source: str,
                  model_path: str | list[str], model_version: str | list[str], model_sha256: str | None = None,
                  point_targets: bool = True, algorithm: str = "despecknet:despeckle", precision: str = "fp32",
                  self_ensemble: bool = False, looks: list[float | None] | None = None) -> dict:
    """What despecknet's outputs of `ds` carry besides pixels: per-band nodata, names and metadata, and
    the dataset's metadata.

    The input's dataset metadata is copied, and DESPECKNET_* items record the model (name,
    version, SHA-256), its precision and self-ensemble, the algorithm, the domains and the
    plugin version, where `gdalinfo` shows them. No timestamp, so that reruns give identical files.
    `model_path` and `model_version` may list each band's model (the bundled models are chosen
    per band): each model is then named once, in band order, and separated by ", "; each band's
    own metadata names its model and its `looks` (given or estimated; None: unknown). The
    point-target test needs the looks, so bands without them are listed in "no_point_targets"
    and the metadata says they were skipped.
    """
    from .files import file_sha256
    from .model_info import inherited, provenance

    nodata, descriptions, complex_bands = output_nodata_of(ds, bands, domain, output_domain, zero_is_nodata), [], []
    for b in bands:
        band = ds.GetRasterBand(b)
        descriptions.append(band.GetDescription() or "")
        if is_complex(band):
            complex_bands.append(b)
    paths = [model_path] if isinstance(model_path, str) or model_path is None else list(model_path)
    versions = [model_version] if isinstance(model_version, str) else list(model_version)
    used = list(dict.fromkeys(zip(paths, versions)))  # each model once, in band order
    looks = list(looks) if looks is not None else [None] * len(bands)
    # the input band's own items (polarisation, swath) first, then what made this band
    band_metadata = [{**inherited(ds.GetRasterBand(b).GetMetadata()),
                      "DESPECKNET_MODEL": os.path.basename(paths[min(i, len(paths) - 1)] or ""),
                      "DESPECKNET_MODEL_VERSION": str(versions[min(i, len(versions) - 1)]),
                      "DESPECKNET_LOOKS": f"{n:.2f}" if n else "unknown"} for i, (b, n) in enumerate(zip(bands, looks))]
    # a unit holds for the despeckled values only where they are in the input's domain; decibels say so
    units = [ds.GetRasterBand(b).GetUnitType() if output_domain == domain else "dB" if output_domain == "decibel"
             else "" for b in bands]
    # it said "kept" for bands whose looks were unknown, where the test was not run
    skipped = [b for b, n in zip(bands, looks) if not n] if point_targets else []
    targets = ("off" if not point_targets else "kept" if not skipped else
               f"kept, except band(s) {', '.join(map(str, skipped))} (looks unknown)")
    if model_sha256 is None:
        model_sha256 = ", ".join(file_sha256(p) if p and os.path.isfile(p) else "" for p, _ in used)
    metadata = inherited(ds.GetMetadata())
    metadata.update(provenance(
        algorithm, source,
        model=", ".join(os.path.basename(p or "") for p, _ in used),
        model_version=", ".join(v for _, v in used),
        model_sha256=model_sha256,
        precision=precision,
        self_ensemble="4 mirrored passes" if self_ensemble else "off",
        input_domain="complex, read as |z|^2" if complex_bands else domain,
        output_domain=output_domain,
        point_targets=targets,
        zero_is_nodata="yes" if zero_is_nodata else "no",
    ))
    return {"nodata": nodata, "descriptions": descriptions, "metadata": metadata, "band_metadata": band_metadata,
            "units": units, "no_point_targets": skipped}


def despeckle_window(
    despeckler: Despeckler, band, win, overlap: int, stats: BandStats, domain: str, nodata: float | None, *,
    point_targets: bool = True, looks: float | None = None, with_noise: bool = False, zero_is_nodata: bool = False,
    output_domain: str | None = None, window_data: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """One window of a band, as despeckle_raster writes it: (despeckled, speckle or None, point-target pixels
    restored in it), `nodata` set.

    `domain` is the input's, `output_domain` (None: the same) the result's; `nodata` is the
    output's nodata value (see output_layout). `window_data`: the window with its margin as
    read_intensity gives it, read ahead by the caller (read_ahead); None reads it here.

    The window is read with `overlap` pixels of margin where the raster has them, and only
    its centre is returned. The batch path's band split runs the same function, so its
    windows are bit-identical to despeckle_raster's.

    Raises:
        ModelError: the network gave non-finite values for valid pixels, or values far outside its
        input's range.
    """
    outer = win.grown(overlap, band.XSize, band.YSize)
    output_domain = output_domain or domain
    intensity, valid = window_data or read_intensity(band, outer, domain, zero_is_nodata, checked=True)  # stats scanned it
    clean, noise = despeckler.predict(dm.network_input(intensity, valid, stats.offset), with_noise=with_noise)
    # Back to intensity and the point-target test on the window and the test's own margin only
    # (the network's margin is 17 pixels more): the same values, 12 % less work at tile 512. Never
    # beyond what was read: a model whose radius is below the test's margin, run with a smaller
    # overlap, cut its windows with negative slices and wrote every tile but the first as nodata.
    context = win.grown(min(pt.MARGIN, overlap) if point_targets else 0, band.XSize, band.YSize)
    near, inner = context.within(outer), win.within(context)
    keep = valid[near][inner]
    _check_network_output(clean[near][inner], keep, despeckler, "clean")  # before any scaling
    if with_noise:
        _check_network_output(noise[near][inner], keep, despeckler, "noise")
    with np.errstate(over="ignore"):
        estimate = dm.denormalise(clean[near], stats.offset)
        band_looks = looks or stats.looks
        restored = 0
        if point_targets and band_looks:
            estimate, targets = pt.preserve_point_targets(intensity[near], estimate, valid[near], band_looks)
            restored = int(np.count_nonzero(targets[inner] & keep))
        result = dm.from_intensity(estimate[inner], output_domain)
    _check_finite(result, keep, despeckler, "clean")
    speckle = None
    if with_noise:
        with np.errstate(over="ignore"):
            speckle = dm.speckle_from_log(noise[near][inner], output_domain)
        _check_finite(speckle, keep, despeckler, "noise")
        speckle = with_nodata(speckle, keep, nodata)
    return with_nodata(result, keep, nodata), speckle, restored


def read_ahead(items: list, read):
    """(item, read(item)) for each item, the next item's read running in a thread meanwhile.

    The network keeps the cores busy while GDAL reads and decodes the next window (a remote
    /vsicurl/ input waits on the network instead). Only that thread touches the input
    dataset during the loop; writing stays in the caller's thread, where GDAL's error
    handler records write failures (raster.GdalErrorLog).
    """
    from concurrent.futures import ThreadPoolExecutor

    if not items:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="despecknet-read") as pool:
        pending = pool.submit(read, items[0])
        try:
            for k, item in enumerate(items):
                data = pending.result()
                if k + 1 < len(items):
                    pending = pool.submit(read, items[k + 1])
                yield item, data
        finally:
            pending.cancel()


# The network sees z within +-Z_LIMIT; an output beyond this is the weights' doing, whatever the input.
Z_OUTPUT_LIMIT = 4 * dm.Z_LIMIT


def _check_network_output(z: np.ndarray, keep: np.ndarray, despeckler: Despeckler, branch: str) -> None:
    """The network's own output (z) for the valid pixels: finite and within reach of its input's range."""
    largest = float(np.abs(np.where(keep, z, 0.0)).max()) if keep.any() else 0.0
    if largest > Z_OUTPUT_LIMIT:
        raise ModelError(
            f"The model {despeckler.path} gave values far outside its input's range in its '{branch}' output "
            f"(|z| up to {largest:.3g}, the input lies within {dm.Z_LIMIT:g}): its weights "
            "are corrupt or it was not trained for this data. Nothing was written; export the model again or use the "
            "bundled one.")
    _check_finite(z, keep, despeckler, branch)


def _check_finite(values: np.ndarray, keep: np.ndarray, despeckler: Despeckler, branch: str) -> None:
    """Valid pixels are finite, in the network's output and once scaled back (as doubles: whether Float32
    can hold them is the output's concern, raster.RasterOutput; a Float64 output of 1e50 intensities blamed
    the model); anything else is a broken model."""
    bad = int((keep & ~np.isfinite(values)).sum())
    if bad:
        raise ModelError(
            f"The model {despeckler.path} gave {bad} non-finite value(s) in its '{branch}' output on a tile of "
            f"{values.shape[1]}x{values.shape[0]} pixels: its weights are corrupt or it was not trained for this "
            "data. Nothing was written; export the model again or use the bundled one."
        )

