"""The devices file: how the technician's laptop reaches each device, and how to install on it.

It lives on the isolated side only and never travels in a transfer bundle (issue 6). TOML:

    site = "plant-a"                        # optional; must match the bundle's site
    parallel = 4                            # optional; devices installed at the same time (1-32)
    artifact_verify_key = "keys/artifact-verify.pub.pem"   # optional; the site's PEM public key

    [devices.pump-1]                        # the device's name in the transfer bundle
    method = "mender-ssh"
    host = "10.1.2.3"                       # or a Host alias from your OpenSSH config
    port = 22                               # optional (else OpenSSH config / 22)
    user = "root"                           # optional
    identity_file = "~/.ssh/gapferry"       # optional (else agent / OpenSSH config)
    known_hosts = "known_hosts"             # optional (else OpenSSH's own files)
    ssh_config = "~/.ssh/config"            # optional (else OpenSSH's defaults)
    transfer = "stdin"                      # or "tempfile" (copy to the device, check sha256)
    reboot_command = "reboot"               # for payloads that need a reboot
    reboot_timeout = 600                    # seconds to wait for the device to come back
    check_command = "systemctl is-system-running --wait"   # optional; non-zero -> rollback

    [devices.hmi-2]
    method = "file"
    path = "/mnt/hmi-2"                     # the device's root file system, mounted
    artifact_verify_key = "keys/other.pem"  # optional per-device override

    [devices.panel-3]
    method = "file-sftp"                    # file placement over SFTP (ADR 0054)
    host = "10.1.2.4"                       # port, user, identity_file, known_hosts, ssh_config
    root = "/"                              #   as for mender-ssh; root: the folder on the device
                                            #   under which dest_dir is placed (default "/")

Relative paths are relative to the devices file's folder; ``~`` is expanded. Unknown keys are
refused (a typo must not silently turn a check off).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from gapferry.common.errors import InvalidData, UsageProblem

__all__ = ["DEVICES_FILE_MAX", "DeviceTarget", "DevicesFile", "load_devices_file"]

#: Bytes of a devices file (it is local configuration, but still bounded).
DEVICES_FILE_MAX = 4 * 1024 * 1024

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class DeviceTarget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach and install one device."""

    method: _Name
    # mender-ssh
    host: _Text | None = None
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    user: _Name | None = None
    identity_file: _Text | None = None
    known_hosts: _Text | None = None
    ssh_config: _Text | None = None
    transfer: Literal["stdin", "tempfile"] = "stdin"
    tempdir: _Text = "/var/tmp"  # noqa: S108 - a folder on the device, named by the user
    reboot_command: _Text = "reboot"
    reboot_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 600
    check_command: _Text | None = None
    command_timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 4 * 3600
    # file
    path: _Text | None = None
    # file-sftp (also host, port, user, identity_file, known_hosts, ssh_config, check_command)
    #: The folder on the device under which dest_dir paths are placed.
    root: _Text = "/"
    # both
    artifact_verify_key: _Text | None = None
    #: Settings for installers added later (vendor-specific); ignored by the built-in ones.
    options: dict[str, str | int | float | bool] = {}


class DevicesFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A parsed devices file; paths in targets are already resolved."""

    site: _Name | None = None
    parallel: Annotated[int, msgspec.Meta(ge=1, le=32)] = 4
    artifact_verify_key: _Text | None = None
    devices: dict[_Name, DeviceTarget] = {}

    def verify_key_for(self, name: str) -> Path | None:
        """The artifact verification key file for device `name` (device setting, else site)."""
        target = self.devices.get(name)
        key = (target.artifact_verify_key if target else None) or self.artifact_verify_key
        return Path(key) if key else None


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def load_devices_file(path: Path) -> DevicesFile:
    """Read and check a devices file.

    Raises:
        UsageProblem: ``devices-file-missing`` when it cannot be read.
        InvalidData: ``bad-devices-file`` when it is not valid TOML or has unknown or wrong keys,
            or a device lacks what its method needs.
    """
    try:
        with Path(path).open("rb") as f:
            raw = f.read(DEVICES_FILE_MAX + 1)
    except OSError as e:
        raise UsageProblem(
            f"cannot read the devices file {path}: {e.strerror}",
            remedy="pass --devices with the path of your devices file (TOML)",
            code="devices-file-missing",
        ) from e
    if len(raw) > DEVICES_FILE_MAX:
        raise InvalidData(
            f"devices file {path} is larger than {DEVICES_FILE_MAX} bytes",
            remedy="pass the devices file, not another file",
            code="bad-devices-file",
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
        parsed = msgspec.convert(data, DevicesFile)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise InvalidData(
            f"devices file {path}: {e}",
            remedy="fix the devices file (format: docs/adr/0052-devices-file.md)",
            code="bad-devices-file",
        ) from e
    base = Path(path).resolve().parent
    devices = {}
    for name, t in parsed.devices.items():
        if t.method == "mender-ssh" and not t.host:
            raise InvalidData(
                f"devices file {path}: device {name!r} uses mender-ssh but has no host",
                remedy="add host = ... (an address or an OpenSSH Host alias)",
                code="bad-devices-file",
            )
        if t.method == "file-sftp" and (not t.host or not t.root.startswith("/")):
            raise InvalidData(
                f"devices file {path}: device {name!r} uses file-sftp but has no host or a"
                f" relative root ({t.root!r})",
                remedy="add host = ... and make root an absolute folder on the device",
                code="bad-devices-file",
            )
        if t.method == "file" and not t.path:
            raise InvalidData(
                f"devices file {path}: device {name!r} uses file placement but has no path",
                remedy="add path = ... (the mounted root of the device)",
                code="bad-devices-file",
            )
        devices[name] = msgspec.structs.replace(
            t,
            identity_file=_resolve(base, t.identity_file),
            known_hosts=_resolve(base, t.known_hosts),
            ssh_config=_resolve(base, t.ssh_config),
            path=_resolve(base, t.path),
            artifact_verify_key=_resolve(base, t.artifact_verify_key),
        )
    return msgspec.structs.replace(
        parsed,
        artifact_verify_key=_resolve(base, parsed.artifact_verify_key),
        devices=devices,
    )
