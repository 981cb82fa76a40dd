"""Sync and unmount a medium so the stick can be pulled safely (issue 8, ``gapferry media eject``).

With udisks (desktops): ``udisksctl unmount`` then ``udisksctl power-off`` (the stick's LED goes
off), which an ordinary user may do for removable media. Without it: ``umount`` (needs root or a
``user`` mount option). Either way everything is synced first. Refuses the system's own file
systems, and non-removable devices unless forced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import msgspec
from gapferry.common.errors import EnvironmentFailure, UsageProblem
from gapferry.common.media.fsinfo import describe

__all__ = ["EjectResult", "eject"]

#: Mount points that are never a stick.
_SYSTEM_MOUNTS = frozenset(
    Path(p) for p in ("/", "/boot", "/boot/efi", "/home", "/usr", "/var", "/opt", "/srv")
)
_TIMEOUT_S = 120.0


class EjectResult(msgspec.Struct, frozen=True, kw_only=True):
    mount_point: Path
    device: str | None
    #: Tools run, in order (for the report): e.g. ["udisksctl unmount", "udisksctl power-off"].
    steps: list[str]
    powered_off: bool


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            check=False,
            timeout=_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise EnvironmentFailure(
            f"{args[0]} did not finish within {_TIMEOUT_S:g} s",
            remedy="the stick may still be writing; wait and try again",
            code="eject-timeout",
        ) from e


def _failure(
    what: str, mount_point: Path, res: subprocess.CompletedProcess[str]
) -> EnvironmentFailure:
    detail = (res.stderr or res.stdout).strip().splitlines()
    text = detail[-1] if detail else f"exit code {res.returncode}"
    low = text.lower()
    if "busy" in low:
        return EnvironmentFailure(
            f"cannot unmount {mount_point}: it is in use ({text})",
            remedy="close files and terminals using the stick (see `fuser -vm "
            f"{mount_point}`), then eject again",
            code="medium-busy",
        )
    if any(
        k in low
        for k in ("permission", "not permitted", "superuser", "not authorized", "only root")
    ):
        return EnvironmentFailure(
            f"not permitted to unmount {mount_point} ({what}: {text})",
            remedy="eject it from the desktop's file manager, or run `sudo umount "
            f"{mount_point}`; the data is already synced",
            code="eject-not-permitted",
        )
    return EnvironmentFailure(
        f"cannot unmount {mount_point} ({what}: {text})",
        remedy="check `findmnt` for the mount, close programs using it, and try again",
        code="eject-failed",
    )


def eject(path: Path, *, force: bool = False, use_udisks: bool | None = None) -> EjectResult:
    """Sync, unmount the file system holding `path`, and power the stick off when udisks can.

    `use_udisks` None means "when ``udisksctl`` is installed and the medium is a block device".

    Raises:
        UsageProblem: ``not-removable`` for a system mount, or a non-removable device without
            `force`; ``not-a-folder``.
        EnvironmentFailure: ``eject-not-permitted``, ``medium-busy``, ``eject-failed``,
            ``eject-timeout``.
    """
    info = describe(path)
    mp = info.mount_point
    if mp in _SYSTEM_MOUNTS:
        raise UsageProblem(
            f"{path} is on {mp}, a system file system, not a stick",
            remedy="give the folder where the stick is mounted (see `gapferry media list`)",
            code="not-removable",
        )
    if info.removable is False and not force:
        raise UsageProblem(
            f"{mp} ({info.device}) is not a removable device",
            remedy="if you really mean it, run again with --force",
            code="not-removable",
        )
    os.sync()
    steps: list[str] = []
    if use_udisks is None:
        use_udisks = shutil.which("udisksctl") is not None and info.device is not None
    if use_udisks and info.device is not None:
        res = _run(["udisksctl", "unmount", "--no-user-interaction", "-b", info.device])
        steps.append("udisksctl unmount")
        if res.returncode != 0:
            raise _failure("udisksctl unmount", mp, res)
        res = _run(["udisksctl", "power-off", "--no-user-interaction", "-b", info.device])
        steps.append("udisksctl power-off")
        # Powering off is a courtesy: the file system is unmounted and synced either way.
        return EjectResult(
            mount_point=mp, device=info.device, steps=steps, powered_off=res.returncode == 0
        )
    tool = ["umount", str(mp)]
    if info.fs_type.startswith("fuse") and shutil.which("fusermount") is not None:
        tool = ["fusermount", "-u", str(mp)]  # also works for the user who mounted it
    res = _run(tool)
    steps.append(tool[0])
    if res.returncode != 0:
        raise _failure(tool[0], mp, res)
    return EjectResult(mount_point=mp, device=info.device, steps=steps, powered_off=False)
