"""Names on media: the root folder, bundle folder names, fixed file names, signature namespaces
(bundle_spec/SPEC.md section 3 "Layout on media").
"""

from __future__ import annotations

import re
from typing import Literal

from gapferry.common.bundle.model import FORMAT_VERSION
from gapferry.common.errors import InvalidData
from gapferry.common.media.junk import is_ignorable

__all__ = [
    "ARTIFACTS_DIR",
    "CHECKSUMS_NAME",
    "CUSTODY_DIR",
    "CUSTODY_NAMESPACE",
    "FAT32_MAX_FILE_SIZE",
    "LOGS_DIR",
    "MANIFEST_NAME",
    "MARKER_NAME",
    "MEDIA_ROOT_DIR",
    "Kind",
    "artifact_part_path",
    "artifact_path",
    "bundle_dir_name",
    "is_ignored_name",
    "kind_of_dir_name",
    "log_path",
    "marker_bytes",
    "namespace_for",
    "parse_marker",
    "signature_name",
    "signature_names",
]

Kind = Literal["transfer", "result"]

#: The one folder gapferry uses at the root of a medium.
MEDIA_ROOT_DIR = "gapferry"
MANIFEST_NAME = "manifest.json"
CHECKSUMS_NAME = "SHA256SUMS"
#: The completion marker, written last.
MARKER_NAME = "COMPLETE"
ARTIFACTS_DIR = "artifacts"
LOGS_DIR = "logs"
#: Optional folder of signed custody events, added after packing without touching the
#: manifest (SPEC 3.7; bundle_spec/VERIFYING.md section 7). Readers check its shape, not its events.
CUSTODY_DIR = "custody"
CUSTODY_NAMESPACE = "gapferry-custody-v1@gapferry"
#: Largest file FAT32 can hold: 4 GiB - 1. Larger artifacts are split into parts of at most this.
FAT32_MAX_FILE_SIZE = 4 * 1024**3 - 1

_MARKER_PREFIX = f"gapferry-bundle-complete v{FORMAT_VERSION} manifest-sha256 "
_MARKER_RE = re.compile(rb"^gapferry-bundle-complete v1 manifest-sha256 ([0-9a-f]{64})\n$")
_DIR_RE = re.compile(
    r"^(transfer|result)-([a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?)-([0-9]{8,16})-([0-9a-f]{8})$"
)


def is_ignored_name(name: str) -> bool:
    """OS litter (``._*``, ``.DS_Store``, ``System Volume Information``, ...) a reader skips
    without reading (SPEC 3.6; the list is `gapferry.common.media.junk`)."""
    return is_ignorable(name)


def namespace_for(kind: Kind) -> str:
    """The SSHSIG namespace of a bundle kind in this format version (SPEC 6.1)."""
    return f"gapferry-{kind}-v{FORMAT_VERSION}@gapferry"


def bundle_dir_name(kind: Kind, *, site: str, sequence: int, bundle_id: str) -> str:
    """``<kind>-<site>-<sequence, 8 digits or more>-<first 8 hex of the id>`` (SPEC 3.2)."""
    name = f"{kind}-{site}-{sequence:08d}-{bundle_id.replace('-', '')[:8]}"
    if not _DIR_RE.match(name):
        raise InvalidData(
            f"cannot name a bundle folder {name!r}",
            remedy="site names are 1-32 of a-z 0-9 '-'; sequences are positive",
            code="bad-bundle-name",
        )
    return name


def kind_of_dir_name(name: str) -> Kind | None:
    """The kind a bundle folder's name announces, or None if it is not a bundle folder name."""
    m = _DIR_RE.match(name)
    if m is None:
        return None
    return "transfer" if m.group(1) == "transfer" else "result"


def artifact_path(sha256: str) -> str:
    return f"{ARTIFACTS_DIR}/{sha256}.mender"


def artifact_part_path(sha256: str, index: int) -> str:
    return f"{artifact_path(sha256)}.part{index:03d}"


def log_path(sha256: str) -> str:
    return f"{LOGS_DIR}/{sha256}.log.zst"


def signature_name(index: int) -> str:
    """``manifest.json.sig`` for the first signature, ``manifest.json.sig.<n>`` for the n-th."""
    return f"{MANIFEST_NAME}.sig" if index == 1 else f"{MANIFEST_NAME}.sig.{index}"


def signature_names(max_count: int) -> list[str]:
    return [signature_name(i) for i in range(1, max_count + 1)]


def marker_bytes(manifest_sha256: str) -> bytes:
    """Content of the completion marker, binding the manifest bytes (SPEC 3.7)."""
    return f"{_MARKER_PREFIX}{manifest_sha256}\n".encode("ascii")


def parse_marker(raw: bytes) -> str | None:
    """The manifest sha256 a marker binds, or None if the marker is malformed."""
    m = _MARKER_RE.match(raw)
    return m.group(1).decode("ascii") if m else None
