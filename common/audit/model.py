"""The audit report: every check made and its outcome, in one value (ADR 0071).

Plain data, built by `gapferry.common.audit.core.build_report` and rendered as text, JSON and
HTML by `gapferry.common.audit.render`. Every string in it may come from a bundle, so renderers
must escape it. ``format`` names the JSON shape (``gapferry-audit-v1``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

__all__ = [
    "REPORT_FORMAT",
    "ArtifactRow",
    "AuditReport",
    "BundleSection",
    "Check",
    "CustodyRow",
    "DeploymentRow",
    "DeviceRow",
    "FileRow",
    "LogRow",
    "SignatureRow",
    "Status",
    "TimelineEntry",
    "Verdict",
    "worst",
]

REPORT_FORMAT = "gapferry-audit-v1"

#: ``pass``: checked and good; ``fail``: checked and bad (or a discrepancy); ``incomplete``:
#: could not be checked because something is missing or unreadable; ``info``: recorded, not judged.
Status = Literal["pass", "fail", "incomplete", "info"]
Verdict = Literal["PASS", "FAIL", "INCOMPLETE"]

_RANK: dict[str, int] = {"info": 0, "pass": 0, "incomplete": 1, "fail": 2}


def worst(statuses: list[Status]) -> Status:
    """The most serious status of `statuses` (``pass`` when empty or only info)."""
    best: Status = "pass"
    for s in statuses:
        if _RANK[s] > _RANK[best]:
            best = s
    return best


class _Out(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the report types."""


class Check(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One check and its outcome. `name` is stable (scripts may match on it)."""

    #: The bundle folder, device or artifact the check is about.
    scope: str
    name: str
    status: Status
    summary: str


class SignatureRow(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One detached signature and what was found about it (gapferry.common.trust)."""

    file: str
    status: Status
    counted: bool
    reason: str | None
    detail: str | None
    principal: str | None
    key_type: str | None
    fingerprint: str | None
    #: key_id, serial, principals, valid_after, valid_before, ca_key_type, ca_fingerprint.
    certificate: dict[str, Any] | None
    matched_line: str | None
    valid_after: datetime | None
    valid_before: datetime | None
    namespace: str | None
    duplicate_of: str | None


class FileRow(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One content file listed in a manifest, hashed from the medium."""

    path: str
    size: int
    sha256: str
    status: Status
    #: What was found when it differs (size, sha256, missing), else None.
    found: str | None = None


class CustodyRow(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One custody event (gapferry.common.audit.custody)."""

    file: str
    number: int
    status: Status
    at: datetime | None
    actor: str | None
    event: str | None
    signer: str | None
    fingerprint: str | None
    sha256: str | None
    previous_sha256: str | None
    problems: list[str]


class BundleSection(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One bundle: identity, signatures, files, custody and the checks made on it."""

    role: Literal["transfer", "result"]
    folder: str
    status: Status
    #: True when the manifest was verified (signatures, threshold, shape, consistency).
    verified: bool
    bundle_id: str | None = None
    manifest_sha256: str | None = None
    site: str | None = None
    sequence: int | None = None
    created: datetime | None = None
    expires: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    #: The packer (transfer) or applier (result): name, host, software.
    actor: dict[str, str] | None = None
    #: Result bundles: the transfer bundle id and manifest sha256 they answer.
    receipt: dict[str, str] | None = None
    threshold: int | None = None
    distinct_trusted: int | None = None
    signatures: list[SignatureRow] = []
    files: list[FileRow] = []
    custody: list[CustodyRow] = []
    checks: list[Check] = []


class DeploymentRow(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A Mender deployment the transfer bundle carried."""

    id: str
    name: str
    devices: list[str]
    artifacts: list[str]


class ArtifactRow(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An artifact carried, and its own Mender signature (checked with ``--artifact-key``)."""

    name: str
    sha256: str
    size: int
    parts: int
    status: Status
    signature: str


class TimelineEntry(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One dated thing that happened to a device (or its bundles)."""

    at: datetime
    what: str
    #: ``transfer``, ``custody``, ``result``, ``step``.
    source: str
    status: Status = "info"


class LogRow(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    at: datetime
    level: str
    message: str


class DeviceRow(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device: what was packed for it and what the results say happened."""

    name: str
    mender_device_id: str
    #: ``success``, ``failure``, ``already-installed``, ``skipped``, ``no result`` (packed,
    #: absent from the results), ``not carried`` (in a result, not in the transfer bundle).
    outcome: str
    status: Status
    device_type: str | None = None
    deployment_id: str | None = None
    deployment_name: str | None = None
    artifact_name: str | None = None
    artifact_sha256: str | None = None
    current_artifact_name: str | None = None
    artifact_name_after: str | None = None
    reason: str | None = None
    result_folder: str | None = None
    identity: dict[str, str] = {}
    inventory: dict[str, Any] = {}
    timeline: list[TimelineEntry] = []
    log: list[LogRow] = []
    #: True when the log was longer than the report shows.
    log_truncated: bool = False


class AuditReport(_Out, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything `gapferry audit` found (the JSON output is this value)."""

    format: str = REPORT_FORMAT
    verdict: Verdict
    exit_code: int
    #: One sentence for people.
    summary: str
    #: The reference time of every validity and expiry check.
    checked_at: datetime
    software: str
    trust_source: str
    threshold: int
    transfer: BundleSection
    results: list[BundleSection]
    deployments: list[DeploymentRow]
    artifacts: list[ArtifactRow]
    devices: list[DeviceRow]
    discrepancies: list[Check]
    #: Every check made, in order (bundle checks, then cross-checks).
    checks: list[Check]
