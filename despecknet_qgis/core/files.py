"""Output files that never destroy anything: checks before the work, hidden partial files
during it, and an all-or-nothing rename at the end.

- `check_outputs` runs before any work: an output may not be a folder, sit in a missing or
  read-only folder, be one of the inputs, be the bundled model, or be another output.
- Work is written to a hidden partial file beside the destination, named after it and
  after the writing process (`.<name>.partial-<pid>-<random><ext>`). A killed run leaves
  such a file behind; `remove_stale_partials` deletes those whose process is gone the next
  time the same output is written.
- `commit_files` moves several finished partial files into place together. A file that
  was already at a destination is kept aside (a hard link) until every move succeeded, and
  put back when one fails, so a pair of outputs appears whole or not at all.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import threading
import time
import uuid
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not serialised there
    fcntl = None

from .errors import OutputError
from .model_info import bundled_files

PARTIAL = ".partial-"
_PARTIAL_NAME = re.compile(r"\.partial-(?:(\d+)-)?[0-9a-f]{8}")
STALE_AFTER_S = 24 * 3600  # where a process cannot be asked whether it still runs (Windows)


def backing_file(name: str) -> str:
    """The local file behind a GDAL dataset name: /vsizip/x.zip/a.tif -> x.zip, NETCDF:"x.nc":v -> x.nc.

    A plain path, or a name with no local file behind it (/vsicurl/...), is returned unchanged.
    """
    if not name or os.path.exists(name):
        return name
    if name.startswith("/vsi"):
        rest = name.split("/", 2)[2] if name.count("/") >= 2 else ""
        rest = rest.lstrip("{")
        parts = rest.split("/")
        for i in range(len(parts), 0, -1):  # the longest prefix that is a file
            cand = "/".join(parts[:i]).rstrip("}")
            if cand and os.path.isfile(cand):
                return cand
        return name
    for piece in name.replace('"', ":").split(":"):  # DRIVER:"path":subdataset
        if piece and os.path.isfile(piece):
            return piece
    return name


def same_file(a: str, b: str) -> bool:
    """The same file, through links and relative paths alike (also when one does not exist yet).

    A GDAL dataset name (/vsizip/, sub-datasets) stands for the local file behind it.
    """
    a, b = backing_file(a), backing_file(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(os.path.abspath(a)) == os.path.realpath(os.path.abspath(b))


def same_dataset(a: str, b: str) -> bool:
    """The same raster: the same file for plain paths (links and spellings alike); for GDAL names
    (/vsizip/..., sub-datasets) the same file behind them and the same member or sub-dataset in it,
    since two rasters inside one zip share its file."""
    from .raster import is_gdal_name

    if is_gdal_name(a) or is_gdal_name(b):
        return dataset_key(a) == dataset_key(b)
    return same_file(a, b)


def dataset_key(name: str) -> tuple[str, str, str]:
    """One key per GDAL dataset name however it is spelled: the real path of the local file behind it,
    and what the name picks in that file, without quotes or braces (NETCDF:"d.nc":v and NETCDF:d.nc:v,
    a relative and an absolute path, a zip and a link to it: one key each)."""
    backing = backing_file(name)
    at = name.find(backing) if backing and backing != name else -1
    if at < 0:  # no local file behind it (/vsicurl/...), or a plain path
        return (os.path.realpath(os.path.abspath(name)) if backing == name and os.path.exists(name) else name, "", "")
    prefix = re.sub(r"/+", "/", name[:at].replace('"', "").replace("{", "")).upper()
    member = name[at + len(backing):].replace('"', "").replace("}", "")
    member = os.path.normpath(member) if member.startswith("/") else member
    return (os.path.realpath(os.path.abspath(backing)), prefix, member)


def dataset_files(name: str) -> list[str]:
    """The files GDAL reads for a raster dataset name (a VRT's sources, a SAFE's measurements,
    sidecars), or [] where the name does not open as a raster."""
    from .raster import open_quietly  # raster imports this module

    ds = open_quietly(name)
    return list(ds.GetFileList() or []) if ds is not None else []


def protected_files() -> list[str]:
    """Files no algorithm may write: the bundled models and their checkpoints."""
    return bundled_files()


def partial_path(path: str) -> str:
    """A hidden file beside `path`, unique to this process and call."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, _partial_name(name, str(os.getpid()), uuid.uuid4().hex[:8]))


def _partial_name(name: str, pid: str, tag: str) -> str:
    stem, ext = os.path.splitext(name)
    return f".{stem}{PARTIAL}{pid}-{tag}{ext}"


def _still_running(pid: int, partial: str) -> bool:
    """Whether the process that writes `partial` may still be running."""
    if os.name == "posix":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True
    try:  # elsewhere a process cannot be asked this safely: go by the file's age
        return time.time() - os.path.getmtime(partial) < STALE_AFTER_S
    except OSError:
        return True


def remove_dead_partials(folder: str) -> list[str]:
    """Delete the partial files in `folder` (any destination) whose writing process is gone; returns them.

    For work folders (the Sentinel-1 cache, the batch's parts): a killed run's partial there is never
    written again under its destination's name, so remove_stale_partials would never see it."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _PARTIAL_NAME.search(name)
        if not name.startswith(".") or m is None or not m.group(1):
            continue
        _remove_if_dead(os.path.join(folder, name), int(m.group(1)), removed)
    return removed


def _remove_if_dead(partial: str, pid: int | None, removed: list[str]) -> None:
    """Delete a partial file unless its process (None: a version that wrote no pid) is this one or still runs."""
    if pid is not None and (pid == os.getpid() or _still_running(pid, partial)):
        return
    try:
        os.remove(partial)
        removed.append(partial)
    except OSError:
        pass


def remove_stale_partials(path: str) -> list[str]:
    """Delete partial files of `path` left by runs that were killed; returns what was removed.

    Partial files of this process, or of another process that still runs (a second run
    writing the same output right now), are kept.
    """
    directory, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    removed = []
    pattern = os.path.join(glob.escape(directory), glob.escape(f".{stem}{PARTIAL}") + "*")
    for candidate in glob.glob(pattern):
        rest = os.path.basename(candidate)[len(f".{stem}"):]
        m = _PARTIAL_NAME.match(rest)
        if m is None or rest[m.end():] not in (ext, ext + ".aux.xml"):
            continue  # the partial file of another output whose name starts like this one
        _remove_if_dead(candidate, int(m.group(1)) if m.group(1) else None, removed)  # no pid: an earlier version's
    old = os.path.abspath(path) + ".partial"  # the partial checkpoint name of earlier versions
    if os.path.isfile(old):
        try:
            os.remove(old)
            removed.append(old)
        except OSError:
            pass
    return removed


def _input_paths(inputs: dict) -> list[tuple[str, str]]:
    pairs = []
    for argument, value in inputs.items():
        for p in value if isinstance(value, (list, tuple)) else [value]:
            if p:
                pairs.append((argument, str(p)))
    return pairs


def check_output_path(path: str, argument: str) -> str:
    """An output path that can be written: not a folder, in an existing writable folder, not the bundled model."""
    if not path:
        raise OutputError(f"`{argument}` is empty: give the file to write.")
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise OutputError(f"`{argument}` {path} is a folder: give a file name inside it "
                          f"(e.g. {os.path.join(path, 'result' + (os.path.splitext(path)[1] or '.tif'))}).")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise OutputError(f"The folder {folder} of `{argument}` does not exist: create it or choose another folder.")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"Cannot write into {folder} (`{argument}`): the folder or its disk is read-only. "
                          "Choose a folder you can write to.")
    for protected in protected_files():
        if same_file(path, protected):
            raise OutputError(f"`{argument}` {path} is the bundled model file, which is read-only: choose another file name.")
    if os.path.isfile(path) and not _writable_file(path):
        # the output is written beside and moved over the old file, which a file's own mode does not stop
        raise OutputError(f"`{argument}` {path} is a read-only file: it was kept from being changed. Choose another "
                          "file name, or make the file writable if it is to be replaced.")
    _check_name_length(path, argument)
    return path


def _writable_file(path: str) -> bool:
    """Not read-only: os.access answers yes to root for any file, so the mode's write bits decide too."""
    import stat

    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


PID_DIGITS = 7  # the partial name holds the process id: room for the largest Linux allows


def _check_name_length(path: str, argument: str) -> None:
    """The hidden partial file written beside an output has a longer name than the output: a legal name near
    the file system's limit failed only when written, after the work (train: after an epoch), as "disk full"."""
    folder, name = os.path.split(path)
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not on Windows: its own limit is on the whole path
        return
    longest = len(os.fsencode(_partial_name(name, "9" * PID_DIGITS, "0" * 8)))
    if longest > limit:
        raise OutputError(f"The file name of `{argument}` ({name[:40]}...) is too long: the hidden file written beside "
                          f"it first has {longest} bytes in its name, beyond this file system's limit of {limit}. "
                          f"Choose a name shorter by at least {longest - limit} bytes.")


def check_outputs(outputs: dict, inputs: dict | None = None) -> None:
    """Before any work: every output writable, none an input, none another output.

    outputs and inputs map the core's argument names to paths (None: not asked for; for
    inputs also a list of paths). Messages name the arguments, so a caller can map them.
    """
    given = [(a, p) for a, p in outputs.items() if p]
    read = [(in_arg, in_path, [in_path, *dataset_files(in_path)])  # what GDAL reads for each input, opened once
            for in_arg, in_path in (_input_paths(inputs or {}) if given else [])]
    for argument, path in given:
        check_output_path(path, argument)
        for in_arg, in_path, files in read:
            for f in files:
                if not same_file(path, f):
                    continue
                if f == in_path:
                    raise OutputError(f"`{argument}` {path} is the input `{in_arg}`: choose another file; inputs are "
                                      "never overwritten.")
                # a VRT, a SAFE folder or a sub-dataset reads other files: writing one of them destroys the input
                raise OutputError(f"`{argument}` {path} is a file that the input `{in_arg}` ({in_path}) reads: "
                                  "choose another file; inputs are never overwritten.")
    for i, (a, p) in enumerate(given):
        for b, q in given[i + 1:]:
            if same_file(p, q):
                raise OutputError(f"`{a}` and `{b}` are the same file {p}: choose two different files.")


def _copy_aside(dest: str, previous: str) -> None:
    import shutil

    try:
        shutil.copy2(dest, previous)
    except OSError as exc:
        if os.path.exists(previous):
            os.remove(previous)
        raise OutputError(f"Cannot keep a copy of {dest} while its new version and the outputs written with it "
                          f"are moved into place ({exc.strerror or exc}); nothing was replaced. Free some space "
                          "or write into another folder.") from exc


def locked_file(path: str, mode: int):
    """`path` opened and flock-ed with `mode` (fcntl.LOCK_SH or LOCK_EX; with LOCK_NB, None at once where
    another holds it), on the file that is at `path` once locked: lock files are removed by their holders,
    and a lock taken on a removed one protected nothing. Raises OSError where it cannot be opened or locked."""
    while True:
        fh = open(path, "a")
        try:
            fcntl.flock(fh, mode)
        except BlockingIOError:
            fh.close()
            return None
        except OSError:
            fh.close()
            raise
        try:
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                return fh
        except FileNotFoundError:
            pass
        fh.close()


_HELD: dict = {}  # (lock file, thread) -> [open lock file, depth]: a thread may take a lock it holds again
_HELD_GUARD = threading.Lock()


@contextmanager
def writing_lock(path: str, what: str = "a run", wait: float = 0.0):
    """An exclusive lock on writing `path`, across processes and threads (a hidden `.NAME.lock` beside it,
    removed on release). The thread that holds it may take it again (a job, then its commit).

    Raises:
        OutputError: another run holds it after `wait` seconds.
    """
    if fcntl is None:
        yield
        return
    folder, name = os.path.split(os.path.abspath(path))
    lock = os.path.join(folder, f".{name}.lock")
    key = (lock, threading.get_ident())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            with _HELD_GUARD:
                held[1] -= 1
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            fh = locked_file(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a folder this process cannot write, or no locks there: the write itself says what fails
            yield
            return
        if fh is not None:
            break
        if time.monotonic() >= deadline:
            raise OutputError(f"Another run is writing {path} now ({what}): wait until it has finished, or "
                              "choose another name.")
        time.sleep(0.05)
    with _HELD_GUARD:
        _HELD[key] = [fh, 1]
    try:
        yield
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        try:
            os.remove(lock)
        except OSError:
            pass
        fh.close()


def commit_files(moves: list[tuple[str, str]]) -> None:
    """Move each finished partial file onto its destination, all or none.

    Files already at the destinations are kept (hard links beside them, copies where the
    file system has no hard links) until every move
    succeeded; if one fails, the destinations moved so far get their previous files back
    (or are removed if they had none) and OutputError is raised. Partial files are removed
    on failure. Two runs committing sets to the same names take turns (a lock on the first name):
    interleaved, they left one run's .onnx beside the other's .pt, both reported done.
    """
    if len(moves) > 1:
        with writing_lock(moves[0][1] + ".commit", "moving its files into place", wait=COMMIT_WAIT_S):
            _commit(moves)
    else:
        _commit(moves)


COMMIT_WAIT_S = 60.0


def _commit(moves: list[tuple[str, str]]) -> None:
    kept: list[tuple[str, str | None]] = []  # (destination, its previous file kept aside or None)
    try:
        for tmp, dest in moves:
            previous = None
            if os.path.lexists(dest):
                if os.path.isdir(dest):
                    raise OutputError(f"{dest} is a folder: give a file name inside it.")
                previous = partial_path(dest)
                try:
                    os.link(dest, previous)
                except OSError:
                    if len(moves) == 1:
                        previous = None  # one atomic replace: the old file stays unless the new one lands
                    else:
                        _copy_aside(dest, previous)  # FAT, exFAT, some network mounts: no hard links
            try:
                os.replace(tmp, dest)
            except OSError:
                if previous is not None:
                    os.remove(previous)
                raise
            kept.append((dest, previous))
    except (OSError, OutputError) as exc:
        for dest, previous in reversed(kept):
            try:
                if previous is not None:
                    os.replace(previous, dest)
                else:
                    os.remove(dest)
            except OSError:
                pass
        for tmp, _ in moves:
            if os.path.exists(tmp):
                try:
                    os.remove(tmp)
                except OSError:
                    pass
        for dest, previous in kept:
            if previous is not None and os.path.exists(previous):
                os.remove(previous)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"Moving the finished output into place failed ({exc.strerror or exc}); "
                          "the files that were there before are unchanged.") from exc
    for _, previous in kept:
        if previous is not None and os.path.exists(previous):
            os.remove(previous)
    for tmp, dest in moves:
        _replace_sidecars(tmp, dest)


# Files GDAL and QGIS keep beside a raster (statistics and metadata, overviews, a mask)
SIDECARS = (".aux.xml", ".ovr", ".msk")


def _replace_sidecars(tmp: str, dest: str) -> None:
    """The new file's sidecars go with it; the old file's are removed: they describe other pixels (QGIS
    stretched a new output by the statistics of the one it replaced, and showed old overviews zoomed out)."""
    for ext in SIDECARS:
        try:
            if os.path.exists(tmp + ext):
                os.replace(tmp + ext, dest + ext)
            elif os.path.lexists(dest + ext):
                os.remove(dest + ext)
        except OSError:
            pass


def remove_quietly(*paths: str) -> None:
    for p in paths:
        for q in (p,) + tuple(p + ext for ext in SIDECARS):
            try:
                if os.path.exists(q):
                    os.remove(q)
            except OSError:
                pass


class KeepPrevious:
    """The files at some paths as they were before a job of several steps, to put back if a later step fails.

    Each existing file is kept as a hard link beside it (a copy where links are not
    possible); `restore()` puts them back and removes files that did not exist before;
    `release()` drops the kept copies once the whole job succeeded.
    """

    def __init__(self, *paths: str):
        import shutil

        self.kept: list[tuple[str, str | None]] = []
        for p in paths:
            p = os.path.abspath(p)
            copy = None
            if os.path.isfile(p):
                copy = partial_path(p)
                try:
                    os.link(p, copy)
                except OSError:
                    shutil.copy2(p, copy)
            self.kept.append((p, copy))

    def restore(self) -> None:
        for p, copy in self.kept:
            try:
                if copy is not None:
                    os.replace(copy, p)
                elif os.path.exists(p):
                    os.remove(p)
            except OSError:
                pass
        self.kept = []

    def release(self) -> None:
        for _, copy in self.kept:
            if copy is not None:
                remove_quietly(copy)
        self.kept = []


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file, read in chunks (models, and the batch's input fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def model_onnx_files(model: str | None) -> list[str]:
    """The ONNX files a model stands for: the file itself, or for None every bundled ONNX model."""
    return [model] if model is not None else [p for p in bundled_files() if p.endswith(".onnx")]


def model_sha256(model: str | None) -> str:
    """The SHA-256 of an ONNX model; for None (the bundled models, chosen per band) one digest
    of every bundled ONNX model, so that the batch's workers can check they hold the same ones."""
    if model is not None:
        return file_sha256(model)
    digest = hashlib.sha256()
    for path in model_onnx_files(None):
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()
