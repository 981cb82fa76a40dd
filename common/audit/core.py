"""Build an `AuditReport` from what the shell read (pure: no disk, no network; STYLE practice 1).

Inputs are `BundleInput` values (`gapferry.common.audit.gather`): manifests already verified by
the bundle core, files already hashed. This module turns them into checks, verifies the custody
chains (`verify_custody`), relates the results to the transfer bundle (receipt, site, sequence,
expiry) and finds the discrepancies (bundle_spec/VERIFYING.md section 7):

- ``device-missing``: a device was packed but no result reports it (only when results are given);
- ``not-carried``: a result reports a device or deployment the transfer bundle did not carry;
- ``result-untrusted``: a result bundle's signatures do not satisfy the policy;
- ``receipt-mismatch``: a result does not answer this transfer bundle;
- ``applied-after-expiry`` / ``applied-before-packed``: a result started outside the transfer
  bundle's validity (10 minutes of clock tolerance before it was packed).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from gapferry.common.audit.custody import CLOCK_TOLERANCE, verify_custody
from gapferry.common.audit.gather import BundleInput
from gapferry.common.audit.model import (
    ArtifactRow,
    AuditReport,
    BundleSection,
    Check,
    CustodyRow,
    DeploymentRow,
    DeviceRow,
    LogRow,
    SignatureRow,
    Status,
    TimelineEntry,
    Verdict,
    worst,
)
from gapferry.common.bundle.model import ResultDevice, ResultManifest, TransferManifest
from gapferry.common.bundle.verify import VerifiedResult, VerifiedTransfer
from gapferry.common.limits import Limits
from gapferry.common.trust import TrustPolicy, TrustResult

__all__ = ["LOG_LINES_SHOWN", "build_report", "bundle_section"]

#: Log lines per device copied into the report (the newest ones).
LOG_LINES_SHOWN = 200

_EXIT: dict[Verdict, int] = {"PASS": 0, "FAIL": 1, "INCOMPLETE": 3}


def _signature_rows(trust: TrustResult, files: Sequence[str]) -> list[SignatureRow]:
    def name(i: int) -> str:
        return files[i] if i < len(files) else f"#{i}"

    rows = []
    for c in trust.checks:
        rows.append(
            SignatureRow(
                file=name(c.index),
                status="pass" if c.ok else "fail",
                counted=c.counted,
                reason=c.reason,
                detail=c.detail,
                principal=c.principal,
                key_type=c.key_type,
                fingerprint=c.fingerprint,
                certificate=dict(c.certificate) if c.certificate else None,
                matched_line=c.matched_line,
                valid_after=c.valid_after,
                valid_before=c.valid_before,
                namespace=c.namespace,
                duplicate_of=name(c.duplicate_of) if c.duplicate_of is not None else None,
            )
        )
    return rows


def _trust_check(scope: str, trust: TrustResult) -> Check:
    status: Status = "pass" if trust.satisfied else "fail"
    bad = [c for c in trust.checks if not c.ok]
    text = (
        f"{trust.distinct_trusted} distinct trusted key(s) of {len(trust.checks)} signature(s); "
        f"threshold {trust.threshold} {'met' if trust.satisfied else 'NOT met'}"
    )
    if bad:
        status = "fail"
        text += "; bad: " + "; ".join(c.describe() for c in bad)
    return Check(scope=scope, name="signatures", status=status, summary=text)


def _custody_rows(
    b: BundleInput,
    v: VerifiedTransfer | VerifiedResult,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
) -> tuple[list[CustodyRow], list[Check]]:
    if b.custody is None:
        return [], []
    m = v.manifest
    bundle_id = m.bundle_id if isinstance(m, TransferManifest) else m.result_id
    chain = verify_custody(
        b.custody,
        bundle_kind=b.kind,
        bundle_id=bundle_id,
        manifest_sha256=v.manifest_sha256,
        created=m.created,
        policy=policy,
        now=now,
        limits=limits,
    )
    rows = []
    for e in chain.events:
        sig = e.signature
        rows.append(
            CustodyRow(
                file=e.file,
                number=e.number,
                status="pass" if e.ok else "fail",
                at=e.event.at if e.event else None,
                actor=f"{e.event.actor.name} on {e.event.actor.host}" if e.event else None,
                event=e.event.event if e.event else None,
                signer=sig.principal if sig else None,
                fingerprint=sig.fingerprint if sig else None,
                sha256=e.sha256,
                previous_sha256=e.event.previous_sha256 if e.event else None,
                problems=list(e.problems),
            )
        )
    checks = []
    if not chain.events and not chain.problems:
        checks.append(Check(scope=b.folder, name="custody", status="info", summary="no events"))
    else:
        bad = [f"{e.file}: {'; '.join(e.problems)}" for e in chain.events if not e.ok]
        problems = list(chain.problems) + bad
        checks.append(
            Check(
                scope=b.folder,
                name="custody",
                status="fail" if problems else "pass",
                summary="; ".join(problems)
                if problems
                else f"{len(chain.events)} event(s), each signed by a trusted key and chained "
                "to the previous one and to the manifest",
            )
        )
    return rows, checks


def _with_checks(sec: BundleSection, more: Sequence[Check]) -> BundleSection:
    """`sec` with `more` checks appended and its status recomputed."""
    checks = [*sec.checks, *more]
    return msgspec.structs.replace(sec, checks=checks, status=worst([c.status for c in checks]))


def bundle_section(
    b: BundleInput, policy: TrustPolicy, now: datetime, limits: Limits
) -> BundleSection:
    checks = list(b.checks)
    signatures: list[SignatureRow] = []
    if b.trust is not None:
        signatures = _signature_rows(b.trust, b.signature_files)
        checks.insert(0, _trust_check(b.folder, b.trust))
    v = b.verified
    if v is None:
        return BundleSection(
            role=b.kind,
            folder=b.folder,
            status=worst([c.status for c in checks]),
            verified=False,
            threshold=b.trust.threshold if b.trust else None,
            distinct_trusted=b.trust.distinct_trusted if b.trust else None,
            signatures=signatures,
            checks=checks,
        )
    checks.insert(
        1,
        Check(
            scope=b.folder,
            name="manifest",
            status="pass",
            summary=f"format version 1, {v.manifest.kind} manifest sha256 {v.manifest_sha256}: "
            "shape and internal consistency checked",
        ),
    )
    failed = [f for f in b.files if f.status != "pass"]
    checks.append(
        Check(
            scope=b.folder,
            name="files",
            status=worst([f.status for f in b.files]),
            summary=f"{len(b.files) - len(failed)} of {len(b.files)} file(s) have the listed "
            "size and sha256"
            + ("" if not failed else "; " + "; ".join(f"{f.path}: {f.found}" for f in failed)),
        )
    )
    custody_rows, custody_checks = _custody_rows(b, v, policy, now, limits)
    checks += custody_checks
    m = v.manifest
    common: dict[str, Any] = {
        "role": b.kind,
        "folder": b.folder,
        "verified": True,
        "manifest_sha256": v.manifest_sha256,
        "site": m.site,
        "sequence": m.sequence,
        "created": m.created,
        "threshold": v.trust.threshold,
        "distinct_trusted": v.trust.distinct_trusted,
        "signatures": signatures,
        "files": b.files,
        "custody": custody_rows,
    }
    if isinstance(m, TransferManifest):
        a = m.packer
        return BundleSection(
            status=worst([c.status for c in checks]),
            bundle_id=m.bundle_id,
            expires=m.expires,
            actor={"name": a.name, "host": a.host, "software": a.software},
            checks=checks,
            **common,
        )
    a = m.applier
    return BundleSection(
        status=worst([c.status for c in checks]),
        bundle_id=m.result_id,
        started=m.started,
        finished=m.finished,
        actor={"name": a.name, "host": a.host, "software": a.software},
        receipt={
            "transfer_bundle_id": m.receipt.transfer_bundle_id,
            "transfer_manifest_sha256": m.receipt.transfer_manifest_sha256,
        },
        checks=checks,
        **common,
    )


def _relate(t: VerifiedTransfer, r: VerifiedResult, folder: str) -> tuple[bool, list[Check]]:
    """Does result `r` answer transfer `t`? Checks for the receipt, site, sequence, expiry."""
    tm, rm = t.manifest, r.manifest
    checks = []
    answers = (
        rm.receipt.transfer_bundle_id == tm.bundle_id
        and rm.receipt.transfer_manifest_sha256 == t.manifest_sha256
    )
    checks.append(
        Check(
            scope=folder,
            name="receipt",
            status="pass" if answers else "fail",
            summary=f"answers transfer bundle {tm.bundle_id} (manifest sha256 {t.manifest_sha256})"
            if answers
            else f"receipt-mismatch: the receipt names {rm.receipt.transfer_bundle_id} with "
            f"manifest sha256 {rm.receipt.transfer_manifest_sha256}, not this transfer bundle "
            f"{tm.bundle_id} ({t.manifest_sha256})",
        )
    )
    if not answers:
        return False, checks
    same = rm.site == tm.site and rm.sequence == tm.sequence
    checks.append(
        Check(
            scope=folder,
            name="site-sequence",
            status="pass" if same else "fail",
            summary=f"site {rm.site!r} sequence {rm.sequence}"
            + ("" if same else f", but the transfer bundle has {tm.site!r} {tm.sequence}"),
        )
    )
    if rm.started + CLOCK_TOLERANCE < tm.created:
        name, status, text = (
            "applied-before-packed",
            "fail",
            f"started {rm.started.isoformat()}, before the transfer bundle was packed "
            f"({tm.created.isoformat()}): a clock is wrong or the result is forged",
        )
    elif rm.started >= tm.expires:
        name, status, text = (
            "applied-after-expiry",
            "fail",
            f"started {rm.started.isoformat()}, after the transfer bundle expired "
            f"({tm.expires.isoformat()})",
        )
    else:
        name, status, text = (
            "applied-within-validity",
            "pass",
            f"applied from {rm.started.isoformat()}, within the transfer bundle's validity "
            f"{tm.created.isoformat()} .. {tm.expires.isoformat()}",
        )
    checks.append(Check(scope=folder, name=name, status=status, summary=text))  # type: ignore[arg-type]
    return True, checks


def _timeline(
    tm: TransferManifest,
    visits: Sequence[tuple[ResultManifest, ResultDevice]],
    custody: Sequence[tuple[str, CustodyRow]],
) -> list[TimelineEntry]:
    """Packing, custody events, every visit's steps (several results may report a device),
    and expiry, in time order."""
    out = [TimelineEntry(at=tm.created, what=f"packed by {tm.packer.name}", source="transfer")]
    for where, c in custody:
        if c.at is not None:
            out.append(
                TimelineEntry(
                    at=c.at,
                    what=f"custody ({where}): {c.event} [{c.actor}; signed by {c.signer}]",
                    source="custody",
                    status=c.status,
                )
            )
    for rm, rd in visits:
        out.append(
            TimelineEntry(
                at=rm.started,
                what=f"visit by {rm.applier.name} started ({rm.result_id[:8]})",
                source="result",
            )
        )
        for s in rd.steps:
            what = s.status + (f" ({s.substate})" if s.substate else "")
            status: Status = (
                "fail" if s.status == "failure" else "pass" if s.status == "success" else "info"
            )
            out.append(TimelineEntry(at=s.at, what=what, source="step", status=status))
        if rd.outcome == "skipped":
            out.append(TimelineEntry(at=rm.finished, what=f"skipped: {rd.reason}", source="result"))
        out.append(TimelineEntry(at=rm.created, what="result bundle written", source="result"))
    out.append(TimelineEntry(at=tm.expires, what="transfer bundle expires", source="transfer"))
    return sorted(out, key=lambda e: e.at)


_OUTCOME_STATUS: dict[str, Status] = {
    "success": "pass",
    "already-installed": "pass",
    "failure": "info",
    "skipped": "info",
}


def build_report(
    transfer: BundleInput,
    results: Sequence[BundleInput],
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
    trust_source: str,
    software: str,
) -> AuditReport:
    """Turn what the shell found into the report: checks, devices, discrepancies, verdict.

    A device that failed to install is an outcome, not a failed check: the audit says what
    happened. Failed checks are about evidence (signatures, files, custody, receipts) and
    discrepancies between the bundles.
    """
    tsec = bundle_section(transfer, policy, now, limits)
    if transfer.expired:
        tsec = _with_checks(
            tsec,
            [
                Check(
                    scope=transfer.folder,
                    name="expiry",
                    status="info",
                    summary=f"expired at {tsec.expires.isoformat() if tsec.expires else '?'} "
                    f"(checked at {now.isoformat()}); each result is checked against it below",
                )
            ],
        )
    elif tsec.expires is not None:
        tsec = _with_checks(
            tsec,
            [
                Check(
                    scope=transfer.folder,
                    name="expiry",
                    status="pass",
                    summary=f"valid until {tsec.expires.isoformat()} "
                    f"(checked at {now.isoformat()})",
                )
            ],
        )
    sections = [tsec]
    discrepancies: list[Check] = []
    cross: list[Check] = []
    t = transfer.verified if isinstance(transfer.verified, VerifiedTransfer) else None
    answering: list[tuple[BundleInput, VerifiedResult, BundleSection]] = []
    for r in results:
        sec = bundle_section(r, policy, now, limits)
        sections.append(sec)
        if r.kind != "result":
            discrepancies.append(
                Check(
                    scope=r.folder,
                    name="wrong-kind",
                    status="fail",
                    summary="passed as a result, but it is a transfer bundle",
                )
            )
            continue
        if r.verified is None:
            if r.trust is not None and not r.trust.satisfied:
                discrepancies.append(
                    Check(
                        scope=r.folder,
                        name="result-untrusted",
                        status="fail",
                        summary="a result signed outside the policy: its signatures do not "
                        "satisfy the trust policy, so its content was not read",
                    )
                )
            continue
        assert isinstance(r.verified, VerifiedResult)  # noqa: S101 - kind is result
        if t is None:
            continue
        answers, checks = _relate(t, r.verified, r.folder)
        sec = _with_checks(sec, checks)
        sections[-1] = sec
        for c in checks:
            if c.status == "fail":
                discrepancies.append(c)
        if answers:
            answering.append((r, r.verified, sec))
    devices: list[DeviceRow] = []
    deployments: list[DeploymentRow] = []
    artifacts: list[ArtifactRow] = list(transfer.artifacts)
    if t is not None:
        tm = t.manifest
        tcustody = [("transfer", c) for c in tsec.custody]
        by_dep: dict[str, DeploymentRow] = {}
        for d in tm.devices:
            row = by_dep.setdefault(
                d.deployment.id,
                DeploymentRow(id=d.deployment.id, name=d.deployment.name, devices=[], artifacts=[]),
            )
            row.devices.append(d.name)
            if d.artifact.name not in row.artifacts:
                row.artifacts.append(d.artifact.name)
        deployments = list(by_dep.values())
        # The newest result that reports a device decides its outcome; all visits are shown.
        reported: dict[str, tuple[VerifiedResult, ResultDevice, BundleInput, BundleSection]] = {}
        visits: dict[str, list[tuple[ResultManifest, ResultDevice]]] = {}
        rcustody: dict[str, list[tuple[str, CustodyRow]]] = {}
        for r, vr, sec in sorted(answering, key=lambda x: x[1].manifest.created):
            for rd in vr.manifest.devices:
                reported[rd.name] = (vr, rd, r, sec)
                visits.setdefault(rd.name, []).append((vr.manifest, rd))
                rcustody.setdefault(rd.name, []).extend(("result", c) for c in sec.custody)
        carried = {d.name: d for d in tm.devices}
        for d in tm.devices:
            base: dict[str, Any] = {
                "name": d.name,
                "mender_device_id": d.mender_device_id,
                "device_type": d.device_type,
                "deployment_id": d.deployment.id,
                "deployment_name": d.deployment.name,
                "artifact_name": d.artifact.name,
                "artifact_sha256": d.artifact.sha256,
                "current_artifact_name": d.current_artifact_name,
                "identity": dict(d.identity),
            }
            got = reported.get(d.name)
            if got is None:
                status: Status = "fail" if results else "info"
                if results:
                    discrepancies.append(
                        Check(
                            scope=d.name,
                            name="device-missing",
                            status="fail",
                            summary=f"device {d.name!r} was packed (deployment {d.deployment.id}) "
                            "but no result bundle reports it",
                        )
                    )
                devices.append(
                    DeviceRow(
                        outcome="no result",
                        status=status,
                        timeline=_timeline(tm, [], tcustody),
                        **base,
                    )
                )
                continue
            vr, rd, r, sec = got
            problems = []
            if rd.mender_device_id != d.mender_device_id:
                problems.append(
                    f"the result names Mender device {rd.mender_device_id}, the transfer bundle "
                    f"{d.mender_device_id}"
                )
            if rd.deployment_id != d.deployment.id:
                problems.append(
                    f"the result reports deployment {rd.deployment_id}, but {d.deployment.id} "
                    "was carried for this device"
                )
            for p in problems:
                discrepancies.append(
                    Check(scope=d.name, name="not-carried", status="fail", summary=p)
                )
            log = r.logs.get(d.name, [])
            devices.append(
                DeviceRow(
                    outcome=rd.outcome,
                    status="fail" if problems else _OUTCOME_STATUS[rd.outcome],
                    reason=rd.reason,
                    artifact_name_after=rd.artifact_name_after,
                    result_folder=r.folder,
                    inventory={a.name: a.value for a in rd.inventory},
                    timeline=_timeline(tm, visits[d.name], tcustody + rcustody[d.name]),
                    log=[
                        LogRow(at=x.timestamp, level=x.level, message=x.message)
                        for x in log[-LOG_LINES_SHOWN:]
                    ],
                    log_truncated=len(log) > LOG_LINES_SHOWN,
                    **base,
                )
            )
        for r, vr, _sec in answering:
            for rd in vr.manifest.devices:
                if rd.name not in carried:
                    discrepancies.append(
                        Check(
                            scope=rd.name,
                            name="not-carried",
                            status="fail",
                            summary=f"{r.folder} reports device {rd.name!r} (deployment "
                            f"{rd.deployment_id}), which the transfer bundle did not carry",
                        )
                    )
                    devices.append(
                        DeviceRow(
                            name=rd.name,
                            mender_device_id=rd.mender_device_id,
                            deployment_id=rd.deployment_id,
                            outcome="not carried",
                            status="fail",
                            result_folder=r.folder,
                        )
                    )
    for a in artifacts:
        cross.append(
            Check(scope=a.name, name="artifact-signature", status=a.status, summary=a.signature)
        )
    checks = [c for s in sections for c in s.checks] + cross
    checks += [d for d in discrepancies if d not in checks]
    statuses = [c.status for c in checks]
    overall = worst(statuses)
    verdict: Verdict = {"pass": "PASS", "info": "PASS", "fail": "FAIL", "incomplete": "INCOMPLETE"}[
        overall
    ]  # type: ignore[assignment]
    failed = sum(1 for s in statuses if s == "fail")
    summary = {
        "PASS": f"All {len(checks)} checks passed; {len(devices)} device(s), "
        f"{len(results)} result bundle(s), no discrepancies.",
        "FAIL": f"{failed} of {len(checks)} checks failed ({len(discrepancies)} "
        "discrepancies); see below.",
        "INCOMPLETE": "Some evidence is missing or unreadable; the audit is incomplete.",
    }[verdict]
    return AuditReport(
        verdict=verdict,
        exit_code=_EXIT[verdict],
        summary=summary,
        checked_at=now,
        software=software,
        trust_source=trust_source,
        threshold=policy.threshold,
        transfer=tsec,
        results=sections[1:],
        deployments=deployments,
        artifacts=artifacts,
        devices=devices,
        discrepancies=discrepancies,
        checks=checks,
    )
