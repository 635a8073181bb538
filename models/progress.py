"""Progress for long work (data generation, prepare, training, index build).

A ``Progress`` prints a line to stderr at most every ``every`` seconds and at the end, so the
same code shows progress in a terminal and in a SageMaker job's CloudWatch log without
flooding either. Steps take an optional ``Progress``; ``Progress.quiet()`` silences it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int | None = None, every: float = 2.0,
                 stream: TextIO | None = sys.stderr, unit: str = ""):
        self.label = label
        self.total = total
        self.every = every
        self.stream = stream
        self.unit = unit
        self.done = 0
        self._start = time.monotonic()
        self._last = 0.0

    @classmethod
    def quiet(cls, label: str = "", total: int | None = None) -> "Progress":
        return cls(label, total, stream=None)

    def child(self, label: str, total: int | None = None, unit: str = "") -> "Progress":
        return Progress(f"{self.label}: {label}" if self.label else label, total, self.every, self.stream, unit)

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and now - self._last >= self.every:
            self._last = now
            self._emit()

    def _emit(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self._start
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            pct = 100.0 * min(self.done, self.total) / self.total
            text = f"{self.label}: {self.done:,}/{self.total:,}{unit} ({pct:.0f}%) {elapsed:.1f}s"
        else:
            text = f"{self.label}: {self.done:,}{unit} {elapsed:.1f}s"
        print(text + (" done" if final else ""), file=self.stream, flush=True)

    def finish(self, message: str = "") -> None:
        if self.stream is not None:
            if message:
                print(f"{self.label}: {message} ({time.monotonic() - self._start:.1f}s)", file=self.stream, flush=True)
            else:
                self._emit(final=True)
