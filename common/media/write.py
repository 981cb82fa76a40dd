"""Copy one file onto a medium: stream, hash, fsync, read back; resume after an interruption.

The per-file step of the bundle writer (issue 8; bundle_spec/SPEC.md "Writing order"):

1. `copy_to_medium` streams the source to ``.<name>.part`` on the medium in one pass (read, hash,
   write, as `gapferry.common.digest.copy_hashed` does), fsyncs it, renames it to its final name,
   then reads it back from the medium (`verify_file`). A full medium, an I/O error or a file too large
   for the file system become `EnvironmentFailure` with a remedy, and no temporary file is left.
2. After an interruption (stick pulled, process killed, power cut), `discard_partials` removes
   ``.*.part`` leftovers and `is_verified` tells which final files are already complete on the
   medium, so the bundle writer skips them instead of writing them again.

The copy itself is `copy_hashed` (crash-safe, one pass); `atomic_open` under it tolerates FAT's
inability to store a file mode for public files (ADR 0032), so the same code writes to FAT32 sticks.
Large files go through `gapferry.common.digest.pump` (reading, hashing and writing overlap in
three threads) with `paced_writer` (write-behind: the stick writes while the copy goes on, dirty
pages stay few); the read-back reads ahead of its hash (ADR 0034).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from gapferry.common.atomic import PART_SUFFIX
from gapferry.common.digest import CopyResult, Progress, Readable, copy_hashed
from gapferry.common.errors import EnvironmentFailure, InvalidData
from gapferry.common.media.readback import verify_file

__all__ = [
    "WRITE_BEHIND",
    "copy_to_medium",
    "discard_partials",
    "is_verified",
    "media_error",
    "paced_writer",
]

#: Write-behind window: after each window written, its write-back is started, and the window
#: before it is waited for and dropped from the page cache, so at most two windows of dirty pages
#: exist at a time (ADR 0034). 0 turns pacing off.
WRITE_BEHIND = 32 * 1024 * 1024

# sync_file_range(2) flags (linux/fs.h); Python's os module does not wrap the call.
_SFR_WAIT_BEFORE = 1
_SFR_WRITE = 2
_SFR_WAIT_AFTER = 4


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, or None where there is none (not Linux)."""
    if not hasattr(os, "posix_fadvise"):  # pragma: no cover - macOS
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - libc without it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def _sfr(
    sfr: Callable[[int, int, int, int], int], fd: int, offset: int, length: int, flags: int
) -> None:
    if sfr(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.ESPIPE, errno.EOPNOTSUPP):
            return  # a file system without it: the final fsync still does the work
        raise OSError(err, os.strerror(err))


def paced_writer(out: BinaryIO, *, window: int | None = None) -> Callable[[memoryview], None]:
    """A write sink for `copy_hashed` that keeps dirty pages few (write-behind, ADR 0034).

    A long copy that leaves everything to the final fsync piles up gigabytes of dirty pages; the
    kernel then throttles the writer in bursts and the fsync at the end waits for all of it. This
    sink starts write-back of each `window` as soon as it is written
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``), waits for the window before that, and drops it
    from the page cache (``POSIX_FADV_DONTNEED``): the stick writes while the copy goes on, memory
    holds at most two windows, and the read-back later finds nothing cached.
    Without sync_file_range (not Linux) it is a plain write loop.

    Raises:
        OSError: from write or sync_file_range (ENOSPC, EIO, ...), for `media_error`.
    """
    fd = out.fileno()
    size = WRITE_BEHIND if window is None else window
    sfr = _sync_file_range if size > 0 else None
    state = {"written": 0, "started": 0, "prev": -1}

    def write(view: memoryview) -> None:
        while view:
            n = os.write(fd, view)
            view = view[n:]
            state["written"] += n
        if sfr is None:
            return
        written, started = state["written"], state["started"]
        if written - started < size:
            return
        _sfr(sfr, fd, started, written - started, _SFR_WRITE)
        prev = state["prev"]
        if prev >= 0:
            _sfr(sfr, fd, prev, started - prev, _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER)
            os.posix_fadvise(fd, prev, started - prev, os.POSIX_FADV_DONTNEED)
        state["prev"], state["started"] = started, written

    return write


def media_error(e: OSError, *, what: Path) -> EnvironmentFailure:
    """Turn an OSError from writing to a medium into an `EnvironmentFailure` with a remedy.

    Codes: ``media-full`` (ENOSPC, EDQUOT), ``file-too-large-for-fs`` (EFBIG), ``media-read-only``
    (EROFS, EACCES, EPERM), ``media-gone`` (ENODEV, ENXIO, ENOENT of the folder),
    ``media-io-error`` (EIO and anything else).
    """
    name = str(what)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return EnvironmentFailure(
            f"the medium ran out of space while writing {name}; the partial file was removed",
            remedy="use a larger medium or free space on it, then run the same command again "
            "(files already written and verified are kept)",
            code="media-full",
        )
    if e.errno == errno.EFBIG:
        return EnvironmentFailure(
            f"the file system refused {name} as too large ({e.strerror})",
            remedy="the writer splits large files into parts for FAT32; format the stick exFAT "
            "or report this as a bug",
            code="file-too-large-for-fs",
        )
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return EnvironmentFailure(
            f"cannot write {name}: {e.strerror}",
            remedy="check the stick's write-protect switch, its mount options and permissions",
            code="media-read-only",
        )
    if e.errno in (errno.ENODEV, errno.ENXIO, errno.ENOENT):
        return EnvironmentFailure(
            f"the medium went away while writing {name} ({e.strerror})",
            remedy="reinsert the stick and run the same command again to resume",
            code="media-gone",
        )
    return EnvironmentFailure(
        f"I/O error writing {name}: {e.strerror}",
        remedy="the stick may be failing; run again to resume, or use another stick",
        code="media-io-error",
    )


def discard_partials(folder: Path) -> list[Path]:
    """Remove interrupted temporary files (``.<name>.part``) directly in `folder`; return them."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX):
                if entry.is_symlink() or not entry.is_file():
                    continue  # not ours: leave it for the reader to report
                entry.unlink()
                removed.append(entry)
    return removed


def is_verified(path: Path, *, sha256: str, size: int, progress: Progress | None = None) -> bool:
    """True when `path` is complete on the medium: right size and digest when read back.

    A missing file, a wrong size or a wrong digest is False (the caller writes it again).

    Raises:
        EnvironmentFailure: the file exists but cannot be read (``readback-failed``).
    """
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != size:
            return False
    except OSError:
        return False
    try:
        verify_file(path, sha256=sha256, size=size, progress=progress)
    except InvalidData:
        return False
    return True


def copy_to_medium(
    src: Readable,
    dst: Path,
    *,
    size: int,
    sha256: str | None = None,
    progress: Progress | None = None,
    verify_progress: Progress | None = None,
) -> CopyResult:
    """Copy `src` (exactly `size` bytes, and `sha256` when known) to `dst` on a medium, then read it
    back. Nothing is left under `dst` or its temporary name unless the whole file was written.

    Raises:
        EnvironmentFailure: ``media-full``, ``media-io-error`` and the other codes of
            `media_error`; ``readback-failed``.
        InvalidData: ``size-mismatch`` / ``digest-mismatch`` (the source is not what was
            announced); ``readback-mismatch`` (the medium did not keep the data; `dst` is removed).
    """
    fileno = getattr(src, "fileno", None)
    if fileno is not None and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError, ValueError):  # BytesIO has fileno() that raises
            os.posix_fadvise(fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    try:
        result = copy_hashed(
            src,
            dst,
            expected_size=size,
            expected_sha256=sha256.lower() if sha256 is not None else None,
            progress=progress,
            overlap=True,
            write_sink=paced_writer,
        )
    except OSError as e:
        raise media_error(e, what=dst) from e
    try:
        verify_file(dst, sha256=result.sha256, size=result.size, progress=verify_progress)
    except InvalidData:
        with contextlib.suppress(OSError):
            dst.unlink()
        raise
    return result
