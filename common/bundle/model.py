"""Wire types of bundle format version 1 (bundle_spec/SPEC.md, sections 4 "Transfer manifest" and
5 "Result manifest").

Every type is a frozen, keyword-only `msgspec.Struct` that refuses unknown fields (ADR 0004): a
field this reader does not know may carry a meaning it cannot honour, so it is rejected, and new
fields come with a new format version (ADR 0003). The types check shapes (patterns, lengths,
ranges); rules that relate fields to each other live in `gapferry.common.bundle.verify`.

None of these types has room for a secret: no key, token, passphrase or password field exists,
and free-text fields are short.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

__all__ = [
    "FORMAT_VERSION",
    "Actor",
    "ArtifactEntry",
    "ArtifactRef",
    "Deployment",
    "FileEntry",
    "InventoryAttribute",
    "InventoryValue",
    "LogLine",
    "LogRef",
    "Outcome",
    "Receipt",
    "ResultDevice",
    "ResultManifest",
    "StatusStep",
    "StepStatus",
    "TransferDevice",
    "TransferManifest",
]

#: The only format version this reader and writer know (ADR 0003). Manifests spell it as the
#: literal 1 in `TransferManifest.format_version`.
FORMAT_VERSION: Literal[1] = 1

Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$", description="lowercase hex")]
Uuid = Annotated[
    str,
    msgspec.Meta(
        pattern="^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description="lowercase UUID",
    ),
]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True, description="RFC 3339, UTC")]
SiteName = Annotated[
    str,
    msgspec.Meta(
        pattern="^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$",
        description="1-32 of a-z 0-9 '-', not starting or ending with '-'",
    ),
]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
LongText = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
RelPath = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Size = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Sequence = Annotated[int, msgspec.Meta(ge=1, le=2**53)]

#: Inventory attribute value, Mender's rules: a string, a number, or a homogeneous array of
#: either (homogeneity is checked in verify.py: msgspec unions allow one array type only).
InventoryValue = str | int | float | list[str | int | float]


class _Wire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every wire type (ADR 0004)."""


class Actor(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who made a bundle: the packer (transfer) or the applier (result). SPEC 4.1."""

    #: The person or role, as the site names them (e.g. "alice@plant-a"). Not a key.
    name: Text
    #: Host name of the machine that wrote the bundle.
    host: Text
    #: The software and version that wrote it, e.g. "gapferry 0.1.0".
    software: Text


class FileEntry(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One content file in the bundle folder (artifact, artifact part, log). SPEC 3.3."""

    path: RelPath
    size: Size
    sha256: Sha256Hex


class ArtifactEntry(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A Mender Artifact stored once by content hash. SPEC 3.4."""

    #: sha256 of the whole artifact (all parts joined).
    sha256: Sha256Hex
    size: Size
    #: The artifact_name in the artifact's header.
    name: Text
    #: Logical path: always ``artifacts/<sha256>.mender``.
    path: RelPath
    #: Empty when stored whole under `path`; otherwise ``<path>.part000``, ``.part001``, ...
    parts: list[RelPath]


class ArtifactRef(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device's artifact: must equal the `ArtifactEntry` with the same sha256. SPEC 4.2."""

    name: Text
    size: Size
    sha256: Sha256Hex
    path: RelPath


class Deployment(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The Mender deployment a device is served. SPEC 4.2."""

    id: Text
    name: Text


class TransferDevice(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One device in a transfer bundle. SPEC 4.2."""

    #: The site's name for the device (how the technician finds it).
    name: Text
    #: The device id the Mender Server assigned.
    mender_device_id: Text
    #: Identity attributes (Mender identity_data), e.g. {"mac": "00:11:22:33:44:01"}.
    identity: dict[Text, LongText]
    device_type: Text
    #: The artifact name the device runs now, as last reported.
    current_artifact_name: Text
    deployment: Deployment
    artifact: ArtifactRef


class TransferManifest(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The signed content of a transfer bundle (``manifest.json``). SPEC 4."""

    format_version: Literal[1]
    kind: Literal["transfer"]
    bundle_id: Uuid
    site: SiteName
    #: Per site, strictly growing across the transfer bundles a site packs.
    sequence: Sequence
    created: Timestamp
    expires: Timestamp
    packer: Actor
    devices: list[TransferDevice]
    artifacts: list[ArtifactEntry]
    #: Every content file, sorted by path.
    files: list[FileEntry]
    #: sha256 of the ``SHA256SUMS`` file (SPEC 3.5).
    checksums_sha256: Sha256Hex


StepStatus = Literal[
    "downloading",
    "installing",
    "rebooting",
    "success",
    "failure",
    "already-installed",
    "pause_before_installing",
    "pause_before_committing",
    "pause_before_rebooting",
]
Outcome = Literal["success", "failure", "already-installed", "skipped"]


class Receipt(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which transfer bundle a result answers, by id and by the sha256 of its manifest bytes."""

    transfer_bundle_id: Uuid
    transfer_manifest_sha256: Sha256Hex


class StatusStep(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One deployment status the applier went through, in order. SPEC 5.2."""

    status: StepStatus
    at: Timestamp
    substate: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class LogLine(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One line of a device's deployment log (one JSON object per line in the log file). SPEC 5.3."""

    timestamp: Timestamp
    level: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    message: Annotated[str, msgspec.Meta(min_length=1)]


class LogRef(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device's log file: ``logs/<sha256>.log.zst``, zstd-compressed JSON Lines. SPEC 5.3."""

    path: RelPath
    #: Compressed size and sha256 (the file as stored).
    size: Size
    sha256: Sha256Hex
    decompressed_size: Size
    lines: Annotated[int, msgspec.Meta(ge=1)]


class InventoryAttribute(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One inventory attribute to report for the device (Mender's value rules). SPEC 5.4."""

    name: Text
    value: InventoryValue


class ResultDevice(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What happened to one device of the transfer bundle. SPEC 5.2."""

    name: Text
    mender_device_id: Text
    deployment_id: Text
    outcome: Outcome
    #: Required when outcome is "skipped"; optional otherwise.
    reason: LongText | None = None
    steps: list[StatusStep]
    log: LogRef | None = None
    inventory: list[InventoryAttribute]
    #: The artifact name the device reports afterwards (None if it could not be read).
    artifact_name_after: Text | None = None


class ResultManifest(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The signed content of a result bundle (``manifest.json``). SPEC 5."""

    format_version: Literal[1]
    kind: Literal["result"]
    result_id: Uuid
    site: SiteName
    #: The sequence of the transfer bundle this result answers.
    sequence: Sequence
    receipt: Receipt
    applier: Actor
    started: Timestamp
    finished: Timestamp
    created: Timestamp
    devices: list[ResultDevice]
    files: list[FileEntry]
    checksums_sha256: Sha256Hex
