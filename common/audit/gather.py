"""Read one bundle folder for an audit: every check the reader makes, recorded instead of raised
(the I/O shell of `gapferry audit`; bundle_spec/VERIFYING.md sections 2-6).

Unlike `gapferry.common.bundle.open_bundle`, which stops at the first problem, this reader keeps
going where that is safe and records each finding as a `Check`, so that the report lists every
check and its outcome. The safety rules are the same: no links, no devices, no hard links, sizes
within `Limits`, signatures verified (by the pure core `verify_*_manifest`) before the manifest is
decoded. The ``custody/`` folder is read with `read_custody_folder`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from gapferry.common.artifact.reader import read_artifact
from gapferry.common.audit.custody import CUSTODY_DIR, CustodyFolder, read_custody_folder
from gapferry.common.audit.model import ArtifactRow, Check, FileRow, Status
from gapferry.common.bundle.canonical import decode_manifest, manifest_sha256, render_sha256sums
from gapferry.common.bundle.layout import (
    ARTIFACTS_DIR,
    CHECKSUMS_NAME,
    LOGS_DIR,
    MANIFEST_NAME,
    MARKER_NAME,
    Kind,
    is_ignored_name,
    kind_of_dir_name,
    namespace_for,
    parse_marker,
    signature_name,
)
from gapferry.common.bundle.model import LogLine, TransferManifest
from gapferry.common.bundle.read import ArtifactStream, OpenedBundle
from gapferry.common.bundle.verify import (
    VerifiedResult,
    VerifiedTransfer,
    verify_result_manifest,
    verify_transfer_manifest,
)
from gapferry.common.digest import CHUNK
from gapferry.common.errors import GapferryError, IncompleteBundle, InvalidData, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.safepath import checked_relpath, open_regular
from gapferry.common.trust import TrustPolicy, TrustResult, evaluate

__all__ = ["BundleInput", "gather_bundle"]

_MARKER_MAX = 256


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
        status: Status = "incomplete" if isinstance(err, IncompleteBundle) else "fail"
        self.add(name, status, f"{err.code}: {err.message}")


def _read_small(root: Path, rel: str, limit: int) -> bytes | None:
    """At most `limit` bytes of a regular file (None when absent).

    Raises:
        InvalidData: ``too-large`` beyond `limit`; ``bad-path`` for links and special files.
    """
    try:
        fd = open_regular(root, PurePosixPath(rel))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidData(
            f"{rel} is larger than the limit of {limit} bytes",
            remedy="do not use this bundle",
            code="too-large",
        )
    return data


def _scan(root: Path, kind: Kind, limits: Limits, rec: _Recorder) -> tuple[dict[str, int], int]:
    """Content files (path -> size) and the number of signature files; unsafe and unexpected
    entries are recorded as failed checks."""
    fixed = {MANIFEST_NAME, CHECKSUMS_NAME, MARKER_NAME}
    sig_names = {signature_name(i) for i in range(1, limits.signatures + 1)}
    subdir = ARTIFACTS_DIR if kind == "transfer" else LOGS_DIR
    budget = limits.files + limits.signatures + 16
    content: dict[str, int] = {}
    sigs = 0
    problems: list[str] = []

    def listing(folder: Path) -> list[os.DirEntry[str]]:
        found: list[os.DirEntry[str]] = []
        with os.scandir(folder) as it:
            for e in it:
                found.append(e)
                if len(found) > budget:
                    raise InvalidData(
                        f"{folder.name} holds more than {budget} entries",
                        remedy="do not use this bundle",
                        code="too-many-files",
                    )
        return sorted(found, key=lambda e: e.name)

    def skip(name: str) -> bool:
        return is_ignored_name(name) or (name.startswith(".") and name.endswith(".part"))

    for e in listing(root):
        if skip(e.name):
            continue
        st = e.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            problems.append(f"{e.name} is a symbolic link")
        elif stat.S_ISDIR(st.st_mode) and e.name == CUSTODY_DIR:
            continue  # read by read_custody_folder
        elif stat.S_ISDIR(st.st_mode) and e.name == subdir:
            for sub in listing(Path(e.path)):
                rel = f"{subdir}/{sub.name}"
                if skip(sub.name):
                    continue
                sst = sub.stat(follow_symlinks=False)
                if not stat.S_ISREG(sst.st_mode) or sst.st_nlink > 1:
                    problems.append(f"{rel} is a link, a hard link or not a regular file")
                else:
                    content[rel] = sst.st_size
        elif not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            problems.append(f"{e.name} is a link, a hard link or not a regular file")
        elif e.name in sig_names:
            sigs += 1
        elif e.name not in fixed:
            problems.append(f"unexpected file {e.name}")
    if problems:
        rec.add("layout", "fail", "; ".join(problems))
    else:
        rec.add("layout", "pass", "only the files the format allows; no links or special files")
    return content, sigs


def _hash(root: Path, rel: str, size: int) -> tuple[int, str]:
    """Size read (at most `size` + 1) and sha256 of a content file."""
    fd = open_regular(root, checked_relpath(rel))
    h = hashlib.sha256()
    total = 0
    view = memoryview(bytearray(CHUNK))
    with os.fdopen(fd, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
            if total > size:
                break
            h.update(view[:n])
    return total, h.hexdigest()


def _check_files(
    root: Path, verified: VerifiedTransfer | VerifiedResult, present: dict[str, int]
) -> list[FileRow]:
    rows: list[FileRow] = []
    listed = {f.path for f in verified.manifest.files}
    for f in verified.manifest.files:
        if f.path not in present:
            rows.append(
                FileRow(
                    path=f.path, size=f.size, sha256=f.sha256, status="incomplete", found="missing"
                )
            )
            continue
        try:
            size, digest = _hash(root, f.path, f.size)
        except InvalidData as e:
            rows.append(
                FileRow(path=f.path, size=f.size, sha256=f.sha256, status="fail", found=e.message)
            )
            continue
        if size < f.size:
            found, status = f"{size} bytes (truncated)", "incomplete"
        elif size > f.size:
            found, status = f"more than {f.size} bytes", "fail"
        elif digest != f.sha256:
            found, status = f"sha256 {digest}", "fail"
        else:
            found, status = None, "pass"
        rows.append(
            FileRow(path=f.path, size=f.size, sha256=f.sha256, status=status, found=found)  # type: ignore[arg-type]
        )
    for rel in sorted(set(present) - listed):
        rows.append(
            FileRow(
                path=rel,
                size=present[rel],
                sha256="-",
                status="fail",
                found="not listed in the manifest",
            )
        )
    return rows


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
        if kind == "transfer":
            return (
                trust,
                verify_transfer_manifest(raw, sigs, policy=policy, now=now, limits=limits),
                False,
            )
        return (
            trust,
            verify_result_manifest(raw, sigs, policy=policy, now=now, limits=limits),
            False,
        )
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


def _check_artifacts(
    opened: OpenedBundle, manifest: TransferManifest, artifact_key: bytes | None, limits: Limits
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
            with ArtifactStream(opened.path, a, limits) as stream:
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


def gather_bundle(
    path: Path,
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
    artifact_key: bytes | None = None,
) -> BundleInput:
    """Read and check the bundle folder `path`, recording every finding.

    Raises:
        UsageProblem: ``not-a-bundle`` when `path` is not a bundle folder.
    """
    root = Path(path)
    kind = kind_of_dir_name(root.name)
    if kind is None or root.is_symlink() or not root.is_dir():
        raise UsageProblem(
            f"{root} is not a bundle folder (transfer-... or result-...)",
            remedy="pass bundle folders (gapferry/transfer-... and gapferry/result-...)",
            code="not-a-bundle",
        )
    rec = _Recorder(root.name)
    try:
        present, _ = _scan(root, kind, limits, rec)
        marker = _read_small(root, MARKER_NAME, _MARKER_MAX)
        raw = _read_small(root, MANIFEST_NAME, limits.manifest_bytes)
        sig_files: list[str] = []
        sigs: list[bytes] = []
        for i in range(1, limits.signatures + 1):
            data = _read_small(root, signature_name(i), limits.signature_bytes)
            if data is not None:
                sig_files.append(signature_name(i))
                sigs.append(data)
        sums = _read_small(root, CHECKSUMS_NAME, 64 + (limits.files + 1) * 600)
    except (InvalidData, OSError) as e:
        err = e if isinstance(e, InvalidData) else InvalidData(str(e), remedy="", code="unreadable")
        rec.error("readable", err)
        return BundleInput(folder=root.name, kind=kind, checks=rec.checks)
    bound = parse_marker(marker) if marker is not None else None
    if raw is None:
        rec.add("manifest", "incomplete", f"{MANIFEST_NAME} is missing")
        return BundleInput(folder=root.name, kind=kind, checks=rec.checks)
    trust, verified, expired = _verify(
        raw, sigs, kind, policy=policy, now=now, limits=limits, rec=rec
    )
    digest = manifest_sha256(raw)
    if marker is None:
        rec.add("marker", "incomplete", f"no completion marker ({MARKER_NAME})")
    elif bound is None:
        rec.add("marker", "incomplete", "the completion marker is malformed")
    elif bound != digest:
        rec.add("marker", "fail", f"the marker binds manifest sha256 {bound}, not {digest}")
    else:
        rec.add("marker", "pass", f"the completion marker binds manifest sha256 {digest}")
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
            signature_files=tuple(sig_files),
            trust=trust,
            custody=custody,
        )
    m = verified.manifest
    if sums is None:
        rec.add("checksums", "incomplete", f"{CHECKSUMS_NAME} is missing")
    elif hashlib.sha256(sums).hexdigest() != m.checksums_sha256:
        rec.add("checksums", "fail", f"{CHECKSUMS_NAME}: sha256 differs from checksums_sha256")
    elif sums != render_sha256sums(m.files):
        rec.add("checksums", "fail", f"{CHECKSUMS_NAME} does not list exactly the manifest's files")
    else:
        rec.add(
            "checksums", "pass", f"{CHECKSUMS_NAME} matches the manifest ({len(m.files)} files)"
        )
    files = _check_files(root, verified, present)
    opened = OpenedBundle(
        path=root,
        kind=kind,
        verified=verified,
        signature_files=tuple(sig_files),
        files=(),
        ignored=(),
        limits=limits,
    )
    artifacts: list[ArtifactRow] = []
    logs: dict[str, list[LogLine]] = {}
    files_ok = all(f.status == "pass" for f in files)
    if isinstance(verified, VerifiedTransfer):
        if files_ok:
            artifacts = _check_artifacts(opened, verified.manifest, artifact_key, limits)
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
                for a in verified.manifest.artifacts
            ]
    else:
        for d in verified.manifest.devices:
            if d.log is None:
                continue
            try:
                logs[d.name] = opened.read_log(d.name)
            except InvalidData as e:
                rec.error(
                    "log",
                    InvalidData(f"device {d.name!r}: {e.message}", remedy=e.remedy, code=e.code),
                )
    return BundleInput(
        folder=root.name,
        kind=kind,
        checks=rec.checks,
        signature_files=tuple(sig_files),
        trust=trust,
        verified=verified,
        expired=expired,
        files=files,
        artifacts=artifacts,
        logs=logs,
        custody=custody,
    )
