"""How long-running core work reports progress and learns about cancellation.

A SIGTERM (a `kill`, a batch scheduler's time limit, a service stopping) is handled like
a cancel while `terminate_as_cancel()` is active: its handler only sets a flag, and the
next `Progress.check()` raises `Cancelled`, so the outputs' temporary files are removed
as on any cancel. Python delivers signals to the main thread only, so the handler is
installed there alone (qgis_process runs algorithms in its main thread; QGIS desktop runs
them in worker threads, where its own cancel button does the same job).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Optional

from .errors import Cancelled

_terminated = threading.Event()


def termination_requested() -> bool:
    """True once a SIGTERM arrived while terminate_as_cancel() was active."""
    return _terminated.is_set()


@contextmanager
def terminate_as_cancel():
    """Within this block SIGTERM sets a flag that Progress.check() turns into Cancelled.

    The previous handler comes back afterwards; nested blocks and calls from other
    threads than the main one change nothing. A SIGTERM that arrives after the last
    check (the work completed) is delivered to the previous handler on the way out.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        previous = None
    if previous is _on_sigterm or previous is None:
        yield  # already active (nested) or signals unavailable here
        return
    _terminated.clear()
    signal.signal(signal.SIGTERM, _on_sigterm)
    finished = False
    try:
        yield
        finished = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        late = _terminated.is_set()
        _terminated.clear()
    if finished and late:
        # The signal came after the last check: the work is complete and its outputs are in
        # place; the termination that was deferred to this safe point happens now.
        signal.raise_signal(signal.SIGTERM)


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    _terminated.set()


class Progress:
    """Wraps optional callbacks: report(percent 0..100, message) and is_cancelled()."""

    def __init__(
        self,
        report: Optional[Callable[[float], None]] = None,
        is_cancelled: Optional[Callable[[], bool]] = None,
        log: Optional[Callable[[str], None]] = None,
    ):
        self._report = report
        self._is_cancelled = is_cancelled
        self._log = log

    def set(self, percent: float) -> None:
        if self._report is not None:
            self._report(max(0.0, min(100.0, percent)))

    def info(self, message: str) -> None:
        if self._log is not None:
            self._log(message)

    def cancelled(self) -> bool:
        return _terminated.is_set() or (self._is_cancelled is not None and bool(self._is_cancelled()))

    def part(self, start: float, end: float) -> "Progress":
        """The progress of one stage of a longer job, mapped onto start..end percent of this one."""
        return Progress(report=lambda p: self.set(start + (end - start) * p / 100.0),
                        is_cancelled=self._is_cancelled, log=self._log)

    def without_percent(self) -> "Progress":
        """This job's cancellation and messages, without its percent (a preparatory step, such as
        calibrating a Sentinel-1 product, that would otherwise move the bar back and forth)."""
        return Progress(is_cancelled=self._is_cancelled, log=self._log)

    def check(self) -> None:
        if _terminated.is_set():
            raise Cancelled("Terminated (SIGTERM) and handled as a cancel; no output was written.")
        if self._is_cancelled is not None and self._is_cancelled():
            raise Cancelled("Cancelled by the user; no output was written.")


SILENT = Progress()
