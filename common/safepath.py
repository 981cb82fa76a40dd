"""Names read from removable media or from archives, checked before they touch a filesystem.

Every parser of media input refuses names that could escape their folder, links and device files
(bundle_spec/SPEC.md, "Names and paths"). `checked_relpath` is the single gate for names;
`open_regular` is the single gate for opening what a name points at.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

from gapferry.common.errors import InvalidData
from gapferry.common.limits import DEFAULT_LIMITS, Limits

__all__ = ["checked_name", "checked_relpath", "open_regular"]

# Portable on FAT32, exFAT, NTFS and ext4: no control characters, none of <>:"/\|?*, no trailing dot
# or space, not a DOS device name.
_FORBIDDEN = re.compile(r'[\x00-\x1f<>:"/\\|?*\x7f]')
_DOS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)


def _bad(name: str, why: str) -> InvalidData:
    return InvalidData(
        f"refusing path {name!r}: {why}",
        remedy="the bundle is malformed or hostile; do not use it, and ask the sender for a new one",
        code="bad-path",
    )


def checked_name(component: str, *, limits: Limits = DEFAULT_LIMITS) -> str:
    """Check one path component for portability and safety; return it unchanged."""
    if component in ("", ".", ".."):
        raise _bad(component, "empty, '.' or '..' component")
    if len(component) > limits.name_length:
        raise _bad(component, f"component longer than {limits.name_length} characters")
    if _FORBIDDEN.search(component):
        raise _bad(component, "contains a character not allowed on FAT32/exFAT/NTFS")
    if component[-1] in ". ":
        raise _bad(component, "ends in a dot or space (not portable to FAT32/NTFS)")
    if component.split(".", maxsplit=1)[0].upper() in _DOS_DEVICES:
        raise _bad(component, "is a reserved device name on Windows filesystems")
    return component


def checked_relpath(name: str, *, limits: Limits = DEFAULT_LIMITS) -> PurePosixPath:
    """Parse a '/'-separated relative path from untrusted input.

    Raises:
        InvalidData: absolute, escaping (``..``), too deep, or a non-portable component.
    """
    if not name or name.startswith("/") or "\\" in name:
        raise _bad(name, "absolute, empty or containing a backslash")
    parts = name.split("/")
    if len(parts) > limits.path_depth:
        raise _bad(name, f"deeper than {limits.path_depth} components")
    for part in parts:
        checked_name(part, limits=limits)
    return PurePosixPath(*parts)


def open_regular(root: Path, rel: PurePosixPath, *, flags: int = os.O_RDONLY) -> int:
    """Open `root/rel` for reading, refusing symlinks at every level and anything not a regular file.

    Returns an OS file descriptor the caller must close.

    Raises:
        InvalidData: a component is a symlink, or the target is not a regular file.
        FileNotFoundError: the file is absent (the caller decides what absence means).
    """
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in rel.parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except NotADirectoryError as e:
                raise _bad(str(rel), f"{part!r} is a symbolic link or not a folder") from e
            except OSError as e:
                if e.errno == 40:  # ELOOP: a symlink under O_NOFOLLOW
                    raise _bad(str(rel), f"{part!r} is a symbolic link") from e
                raise
            os.close(dir_fd)
            dir_fd = nxt
        try:
            fd = os.open(rel.parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == 40:
                raise _bad(str(rel), "is a symbolic link") from e
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise _bad(str(rel), "is not a regular file (a device, FIFO, socket or folder)")
        os.set_blocking(fd, True)
        return fd
    finally:
        os.close(dir_fd)
