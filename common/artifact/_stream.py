"""Stream adapters for the artifact reader: hashing, counting and safe decompression.

All adapters read in bounded chunks, so memory stays constant for multi-GiB payloads
(`../shared/mender/artifact-and-client.md` 1.5: a 64 MiB payload is routine, GiB rootfs images exist).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import zlib
from typing import IO, cast

from gapferry.common.artifact._tar import ByteSource
from gapferry.common.artifact.errors import ArtifactStructureError, ArtifactTooLarge
from gapferry.common.digest import Readable
from gapferry.common.errors import EnvironmentFailure

__all__ = ["CHUNK", "CountingReader", "HashingReader", "SourceReader", "decompressor"]

CHUNK = 1024 * 1024


class SourceReader:
    """``read(n)`` over a `Readable` (``readinto`` only), hashing (unless `hashing` is False)
    and counting everything read.

    An `OSError` from the source is the outside world failing (media, pipe), not bad data: it
    becomes `EnvironmentFailure`. Raises `ArtifactTooLarge` past ``max_bytes``.
    """

    def __init__(self, src: Readable, *, max_bytes: int, hashing: bool = True) -> None:
        self._src = src
        self._max = max_bytes
        self.size = 0
        self.hash = hashlib.sha256()
        self._hashing = hashing
        self._buf = bytearray(CHUNK)

    def read(self, size: int = -1, /) -> bytes:
        if size < 0 or size > CHUNK:
            size = CHUNK
        view = memoryview(self._buf)[:size]
        try:
            n = self._src.readinto(view) or 0
        except OSError as e:
            raise EnvironmentFailure(
                f"reading the artifact failed: {e}",
                remedy="check the medium or the source file and try again",
                code="read-failed",
            ) from e
        data = bytes(view[:n])
        self.size += n
        if self.size > self._max:
            raise ArtifactTooLarge(
                f"artifact is longer than the limit of {self._max} bytes",
                remedy="check the source; a larger artifact needs a larger configured limit",
            )
        if self._hashing:
            self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class HashingReader:
    """``read(n)`` over a `ByteSource`, hashing what passes through."""

    def __init__(self, src: ByteSource) -> None:
        self._src = src
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        b = self._src.read(size)
        self.hash.update(b)
        self.size += len(b)
        return b

    def readinto(self, buffer: memoryview, /) -> int:
        b = self.read(len(buffer))
        buffer[: len(b)] = b
        return len(b)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class CountingReader:
    """``read(n)`` that refuses more than ``max_bytes`` in total and turns decompression errors
    into `ArtifactStructureError` (a corrupt gzip/xz stream is bad data, not an OSError)."""

    def __init__(self, src: ByteSource, *, max_bytes: int, what: str) -> None:
        self._src = src
        self._max = max_bytes
        self._what = what
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        if size < 0 or size > CHUNK:
            size = CHUNK
        try:
            b = self._src.read(size)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
            raise ArtifactStructureError(f"{self._what}: corrupt compressed data ({e})") from e
        self.size += len(b)
        if self.size > self._max:
            raise ArtifactTooLarge(
                f"{self._what}: more than {self._max} bytes after decompression",
                remedy="the artifact is malformed or hostile; a larger payload needs a larger configured limit",
            )
        return b

    def readinto(self, buffer: memoryview, /) -> int:
        b = self.read(len(buffer))
        buffer[: len(b)] = b
        return len(b)


def decompressor(src: ByteSource, compression: str) -> ByteSource:
    """A decompressing reader for ``none``, ``gzip`` or ``lzma`` (xz container, as Go's xz reader)."""
    if compression == "none":
        return src
    if compression == "gzip":
        return gzip.GzipFile(fileobj=cast(IO[bytes], src), mode="rb")
    if compression == "lzma":
        return lzma.LZMAFile(cast(IO[bytes], src), mode="rb", format=lzma.FORMAT_XZ)
    raise ValueError(compression)
