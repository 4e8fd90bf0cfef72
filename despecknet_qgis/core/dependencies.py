"""Which Python packages each part of the plugin needs, which are missing, and how to install them.

QGIS brings its own Python (Debian's /usr/bin/python3, OSGeo4W's apps/Python3x, the
Python.framework inside QGIS.app), usually without ONNX Runtime or PyTorch. The provider
loads without any of them; each algorithm checks what it needs before any work and says
exactly what is missing and the pip command that installs it into the Python QGIS runs.

Packages are installed into a folder of their own (`packages_dir()`, one per Python
version) rather than into the system's site-packages: Debian's Python refuses pip there
(PEP 668, "externally managed"), and a plugin-local folder needs no administrator rights.
The plugin puts that folder on sys.path when it loads (`activate_packages_dir()`).

Nothing here imports numpy or any other third-party package at module level: this module
has to work when they are missing.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

from .errors import MissingPackageError

PACKAGES_ENV = "DESPECKNET_QGIS_PACKAGES"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Requirement:
    module: str  # import name
    pip: str  # what pip installs
    purpose: str


REQUIREMENTS = {
    "numpy": Requirement("numpy", "numpy", "arrays (every algorithm)"),
    "onnxruntime": Requirement("onnxruntime", "onnxruntime", "running deSpeckNet models (despeckling)"),
    "scipy": Requirement("scipy", "scipy", "statistics and filters (temporal labels, speckle statistics, quality, "
                                          "fine-tuning, classic filters)"),
    "torch": Requirement("torch", "torch", "training and fine-tuning (PyTorch)"),
    "onnx": Requirement("onnx", "onnx", "writing trained models as ONNX files"),
}

# What each part of the plugin needs (the algorithm names of the provider, and "plugin" for loading).
FEATURES = {
    "plugin": ("numpy",),
    "despeckle": ("numpy", "onnxruntime"),
    "despecklebatch": ("numpy", "onnxruntime"),
    "train": ("numpy", "torch", "onnx"),
    "finetune": ("numpy", "onnxruntime", "scipy", "torch", "onnx"),
    "temporallabel": ("numpy", "scipy"),
    "specklestats": ("numpy", "scipy"),
    "quality": ("numpy", "scipy"),
    "classicfilter": ("numpy", "scipy"),
}


def _present(module: str, import_it: bool) -> bool:
    try:
        if import_it:
            importlib.import_module(module)
            return True
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False
    except Exception:  # noqa: BLE001 - a broken installation (a DLL that does not load) counts as missing
        return False


def numpy_too_new_for_gdal() -> bool:
    """True when numpy is 2 or later and GDAL's array module cannot use it (GDAL built against numpy 1)."""
    try:
        import numpy
    except ImportError:
        return False
    if int(numpy.__version__.split(".")[0]) < 2:
        return False
    try:
        from osgeo import gdal_array  # noqa: F401 - importing it is the test
    except ImportError:
        return True
    except Exception:  # noqa: BLE001 - "numpy.core.multiarray failed to import" comes as several types
        return True
    return False


def numpy_spec() -> str:
    """How to ask pip for numpy without breaking GDAL: below 2 unless numpy 2 already works with GDAL."""
    try:
        import numpy

        if int(numpy.__version__.split(".")[0]) >= 2 and not numpy_too_new_for_gdal():
            return "numpy"
    except ImportError:
        pass
    return "numpy<2"


def missing(feature: str = "plugin", import_them: bool = False) -> list[Requirement]:
    """The requirements of `feature` (a key of FEATURES, or "all") that are not usable now.

    import_them: import each package (slow for torch, but also catches broken installations);
    False only looks for it. numpy 2 under a GDAL built for numpy 1 counts as missing "numpy<2".
    """
    names = sorted({n for f in FEATURES.values() for n in f}) if feature == "all" else FEATURES[feature]
    result = []
    for name in names:
        req = REQUIREMENTS[name]
        if not _present(req.module, import_them):
            result.append(Requirement(req.module, numpy_spec() if name == "numpy" else req.pip, req.purpose))
        elif name == "numpy" and numpy_too_new_for_gdal():
            result.append(Requirement("numpy", "numpy<2", "GDAL's array module here is built for numpy 1"))
    return result


def packages_dir() -> str:
    """The folder the plugin installs packages into and adds to sys.path: $DESPECKNET_QGIS_PACKAGES, or a
    per-user folder for this Python version (binary wheels differ between versions)."""
    if os.environ.get(PACKAGES_ENV):
        return os.environ[PACKAGES_ENV]
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if os.name == "nt":
        base = os.environ.get("APPDATA") or os.path.expanduser("~")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "despecknet_qgis", version)


def activate_packages_dir(path: str | None = None) -> bool:
    """Put the plugin's package folder on sys.path (after the system's own packages) if it exists.

    One exception: a numpy below 2 in the folder (the installer puts one there only where numpy was
    missing or too new for GDAL) is imported before any other numpy, and only numpy is: appended, it
    lost to the numpy 2 that broke GDAL, and the installer was offered again at every start.
    """
    path = path or packages_dir()
    if not os.path.isdir(path):
        return False
    if path not in sys.path:
        sys.path.append(path)
    if _numpy_1_in(path) and not any(isinstance(f, _NumpyFrom) for f in sys.meta_path):
        sys.meta_path.insert(0, _NumpyFrom(path))  # takes effect unless numpy is imported already (then: restart)
    importlib.invalidate_caches()
    return True


def _numpy_1_in(folder: str) -> bool:
    import glob

    for info in glob.glob(os.path.join(folder, "numpy-*.dist-info")):
        version = os.path.basename(info)[len("numpy-"):].split(".dist-info")[0]
        if version.split(".")[0].isdigit() and int(version.split(".")[0]) < 2:
            return os.path.isdir(os.path.join(folder, "numpy"))
    return False


class _NumpyFrom:
    """A meta path finder for the top-level numpy package only, from one folder (its submodules follow
    the package's own __path__); every other import is left to the normal path."""

    def __init__(self, folder: str):
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "numpy":
            return None
        from importlib.machinery import PathFinder

        return PathFinder.find_spec(fullname, [self.folder])


def _identity(executable: str) -> tuple | None:
    """(major, minor, base exec prefix) of an interpreter, by running it."""
    try:
        out = subprocess.run(
            [executable, "-c", "import os, sys; print(*sys.version_info[:2], os.path.realpath(sys.base_exec_prefix))"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.stdout.strip().split(" ", 2)
    return (int(parts[0]), int(parts[1]), parts[2]) if out.returncode == 0 and len(parts) == 3 else None


def python_executable() -> str | None:
    """The interpreter of the Python QGIS runs, for pip; None when none is found.

    Inside QGIS sys.executable is the QGIS program itself (qgis.bin, qgis-bin.exe: starting
    it would open another QGIS) or whatever `python3` came first on PATH (a pyenv shim under
    qgis_process), so the interpreter is looked for under the prefixes of the running Python
    first, and only one of the same version and the same installation (base prefix) is used.
    """
    version = sys.version_info[:2]
    short = f"{version[0]}.{version[1]}"
    wanted = (*version, os.path.realpath(sys.base_exec_prefix))
    candidates = []
    for prefix in dict.fromkeys((sys.exec_prefix, sys.prefix, sys.base_exec_prefix, sys.base_prefix)):
        if os.name == "nt":
            candidates += [os.path.join(prefix, "python.exe"), os.path.join(prefix, "python3.exe")]
        else:
            candidates += [os.path.join(prefix, "bin", f"python{short}"), os.path.join(prefix, "bin", "python3")]
    if sys.executable and os.path.basename(sys.executable).lower().startswith("python"):
        candidates.append(sys.executable)
    candidates += [shutil.which(f"python{short}"), shutil.which("python3"), shutil.which("python")]
    for candidate in dict.fromkeys(c for c in candidates if c):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and _identity(candidate) == wanted:
            return candidate
    return None


def has_pip(python: str) -> bool:
    try:
        out = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def _nvidia_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version")


def install_arguments(requirements: list[Requirement], target: str | None = None) -> list[str]:
    """pip's arguments (after `python -m pip`) that install `requirements` into the plugin's folder."""
    specs = list(dict.fromkeys(r.pip for r in requirements))
    if any(s.startswith("numpy") for s in specs) or any(r.module in ("onnxruntime", "torch", "scipy") for r in requirements):
        # pip --target installs every dependency again: keep numpy where GDAL can use it.
        specs = [s for s in specs if not s.startswith("numpy")] + [numpy_spec()]
    args = ["install", "--upgrade", "--no-warn-script-location", "--target", target or packages_dir(), *specs]
    if any(r.module == "torch" for r in requirements) and sys.platform.startswith("linux") and not _nvidia_driver_present():
        args += ["--extra-index-url", TORCH_CPU_INDEX]  # the CPU build, not several GB of CUDA libraries
    return args


def install_command(requirements: list[Requirement], python: str | None = None, target: str | None = None) -> list[str]:
    python = python or python_executable() or "python3"
    return [python, "-m", "pip", *install_arguments(requirements, target)]


def command_text(command: list[str]) -> str:
    if os.name == "nt":
        return subprocess.list2cmdline(command)
    return " ".join(shlex.quote(part) for part in command)


def describe(requirements: list[Requirement], what: str, python: str | None = None) -> str:
    """What is missing for `what`, and the command that installs it (for messages and the dialog)."""
    names = ", ".join(f"{r.pip} (for {r.purpose})" for r in requirements)
    command = command_text(install_command(requirements, python))
    return (f"{what} needs Python packages missing from the Python QGIS runs: {names}. Install them with:\n"
            f"  {command}\n"
            "then run again (in the QGIS desktop the plugin offers to do this when it loads; the folder after "
            "--target is added to Python's path when the plugin loads).")


def require(feature: str, what: str | None = None) -> None:
    """Raise MissingPackageError, before any work, when a package `feature` needs cannot be imported."""
    lacking = missing(feature, import_them=True)
    if lacking:
        raise MissingPackageError(describe(lacking, what or feature))


def import_module(name: str, feature: str):
    """`importlib.import_module(name)`, or MissingPackageError saying what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        req = REQUIREMENTS.get(top, Requirement(top, top, feature))
        raise MissingPackageError(describe([req], feature)) from exc
