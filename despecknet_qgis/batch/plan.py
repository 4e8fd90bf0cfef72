"""What a batch run has to do, before any cluster exists: the inputs, their output names,
what identifies an input and a model, and the manifest of earlier runs (no Dask here).

The manifest (`despecknet-manifest.jsonl` in the output folder) gets one JSON line per
finished or failed scene: input, output, model and its SHA-256, options, the input's
fingerprint (each file's size and modification time, or its SHA-256 with `checksum`),
status, time, seconds, worker and error. Only the client process writes it, under an
exclusive lock, so two runs into one folder cannot interleave. A scene is up to date when
its last record says "done" with the same key (input fingerprint, model, options, bands,
device) and the output is still there; anything else is done again, failures included.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field

from ..core.errors import InputError, OutputError
from ..core.files import SIDECARS, dataset_files, file_sha256, same_file

MANIFEST = "despecknet-manifest.jsonl"
WORK_DIR = ".despecknet-batch"  # per-band parts and done-markers, inside the output folder
RASTER_EXTENSIONS = (".tif", ".tiff", ".img", ".vrt", ".jp2", ".nc", ".h5")


@dataclass
class Scene:
    input: str
    output: str
    noise_output: str | None
    bands: list[int] | None  # None: the client could not read the band count; one task does all bands
    fingerprint: dict
    key: str = ""
    extra: dict = field(default_factory=dict)


def expand_inputs(items: list[str], lists: list[str] | None = None) -> list[str]:
    """Files, SAFE products and GDAL dataset names as given; `@FILE` and `lists` are text files
    listing them (one a line, # comments); other folders give the rasters directly inside them."""
    names: list[str] = []
    for listing in list(lists or []) + [i[1:] for i in items if i.startswith("@")]:
        try:
            with open(listing, encoding="utf-8") as fh:
                names += [ln.strip() for ln in fh if ln.strip() and not ln.strip().startswith("#")]
        except OSError as exc:
            raise InputError(f"Cannot read the input list {listing}: {exc.strerror or exc}.") from exc
    for item in items:
        if item.startswith("@"):
            continue
        if os.path.isdir(item) and not item.rstrip("/").upper().endswith(".SAFE"):
            from ..core.sentinel1 import is_sentinel1_input

            # rasters, and Sentinel-1 products (.SAFE folders, zips), which were skipped without a word
            found = sorted(p for p in glob.glob(os.path.join(glob.escape(item), "*"))
                           if (p.lower().endswith(RASTER_EXTENSIONS) and os.path.isfile(p))
                           or (p.lower().endswith((".safe", ".zip")) and is_sentinel1_input(p)))
            # An earlier run's outputs in the same folder are not new inputs (an output folder = input folder rerun).
            found = [p for p in found if not despecknet_output(p)]
            if not found:
                raise InputError(f"The folder {item} holds no raster ({', '.join(RASTER_EXTENSIONS)}) and no "
                                 "Sentinel-1 product (.SAFE folder or zip): "
                                 "name the files, or list them in a text file given as @LIST.")
            names += found
        else:
            names.append(item)
    seen, unique = set(), []
    names = [os.path.abspath(n) if os.path.exists(n) else n for n in names]  # workers may run elsewhere
    for n in names:
        key = os.path.realpath(n) if os.path.exists(n) else n
        if key not in seen:
            seen.add(key)
            unique.append(n)
    if not unique:
        raise InputError("No input was given: name rasters, SAFE products, folders, or @LIST files.")
    return unique


def despecknet_output(path: str) -> bool:
    """Whether a raster is an output of this plugin (its provenance metadata says so)."""
    from ..core.model_info import PROVENANCE_KEY
    from ..core.raster import open_quietly

    ds = open_quietly(path)
    return ds is not None and bool(ds.GetMetadataItem(PROVENANCE_KEY))


def output_stem(name: str) -> str:
    """A file-name stem for an input: the file's stem, a SAFE product's name, or a GDAL name made safe."""
    from ..core.sentinel1 import CALIB_PREFIX, MANIFEST, parse_calib_name

    suffix = ""
    if name.upper().startswith(CALIB_PREFIX):  # the product's name and what the name chooses of it
        source, _, polarisation, calibration = parse_calib_name(name)
        suffix = "".join(f"_{v}" for v in (polarisation, calibration.lower() if calibration not in ("SIGMA0", "UNCALIB")
                                                                              else None) if v)
        name = source
    if os.path.basename(name.rstrip("/\\")).lower() == MANIFEST:  # two products' manifests had one stem
        name = os.path.dirname(name.rstrip("/\\"))
    if "://" in name or (":" in name and not os.path.exists(name)):
        base = name.replace("://", "_")
        base = os.path.basename(base) if "/" in base.split(":")[-1] else base
    else:
        base = os.path.basename(name.rstrip("/\\"))
    for ext in (".SAFE", ".safe") + RASTER_EXTENSIONS + tuple(e.upper() for e in RASTER_EXTENSIONS) + (".zip",):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", base + suffix).strip("._") or "scene"


def input_files(name: str) -> list[str]:
    """The files a dataset is made of (GDAL's file list), or the name alone."""
    files = dataset_files(name)
    # GDAL's and QGIS's own sidecars (statistics, overviews) change when a raster is only looked at
    files = [f for f in files if os.path.isfile(f) and not f.lower().endswith(SIDECARS)]
    if not files and os.path.isfile(name):
        files = [name]
    return sorted(set(files))


def fingerprint(name: str, checksum: bool = False) -> dict:
    """What identifies an input's content: each file's size and mtime, or its SHA-256."""
    files = input_files(name)
    if not files:
        return {"name": name, "files": None}
    entries = []
    for f in files:
        st = os.stat(f)
        entry = {"path": os.path.abspath(f), "size": st.st_size}
        if checksum:
            entry["sha256"] = file_sha256(f)
        else:
            entry["mtime_ns"] = st.st_mtime_ns
        entries.append(entry)
    return {"name": name, "files": entries}


def raster_shape(name: str) -> tuple[int, int, int] | None:
    """(bands, width, height) as the client sees the raster (None: not readable from here)."""
    from ..core.raster import open_quietly

    ds = open_quietly(name)
    return (ds.RasterCount, ds.RasterXSize, ds.RasterYSize) if ds is not None and ds.RasterCount else None


def scene_key(scene: Scene, model_sha256: str, options: dict, device: str, precision: str = "auto") -> str:
    """What must be unchanged for an earlier output to stand: input, model, options, bands, outputs.

    A forced precision (fp32, bf16) is part of it; "auto" is left out, so that manifests
    written before the precision option keep their keys.
    """
    payload = {"fingerprint": scene.fingerprint, "model_sha256": model_sha256, "options": options,
               "bands": scene.bands, "noise": scene.noise_output is not None, "device": device,
               "output": os.path.abspath(scene.output)}
    if precision != "auto":
        payload["precision"] = precision
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def plan_scenes(inputs: list[str], output_dir: str, bands: list[int] | None, noise: bool, suffix: str,
                model_sha256: str, options: dict, device: str, checksum: bool = False,
                precision: str = "auto") -> list[Scene]:
    """One Scene per input, with output names checked: distinct, never an input."""
    scenes = []
    by_output: dict[str, str] = {}  # output path without case -> its input
    for name in inputs:
        stem = output_stem(name)
        output = os.path.join(output_dir, f"{stem}{suffix}.tif")
        noise_output = os.path.join(output_dir, f"{stem}_speckle.tif") if noise else None
        for path in filter(None, (output, noise_output)):
            # compared without case: on Windows, macOS and many network shares A.tif and a.tif are one file
            folded = os.path.normcase(path).lower()
            if folded in by_output:
                raise OutputError(f"{name} and {by_output[folded]} would both be written to {path}: give inputs with "
                                  "different names, or run them into different `output_dir` folders.")
            by_output[folded] = name
        shape = raster_shape(name)
        count = shape[0] if shape else None
        chosen = bands
        if chosen and count is not None:
            bad = [b for b in chosen if not 1 <= b <= count]
            if bad:
                raise InputError(f"{name} has {count} band(s); `bands` {bad} do not exist there.")
        elif not chosen and count is not None:
            chosen = list(range(1, count + 1))
        scene = Scene(name, output, noise_output, chosen, fingerprint(name, checksum),
                      extra={"size": shape[1:] if shape else None})
        scene.key = scene_key(scene, model_sha256, options, device, precision)
        scenes.append(scene)
    all_inputs = [f for s in scenes for f in ([e["path"] for e in s.fingerprint["files"] or []] or [s.input])]
    for path in (p for s in scenes for p in (s.output, s.noise_output) if p):
        for f in all_inputs:
            if same_file(path, f):
                raise OutputError(f"The output {path} would overwrite the input {f}: choose another `output_dir` "
                                  "or `suffix`; inputs are never overwritten.")
    return scenes


class Manifest:
    """The JSON-lines record of a batch output folder, locked for one run at a time."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, MANIFEST)
        self._fh = None

    def __enter__(self) -> "Manifest":
        self._fh = open(self.path, "a+", encoding="utf-8")
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError as exc:
            self._fh.close()
            self._fh = None
            raise OutputError(f"Another batch run is writing into {os.path.dirname(self.path)} now "
                              f"(its manifest {self.path} is locked): wait for it or choose another `output_dir`.") from exc
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        return False

    def records(self) -> list[dict]:
        """Every readable record (a line cut short by a crash is skipped)."""
        out = []
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue
        except FileNotFoundError:
            pass
        return out

    def latest(self) -> dict[str, dict]:
        """The last record of each output."""
        last = {}
        for r in self.records():
            if "output" in r:
                last[os.path.abspath(r["output"])] = r
        return last

    def append(self, record: dict) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        line = json.dumps(record, sort_keys=False, default=str) + "\n"
        if self._fh is None:
            raise RuntimeError("Manifest.append outside its with block")
        self._fh.seek(0, os.SEEK_END)
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())


def output_stats(scene: Scene) -> list | None:
    """[size, mtime_ns] of each output, None when one is missing."""
    stats = []
    for p in (scene.output, scene.noise_output):
        if p:
            try:
                st = os.stat(p)
            except OSError:
                return None
            stats.append([st.st_size, st.st_mtime_ns])
    return stats


def up_to_date(scene: Scene, last: dict | None) -> bool:
    """The scene's last record is a success with the same key, and its outputs are the files it wrote."""
    if not last or last.get("status") != "done" or last.get("key") != scene.key:
        return False
    stats = output_stats(scene)
    return stats is not None and stats == last.get("output_stats")


def record_for(scene: Scene, result: dict, model: str, model_sha256: str, options: dict) -> dict:
    return {
        "input": scene.input, "output": scene.output, "noise_output": scene.noise_output, "bands": scene.bands,
        "status": result.get("status"), "seconds": result.get("seconds"), "worker": result.get("worker"),
        "error": result.get("error"), "reused": result.get("reused", False), "provider": result.get("provider"),
        "model": model, "model_sha256": model_sha256, "options": options, "input_fingerprint": scene.fingerprint,
        "key": scene.key, "output_stats": output_stats(scene) if result.get("status") == "done" else None,
        **({"window_workers": result["window_workers"]} if result.get("window_workers") else {}),
    }


def scene_dict(scene: Scene) -> dict:
    return asdict(scene)
