"""The connected side's use of the bundle format (gapferry.common.bundle, bundle_spec/SPEC.md).

`pack` and `ingest` talk to the format only through this module: `write_and_verify` writes a
signed transfer bundle with `write_transfer_bundle` (which resumes an interrupted write of the same
bundle id) and then reads it back from the medium with `open_bundle`, trusting exactly the key that
signed it; `open_result` verifies a result bundle against the operator's trust policy and returns
what ingest needs, with the device logs already read and checked.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
from gapferry.common.allowed_signers import AllowedSigner
from gapferry.common.bundle.layout import MEDIA_ROOT_DIR, bundle_dir_name, kind_of_dir_name
from gapferry.common.bundle.model import Deployment
from gapferry.common.bundle.read import find_bundles, open_bundle
from gapferry.common.bundle.write import (
    ArtifactSource,
    TransferDevicePlan,
    default_actor,
    write_transfer_bundle,
)
from gapferry.common.digest import Progress
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.signers import Signer
from gapferry.common.trust import TrustPolicy

__all__ = [
    "DeviceOutcome",
    "PackItem",
    "ResultView",
    "find_results",
    "open_result",
    "write_and_verify",
]


class PackItem(msgspec.Struct, frozen=True, kw_only=True):
    """One device's deployment, as it goes into a transfer bundle."""

    device: str
    mender_device_id: str
    device_type: str
    identity: dict[str, str]
    deployment_id: str
    deployment_name: str
    artifact_name: str
    artifact_path: Path
    artifact_size: int
    artifact_sha256: str
    current_artifact: str


class DeviceOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a result bundle says happened on one device."""

    device: str
    mender_device_id: str
    deployment_id: str
    #: success | failure | already-installed | skipped. The only status ingest reports (ADR
    #: 0046): the applier's intermediate steps stay in the result bundle and the audit report.
    final: str
    #: Mender deployment log messages: ``{"timestamp","level","message"}``.
    log: list[dict[str, str]] = []
    #: Inventory attributes ``{"name","value"}`` collected from the device.
    inventory: list[dict[str, object]] = []
    #: The artifact the device runs after the update, when known.
    artifact_name: str | None = None
    reason: str | None = None


class ResultView(msgspec.Struct, frozen=True, kw_only=True):
    result_id: str
    site: str
    transfer_bundle_id: str
    transfer_digest: str
    signer: str
    digest: str
    outcomes: list[DeviceOutcome]


def _self_trust(signer: Signer) -> TrustPolicy:
    """Trust exactly the key that just signed: the read-back checks the medium, not the signer."""
    entry = AllowedSigner(
        principals=("*",),
        cert_authority=False,
        namespaces=None,
        valid_after=None,
        valid_before=None,
        key=signer.public_key,
        line=0,
        source="the signing key",
    )
    return TrustPolicy(signers=(entry,), threshold=1)


def bundle_path(media: Path, *, site: str, seq: int, bundle_id: str) -> Path:
    return (
        media
        / MEDIA_ROOT_DIR
        / bundle_dir_name("transfer", site=site, sequence=seq, bundle_id=bundle_id)
    )


def write_and_verify(
    media: Path,
    *,
    site: str,
    seq: int,
    bundle_id: str,
    items: list[PackItem],
    signer: Signer,
    packer: str = "gapferry pack",
    progress: Progress | None = None,
    verify_progress: Progress | None = None,
) -> tuple[Path, str]:
    """Write (or finish writing) the signed transfer bundle, read it back and verify it.

    The writer reads every file back from the medium and checks its hash before it writes the
    completion marker (issue 8); the bundle is then opened as a reader would (marker,
    signature, SHA256SUMS, listing, sizes) without hashing the artifacts a second time.

    Returns the bundle folder and the sha256 of its manifest (what a result's receipt binds).

    Raises:
        the errors of `write_transfer_bundle` and `open_bundle` (media, read-back, signature).
    """
    plans = [
        TransferDevicePlan(
            name=i.device,
            mender_device_id=i.mender_device_id,
            identity=dict(i.identity),
            device_type=i.device_type,
            current_artifact_name=i.current_artifact,
            deployment=Deployment(id=i.deployment_id, name=i.deployment_name),
            artifact=ArtifactSource(
                path=i.artifact_path,
                name=i.artifact_name,
                sha256=i.artifact_sha256,
                size=i.artifact_size,
            ),
        )
        for i in items
    ]
    try:
        path = write_transfer_bundle(
            media,
            site=site,
            sequence=seq,
            packer=default_actor(packer),
            devices=plans,
            signers=[signer],
            bundle_id=bundle_id,
            progress=progress,
            verify_progress=verify_progress,
        )
    except UsageProblem as e:
        if e.code != "bundle-exists":
            raise
        # A crash after the completion marker and before the ledger noted it: adopt it.
        path = bundle_path(media, site=site, seq=seq, bundle_id=bundle_id)
    opened = open_bundle(
        path,
        policy=_self_trust(signer),
        now=dt.datetime.now(dt.UTC),
        limits=DEFAULT_LIMITS,
        # Hashes were checked on the medium by the writer (or, for a bundle adopted after a
        # crash past its marker, by its own earlier read-back: only a bundle whose every file
        # read back right ever gets a marker).
        check_files=False,
    )
    m = opened.transfer.manifest
    if m.bundle_id != bundle_id or m.sequence != seq or len(m.devices) != len(items):
        raise InvalidData(
            f"bundle read back from {path} is not the one just written",
            remedy="the medium holds another bundle under that name; use a fresh medium",
            code="readback-mismatch",
        )
    return path, opened.transfer.manifest_sha256


def find_results(media: Path) -> list[Path]:
    """Result bundle folders on `media`, oldest sequence first (by name)."""
    return [p for p in find_bundles(media) if kind_of_dir_name(p.name) == "result"]


def open_result(path: Path, *, trust: TrustPolicy, now: float) -> ResultView:
    """Verify a result bundle against `trust` and return what ingest needs.

    Raises:
        InvalidData / IncompleteBundle: every code of `open_bundle` (signature, digest, ...).
    """
    opened = open_bundle(
        path, policy=trust, now=dt.datetime.fromtimestamp(now, dt.UTC), limits=DEFAULT_LIMITS
    )
    res = opened.result
    m = res.manifest
    outcomes = []
    for d in m.devices:
        log = [
            {
                "timestamp": ln.timestamp.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
                "level": ln.level,
                "message": ln.message,
            }
            for ln in (opened.read_log(d.name) if d.log is not None else [])
        ]
        outcomes.append(
            DeviceOutcome(
                device=d.name,
                mender_device_id=d.mender_device_id,
                deployment_id=d.deployment_id,
                final=d.outcome,
                log=log,
                inventory=[{"name": a.name, "value": a.value} for a in d.inventory],
                artifact_name=d.artifact_name_after,
                reason=d.reason,
            )
        )
    signers = [c.describe() for c in res.trust.checks if c.counted]
    return ResultView(
        result_id=m.result_id,
        site=m.site,
        transfer_bundle_id=m.receipt.transfer_bundle_id,
        transfer_digest=m.receipt.transfer_manifest_sha256,
        signer=", ".join(signers),
        digest=res.manifest_sha256,
        outcomes=outcomes,
    )
