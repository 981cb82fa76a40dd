"""Find the stick: removable block devices and their mounted file systems (issue 8).

`list_media` enumerates block devices with pyudev (sysfs, plus udev's database for the file system
label and type when udev runs) and joins them with /proc/self/mountinfo. `pick_medium` resolves
``--to auto`` (the one mounted removable medium; several: ask on a terminal, else an error that
lists them) or a folder given explicitly. `wait_for_medium` waits for a stick to be inserted and
mounted, using a udev monitor.

Without udev (no ``/run/udev``: containers, CI, minimal systems) there is nothing to detect:
any folder is a medium, ``--to auto`` and ``--wait`` say so and ask for a folder (ADR 0030).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import click
import msgspec
from gapferry.common.errors import EnvironmentFailure, UsageProblem
from gapferry.common.media.fsinfo import MountEntry, max_file_size_for, mount_entries

__all__ = [
    "UDEV_RUN_DIR",
    "BlockRecord",
    "Medium",
    "block_records",
    "list_media",
    "media_from_records",
    "pick_medium",
    "udev_available",
    "wait_for_medium",
]

UDEV_RUN_DIR = Path("/run/udev")

NO_UDEV_NOTE = (
    "udev is not running here (no /run/udev, as in containers and CI): removable media cannot "
    "be detected, so any folder is a medium; give it explicitly, for example --to /mnt/stick"
)


def udev_available(run_dir: Path | None = None) -> bool:
    """True when udev runs (its run folder, `UDEV_RUN_DIR`, exists), so detection can work."""
    return (UDEV_RUN_DIR if run_dir is None else run_dir).is_dir()


class BlockRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What we need from one block device (a pyudev Device, or a test's stand-in)."""

    device: str
    devtype: str  # "disk" or "partition"
    major_minor: str
    #: The whole disk's sysfs ``removable`` flag (a partition inherits its disk's).
    removable_flag: bool
    #: Bus from udev (``ID_BUS``), or "usb" when the sysfs path runs through a USB controller.
    bus: str | None
    fs_type: str | None
    label: str | None
    size_bytes: int
    #: For a partition: its disk's device node.
    disk: str | None = None
    vendor: str | None = None
    model: str | None = None


class Medium(msgspec.Struct, frozen=True, kw_only=True):
    """A removable block device holding a file system, and where it is mounted (if it is)."""

    device: str
    label: str | None
    fs_type: str | None
    size_bytes: int
    mount_point: Path | None
    free_bytes: int | None
    max_file_size: int | None
    bus: str | None
    model: str | None

    def describe(self) -> str:
        name = self.label or "(no label)"
        where = str(self.mount_point) if self.mount_point else "not mounted"
        return f"{self.device} {name} {self.fs_type or '?'} at {where}"


def _text(v: object) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    s = str(v).strip()
    return s or None


def block_records() -> list[BlockRecord]:
    """Enumerate block devices with pyudev (works from sysfs even where udev does not run).

    Raises:
        EnvironmentFailure: ``udev-failed`` when pyudev cannot read sysfs.
    """
    import pyudev  # noqa: PLC0415 - only the media commands need it

    try:
        ctx = pyudev.Context()
        devices = list(ctx.list_devices(subsystem="block"))
    except (OSError, pyudev.DeviceNotFoundError) as e:
        raise EnvironmentFailure(
            f"cannot list block devices: {e}",
            remedy="check that /sys is mounted; or give the medium's folder explicitly",
            code="udev-failed",
        ) from e
    out = []
    for d in devices:
        node = d.device_node
        if not node:
            continue
        disk = d if d.device_type == "disk" else d.find_parent("block", "disk")
        flag = _text(disk.attributes.get("removable")) if disk is not None else None
        props = d.properties
        bus = _text(props.get("ID_BUS")) or ("usb" if "/usb" in (d.device_path or "") else None)
        size = _text(d.attributes.get("size"))
        out.append(
            BlockRecord(
                device=node,
                devtype=d.device_type or "disk",
                major_minor=f"{props.get('MAJOR', '?')}:{props.get('MINOR', '?')}",
                removable_flag=flag == "1",
                bus=bus,
                fs_type=_text(props.get("ID_FS_TYPE")),
                label=_text(props.get("ID_FS_LABEL")),
                size_bytes=int(size) * 512 if size and size.isdigit() else 0,
                disk=disk.device_node if disk is not None and disk is not d else None,
                vendor=_text(props.get("ID_VENDOR")),
                model=_text(props.get("ID_MODEL")),
            )
        )
    return out


def media_from_records(
    records: Iterable[BlockRecord],
    mounts: Sequence[MountEntry],
    *,
    statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
) -> list[Medium]:
    """The removable media among `records` (removable flag or USB bus) that hold a file system
    or are mounted, joined with their mounts. A disk whose partitions are listed is skipped in
    favour of the partitions. Pure except for `statvfs` of mounted ones.
    """
    recs = list(records)
    by_mm: dict[str, MountEntry] = {}
    by_src: dict[str, MountEntry] = {}
    for entry in mounts:
        by_mm.setdefault(entry.major_minor, entry)
        by_src.setdefault(entry.source, entry)
    has_partitions = {r.disk for r in recs if r.devtype == "partition" and r.disk}
    out = []
    for r in recs:
        if not (r.removable_flag or r.bus == "usb"):
            continue
        if r.devtype == "disk" and r.device in has_partitions:
            continue
        m = by_src.get(r.device) or by_mm.get(r.major_minor)
        if m is None and r.fs_type is None:
            continue  # an empty card reader slot or a stick without a file system
        free = None
        if m is not None:
            try:
                st = statvfs(m.mount_point)
                free = st.f_bavail * (st.f_frsize or st.f_bsize)
            except OSError:
                free = None
        fs = m.fs_type if m is not None else r.fs_type
        out.append(
            Medium(
                device=r.device,
                label=r.label,
                fs_type=fs,
                size_bytes=r.size_bytes,
                mount_point=m.mount_point if m is not None else None,
                free_bytes=free,
                max_file_size=max_file_size_for(fs) if fs else None,
                bus=r.bus,
                model=" ".join(x for x in (r.vendor, r.model) if x) or None,
            )
        )
    return out


def list_media() -> list[Medium]:
    """Removable media on this machine, mounted or not (empty without udev: see `udev_available`).

    Raises:
        EnvironmentFailure: ``udev-failed``, ``mountinfo-unreadable``.
    """
    if not udev_available():
        return []
    return media_from_records(block_records(), mount_entries())


def _choose(media: Sequence[Medium], *, interactive: bool) -> Medium:
    listing = "\n".join(f"  {i}. {m.describe()}" for i, m in enumerate(media, start=1))
    if not interactive:
        raise UsageProblem(
            f"several removable media are mounted; which one?\n{listing}",
            remedy="pass the folder with --to, for example --to "
            f"{media[0].mount_point}, or remove the sticks you do not mean",
            code="several-media",
        )
    click.echo(f"Several removable media are mounted:\n{listing}", err=True)
    n = click.prompt("Which one", type=click.IntRange(1, len(media)), err=True, show_choices=False)
    return media[n - 1]


def pick_medium(
    to: str,
    *,
    wait: float | None = None,
    interactive: bool | None = None,
    lister: Callable[[], list[Medium]] = list_media,
    udev: bool | None = None,
) -> Path:
    """Resolve a ``--to`` value: ``auto`` picks the one mounted removable medium (asks which when
    there are several and stdin is a terminal), anything else is a folder used as given. With
    `wait` (seconds, for ``--wait``) and no medium mounted, waits for one to be inserted.

    Raises:
        UsageProblem: ``not-a-folder``; ``no-udev`` for ``auto`` without udev; ``several-media``
            when not interactive.
        EnvironmentFailure: ``no-medium`` when no removable medium is mounted.
    """
    if to != "auto":
        path = Path(to)
        if not path.is_dir():
            raise UsageProblem(
                f"{to} is not a folder",
                remedy="give the folder where the medium is mounted, or --to auto",
                code="not-a-folder",
            )
        return path
    if not (udev_available() if udev is None else udev):
        raise UsageProblem(
            "--to auto cannot find a stick: " + NO_UDEV_NOTE,
            remedy="pass the folder explicitly: --to /path/to/folder",
            code="no-udev",
        )
    media = [m for m in lister() if m.mount_point is not None]
    if not media and wait is not None:
        click.echo(f"waiting up to {wait:g} s for a stick to be inserted...", err=True)
        media = [wait_for_medium(wait, lister=lister, udev=udev)]
    if not media:
        raise EnvironmentFailure(
            "no mounted removable medium found",
            remedy="insert a stick (and mount it, if your desktop does not), use --wait, or "
            "pass the folder with --to",
            code="no-medium",
        )
    if len(media) == 1:
        chosen = media[0]
    else:
        if interactive is None:
            interactive = sys.stdin.isatty()
        chosen = _choose(media, interactive=interactive)
    if chosen.mount_point is None:  # pragma: no cover - filtered above
        raise AssertionError("unmounted medium chosen")
    return chosen.mount_point


def wait_for_medium(
    timeout: float,
    *,
    lister: Callable[[], list[Medium]] = list_media,
    udev: bool | None = None,
    interval: float = 0.5,
) -> Medium:
    """Wait up to `timeout` seconds for a removable medium that was not mounted before to be
    inserted and mounted; return it. A udev monitor wakes the wait on block events; the mount
    itself (by the desktop's automounter) is noticed by re-listing, at least every `interval`.

    Raises:
        UsageProblem: ``no-udev``.
        EnvironmentFailure: ``no-medium`` on timeout.
    """
    if not (udev_available() if udev is None else udev):
        raise UsageProblem(
            "--wait cannot notice a stick: " + NO_UDEV_NOTE,
            remedy="insert the stick, mount it, and pass its folder explicitly",
            code="no-udev",
        )
    monitor = None
    if udev is None:
        import pyudev  # noqa: PLC0415

        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        monitor.filter_by(subsystem="block")
        monitor.start()
    before = {m.device for m in lister() if m.mount_point is not None}
    deadline = time.monotonic() + timeout
    while True:
        now = [m for m in lister() if m.mount_point is not None and m.device not in before]
        if now:
            return now[0]
        left = deadline - time.monotonic()
        if left <= 0:
            raise EnvironmentFailure(
                f"no removable medium was inserted and mounted within {timeout:g} s",
                remedy="insert the stick (mount it if your desktop does not) and run again, "
                "or pass its folder with --to",
                code="no-medium",
            )
        if monitor is not None:
            monitor.poll(timeout=min(interval, left))
        else:
            time.sleep(min(interval, left))
