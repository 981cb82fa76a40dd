"""The installer interface and its registry (ADR 0051).

An installer puts one verified artifact on one device and reports what happened. Built in:
``mender-ssh`` (`gapferry.isolated.installers.mender_ssh`), ``file``
(`gapferry.isolated.installers.file_placement`) and ``file-sftp``
(`gapferry.isolated.installers.file_sftp`). A vendor installer is any object with a
``method`` name and an ``install(job) -> DeviceReport`` method, registered with
`register_installer` or published as an entry point in the group ``gapferry.installers`` (the
entry point's name is the method name in the devices file; it must load a zero-argument factory).

Contract for every installer:
- the artifact in `InstallJob` was already verified on the laptop (manifest checksums, the site's
  Mender signature when configured, device type and depends against the transfer manifest);
- read-only checks come first; call ``job.mark_started()`` right before the first change on the
  device (the applier's record then knows that a later run must look before it installs again);
- never raise for a device problem: return a `DeviceReport` (``job.log.finish(...)``) with
  ``failure`` (the deployment failed; the device was restored) or ``skipped`` + ``retry`` (nothing
  was changed; the technician can fix the cause and run again);
- bound everything read from the device by ``job.limits``.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from gapferry.common.artifact.reader import ArtifactInfo
from gapferry.common.bundle import TransferDevice
from gapferry.common.digest import Readable
from gapferry.common.errors import UsageProblem
from gapferry.common.limits import Limits
from gapferry.isolated.devices import DeviceTarget
from gapferry.isolated.report import DeviceLog, DeviceReport

__all__ = [
    "ENTRY_POINT_GROUP",
    "ArtifactOpener",
    "InstallJob",
    "Installer",
    "get_installer",
    "register_installer",
    "registered_methods",
]

ENTRY_POINT_GROUP = "gapferry.installers"

#: Opens the artifact's bytes for one pass; the stream re-checks size and sha256 at its end.
ArtifactOpener = Callable[[], AbstractContextManager[Readable]]


@dataclass(frozen=True, kw_only=True)
class InstallJob:
    """Everything an installer needs for one device."""

    device: TransferDevice
    target: DeviceTarget
    #: What the laptop's verified read of the artifact found.
    artifact: ArtifactInfo
    open_artifact: ArtifactOpener
    #: The site's artifact verification key (PEM) when configured, else None.
    verify_key: bytes | None
    limits: Limits
    #: A private folder (0700) for this device, removed after the run.
    workdir: Path
    log: DeviceLog
    #: Call right before the first change on the device.
    mark_started: Callable[[], None]
    #: True when an earlier run of this bundle started on this device and did not finish.
    interrupted_before: bool = False


@runtime_checkable
class Installer(Protocol):
    """Installs an artifact on a device. See the module docstring for the contract."""

    method: str

    def install(self, job: InstallJob) -> DeviceReport: ...


_REGISTRY: dict[str, Callable[[], Installer]] = {}
_LOCK = threading.Lock()


def register_installer(method: str, factory: Callable[[], Installer]) -> None:
    """Make `method` (the devices file's ``method``) available."""
    with _LOCK:
        _REGISTRY[method] = factory


def _builtins() -> None:
    # Imported here so that `base` stays free of the installers' own imports.
    from gapferry.isolated.installers.file_placement import FileInstaller  # noqa: PLC0415
    from gapferry.isolated.installers.file_sftp import SftpFileInstaller  # noqa: PLC0415
    from gapferry.isolated.installers.mender_ssh import MenderSshInstaller  # noqa: PLC0415

    with _LOCK:
        _REGISTRY.setdefault(MenderSshInstaller.method, MenderSshInstaller)
        _REGISTRY.setdefault(FileInstaller.method, FileInstaller)
        _REGISTRY.setdefault(SftpFileInstaller.method, SftpFileInstaller)


def registered_methods() -> list[str]:
    _builtins()
    names = set(_REGISTRY)
    names.update(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_installer(method: str) -> Installer:
    """A fresh installer for `method`.

    Raises:
        UsageProblem: ``unknown-method`` when no installer has that name.
    """
    _builtins()
    with _LOCK:
        factory = _REGISTRY.get(method)
    if factory is None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == method:
                factory = ep.load()
                break
    if factory is None:
        raise UsageProblem(
            f"no installer for method {method!r} (known: {', '.join(registered_methods())})",
            remedy="fix `method` in the devices file, or install the vendor installer package",
            code="unknown-method",
        )
    installer = factory()
    if not isinstance(installer, Installer):
        raise UsageProblem(
            f"the installer for {method!r} does not implement install(job)",
            remedy="fix or remove the vendor installer package",
            code="unknown-method",
        )
    return installer
