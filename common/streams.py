"""Small `Readable` adapters: a byte range of a file, and a stream that also feeds a hash.

Used by the bundle writer (artifacts split into parts) and by multi-stick spans."""

from __future__ import annotations

import os
from typing import Any

from gapferry.common.digest import Readable

__all__ = ["RangeReader", "TeeReader"]


class RangeReader:
    """A `Readable` over bytes ``[offset, offset+length)`` of an open file descriptor."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd = fd
        self._pos = offset
        self._left = length

    def readinto(self, buffer: memoryview, /) -> int:
        if self._left <= 0:
            return 0
        want = min(len(buffer), self._left)
        if hasattr(os, "preadv"):  # straight into the buffer, no temporary bytes object
            n = os.preadv(self._fd, [buffer[:want]], self._pos)
        else:  # pragma: no cover - macOS before Python 3.12
            data = os.pread(self._fd, want, self._pos)
            n = len(data)
            buffer[:n] = data
        self._pos += n
        self._left -= n
        return n


class TeeReader:
    """A `Readable` that also feeds everything read into a hash object (e.g. a whole artifact's
    sha256 while its parts are copied one by one).

    `gapferry.common.digest.pump` reads `source` and gives `hasher` a thread of its own instead
    of hashing in the reading thread (`untee`), so a split artifact's two hashes run in parallel.
    """

    def __init__(self, src: Readable, hasher: Any) -> None:
        self._src = src
        self._hasher = hasher

    def untee(self) -> tuple[Readable, Any]:
        """The underlying stream and the hash object, for a reader that feeds the hash itself."""
        return self._src, self._hasher

    def readinto(self, buffer: memoryview, /) -> int:
        n = self._src.readinto(buffer) or 0
        if n:
            self._hasher.update(buffer[:n])
        return n
