"""What a Dask worker runs: one band of one scene through the plugin's own `despeckle_raster`,
and the assembly of a multi-band scene from its bands.

Tasks never raise for a scene's own failure: they return {"status": "failed", "error": ...}
so one bad scene does not stop the archive, and the manifest records the core's message.
A task that finished leaves a done-marker (its key) beside its output; when Dask runs it
again (its worker died after the output was written but before the client got the result),
the marker makes it return at once instead of computing again. A worker killed before that
leaves at most a hidden partial file, which the next write of the same output removes.

Dask is imported only to honour a cancel (a distributed Event named by the client).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

from ..core.errors import Cancelled, DespeckNetError, ModelError, OutputError
from ..core.files import commit_files, partial_path, remove_quietly
from ..core.progress import Progress
from .options import core_function
from .plan import WORK_DIR

_DESPECKLERS: dict = {}
_CHECKED_MODELS: dict = {}
_LOCK = threading.Lock()
CANCEL_POLL_S = 0.5


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def load_despeckler(model: str | None, model_sha256: str, device: str, threads: int | None, with_noise: bool,
                    precision: str = "auto"):
    """One loaded model per worker process and settings; the file must be the one the client checked.

    model None: the bundled models (Despeckler.for_looks chooses per band), checked as one digest.
    """
    from ..core.files import model_onnx_files, model_sha256 as digest_of
    from ..core.inference import Despeckler

    key = (model, model_sha256, device, threads, with_noise, precision)
    with _LOCK:
        if key in _DESPECKLERS:
            return _DESPECKLERS[key]
        if model is None:
            # The bundled pair: hashed once per file state (path, size, mtime), one digest over both files.
            stamp = tuple((p, st.st_size, st.st_mtime_ns) for p in model_onnx_files(model) for st in [os.stat(p)])
            digest = _CHECKED_MODELS.get(stamp) or digest_of(model)
            _CHECKED_MODELS[stamp] = digest
        despeckler = Despeckler(model, device, threads=threads, with_noise=with_noise, precision=precision)
        if model is not None:
            # The digest of the bytes loaded (a file rewritten with its size and time kept passed a cached digest)
            digest = despeckler.sha256
        if digest != model_sha256:
            name = model or "the bundled models"
            raise ModelError(f"The model {name} on worker {worker_name()} is not the one the batch was started with "
                             f"(SHA-256 {digest[:12]}... instead of {model_sha256[:12]}...): give every worker the same "
                             "model file (the same plugin version, for the bundled models).")
        _DESPECKLERS[key] = despeckler
        return despeckler


def marker_path(output: str) -> str:
    folder, name = os.path.split(os.path.abspath(output))
    return os.path.join(folder, WORK_DIR, "done", name + ".json")


def part_path(output_dir: str, stem: str, band: int, noise: bool = False) -> str:
    return os.path.join(output_dir, WORK_DIR, "parts", f"{stem}.b{band}{'.speckle' if noise else ''}.tif")


def _written(job: dict) -> dict | None:
    """Size and modification time of each of the job's outputs, or None when one is missing."""
    found = {}
    for path in filter(None, (job["output"], job.get("noise_output"))):
        try:
            st = os.stat(path)
        except OSError:
            return None
        found[path] = [st.st_size, st.st_mtime_ns]
    return found


def _reuse(job: dict) -> dict | None:
    """The recorded result when this job's outputs were written with the same key and are still as written.

    An output replaced, truncated or touched since (its size or modification time differs) is
    written again rather than reported done.
    """
    try:
        with open(marker_path(job["output"]), encoding="utf-8") as fh:
            done = json.load(fh)
    except (OSError, ValueError):
        return None
    if done.get("key") != job["key"] or done.get("outputs") is None or done["outputs"] != _written(job):
        return None
    return {**done.get("result", {}), "reused": True, "worker": worker_name()}


def _mark_done(job: dict, result: dict) -> None:
    marker = marker_path(job["output"])
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    tmp = partial_path(marker)
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"key": job["key"], "result": result, "outputs": _written(job)}, fh)
    os.replace(tmp, marker)


def clear_marker(output: str) -> None:
    remove_quietly(marker_path(output))


def _cancel_check(event_name: str | None):
    if not event_name:
        return None
    from distributed import Event

    event = Event(event_name)
    state = {"at": 0.0, "set": False}

    def cancelled() -> bool:
        now = time.monotonic()
        if now - state["at"] >= CANCEL_POLL_S:
            state["at"] = now
            try:
                state["set"] = bool(event.is_set())
            except Exception:  # noqa: BLE001 - scheduler gone: the client is gone too, stop
                state["set"] = True
        return state["set"]

    return cancelled


def _failure(exc: BaseException, started: float) -> dict:
    status = "cancelled" if isinstance(exc, Cancelled) else "failed"
    text = str(exc) if isinstance(exc, DespeckNetError) else f"{type(exc).__name__}: {exc}"
    return {"status": status, "error": text, "seconds": time.perf_counter() - started, "worker": worker_name()}


def despeckle_band(job: dict, progress: Progress | None = None) -> dict:
    """Despeckle job["bands"] of job["input"] into job["output"] (and job["noise_output"]).

    job: input, output, noise_output, bands (None: all), model, model_sha256, device, threads,
    options (core keyword arguments), key, cancel (a distributed Event name or None).
    progress: in this process, without Dask (run._run_here): percent, log and cancel.
    """
    started = time.perf_counter()
    reused = _reuse(job)
    if reused is not None:
        return reused
    try:
        despeckler = load_despeckler(job["model"], job["model_sha256"], job["device"], job.get("threads"),
                                     job.get("noise_output") is not None, job.get("precision", "auto"))
        progress = progress or Progress(is_cancelled=_cancel_check(job.get("cancel")))
        report = core_function()(job["input"], job["output"], despeckler, bands=job.get("bands"),
                                 noise_path=job.get("noise_output"), progress=progress, **job.get("options", {}))
        result = {"status": "done", "seconds": time.perf_counter() - started, "worker": worker_name(),
                  "provider": report.provider, "tiles": report.tiles,
                  "looks": [getattr(b, "looks", None) for b in report.bands]}
        _mark_done(job, result)
        return result
    except Exception as exc:  # noqa: BLE001 - a scene's failure is a result, not a crash of the batch
        return _failure(exc, started)


def assemble(job: dict, parts: list[dict]) -> dict:
    """Stack single-band parts (results of despeckle_band, in band order) into the scene's outputs.

    The parts are copied value for value, window by window (`_stack`), with each band's nodata,
    description and metadata and the dataset's metadata; every output is read back before the
    outputs take their names, together.
    """
    started = time.perf_counter()
    failed = [p for p in parts if p.get("status") != "done"]
    if failed:
        cancelled = all(p.get("status") == "cancelled" for p in failed)
        bands = [b for b, p in zip(job["bands"], parts) if p.get("status") != "done"]
        return {"status": "cancelled" if cancelled else "failed", "seconds": time.perf_counter() - started,
                "worker": worker_name(), "error": f"band(s) {bands}: {failed[0].get('error')}"}
    reused = _reuse(job)
    if reused is not None:
        return reused
    try:
        moves = [(_stack(job["parts"], job["output"], job["bands"]), job["output"])]
        if job.get("noise_output"):
            try:
                moves.append((_stack(job["noise_parts"], job["noise_output"], job["bands"]), job["noise_output"]))
            except BaseException:
                remove_quietly(moves[0][0])
                raise
        commit_files(moves)
        result = {"status": "done", "seconds": time.perf_counter() - started + sum(p.get("seconds") or 0 for p in parts),
                  "worker": worker_name(), "provider": parts[0].get("provider"),
                  "looks": [(p.get("looks") or [None])[0] for p in parts]}
        _mark_done(job, result)
        for p in job["parts"] + job.get("noise_parts", []):
            remove_quietly(p)
            clear_marker(p)
        return result
    except Exception as exc:  # noqa: BLE001 - a scene's failure is a result
        return _failure(exc, started)


def merged_metadata(parts: list[dict], bands: list[int] | None = None) -> dict:
    """The dataset metadata of a scene from its single-band parts' (tiled_predict.output_layout's).

    An item that differs between parts (the model, where the bundled models are chosen per band)
    names each value once, in band order, as output_layout does for a multi-band run; the
    point-target status lists the scene's bands (`bands`, default 1..n) whose looks were unknown.
    """
    bands = list(bands or range(1, len(parts) + 1))
    merged = {}
    for key in dict.fromkeys(k for part in parts for k in part):
        values = list(dict.fromkeys(part[key] for part in parts if key in part))
        merged[key] = ", ".join(values)
    key = "DESPECKNET_POINT_TARGETS"
    states = [part.get(key) for part in parts]
    if any(states):
        skipped = [str(b) for b, state in zip(bands, states) if state and state.startswith("kept, except")]
        merged[key] = ("off" if all(state == "off" for state in states) else "kept" if not skipped else
                       f"kept, except band(s) {', '.join(skipped)} (looks unknown)")
    return merged


def _stack(parts: list[str], output: str, bands: list[int] | None = None) -> str:
    """A finished, read-back partial GeoTIFF beside `output` holding `parts` as its bands (the scene's `bands`).

    Written through RasterOutput, as every other raster output: its georeferencing (geotransform,
    GCPs or RPCs) from the first part, and each part's values window by window. (It went through
    gdal.BuildVRT, which drops GCPs and returns nothing for rotated or south-up grids.)
    """
    from osgeo import gdal

    from ..core.raster import RasterOutput, windows

    sources = [gdal.Open(p) for p in parts]
    if any(s is None for s in sources):
        raise OutputError(f"A band part of {output} is missing or unreadable ({gdal.GetLastErrorMsg()}); "
                          "run the batch again.")
    first = sources[0]
    src_bands = [s.GetRasterBand(1) for s in sources]
    out = RasterOutput(output, first, len(sources), [b.GetNoDataValue() for b in src_bands],
                       data_type=gdal.GetDataTypeName(src_bands[0].DataType),
                       descriptions=[b.GetDescription() for b in src_bands],
                       metadata=merged_metadata([s.GetMetadata() or {} for s in sources], bands),
                       band_metadata=[b.GetMetadata() or {} for b in src_bands],
                       units=[b.GetUnitType() for b in src_bands])
    with out:
        for i, band in enumerate(src_bands, start=1):
            if band.GetScale() not in (None, 1.0) or band.GetOffset() not in (None, 0.0):
                out.band(i).SetScale(band.GetScale() or 1.0)
                out.band(i).SetOffset(band.GetOffset() or 0.0)
            for win in windows(first.RasterXSize, first.RasterYSize, 1024):
                out.write(i, win, band.ReadAsArray(win.x, win.y, win.w, win.h))
        return out.hand_over()
