"""Progress bars with throughput and ETA for copies that take more than a moment (issue 8).

`Progress` is a context manager whose `advance` method is a `gapferry.common.digest.Progress`
callback (``Callable[[int], None]``), so it plugs into `copy_hashed`, `sha256_file` and
`verify_file`. It writes to stderr only, never stdout (stdout carries ``--json`` documents), and
only when enabled: by default when stderr is a terminal, so tests and pipes stay silent. Even
then nothing appears until the copy has run for `delay` seconds, so quick copies print nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "format_bytes", "format_duration"]

_BAR_WIDTH = 24


def format_bytes(n: float) -> str:
    """Human size with binary units: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float) -> str:
    """``1:05`` or ``1:02:03``."""
    s = max(0, int(seconds + 0.5))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A progress bar for one copy of `total_bytes` bytes, labelled `label`.

    Use as ``with Progress("artifact.mender", size) as p: copy_hashed(src, dst, progress=p.advance)``.

    `enabled` None means "when stderr is a terminal". `stream`, `clock`, `delay` and `interval`
    exist for tests; the defaults are stderr, a monotonic clock, 1 s and 0.1 s.
    """

    def __init__(
        self,
        label: str,
        total_bytes: int,
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        delay: float = 1.0,
        interval: float = 0.1,
    ) -> None:
        self.label = label
        self.total_bytes = max(0, total_bytes)
        self.done_bytes = 0
        self._stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self._stream, "isatty", None)
            enabled = bool(isatty()) if isatty is not None else False
        self.enabled = enabled
        self._clock = clock
        self._delay = delay
        self._interval = interval
        self._start = clock()
        self._last_draw: float | None = None
        self.shown = False

    def __enter__(self) -> Progress:
        self._start = self._clock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.shown:
            self._draw(self._clock())
            self._stream.write("\n" if exc_type is None else " (interrupted)\n")
            self._stream.flush()

    def advance(self, n: int) -> None:
        """Count `n` more bytes done; redraw at most every `interval` once `delay` has passed."""
        self.done_bytes += n
        if not self.enabled:
            return
        now = self._clock()
        if now - self._start < self._delay:
            return
        if self._last_draw is not None and now - self._last_draw < self._interval:
            return
        self._draw(now)

    __call__ = advance

    def line(self, now: float | None = None) -> str:
        """The status line as it would be drawn at `now` (default: the clock's now)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = self.done_bytes / elapsed
        total = self.total_bytes
        frac = min(1.0, self.done_bytes / total) if total else 1.0
        filled = int(frac * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        if rate > 0 and total > self.done_bytes:
            eta = f"ETA {format_duration((total - self.done_bytes) / rate)}"
        elif total <= self.done_bytes:
            eta = f"in {format_duration(elapsed)}"
        else:
            eta = "ETA --:--"
        return (
            f"{self.label} [{bar}] {frac * 100:5.1f}% "
            f"{format_bytes(self.done_bytes)}/{format_bytes(total)} "
            f"{format_bytes(rate)}/s {eta}"
        )

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self.shown = True
        self._stream.write("\r\x1b[K" + self.line(now))
        self._stream.flush()
