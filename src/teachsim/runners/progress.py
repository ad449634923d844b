"""Progress of a run: a bar on a terminal (done/total, failures, ETA), plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ..platform.episode import EpisodeResult


class Progress:
    """A bar on a terminal (done/total, failures, ETA); plain lines otherwise."""

    def __init__(self, total: int, *, skipped: int = 0, stream: TextIO | None = None, enabled: bool = True):
        self.total, self.done, self.failed, self.skipped = total, 0, 0, skipped
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        if enabled and skipped:
            self._line(f"resuming: {skipped} finished episode(s) kept, {total} to run")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line of its own (what the executor started, a warning), when progress is on."""
        if self.enabled:
            self._line(text)

    def update(self, result: EpisodeResult) -> None:
        self.done += 1
        self.failed += result.status != "finished"
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        tail = f"{self.failed} failed, " if self.failed else ""
        spec = result.spec
        what = f"{spec.label} seed={spec.seed}" + (f" [{spec.variant}]" if spec.variant else "")
        if self.tty:
            width = 24
            fill = int(width * self.done / max(1, self.total))
            bar = "#" * fill + "-" * (width - fill)
            end = "\n" if self.done == self.total else ""
            print(f"\r[{bar}] {self.done}/{self.total} {tail}ETA {eta:5.0f}s  {what[:40]:<40}", end=end,
                  file=self.stream, flush=True)
        else:
            status = "ok" if result.status == "finished" else "FAILED"
            self._line(f"[{self.done}/{self.total}] {what}: {status} ({result.seconds:.1f}s) "
                       f"{tail}ETA {eta:.0f}s")
