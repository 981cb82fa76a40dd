"""What medium a folder is on: mount point, file system, label, device, space, file size limit.

Read from ``/proc/self/mountinfo`` and ``os.statvfs``, so it works for any folder on Linux, with
or without udev (containers, CI). The writer (common/bundle) calls `check_fits` before writing
anything and reads `MediumInfo.max_file_size` to decide whether files must be split into parts
(bundle_spec/SPEC.md, "Layout on media": files over 4 GiB - 1 are split on FAT32; issue 8).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from gapferry.common.errors import EnvironmentFailure, UsageProblem
from gapferry.common.media.progress import format_bytes

__all__ = [
    "FAT_MAX_FILE_SIZE",
    "MediumInfo",
    "MountEntry",
    "check_file_size",
    "check_fits",
    "describe",
    "max_file_size_for",
    "mount_entries",
]

#: The largest file FAT32 can hold: its size field is 32 bits.
FAT_MAX_FILE_SIZE = 4 * 1024**3 - 1

#: File system types (as in /proc/self/mountinfo) with the FAT32 file size limit. ``fuse.fusefat``
#: is the FUSE FAT driver used where the kernel has no vfat module.
_FAT_TYPES = frozenset({"vfat", "msdos", "fat", "umsdos", "fuse.fusefat"})

_MOUNTINFO = Path("/proc/self/mountinfo")


class MountEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One line of /proc/self/mountinfo (proc(5)), the fields we use."""

    mount_point: Path
    fs_type: str
    source: str
    major_minor: str
    options: str


class MediumInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The file system a folder lives on, as `describe` found it."""

    #: The folder asked about (absolute, symlinks resolved).
    path: Path
    mount_point: Path
    #: Kernel file system type: ``vfat``, ``exfat``, ``ntfs3``, ``fuseblk``, ``ext4``, ``tmpfs``...
    fs_type: str
    #: The file system label when it can be found (udev's /dev/disk/by-label), else None.
    label: str | None
    #: The block device (``/dev/sdb1``) when the source is one, else None.
    device: str | None
    #: True/False from sysfs for block devices (USB counts as removable), None when unknown.
    removable: bool | None
    total_bytes: int
    #: Bytes an unprivileged writer may still use (``f_bavail``).
    free_bytes: int
    #: Largest file the file system can hold; None when there is no practical limit.
    max_file_size: int | None
    #: Allocation unit (``f_frsize``): every file occupies a multiple of it.
    block_size: int = 4096
    read_only: bool = False
    #: False when the file system reports no sizes at all (statvfs gives 0 blocks, as the
    #: ``fusefat`` FUSE driver does); then `total_bytes` and `free_bytes` are 0 and meaningless,
    #: `check_fits` cannot check, and a full medium shows up as ``media-full`` during the write.
    space_known: bool = True


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, ``\\011``, ``\\012``, ``\\134``)."""
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_entries(text: str | None = None) -> list[MountEntry]:
    """Parse /proc/self/mountinfo (or `text` in its format), in the kernel's order.

    Raises:
        EnvironmentFailure: code ``mountinfo-unreadable`` when /proc is not mounted.
    """
    if text is None:
        try:
            text = _MOUNTINFO.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            raise EnvironmentFailure(
                f"cannot read {_MOUNTINFO}: {e.strerror}",
                remedy="gapferry needs Linux with /proc mounted to inspect media",
                code="mountinfo-unreadable",
            ) from e
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            entries.append(
                MountEntry(
                    mount_point=Path(_unescape(fields[4])),
                    major_minor=fields[2],
                    options=fields[5],
                    fs_type=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                )
            )
        except (ValueError, IndexError):
            continue  # a line we do not understand is not a mount we can use
    return entries


def _find_mount(path: Path, entries: list[MountEntry]) -> MountEntry:
    best: MountEntry | None = None
    for e in entries:  # later mounts hide earlier ones at the same point: keep the last
        inside = path == e.mount_point or e.mount_point in path.parents
        if inside and (best is None or len(e.mount_point.parts) >= len(best.mount_point.parts)):
            best = e
    if best is None:
        raise EnvironmentFailure(
            f"no mount found for {path} in {_MOUNTINFO}",
            remedy="check that the folder is on a mounted file system",
            code="mount-not-found",
        )
    return best


def max_file_size_for(fs_type: str) -> int | None:
    """The file size limit of a file system type, or None when there is no practical one."""
    return FAT_MAX_FILE_SIZE if fs_type.lower() in _FAT_TYPES else None


def _label_for(device: str | None) -> str | None:
    by_label = Path("/dev/disk/by-label")
    if device is None or not by_label.is_dir():
        return None
    try:
        target = Path(device).resolve()
        for link in by_label.iterdir():
            if link.resolve() == target:
                # udev escapes unsafe characters as \xNN
                return link.name.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except OSError:
        return None
    return None


def _removable_for(major_minor: str) -> bool | None:
    sys_dev = Path("/sys/dev/block") / major_minor
    try:
        real = sys_dev.resolve(strict=True)
    except OSError:
        return None
    for d in (real, real.parent):
        flag = d / "removable"
        if flag.is_file():
            try:
                if flag.read_text().strip() == "1":
                    return True
            except OSError:
                return None
            # USB disks often say removable=0 although they are pulled out like sticks.
            return "/usb" in str(real)
    return None


def _existing_ancestor(path: Path) -> Path:
    p = Path.cwd() / path  # absolute without resolving links in the missing part
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.resolve()


def describe(path: Path, *, mountinfo: str | None = None) -> MediumInfo:
    """Describe the file system holding `path` (or, if it does not exist yet, its nearest existing
    parent, so a writer can check the target before creating it).

    Raises:
        EnvironmentFailure: ``mountinfo-unreadable``, ``mount-not-found``, or ``statvfs-failed``.
        UsageProblem: ``not-a-folder`` when the existing part of `path` is a file.
    """
    real = _existing_ancestor(Path(path))
    if not real.is_dir():
        raise UsageProblem(
            f"{path} is not a folder",
            remedy="give the folder where the medium is mounted, for example /media/$USER/STICK",
            code="not-a-folder",
        )
    entry = _find_mount(real, mount_entries(mountinfo))
    try:
        st = os.statvfs(real)
    except OSError as e:
        raise EnvironmentFailure(
            f"cannot get free space of {real}: {e.strerror}",
            remedy="check that the medium is still mounted and readable",
            code="statvfs-failed",
        ) from e
    device = entry.source if entry.source.startswith("/dev/") else None
    frsize = st.f_frsize or st.f_bsize or 4096
    return MediumInfo(
        path=real,
        mount_point=entry.mount_point,
        fs_type=entry.fs_type,
        label=_label_for(device),
        device=device,
        removable=_removable_for(entry.major_minor) if device is not None else None,
        total_bytes=st.f_blocks * frsize,
        free_bytes=st.f_bavail * frsize,
        max_file_size=max_file_size_for(entry.fs_type),
        block_size=frsize,
        read_only=bool(st.f_flag & os.ST_RDONLY),
        space_known=st.f_blocks > 0,
    )


def check_fits(path: Path, needed_bytes: int, *, files: int = 0) -> MediumInfo:
    """Stop before writing anything when `needed_bytes` do not fit on the medium holding `path`.

    `files` (optional) is the number of files to be written: each may waste up to one allocation
    unit, which matters on FAT32 sticks with 32 KiB clusters. Returns the `MediumInfo` checked.
    When the file system does not report its size (`MediumInfo.space_known` False) the check
    passes and the writer relies on a clean ``media-full`` from the write.

    Raises:
        EnvironmentFailure: ``media-full`` (saying needed vs free and what to do), or
            ``media-read-only``; anything `describe` raises.
    """
    info = describe(path)
    if info.read_only:
        raise EnvironmentFailure(
            f"{info.mount_point} ({info.fs_type}) is mounted read-only",
            remedy="remount it read-write, or unlock the write-protect switch on the stick",
            code="media-read-only",
        )
    if not info.space_known:
        # Nothing to compare against (see MediumInfo.space_known); the write itself reports a
        # full medium cleanly (common/media/write.py) and leaves no partial file.
        return info
    slack = max(0, files) * info.block_size
    needed = needed_bytes + slack
    if needed > info.free_bytes:
        name = f" ({info.label})" if info.label else ""
        raise EnvironmentFailure(
            f"not enough space on {info.mount_point}{name}: need {format_bytes(needed)} "
            f"({needed} bytes), free {format_bytes(info.free_bytes)} ({info.free_bytes} bytes); "
            "nothing was written",
            remedy="use a larger medium, free space on it, or spread the bundle over several "
            "sticks (gapferry pack --span)",
            code="media-full",
        )
    return info


def check_file_size(info: MediumInfo, *, name: str, size: int) -> None:
    """Refuse a single file larger than the file system can hold (FAT32: 4 GiB - 1).

    Writers that split large files (bundle_spec/SPEC.md "Layout on media") call this for each
    part; it is a guard against a part size that the medium cannot take.

    Raises:
        EnvironmentFailure: ``file-too-large-for-fs``.
    """
    limit = info.max_file_size
    if limit is not None and size > limit:
        raise EnvironmentFailure(
            f"{name} is {size} bytes but {info.fs_type} on {info.mount_point} holds at most "
            f"{limit} bytes per file",
            remedy="let the writer split it into parts (the default), or format the stick exFAT",
            code="file-too-large-for-fs",
        )
