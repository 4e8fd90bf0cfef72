"""Defaults, allowed ranges and presets: the one place the core and the algorithms read them.

The core's functions take their default arguments from here, and the Processing
algorithms build their parameter definitions (default, minimum, maximum, the range
stated in the description) from the same objects, so the two cannot drift apart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import InputError
from .losses import PHASE2_MULTILOOK, PHASE2_SINGLELOOK, LossWeights


@dataclass(frozen=True)
class Range:
    """An allowed numeric range; `check` raises InputError naming the core argument."""

    minimum: float | None = None
    maximum: float | None = None

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"at least {self.minimum:g}"
        if self.maximum is not None:
            return f"at most {self.maximum:g}"
        return "any value"

    def contains(self, value: float) -> bool:
        if self.minimum is not None and value < self.minimum:
            return False
        if self.maximum is not None and value > self.maximum:
            return False
        return True

    def check(self, value: float, argument: str, unit: str = "") -> float:
        if not self.contains(value):
            raise InputError(f"`{argument}` must be {self.describe()}{' ' + unit if unit else ''} (got {value:g}).")
        return value


@dataclass(frozen=True)
class TrainingDefaults:
    """Defaults of one training phase (the paper's where it gives them)."""

    epochs: int
    patch: int
    stride: int
    batch_size: int
    lr: float
    validation_fraction: float
    lr_end: float | None = None
    lr_steps: int = 1
    seed: int = 0


# Phase 1 (the paper): 40x40 patches at stride 9, batch 128, Adam 1e-3 down to 1e-4 in 3 steps, 30 epochs.
PHASE1_TRAINING = TrainingDefaults(epochs=30, patch=40, stride=9, batch_size=128, lr=1e-3, validation_fraction=0.1,
                                   lr_end=1e-4, lr_steps=3)
# Phase 2: one epoch. The paper tunes at a tenth of its phase 1 rate (1e-4); at stride 20 that
# cost 43 s per Mpixel here. Stride 28 halves the steps, and 3e-4 makes up for them: a 5-look
# model tuned on 1 Mpixel of 1-look correlated speckle gained 3.03 dB in 21.5 s per Mpixel,
# against 3.15 dB in 42.6 s at stride 20 and 1e-4 (1.58 dB at stride 28 and 1e-4). See README.
PHASE2_TRAINING = TrainingDefaults(epochs=1, patch=40, stride=28, batch_size=128, lr=3e-4, validation_fraction=0.1)

# Zeros of a band that declares no nodata are nodata (raster.input_nodata): GRD borders are 0.
ZERO_IS_NODATA = True

RANGES = {
    "epochs": Range(1),
    "patch": Range(8),
    "stride": Range(1),
    "batch_size": Range(1),
    # Adam steps of more than 1 per unit gradient only diverge: lr 1e2 gave a "trained" model whose
    # outputs reached 2e15 (a training loss of 5.8e27 was reported as success)
    "lr": Range(1e-8, 1.0),
    "lr_end": Range(0.0, 1.0),
    "validation_fraction": Range(0.0, 0.9),
    "looks": Range(0.0),
}


@dataclass(frozen=True)
class Phase2Preset:
    key: str
    label: str
    weights: LossWeights | None  # None: the caller's own weights
    looks: float | None  # number of looks assumed when none is given; None: no log-bias correction

    def title(self, custom: str = "the weights given") -> str:
        """The label with the weights it stands for (`custom` describes the caller's own)."""
        if self.weights is None:
            return f"{self.label}: {custom}"
        w = self.weights
        return f"{self.label}: mu {w.mu:g}, xi {w.xi:g}, lambda {w.lambda_tv:g}"


PHASE2_PRESETS = (
    Phase2Preset("multilook", "Multi-look (GRD)", PHASE2_MULTILOOK, 4.4),
    Phase2Preset("singlelook", "Single-look (SLC)", PHASE2_SINGLELOOK, 1.0),
    Phase2Preset("custom", "Custom", None, None),
)


def phase2_preset(key: str) -> Phase2Preset:
    for p in PHASE2_PRESETS:
        if p.key == key:
            return p
    raise InputError(f"Unknown `preset` {key!r}: use one of {', '.join(p.key for p in PHASE2_PRESETS)}.")


# --- tiled inference ---------------------------------------------------------------------
TILE_SIZE = 512
TILE_RANGE = Range(16, 4096)
# Peak memory of ONNX Runtime per pixel of a tile (its margins included), measured with the
# bundled model on CPU: about 0.8 KB with the clean branch alone (tools/bench.py, peak RSS
# 351 MB at tile 512, 1029 MB at tile 1024: 678 MB for 0.82 Mpixel more); both branches
# need about twice that.
BYTES_PER_TILE_PIXEL = 800
# GDAL's block cache during a run (its default, 5 % of RAM, grows with the image).
GDAL_CACHE_BYTES = 64 * 1024 * 1024
# Share of the available memory one tile may take.
TILE_MEMORY_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux, macOS, Windows), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pass
    try:  # Windows
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        status = _Status()
        status.dwLength = ctypes.sizeof(_Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.ullAvailPhys)
    except Exception:  # noqa: BLE001 - unknown platform: no bound
        pass
    return None


def tile_memory(tile_size: int, overlap: int, branches: int = 1) -> int:
    """Bytes ONNX Runtime needs at most for one tile of `tile_size` with its margins."""
    side = tile_size + 2 * overlap
    return side * side * BYTES_PER_TILE_PIXEL * branches


def largest_tile(overlap: int, branches: int = 1, memory: int | None = None) -> int:
    """The largest tile size whose network pass fits in TILE_MEMORY_SHARE of `memory`."""
    memory = available_memory() if memory is None else memory
    if memory is None:
        return int(TILE_RANGE.maximum)
    side = int((TILE_MEMORY_SHARE * memory / (BYTES_PER_TILE_PIXEL * branches)) ** 0.5) - 2 * overlap
    return max(0, min(int(TILE_RANGE.maximum), side // 16 * 16))
