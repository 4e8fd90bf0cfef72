"""Run a batch on Dask distributed: plan, skip what is up to date, submit, record, report.

- Cluster: a `LocalCluster` on loopback (127.0.0.1) by default, or an existing scheduler
  (`scheduler="tcp://host:8786"`). Its dashboard link is reported at the start.
- Tasks: one per band and scene (`tasks.despeckle_band`, the plugin's own core), plus one
  assembly task per multi-band scene. Dask retries the tasks of a worker that dies on
  another worker (the scheduler's `allowed-failures`); what finished is on disk already.
- Records: the client alone appends to the manifest, as each scene ends.
- Cancel: `progress.check()` is polled while waiting; a cancel sets a distributed Event
  that running tasks poll between tiles (they stop and remove their partial files), cancels
  the futures, and closes a LocalCluster this run started.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass, field

from ..core.errors import Cancelled, ClusterError, InputError, OutputError
from ..core.progress import SILENT, Progress
from .options import check_options
from .plan import MANIFEST, Manifest, WORK_DIR, plan_scenes, record_for, up_to_date
from .split import split_supported
from .tasks import assemble, clear_marker, despeckle_band, part_path

POLL_S = 0.2
SCHEDULER_TIMEOUT = "20s"


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)  # outputs written by this run
    skipped: list[str] = field(default_factory=list)  # outputs already up to date
    failed: dict[str, str] = field(default_factory=dict)  # input -> error
    manifest: str = ""
    dashboard: str | None = None
    seconds: float = 0.0
    workers: int = 0


INSTALL_DASK = "install them with `python -m pip install -r requirements-batch.txt` (or `make setup`)"


def missing_dask_message(exc: ImportError) -> str:
    return (f"The batch path needs the Python packages dask and distributed ({exc}) for a cluster: "
            f"{INSTALL_DASK} into the Python that runs deSpeckNet, or "
            "`python -m pip install dask==2026.8.0 distributed==2026.8.0`.")


def import_dask():
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as exc:
        raise ClusterError(missing_dask_message(exc)) from exc
    return distributed


def start_client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1,
                 processes: bool = True, dashboard: bool = True):
    """(client, cluster or None): a LocalCluster on loopback, or a client of `scheduler`."""
    distributed = import_dask()
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"No Dask scheduler answers at `scheduler` {scheduler} ({exc}): start one "
                             "(`dask scheduler`) or check the address (tcp://HOST:8786).") from exc
        return client, None
    cores = os.cpu_count() or 1
    workers = workers or max(1, cores // max(1, threads_per_worker))
    # worker processes talk over TCP on loopback; threads in this process over inproc (no socket at all)
    network = {"host": "127.0.0.1"} if processes else {}
    import dask

    # Dask's sampling profiler keeps the frames of running tasks (and so their GDAL datasets) alive
    # until its event loop drops them: a written file was closed, and its last blocks flushed, after
    # it had been moved into place (raster.wait_until_closed now waits for that). Off for our clusters.
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=processes,
            dashboard_address="127.0.0.1:0" if dashboard else None, silence_logs=40, **network,
        )
    return distributed.Client(cluster), cluster


def _bar(done: int, total: int, failed: int, started: float, stream) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} scenes"
            f"{f', {failed} failed' if failed else ''}, {time.perf_counter() - started:.0f} s")
    stream.write(line if stream.isatty() else line[1:] + "\n")
    stream.flush()


def run_batch(inputs: list[str], output_dir: str, model: str | None = None, device: str = "cpu",
              options: dict | None = None, bands: list[int] | None = None, noise: bool = False,
              suffix: str = "_despeckled", scheduler: str | None = None, workers: int | None = None,
              threads_per_worker: int = 1, ort_threads: int | None = None, processes: bool = True,
              checksum: bool = False, force: bool = False, split_rows: int = 4,
              split_min_pixels: int = 50_000_000, progress: Progress = SILENT,
              log=None, bar=None, client=None, in_process: bool = False, precision: str = "auto") -> BatchReport:
    """Despeckle `inputs` into `output_dir` on Dask; returns what was done, skipped and failed.

    Without a scheduler or client, and with `in_process` or where dask is not installed, the
    scenes run one after the other in this process, with the same tasks, outputs and manifest.

    Args:
        inputs: raster files, SAFE products or GDAL dataset names (see plan.expand_inputs for lists).
        output_dir: created if missing; holds the outputs, the manifest and a work folder.
        model: an ONNX deSpeckNet model (None: the bundled one); device: "auto", "cpu" or "cuda".
        precision: "auto", "fp32" or "bf16" (core.inference.Despeckler), on every worker.
        options: keyword arguments of the core's despeckle_raster (checked against its signature).
        bands: 1-based bands of every scene (None: all); noise: also write the speckle estimate.
        scheduler: an existing scheduler's address; else a LocalCluster of `workers` x
            `threads_per_worker` on loopback (`processes` False: threads in this process).
        ort_threads: ONNX Runtime threads per task (None: the cores shared among a LocalCluster's
            threads; ONNX Runtime's default on an existing cluster).
        checksum: identify inputs by SHA-256 instead of size and modification time.
        force: despeckle again what the manifest says is up to date.
        split_rows, split_min_pixels: a band of at least `split_min_pixels` pixels is split into
            windows of `split_rows` tile rows on several workers (batch/split.py); 0 rows: never.
        progress: percent, log and cancel; log: a function for lines of text; bar: a stream for
            the terminal progress bar (None: none); client: an existing dask Client to use.

    Raises:
        InputError, OutputError (before any task is sent), ClusterError (no dask, no scheduler
        at `scheduler`), Cancelled.
    """
    started = time.perf_counter()
    log = log or progress.info
    options = check_options(dict(options or {}))
    from ..core.inference import check_precision

    check_precision(precision)
    from ..core.files import check_output_path, model_sha256

    # None stays None: the bundled models, the multi-look one chosen for bands with enough looks.
    model = os.path.abspath(model) if model else None
    if model is not None and not os.path.isfile(model):
        raise InputError(f"Model file {model} (`model_path`) does not exist.")
    output_dir = os.path.abspath(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create `output_dir` {output_dir} ({exc.strerror or exc}): choose a folder you can "
                          "write to.") from exc
    check_output_path(os.path.join(output_dir, MANIFEST), "output_dir")
    model_sha = model_sha256(model)
    report = BatchReport(manifest=os.path.join(output_dir, MANIFEST))

    with Manifest(output_dir) as manifest:
        scenes = plan_scenes(inputs, output_dir, bands, noise, suffix, model_sha, options, device, checksum,
                             precision)
        latest = manifest.latest()
        todo = []
        for s in scenes:
            if not force and up_to_date(s, latest.get(os.path.abspath(s.output))):
                report.skipped.append(s.output)
            else:
                todo.append(s)
        log(f"{len(scenes)} scene(s): {len(report.skipped)} up to date, {len(todo)} to despeckle "
            f"(manifest {report.manifest})")
        if not todo:
            report.seconds = time.perf_counter() - started
            return report
        progress.check()

        if client is None and scheduler is None and (in_process or not dask_available()):
            log("Scenes one after the other in this process" + ("" if in_process else
                " (Python packages dask and distributed are missing; " + INSTALL_DASK + " to use several cores)"))
            _run_here(todo, model, model_sha, device, ort_threads, options, manifest, report, progress, bar, started,
                      precision, force)
            report.seconds = time.perf_counter() - started
            return report
        own = client is None
        cluster = None
        if own:
            client, cluster = start_client(scheduler, workers, threads_per_worker, processes)
        distributed = import_dask()
        cancel_name = f"despecknet-cancel-{uuid.uuid4().hex}"
        try:
            info = client.scheduler_info()
            worker_threads = sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()) or 1
            report.workers = len(info.get("workers", {}))
            report.dashboard = _dashboard(client, cluster)
            log(f"Dask: {report.workers} worker(s), {worker_threads} thread(s) at {client.scheduler.address}; "
                f"dashboard {report.dashboard}{'' if _has_bokeh() else ' (needs the bokeh package to show)'}")
            if ort_threads is None and cluster is not None:
                ort_threads = max(1, (os.cpu_count() or 1) // worker_threads)
            split = (split_rows, split_min_pixels)
            why = split_supported(options)
            if why and split_rows:
                log(f"Large bands run as one task each: {why}.")
                split = (0, split_min_pixels)
            finals = _submit(client, todo, output_dir, model, model_sha, device, ort_threads, options, cancel_name,
                             force, split, precision)
            _collect(distributed, client, finals, manifest, report, model, model_sha, options, progress, bar,
                     started, cancel_name)
        finally:
            if own:
                try:
                    client.close()
                finally:
                    if cluster is not None:
                        cluster.close()
    report.seconds = time.perf_counter() - started
    return report


def dask_available() -> bool:
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def _run_here(todo, model, model_sha, device, ort_threads, options, manifest, report, progress, bar, started,
              precision="auto", force=False) -> None:
    """The scenes one after the other in this process, through the tasks the workers run."""
    total, failed = len(todo), 0
    common = {"model": model, "model_sha256": model_sha, "device": device, "threads": ort_threads,
              "options": options, "cancel": None, "precision": precision}
    for k, s in enumerate(todo):
        job = {**common, "input": s.input, "output": s.output, "noise_output": s.noise_output, "bands": s.bands,
               "key": s.key}
        progress.info(f"[{k + 1}/{total}] {s.input} -> {s.output}")
        if force:
            clear_marker(s.output)
        result = despeckle_band(job, progress.part(100.0 * k / total, 100.0 * (k + 1) / total))
        if result.get("status") == "cancelled" or progress.cancelled():
            raise Cancelled(f"Cancelled: {k} of {total} scene(s) finished and are recorded in {report.manifest}; "
                            "run the same command again to go on.")
        failed += not _record(None, s, result, manifest, report, model, model_sha, options, progress)
        progress.set(100.0 * (k + 1) / total)
        if bar is not None:
            _bar(k + 1, total, failed, started, bar)
    if bar is not None and bar.isatty():
        bar.write("\n")


def _dashboard(client, cluster) -> str | None:
    """The dashboard's address; a LocalCluster's listens on loopback, whatever Dask's link template says."""
    if cluster is not None:
        try:
            return f"http://127.0.0.1:{cluster.scheduler.http_server.port}/status"
        except AttributeError:
            pass
    return client.dashboard_link


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def _submit(client, scenes, output_dir, model, model_sha, device, ort_threads, options, cancel_name, force,
            split=(0, 0), precision="auto"):
    """Futures of each scene's final task -> scene."""
    finals = {}
    common = {"model": model, "model_sha256": model_sha, "device": device, "threads": ort_threads,
              "options": options, "cancel": cancel_name, "precision": precision}
    split_rows, split_min_pixels = split
    for s in scenes:
        if force:
            clear_marker(s.output)
        tag = uuid.uuid4().hex[:8]
        size = s.extra.get("size")
        if split_rows and s.bands and size and size[0] * size[1] >= split_min_pixels:
            fut = _submit_split(client, s, output_dir, common, split_rows, tag, force)
        elif s.bands is None or len(s.bands) == 1:
            job = {**common, "input": s.input, "output": s.output, "noise_output": s.noise_output,
                   "bands": s.bands, "key": s.key}
            fut = client.submit(despeckle_band, job, key=f"despeckle-{os.path.basename(s.output)[:-4]}-{tag}",
                                pure=False)
        else:
            stem = os.path.basename(s.output)[:-4]
            os.makedirs(os.path.join(output_dir, WORK_DIR, "parts"), exist_ok=True)
            parts, noise_parts, futures = [], [], []
            for b in s.bands:
                part = part_path(output_dir, stem, b)
                npart = part_path(output_dir, stem, b, noise=True) if s.noise_output else None
                if force:
                    clear_marker(part)
                job = {**common, "input": s.input, "output": part, "noise_output": npart, "bands": [b],
                       "key": f"{s.key}-b{b}"}
                parts.append(part)
                if npart:
                    noise_parts.append(npart)
                futures.append(client.submit(despeckle_band, job, key=f"despeckle-{stem}-b{b}-{tag}", pure=False))
            job = {**common, "input": s.input, "output": s.output, "noise_output": s.noise_output,
                   "bands": s.bands, "key": s.key, "parts": parts, "noise_parts": noise_parts}
            fut = client.submit(assemble, job, futures, key=f"assemble-{stem}-{tag}", pure=False)
        finals[fut] = s
    return finals


def _submit_split(client, s, output_dir, common, rows, tag, force):
    """Statistics, windows of `rows` tile rows and one writer for each band of a large scene."""
    from .options import core_parameters
    from .split import band_stats, despeckle_window, stripes, write_split

    tile = common["options"].get("tile_size") or core_parameters()["tile_size"].default
    height = s.extra["size"][1]
    stem = os.path.basename(s.output)[:-4]
    noise = s.noise_output is not None
    os.makedirs(os.path.join(output_dir, WORK_DIR, "parts"), exist_ok=True)
    spec, futures = [], []
    for i, b in enumerate(s.bands, start=1):
        stats = client.submit(band_stats, {**common, "input": s.input, "band": b, "noise": noise},
                              key=f"stats-{stem}-b{b}-{tag}", pure=False)
        for y0, y1 in stripes(height, tile, rows):
            part = os.path.join(output_dir, WORK_DIR, "parts", f"{stem}.b{b}.y{y0}.tif")
            if force:
                clear_marker(part)
            job = {**common, "input": s.input, "band": b, "noise": noise, "y0": y0, "y1": y1, "output": part,
                   "key": f"{s.key}-b{b}-y{y0}-{y1}-t{tile}"}
            futures.append(client.submit(despeckle_window, job, stats, key=f"window-{stem}-b{b}-y{y0}-{tag}",
                                         pure=False))
            spec.append((i, y0, y1, part))
    job = {**common, "input": s.input, "output": s.output, "noise_output": s.noise_output, "bands": s.bands,
           "key": s.key, "tile_size": tile, "windows": spec}
    return client.submit(write_split, job, futures, key=f"write-{stem}-{tag}", pure=False)


def _collect(distributed, client, finals, manifest, report, model, model_sha, options, progress, bar, started,
             cancel_name):
    pending = distributed.as_completed(list(finals))
    total, done, failed = len(finals), 0, 0
    recorded = set()
    if bar is not None:
        _bar(0, total, 0, started, bar)
    while not pending.is_empty():
        if progress.cancelled():
            for fut in finals:  # finished since the last look: recorded all the same
                if fut not in recorded and fut.status == "finished":
                    _record(fut, finals[fut], fut.result(), manifest, report, model, model_sha, options, progress)
                    done += 1
            _cancel(distributed, client, finals, cancel_name)
            raise Cancelled(f"Cancelled: {done} of {total} scene(s) finished and are recorded in {report.manifest}; "
                            "the others were stopped on the cluster. Run the same command again to go on.")
        finished = pending.next_batch(block=False)
        if not finished:
            time.sleep(POLL_S)
        for fut in finished:
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker and the like: the scene failed, the batch goes on
                result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            recorded.add(fut)
            fut.release()
            failed += not _record(fut, finals[fut], result, manifest, report, model, model_sha, options, progress)
            done += 1
            progress.set(100.0 * done / total)
            if bar is not None:
                _bar(done, total, failed, started, bar)
    if bar is not None and bar.isatty():
        bar.write("\n")


def _record(fut, scene, result, manifest, report, model, model_sha, options, progress) -> bool:
    """Append the scene's record; True when it is done."""
    manifest.append(record_for(scene, result, model, model_sha, options))
    if result.get("status") == "done":
        report.done.append(scene.output)
        return True
    report.failed[scene.input] = result.get("error") or result.get("status")
    progress.info(f"FAILED {scene.input}: {report.failed[scene.input]}")
    return False


def _cancel(distributed, client, finals, cancel_name) -> None:
    try:
        distributed.Event(cancel_name, client=client).set()
    except Exception:  # noqa: BLE001 - the scheduler may be gone already
        pass
    try:
        client.cancel(list(finals), force=True)
    except Exception:  # noqa: BLE001
        pass
