"""Read a written file back from the medium and check it (issue 8, "verify after writing").

A stick can accept a write into the page cache and still lose or garble it: a fake-capacity
stick, a worn cell, a pull before the flush. So after writing, the writer reads every file back
*from the medium*: it fsyncs the file, asks the kernel to drop the file's cached pages
(``posix_fadvise(POSIX_FADV_DONTNEED)``; clean pages are dropped, so the following reads go to the
device), then hashes the file in one pass, reading ahead of the hash (`gapferry.common.digest.pump`,
ADR 0034). Only when every file matches does the writer put down
the completion marker (bundle_spec/SPEC.md, "Writing order").

``O_DIRECT`` is not used: FAT via FUSE and some kernels refuse it, and it needs aligned buffers.
On file systems whose pages *are* the storage (tmpfs) dropping does nothing, which is harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from gapferry.common.digest import CHUNK, OVERLAP_MIN, Progress, pump
from gapferry.common.errors import EnvironmentFailure, InvalidData

__all__ = ["ReadbackMismatch", "drop_cache", "verify_file"]


class ReadbackMismatch(InvalidData):
    """What was read back from the medium is not what was written."""

    code = "readback-mismatch"


def drop_cache(fd: int) -> bool:
    """fsync `fd` and drop its pages from the page cache. False when the OS cannot (no fadvise)."""
    # Read-only media and some FUSE file systems refuse fsync; the drop still helps.
    with contextlib.suppress(OSError):
        os.fsync(fd)
    if not hasattr(os, "posix_fadvise"):  # pragma: no cover - macOS has no posix_fadvise
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True


def verify_file(path: Path, *, sha256: str, size: int, progress: Progress | None = None) -> None:
    """Re-read `path` from the medium, bypassing the page cache where possible, and check that it
    has exactly `size` bytes with digest `sha256`.

    Raises:
        ReadbackMismatch (InvalidData): code ``readback-mismatch``, naming the file, what was
            expected and what was read, when the size or digest differs or the file is not a
            regular file.
        EnvironmentFailure: ``readback-failed`` when the file cannot be opened or read (I/O error,
            medium pulled out).
    """
    remedy = (
        "the medium did not keep what was written (failing or fake-capacity stick, or pulled "
        "out too early); write again, preferably to another stick"
    )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as e:
        raise ReadbackMismatch(f"{path}: written file is gone when read back", remedy=remedy) from e
    except OSError as e:
        raise EnvironmentFailure(
            f"cannot open {path} to read it back: {e.strerror}",
            remedy="check that the medium is still inserted and mounted",
            code="readback-failed",
        ) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReadbackMismatch(f"{path}: not a regular file when read back", remedy=remedy)
        if st.st_size != size:
            raise ReadbackMismatch(
                f"{path}: expected {size} bytes on the medium, found {st.st_size}",
                remedy=remedy,
            )
        drop_cache(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        h = hashlib.sha256()

        def too_long(got: int) -> None:
            if got > size:
                raise ReadbackMismatch(
                    f"{path}: expected {size} bytes on the medium, read more", remedy=remedy
                )

        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            # The next chunk is read while this one is hashed. No WILLNEED prefetch here: on the
            # benchmark's stick it made the read-back right after writing slower (ADR 0034).
            if size >= OVERLAP_MIN:
                got = pump(f, [h.update], check=too_long, progress=progress)
            else:
                got = 0
                view = memoryview(bytearray(CHUNK))
                while n := f.readinto(view):
                    got += n
                    too_long(got)
                    h.update(view[:n])
                    if progress is not None:
                        progress(n)
        if got != size:
            raise ReadbackMismatch(
                f"{path}: expected {size} bytes on the medium, read {got}", remedy=remedy
            )
        digest = h.hexdigest()
        if digest != sha256.lower():
            raise ReadbackMismatch(
                f"{path}: read back sha256 {digest}, expected {sha256.lower()}", remedy=remedy
            )
        if hasattr(os, "posix_fadvise"):  # do not leave a large file filling the cache
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        raise EnvironmentFailure(
            f"cannot read {path} back from the medium: {e.strerror}",
            remedy="check that the medium is still inserted; if it is, it may be failing",
            code="readback-failed",
        ) from e
    finally:
        os.close(fd)
