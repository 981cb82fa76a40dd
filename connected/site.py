"""The site file: one air-gapped site's devices, as the connected side knows them (issue 5).

TOML, read with `tomllib`::

    site = "plant-north"          # name, also the bundle's site
    mode = "static"               # or "rotating" (seeds: "Static vs. rotating")

    [[device]]
    name = "pump-01"              # gapferry's name for the device (keys, ledger, bundles)
    device_type = "raspberrypi4"
    artifact_name = "pump-fw-1.0" # what the device runs now (the ledger learns updates)
    identity = { mac = "00:11:22:33:44:01" }

The connected side never needs isolated-network addresses: how to reach a device is the isolated
side's knowledge (its own devices file). Unknown keys are refused, so a typo cannot pass silently.
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgspec
from gapferry.common.atomic import atomic_write_bytes
from gapferry.common.errors import UsageProblem

__all__ = ["EXAMPLE_SITE", "Mode", "Site", "SiteDevice", "load_site", "write_example"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: A site name as the bundle format allows it (bundle_spec/SPEC.md, ``SiteName``).
_SITE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


class Mode(StrEnum):
    STATIC = "static"
    ROTATING = "rotating"


class SiteDevice(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    device_type: str
    artifact_name: str
    identity: dict[str, str]
    #: Optional artifact_provides reported to /next (e.g. rootfs-image.version).
    provides: dict[str, str] = {}


class Site(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    site: str
    mode: Mode = Mode.STATIC
    device: list[SiteDevice] = []

    @property
    def name(self) -> str:
        return self.site

    @property
    def devices(self) -> list[SiteDevice]:
        return self.device

    def select(self, device: str | None) -> list[SiteDevice]:
        """All devices, or the one named `device`.

        Raises:
            UsageProblem: no device of that name.
        """
        if device is None:
            return list(self.device)
        for d in self.device:
            if d.name == device:
                return [d]
        raise UsageProblem(
            f"site {self.site!r} has no device named {device!r}",
            remedy="check --device against the [[device]] names in the site file",
            code="no-such-device",
        )


EXAMPLE_SITE = """\
# gapferry site file: the devices of one air-gapped site, as the connected side sees them.
# Only what the Mender Server needs lives here; how to reach a device on the isolated network is
# the isolated side's knowledge and never appears in this file.

# The site's name: appears in bundles and in `gapferry status` (a-z, 0-9, '-'; at most 32).
site = "plant-north"

# "static": keys and authorization sets are kept between visits (a permanent intermediary).
# "rotating": keys and authorization sets live only for one visit; `gapferry device cleanup`
# removes them when the visit is over.
mode = "static"

[[device]]
# gapferry's name for the device: letters, digits, '.', '_' or '-'.
name = "pump-01"
# The Mender device type, matched against the artifact's compatible device types.
device_type = "raspberrypi4"
# The artifact the device runs now. gapferry updates its ledger after each ingest; edit this
# only when the device was changed by other means.
artifact_name = "pump-fw-1.0"
# The identity the Mender Server knows the device by (any key-value attributes).
identity = { mac = "00:11:22:33:44:01" }

[[device]]
name = "pump-02"
device_type = "raspberrypi4"
artifact_name = "pump-fw-1.0"
identity = { mac = "00:11:22:33:44:02" }
"""


def _bad(path: Path, why: str) -> UsageProblem:
    return UsageProblem(
        f"site file {path}: {why}",
        remedy="fix the site file; `gapferry site init` writes a commented example",
        code="bad-site-file",
    )


def load_site(path: Path) -> Site:
    """Read and check a site file.

    Raises:
        UsageProblem: missing, not TOML, unknown keys, bad names, duplicates.
    """
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise _bad(path, "not found") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"not valid TOML ({e})") from e
    try:
        site = msgspec.convert(raw, type=Site)
    except msgspec.ValidationError as e:
        raise _bad(path, str(e)) from e
    if not _SITE.match(site.site):
        raise _bad(
            path,
            f"site name {site.site!r} must be 1-32 of a-z, 0-9 and '-', not starting or "
            "ending with '-'",
        )
    seen: set[str] = set()
    idents: set[tuple[tuple[str, str], ...]] = set()
    for d in site.device:
        if not _NAME.match(d.name):
            raise _bad(path, f"device name {d.name!r} must be letters, digits, '.', '_' or '-'")
        if d.name in seen:
            raise _bad(path, f"device name {d.name!r} appears twice")
        seen.add(d.name)
        if not d.identity:
            raise _bad(path, f"device {d.name!r} has an empty identity")
        key = tuple(sorted(d.identity.items()))
        if key in idents:
            raise _bad(path, f"device {d.name!r} has the same identity as another device")
        idents.add(key)
        if not d.device_type or not d.artifact_name:
            raise _bad(path, f"device {d.name!r} needs device_type and artifact_name")
    return site


def write_example(path: Path, *, force: bool = False) -> None:
    """Write the commented example site file (refuses to overwrite unless `force`)."""
    if path.exists() and not force:
        raise UsageProblem(
            f"{path} exists already",
            remedy="choose another path or pass --force to overwrite",
            code="exists",
        )
    atomic_write_bytes(path, EXAMPLE_SITE.encode(), mode=0o644)
