"""The exceptions the core raises: one hierarchy, one base class.

Every failure a user can cause or meet (bad input, an output that cannot be written, a
broken model, no memory, a diverging training, a cancel) is a `DespeckNetError` whose
message says what is wrong and what to do. Messages name the core's own arguments in
backticks (`tile_size`, `output_path`): the Processing layer replaces them with its
parameter names (TILE_SIZE, OUTPUT), other callers read them as they are.

`FloatingPointError`, `ValueError` and `MemoryError` raised inside the core's public
functions are turned into this hierarchy by `translate_errors`; nothing else of the
standard library's numeric errors escapes.
"""
from __future__ import annotations

import functools
import re


class DespeckNetError(Exception):
    """Bad input or an impossible request. The message says what is wrong and what to do."""


class InputError(DespeckNetError):
    """An input file or argument is missing, unreadable or out of range."""


class OutputError(DespeckNetError):
    """An output cannot be written where asked (would overwrite an input, folder missing,
    disk full, read-only); anything already at the output path is left as it was."""


class ModelError(DespeckNetError):
    """A model file is unusable: not a deSpeckNet model, corrupt, or producing invalid values."""


class ResourceError(DespeckNetError):
    """Not enough memory (or another machine resource) for the request as given."""


class ClusterError(DespeckNetError):
    """The Dask cluster of a batch run cannot be used: dask missing, no scheduler at the address."""


class TrainingError(DespeckNetError):
    """Training cannot go on: the loss stopped being finite."""


class MissingPackageError(DespeckNetError):
    """A Python package the requested work needs is not installed in QGIS's Python (see dependencies.py)."""


class Cancelled(DespeckNetError):
    """The user cancelled (or the process was asked to terminate); nothing half-done was left behind."""


_ARGUMENT = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def arguments_in(message: str) -> list[str]:
    """The core argument names a message refers to (written in backticks)."""
    return _ARGUMENT.findall(message)


def rename_arguments(message: str, names: dict[str, str]) -> str:
    """`message` with each `argument` written as names[argument] (or bare, when not in names)."""
    return _ARGUMENT.sub(lambda m: names.get(m.group(1), m.group(1)), message)


def translate(exc: BaseException, where: str = "") -> DespeckNetError | None:
    """The DespeckNetError standing for a standard numeric or value error, None for others."""
    prefix = f"{where}: " if where else ""
    if isinstance(exc, DespeckNetError):
        return exc
    if isinstance(exc, FloatingPointError):
        return TrainingError(f"{prefix}a computation gave a non-finite value ({exc}). If this happened while training, "
                             "lower `lr` (the learning rate); otherwise check the input for extreme values.")
    if isinstance(exc, MemoryError):
        return ResourceError(f"{prefix}out of memory. Lower `tile_size` (or `batch_size` when training) and try again.")
    if isinstance(exc, ValueError):
        return InputError(f"{prefix}{exc}")
    return None


def translate_errors(func):
    """Decorator for the core's public functions: standard numeric errors leave as DespeckNetError."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DespeckNetError:
            raise
        except (FloatingPointError, ValueError, MemoryError) as exc:
            raise translate(exc, func.__name__) from exc

    return wrapper
