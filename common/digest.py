"""Streaming sha256: one pass, constant memory, optionally copying as it hashes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec
from gapferry.common.atomic import atomic_open
from gapferry.common.errors import InvalidData

__all__ = ["CHUNK", "CopyResult", "Readable", "copy_hashed", "sha256_file", "sha256_stream"]

#: Read size for streaming: large enough to keep syscalls cheap, small enough for flat memory.
CHUNK = 1024 * 1024

Progress = Callable[[int], None]


class Readable(Protocol):
    """Anything with ``readinto``: a binary file, a socket file, an HTTP body adapter."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class CopyResult(msgspec.Struct, frozen=True, kw_only=True):
    sha256: str
    size: int


def sha256_stream(
    src: Readable, *, max_bytes: int | None = None, progress: Progress | None = None
) -> CopyResult:
    """Hash a stream to its end. Raises `InvalidData` past `max_bytes`."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := src.readinto(view):
        size += n
        if max_bytes is not None and size > max_bytes:
            raise InvalidData(
                f"stream is longer than the limit of {max_bytes} bytes",
                remedy="check the source; a larger input needs a larger configured limit",
                code="too-large",
            )
        h.update(view[:n])
        if progress is not None:
            progress(n)
    return CopyResult(sha256=h.hexdigest(), size=size)


def sha256_file(path: Path, *, progress: Progress | None = None) -> CopyResult:
    """Hash a regular file without following a final symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as f:
        return sha256_stream(f, progress=progress)


def copy_hashed(
    src: Readable,
    dst: Path,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    max_bytes: int | None = None,
    mode: int = 0o644,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy `src` to `dst` crash-safely, hashing in the same pass.

    The copy lands under `dst` only if it is complete and, when given, matches `expected_size` and
    `expected_sha256`; otherwise nothing is left behind and `InvalidData` is raised. `max_bytes`
    bounds a source whose size nobody announced, so a hostile peer cannot fill the disk.
    """
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with atomic_open(dst, mode=mode) as out:
        while n := src.readinto(view):
            size += n
            if expected_size is not None and size > expected_size:
                raise InvalidData(
                    f"{dst.name}: source is longer than the announced {expected_size} bytes",
                    remedy="the source changed or lies about its size; fetch it again",
                    code="size-mismatch",
                )
            if max_bytes is not None and size > max_bytes:
                raise InvalidData(
                    f"{dst.name}: source is longer than the limit of {max_bytes} bytes",
                    remedy="the source is hostile or broken; a larger input needs a larger limit",
                    code="too-large",
                )
            h.update(view[:n])
            out.write(view[:n])
            if progress is not None:
                progress(n)
        if expected_size is not None and size != expected_size:
            raise InvalidData(
                f"{dst.name}: expected {expected_size} bytes, got {size}",
                remedy="the source was truncated; fetch it again",
                code="size-mismatch",
            )
        digest = h.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise InvalidData(
                f"{dst.name}: expected sha256 {expected_sha256}, got {digest}",
                remedy="the source is corrupt or was tampered with; fetch it again",
                code="digest-mismatch",
            )
    return CopyResult(sha256=digest, size=size)
