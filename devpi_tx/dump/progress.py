"""
Progress of an export or import: a bar with files and bytes on a
terminal, plain lines otherwise (a log file or CI output would otherwise
fill with carriage returns).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

#: How often the bar is redrawn, and how often a line is written at most
#: (besides one line per tenth of the work).
BAR_INTERVAL = 0.1
LINE_INTERVAL = 5.0


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError("unreachable")


class Progress:
    """
    Counts files and bytes done out of known totals and shows them.
    """

    def __init__(
        self,
        label: str,
        files: int,
        size: int,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total_files = files
        self.total_size = size
        self.files = 0
        self.size = 0
        self._stream = stream or sys.stdout
        self._tty = self._stream.isatty() if tty is None else tty
        self._clock = clock
        self._last = clock()
        self._next_tenth = 1
        self._drawn = False
        #: How many files the last plain line showed.
        self._shown = -1

    def line(self, text: str) -> None:
        """
        A message of its own (a warning, a step), not overwritten by the bar.
        """
        if self._drawn:
            self._stream.write("\n")
            self._drawn = False
        self._stream.write(text + "\n")
        self._stream.flush()

    def _status(self) -> str:
        return (
            f"{self.label}: {self.files}/{self.total_files} files, "
            f"{human(self.size)}/{human(self.total_size)}"
        )

    def advance(self, size: int) -> None:
        self.files += 1
        self.size += size
        now = self._clock()
        if self._tty:
            if now - self._last >= BAR_INTERVAL or self.files == self.total_files:
                self._draw()
                self._last = now
            return
        tenth = self.files * 10 // max(self.total_files, 1)
        if tenth >= self._next_tenth or now - self._last >= LINE_INTERVAL:
            self._next_tenth = tenth + 1
            self._last = now
            self._shown = self.files
            self.line(self._status())

    def _draw(self) -> None:
        width = 30
        done = self.size / self.total_size if self.total_size else 1.0
        filled = int(width * min(done, 1.0))
        bar = "#" * filled + "." * (width - filled)
        self._stream.write(f"\r[{bar}] {self._status()}")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._tty:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
        elif self._shown != self.files:
            self.line(self._status())
