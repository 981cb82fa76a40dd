"""Read one bundle folder for an audit: every check the reader makes, recorded instead of raised
(the I/O shell of `gapferry audit`; bundle_spec/VERIFYING.md sections 2-6).

The rules are not repeated here: each check is a step of the bundle reader
(`gapferry.common.bundle.scan.scan_folder` and `gapferry.common.bundle.steps`), the same steps
`open_bundle` composes. Where `open_bundle` stops at the first error, this module catches the
`GapferryError` a step raises, records it as a `Check` (or a `FileRow`) and goes on where the next
step still has what it needs. The ``custody/`` folder's events are read with
`read_custody_folder`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from gapferry.common.artifact.reader import read_artifact
from gapferry.common.audit.custody import CustodyFolder, read_custody_folder
from gapferry.common.audit.model import ArtifactRow, Check, FileRow, Status
from gapferry.common.bundle.canonical import decode_manifest, manifest_sha256
from gapferry.common.bundle.layout import CHECKSUMS_NAME, Kind, namespace_for
from gapferry.common.bundle.model import FileEntry, LogLine, TransferManifest
from gapferry.common.bundle.read import ArtifactStream
from gapferry.common.bundle.scan import BundleListing, bundle_kind, scan_folder
from gapferry.common.bundle.steps import (
    check_checksums,
    check_file_digest,
    check_folder_name,
    check_joined_parts,
    check_marker,
    check_no_unlisted,
    check_present,
    hash_file,
    read_log,
    read_manifest,
    read_marker,
    read_signatures,
    unlisted_files,
    verify_manifest,
)
from gapferry.common.bundle.verify import VerifiedResult, VerifiedTransfer
from gapferry.common.errors import GapferryError, IncompleteBundle, InvalidData
from gapferry.common.limits import Limits
from gapferry.common.trust import TrustPolicy, TrustResult, evaluate

__all__ = ["BundleInput", "gather_bundle"]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class BundleInput:
    """What the shell read and checked in one bundle folder; the input of `build_report`."""

    folder: str
    kind: Kind
    checks: list[Check]
    signature_files: tuple[str, ...] = ()
    #: From `evaluate` over the manifest bytes; None when the manifest could not be read.
    trust: TrustResult | None = None
    #: Set only when the manifest verified (signatures, threshold, shape, consistency, clock).
    verified: VerifiedTransfer | VerifiedResult | None = None
    #: True when the transfer bundle verified except that it has expired at the reference time.
    expired: bool = False
    files: list[FileRow] = field(default_factory=list)
    artifacts: list[ArtifactRow] = field(default_factory=list)
    logs: Mapping[str, list[LogLine]] = field(default_factory=dict)
    custody: CustodyFolder | None = None


class _Recorder:
    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.checks: list[Check] = []

    def add(self, name: str, status: Status, summary: str) -> None:
        self.checks.append(Check(scope=self.scope, name=name, status=status, summary=summary))

    def error(self, name: str, err: GapferryError) -> None:
        self.add(name, _status_of(err), f"{err.code}: {err.message}")


def _status_of(err: GapferryError) -> Status:
    return "incomplete" if isinstance(err, IncompleteBundle) else "fail"


def _scan(root: Path, kind: Kind, limits: Limits, rec: _Recorder) -> BundleListing:
    """`scan_folder`, recording every unsafe or unexpected entry in one ``layout`` check.

    Raises:
        InvalidData: ``too-many-files`` (the listing is not bounded: nothing more can be read).
    """
    problems: list[InvalidData] = []
    listing = scan_folder(root, kind, limits, report=problems.append)
    if problems:
        rec.add("layout", "fail", "; ".join(f"{e.code}: {e.message}" for e in problems))
    else:
        rec.add("layout", "pass", "only the files the format allows; no links or special files")
    return listing


def _file_row(f: FileEntry, err: GapferryError | None, digest: str | None) -> FileRow:
    if err is None:
        return FileRow(path=f.path, size=f.size, sha256=f.sha256, status="pass")
    found = f"sha256 {digest}" if err.code == "digest-mismatch" else f"{err.code}: {err.message}"
    return FileRow(path=f.path, size=f.size, sha256=f.sha256, status=_status_of(err), found=found)


def _check_files(
    root: Path,
    verified: VerifiedTransfer | VerifiedResult,
    present: Mapping[str, int],
    rec: _Recorder,
) -> list[FileRow]:
    """One row per listed file (`check_present`, `hash_file`, `check_file_digest`), one per
    unlisted file (`check_no_unlisted`), and a ``parts`` check per split artifact
    (`check_joined_parts`)."""
    manifest = verified.manifest
    rows: dict[str, FileRow] = {}

    def check(f: FileEntry, whole: object = None) -> bool:
        digest: str | None = None
        try:
            check_present(f, present)
            digest = hash_file(root, f, whole=whole)
            check_file_digest(f, digest)
        except GapferryError as e:
            rows[f.path] = _file_row(f, e, digest)
            return False
        rows[f.path] = _file_row(f, None, digest)
        return True

    by_path = {f.path: f for f in manifest.files}
    if isinstance(manifest, TransferManifest):
        for a in manifest.artifacts:
            if not a.parts:
                continue
            whole = hashlib.sha256()
            # Every part is checked (no short cut), in order, feeding the joined hash.
            ok = [check(by_path[rel], whole) for rel in a.parts]
            if all(ok):
                try:
                    check_joined_parts(a, whole.hexdigest())
                    rec.add("parts", "pass", f"artifact {a.name!r}: {len(a.parts)} parts joined")
                except GapferryError as e:
                    rec.error("parts", e)
    for f in manifest.files:
        if f.path not in rows:
            check(f)
    out = [rows[f.path] for f in manifest.files]
    try:
        check_no_unlisted(manifest.files, present)
    except GapferryError as e:
        out += [
            FileRow(
                path=rel,
                size=present[rel],
                sha256="-",
                status=_status_of(e),
                found=f"{e.code}: not listed in the manifest",
            )
            for rel in unlisted_files(manifest.files, present)
        ]
    return out


def _verify(
    raw: bytes,
    sigs: list[bytes],
    kind: Kind,
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
    rec: _Recorder,
) -> tuple[TrustResult | None, VerifiedTransfer | VerifiedResult | None, bool]:
    try:
        trust: TrustResult | None = evaluate(
            raw, sigs, policy=policy, namespace=namespace_for(kind), now=now, limits=limits
        )
    except InvalidData as e:
        rec.error("signatures", e)
        trust = None
    try:
        verified = verify_manifest(raw, sigs, kind=kind, policy=policy, now=now, limits=limits)
    except InvalidData as e:
        if e.code == "expired" and kind == "transfer" and trust is not None:
            # Expiry is the last step of verification: everything before it passed, so the
            # signed bytes may be decoded. Expiry is judged against the results (core.py).
            manifest = decode_manifest(raw, TransferManifest)
            verified = VerifiedTransfer(
                manifest=manifest, raw=raw, manifest_sha256=manifest_sha256(raw), trust=trust
            )
            return trust, verified, True
        rec.error("manifest", e)
        return trust, None, False
    return trust, verified, False


def _check_artifacts(
    root: Path, manifest: TransferManifest, artifact_key: bytes | None, limits: Limits
) -> list[ArtifactRow]:
    rows = []
    for a in manifest.artifacts:
        parts = len(a.parts) or 1
        if artifact_key is None:
            rows.append(
                ArtifactRow(
                    name=a.name,
                    sha256=a.sha256,
                    size=a.size,
                    parts=parts,
                    status="info",
                    signature="not checked (pass --artifact-key to verify it)",
                )
            )
            continue
        try:
            with ArtifactStream(root, a, limits) as stream:
                info = read_artifact(stream, verify_key=artifact_key, limits=limits)
        except GapferryError as e:
            rows.append(
                ArtifactRow(
                    name=a.name,
                    sha256=a.sha256,
                    size=a.size,
                    parts=parts,
                    status="fail",
                    signature=f"{e.code}: {e.message}",
                )
            )
            continue
        rows.append(
            ArtifactRow(
                name=a.name,
                sha256=a.sha256,
                size=a.size,
                parts=parts,
                status="pass" if info.signature_verified and info.name == a.name else "fail",
                signature=f"verified ({info.signature_key}); artifact_name {info.name!r}",
            )
        )
    return rows


class _Failed:
    """What `_attempt` returns when the step raised (the failure is recorded)."""


_FAILED = _Failed()


def _attempt(
    rec: _Recorder, name: str, step: Callable[[], T], *, passed: str | None = None
) -> T | _Failed:
    """Run one reader step; record its error (or, with `passed`, its success) as check `name`."""
    try:
        value = step()
    except GapferryError as e:
        rec.error(name, e)
        return _FAILED
    except OSError as e:
        rec.add(name, "fail", f"unreadable: {e.strerror or e}")
        return _FAILED
    if passed is not None:
        rec.add(name, "pass", passed)
    return value


def gather_bundle(
    path: Path,
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
    artifact_key: bytes | None = None,
    folder_checks: Sequence[Check] = (),
) -> BundleInput:
    """Read and check the bundle folder `path`, recording every finding.

    The steps are the bundle reader's (`gapferry.common.bundle.scan`, `.steps`), in the
    reader's order (SPEC 8): marker, layout, manifest, signatures, verification, folder name,
    marker binding, checksums, files, artifacts or logs. Where the reader stops, the audit goes
    on as long as what it needs was read. `folder_checks` come first (the single-file form's
    own checks, when the folder was extracted from a tar).

    Raises:
        UsageProblem: ``not-a-bundle`` when `path` is not a bundle folder.
    """
    root = Path(path)
    kind = bundle_kind(root)
    rec = _Recorder(root.name)
    rec.checks += folder_checks
    bound = _attempt(rec, "marker", lambda: read_marker(root))
    listing = _attempt(rec, "layout", lambda: _scan(root, kind, limits, rec))
    if isinstance(listing, _Failed):
        return BundleInput(folder=root.name, kind=kind, checks=rec.checks)
    raw = _attempt(rec, "manifest", lambda: read_manifest(root, limits))
    if isinstance(raw, _Failed):
        return BundleInput(folder=root.name, kind=kind, checks=rec.checks)
    sig_files = listing.signature_files
    sigs = _attempt(rec, "signatures", lambda: read_signatures(root, sig_files, limits))
    if isinstance(sigs, _Failed):
        return BundleInput(
            folder=root.name, kind=kind, checks=rec.checks, signature_files=sig_files
        )
    trust, verified, expired = _verify(
        raw, sigs, kind, policy=policy, now=now, limits=limits, rec=rec
    )
    if isinstance(bound, str):
        digest = manifest_sha256(raw)
        _attempt(
            rec,
            "marker",
            lambda: check_marker(root, bound, digest),
            passed=f"the completion marker binds manifest sha256 {digest}",
        )
    custody: CustodyFolder | None
    try:
        custody = read_custody_folder(root, limits=limits)
    except InvalidData as e:
        rec.error("custody", e)
        custody = None
    if verified is None:
        return BundleInput(
            folder=root.name,
            kind=kind,
            checks=rec.checks,
            signature_files=sig_files,
            trust=trust,
            custody=custody,
        )
    m = verified.manifest
    _attempt(
        rec,
        "name",
        lambda: check_folder_name(root, m),
        passed="the folder is named for its manifest (site, sequence, id)",
    )
    _attempt(
        rec,
        "checksums",
        lambda: check_checksums(root, m, limits),
        passed=f"{CHECKSUMS_NAME} matches the manifest ({len(m.files)} files)",
    )
    files = _check_files(root, verified, listing.content, rec)
    artifacts: list[ArtifactRow] = []
    logs: dict[str, list[LogLine]] = {}
    if isinstance(m, TransferManifest):
        if all(f.status == "pass" for f in files):
            artifacts = _check_artifacts(root, m, artifact_key, limits)
        else:
            artifacts = [
                ArtifactRow(
                    name=a.name,
                    sha256=a.sha256,
                    size=a.size,
                    parts=len(a.parts) or 1,
                    status="incomplete",
                    signature="not checked: the bundle's files did not verify",
                )
                for a in m.artifacts
            ]
    else:
        for d in m.devices:
            if d.log is None:
                continue
            try:
                logs[d.name] = read_log(root, d.log, limits)
            except GapferryError as e:
                rec.add("log", _status_of(e), f"{e.code}: device {d.name!r}: {e.message}")
    return BundleInput(
        folder=root.name,
        kind=kind,
        checks=rec.checks,
        signature_files=sig_files,
        trust=trust,
        verified=verified,
        expired=expired,
        files=files,
        artifacts=artifacts,
        logs=logs,
        custody=custody,
    )
