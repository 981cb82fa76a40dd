"""Crash-safe writing: temporary names, fsync of files and folders, rename last.

A file is either absent or complete under its final name: the data goes to ``.<name>.part`` in the
same folder, is fsynced, renamed over the final name, and the folder is fsynced so the rename
itself survives a power cut. Temporary names start with a dot and end in ``.part`` so that readers
can tell them from real content (bundle_spec/SPEC.md, "Writing order").
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["PART_SUFFIX", "atomic_open", "atomic_write_bytes", "fsync_dir", "temp_name_for"]

PART_SUFFIX = ".part"

_NO_MODES_ERRNOS = frozenset({errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP})


def temp_name_for(path: Path) -> Path:
    """The temporary name `atomic_open` writes `path` under."""
    return path.with_name(f".{path.name}{PART_SUFFIX}")


def fsync_dir(path: Path) -> None:
    """fsync a folder so that renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        # Some filesystems (FAT via FUSE, some network mounts) refuse fsync on a folder; the
        # file's own fsync and the later read-back verification still hold.
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a temporary file that becomes `path` only when the block ends without an exception.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    tmp = temp_name_for(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT honours the umask; key files must be exactly 0600
    except OSError as e:
        # FAT cannot store modes (fusefat: ENOSYS, vfat: EPERM). That is fine for public files on
        # a stick, never for a private one: a key file that cannot be made 0600 is an error.
        if mode & 0o077 == 0 or e.errno not in _NO_MODES_ERRNOS:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write `data` to `path` crash-safely (see module docstring)."""
    with atomic_open(path, mode=mode) as f:
        f.write(data)
