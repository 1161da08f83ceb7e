"""The job's progress line: rows, audio hours, throughput and ETA, printed every few seconds."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Progress:
    total: int
    interval_s: float
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    rows: int = 0
    ok: int = 0
    error: int = 0
    audio_s: float = 0.0
    start: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _printed: str = ""

    def update(self, rows: int, ok: int, error: int, audio_s: float) -> None:
        self.rows += rows
        self.ok += ok
        self.error += error
        self.audio_s += audio_s
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self.print()

    def forget(self, rows: int, ok: int, error: int, audio_s: float) -> None:
        """What the rows of units that will be redone (their attempt died) added: the next attempt
        counts them again."""
        self.rows -= rows
        self.ok -= ok
        self.error -= error
        self.audio_s -= audio_s

    def print(self) -> None:
        line = self.line()
        if line != self._printed:  # the final call repeats the last update's line when nothing moved
            print(line, file=self.stream, flush=True)
            self._printed = line

    def line(self) -> str:
        el = max(time.monotonic() - self.start, 1e-9)
        rate = self.rows / el
        left = max(self.total - self.rows, 0)
        eta = left / rate if rate > 0 else float("inf")
        pct = 100.0 * min(self.rows, self.total) / self.total if self.total else 100.0
        return (
            f"[emotion2vec] {self.rows}/{self.total} rows ({pct:.0f}%) | ok {self.ok} err {self.error} | "
            f"{self.audio_s / 3600:.3f} h audio | {rate:.1f} rows/s, {self.audio_s / el:.1f} audio-s/s | "
            f"ETA {hms(eta)}"
        )


def hms(s: float) -> str:
    if not math.isfinite(s):
        return "--:--:--"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
