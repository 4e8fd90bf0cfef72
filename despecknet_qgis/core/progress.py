"""How long-running core work reports progress and learns about cancellation."""
from __future__ import annotations

from typing import Callable, Optional

from .errors import Cancelled


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

    def check(self) -> None:
        if self._is_cancelled is not None and self._is_cancelled():
            raise Cancelled("Cancelled by the user; no output was written.")


SILENT = Progress()
