"""The pure verification core: manifest bytes + signatures + policy + time -> verified manifest.

No disk, no network (STYLE practice 1). Order (bundle_spec/SPEC.md section 8 "Verification"):

1. sizes of the manifest and the signatures against `Limits`;
2. every signature against the trust policy, over the exact bytes, in the kind's namespace,
   BEFORE the bytes are decoded (practice 2); every attached signature must be good, and the
   threshold of distinct trusted keys must be met;
3. format version and kind, then the full decode (unknown fields refused, ADR 0004);
4. internal consistency (SPEC 4.3 / 5.5);
5. the clock and expiry (SPEC 4.4).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gapferry.common.bundle.canonical import decode_manifest, manifest_sha256, peek_header
from gapferry.common.bundle.layout import (
    ARTIFACTS_DIR,
    Kind,
    artifact_part_path,
    artifact_path,
    log_path,
    namespace_for,
)
from gapferry.common.bundle.model import (
    FORMAT_VERSION,
    FileEntry,
    InventoryAttribute,
    ResultManifest,
    TransferManifest,
)
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.safepath import checked_relpath
from gapferry.common.trust import TrustFailure, TrustPolicy, TrustResult, evaluate, require

__all__ = [
    "CLOCK_TOLERANCE",
    "VerifiedResult",
    "VerifiedTransfer",
    "check_not_replayed",
    "check_result_consistency",
    "check_transfer_consistency",
    "trust_before_failure",
    "verify_result_manifest",
    "verify_transfer_manifest",
]

#: How far the verifying machine's clock may be behind the writer's before it is called wrong.
CLOCK_TOLERANCE = timedelta(minutes=10)

#: Attribute on an error raised after every signature was accepted: the `TrustResult`, so that
#: a report can still say who signed (read it with `trust_before_failure`).
_TRUST_ATTR = "trust_before_failure"

_PORTABLE = re.compile(r"^[A-Za-z0-9._/-]+$")
_REMEDY_REPLACE = "do not use this bundle; ask the sender for a new one"


@dataclass(frozen=True, kw_only=True)
class VerifiedTransfer:
    """A transfer manifest whose signatures, shape and consistency were checked."""

    manifest: TransferManifest
    #: The manifest bytes exactly as signed.
    raw: bytes
    #: sha256 of `raw`: what the completion marker and a result's receipt bind.
    manifest_sha256: str
    trust: TrustResult


@dataclass(frozen=True, kw_only=True)
class VerifiedResult:
    """A result manifest whose signatures, shape and consistency were checked."""

    manifest: ResultManifest
    raw: bytes
    manifest_sha256: str
    trust: TrustResult


def _inconsistent(what: str) -> InvalidData:
    return InvalidData(
        f"manifest is inconsistent: {what}",
        remedy="the signer's software is buggy or the signer is hostile; " + _REMEDY_REPLACE,
        code="inconsistent-manifest",
    )


def _check_signatures(
    raw: bytes,
    signatures: Sequence[bytes],
    *,
    kind: Kind,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
) -> TrustResult:
    if now.tzinfo is None or now.utcoffset() is None:
        raise UsageProblem(
            "the reference time must carry a timezone",
            remedy="pass datetime.now(tz=UTC)",
            code="naive-time",
        )
    if len(raw) > limits.manifest_bytes:
        raise InvalidData(
            f"manifest.json is {len(raw)} bytes, more than the limit of {limits.manifest_bytes}",
            remedy="split the work into several bundles; " + _REMEDY_REPLACE,
            code="manifest-too-large",
        )
    for i, sig in enumerate(signatures):
        if len(sig) > limits.signature_bytes:
            raise InvalidData(
                f"signature #{i} is {len(sig)} bytes, more than the limit of "
                f"{limits.signature_bytes}",
                remedy=_REMEDY_REPLACE,
                code="bad-signature",
            )
    result = evaluate(
        raw, signatures, policy=policy, namespace=namespace_for(kind), now=now, limits=limits
    )
    # Every attached signature must be good (SPEC 6.4): a bad one means someone altered the bundle.
    for check in result.checks:
        if not check.ok:
            code = "bad-signature" if check.reason == "bad-signature-format" else check.reason
            raise TrustFailure(
                f"signature #{check.index} does not verify: {check.describe()}",
                remedy="every attached signature must be by a trusted key; "
                "remove signatures you do not trust only if you know why they are there, "
                "otherwise " + _REMEDY_REPLACE,
                code=code or "bad-signature",
                result=result,
            )
    require(result)
    return result


def trust_before_failure(err: BaseException) -> TrustResult | None:
    """The signatures' verdict when `err` was raised after they were all accepted (a manifest
    that is expired, malformed, inconsistent, ...), else None: lets a report show what was
    verified before the failure (SPEC 8, steps 5-6)."""
    found = getattr(err, _TRUST_ATTR, None)
    return found if isinstance(found, TrustResult) else None


def _check_header(raw: bytes, kind: Kind) -> None:
    version, found_kind = peek_header(raw)
    if version != FORMAT_VERSION:
        raise InvalidData(
            f"bundle format version {version}; this gapferry reads version {FORMAT_VERSION}",
            remedy="use the gapferry version that wrote the bundle, or a newer one"
            if version > FORMAT_VERSION
            else _REMEDY_REPLACE,
            code="unsupported-version",
        )
    if found_kind != kind:
        raise InvalidData(
            f"expected a {kind} manifest, found kind {found_kind!r}",
            remedy=_REMEDY_REPLACE,
            code="wrong-kind",
        )


def _check_clock(created: datetime, now: datetime, *, what: str) -> None:
    if now + CLOCK_TOLERANCE < created:
        raise InvalidData(
            f"this {what} was created at {created.isoformat()}, but this computer's clock says "
            f"{now.isoformat()}: the clock is probably wrong",
            remedy="set this computer's date and time correctly (UTC), then verify again",
            code="clock-wrong",
        )


def _check_expiry(expires: datetime, now: datetime) -> None:
    if now >= expires:
        raise InvalidData(
            f"this transfer bundle expired at {expires.isoformat()} (now {now.isoformat()})",
            remedy="ask the operator for a fresh bundle; if the clock is wrong, set it and retry",
            code="expired",
        )


def _unique(values: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise _inconsistent(f"{what} {v!r} appears more than once")
        seen.add(v)


def _check_files(files: Sequence[FileEntry], limits: Limits) -> dict[str, FileEntry]:
    if len(files) > limits.files:
        raise _inconsistent(f"{len(files)} files listed, more than the limit of {limits.files}")
    paths = [f.path for f in files]
    _unique(paths, "file path")
    if paths != sorted(paths):
        raise _inconsistent("files are not sorted by path")
    for p in paths:
        try:
            checked_relpath(p, limits=limits)
        except InvalidData as e:
            raise InvalidData(
                f"manifest lists the file {p!r}: {e.message}", remedy=e.remedy, code=e.code
            ) from e
        if not _PORTABLE.match(p):
            raise InvalidData(
                f"manifest lists the file {p!r}: only A-Z a-z 0-9 . - _ and / are allowed",
                remedy=_REMEDY_REPLACE,
                code="bad-path",
            )
    return {f.path: f for f in files}


def check_transfer_consistency(m: TransferManifest, limits: Limits) -> None:
    """SPEC 4.3. Raises `InvalidData` (``inconsistent-manifest``, ``bad-path``)."""
    if len(m.devices) > limits.devices:
        raise _inconsistent(f"{len(m.devices)} devices, more than the limit of {limits.devices}")
    if not m.devices:
        raise _inconsistent("no devices")
    if len(m.artifacts) > limits.artifacts:
        raise _inconsistent(f"{len(m.artifacts)} artifacts, more than {limits.artifacts}")
    if m.expires <= m.created:
        raise _inconsistent("expires is not after created")
    _unique([d.name for d in m.devices], "device name")
    _unique([d.mender_device_id for d in m.devices], "Mender device id")
    _unique([a.sha256 for a in m.artifacts], "artifact sha256")
    files = _check_files(m.files, limits)
    used: set[str] = set()
    for a in m.artifacts:
        if a.path != artifact_path(a.sha256):
            raise _inconsistent(f"artifact {a.sha256} has path {a.path!r}")
        if a.size > limits.artifact_bytes:
            raise _inconsistent(f"artifact {a.name!r} is larger than {limits.artifact_bytes}")
        stored = [a.path] if not a.parts else a.parts
        if a.parts:
            expected = [artifact_part_path(a.sha256, i) for i in range(len(a.parts))]
            if a.parts != expected or len(a.parts) < 2:
                raise _inconsistent(f"artifact {a.sha256} has parts {a.parts!r}")
        for p in stored:
            if p not in files:
                raise _inconsistent(f"{p} is not listed in files")
            used.add(p)
        sizes = [files[p].size for p in stored]
        if a.parts and (len(set(sizes[:-1])) != 1 or not 0 < sizes[-1] <= sizes[0]):
            raise _inconsistent(f"the parts of artifact {a.sha256} are not of one size")
        if sum(sizes) != a.size:
            raise _inconsistent(f"the parts of artifact {a.sha256} do not add up to {a.size}")
        if len(stored) == 1 and files[stored[0]].sha256 != a.sha256:
            raise _inconsistent(f"{a.path}: file sha256 differs from the artifact's")
    extra = sorted(set(files) - used)
    if extra:
        raise _inconsistent(f"files listed but not used by any artifact: {', '.join(extra)}")
    by_sha = {a.sha256: a for a in m.artifacts}
    referenced: set[str] = set()
    for d in m.devices:
        if len(d.identity) > limits.inventory_attributes:
            raise _inconsistent(f"device {d.name!r} has too many identity attributes")
        ref = d.artifact
        entry = by_sha.get(ref.sha256)
        if entry is None:
            raise _inconsistent(f"device {d.name!r} needs artifact {ref.sha256}, not listed")
        if (ref.name, ref.size, ref.path) != (entry.name, entry.size, entry.path):
            raise _inconsistent(f"device {d.name!r}: artifact reference differs from the entry")
        referenced.add(ref.sha256)
    unused = sorted(set(by_sha) - referenced)
    if unused:
        raise _inconsistent(f"artifacts no device needs: {', '.join(unused)}")


def _check_inventory(device: str, attrs: Sequence[InventoryAttribute], limits: Limits) -> None:
    if len(attrs) > limits.inventory_attributes:
        raise _inconsistent(f"device {device!r} reports more than {limits.inventory_attributes}")
    _unique([a.name for a in attrs], f"device {device!r} inventory attribute")
    for a in attrs:
        v = a.value
        if isinstance(v, list):
            kinds = {"string" if isinstance(x, str) else "number" for x in v}
            if len(kinds) > 1:
                raise _inconsistent(
                    f"device {device!r} attribute {a.name!r}: an array must hold only strings "
                    "or only numbers (Mender's rule)"
                )
            size = sum(len(str(x)) for x in v)
        else:
            size = len(str(v))
        if size > limits.inventory_value_bytes:
            raise _inconsistent(f"device {device!r} attribute {a.name!r} is too large")


_FINAL_STEP = {"success": "success", "failure": "failure", "already-installed": "already-installed"}


def check_result_consistency(m: ResultManifest, limits: Limits) -> None:
    """SPEC 5.5. Raises `InvalidData` (``inconsistent-manifest``, ``bad-path``,
    ``log-too-large``)."""
    if len(m.devices) > limits.devices:
        raise _inconsistent(f"{len(m.devices)} devices, more than the limit of {limits.devices}")
    if not m.started <= m.finished <= m.created:
        raise _inconsistent("times are not in the order started <= finished <= created")
    _unique([d.name for d in m.devices], "device name")
    _unique([d.mender_device_id for d in m.devices], "Mender device id")
    files = _check_files(m.files, limits)
    used: set[str] = set()
    for d in m.devices:
        if len(d.steps) > limits.status_steps:
            raise _inconsistent(f"device {d.name!r} has more than {limits.status_steps} steps")
        times = [s.at for s in d.steps]
        if times != sorted(times):
            raise _inconsistent(f"device {d.name!r}: steps are not in time order")
        if d.outcome == "skipped":
            if d.reason is None:
                raise _inconsistent(f"device {d.name!r} was skipped without a reason")
        elif not d.steps or d.steps[-1].status != _FINAL_STEP[d.outcome]:
            raise _inconsistent(f"device {d.name!r}: last step does not match {d.outcome!r}")
        _check_inventory(d.name, d.inventory, limits)
        if d.log is not None:
            log = d.log
            if log.path != log_path(log.sha256):
                raise _inconsistent(f"device {d.name!r}: log path {log.path!r}")
            f = files.get(log.path)
            if f is None or (f.size, f.sha256) != (log.size, log.sha256):
                raise _inconsistent(f"device {d.name!r}: log {log.path} not listed as such")
            if log.decompressed_size > limits.log_bytes:
                raise InvalidData(
                    f"device {d.name!r}: log declares {log.decompressed_size} bytes, more than "
                    f"the limit of {limits.log_bytes}",
                    remedy=_REMEDY_REPLACE,
                    code="log-too-large",
                )
            if log.lines > limits.log_lines:
                raise InvalidData(
                    f"device {d.name!r}: log has {log.lines} lines, more than {limits.log_lines}",
                    remedy=_REMEDY_REPLACE,
                    code="log-too-large",
                )
            used.add(log.path)
    extra = sorted(set(files) - used)
    if extra:
        raise _inconsistent(f"files listed but not used: {', '.join(extra)}")
    if any(p.startswith(ARTIFACTS_DIR + "/") for p in files):
        raise _inconsistent("a result bundle carries no artifacts")


def verify_transfer_manifest(
    raw: bytes,
    signatures: Sequence[bytes],
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
) -> VerifiedTransfer:
    """Verify a transfer manifest (SPEC 8, steps 1-5). An error raised after the signatures
    were accepted carries their verdict (`trust_before_failure`).

    Raises:
        InvalidData: ``manifest-too-large``; trust codes ``unsigned``, ``bad-signature``,
            ``untrusted-signer``, ``wrong-namespace``, ``outside-validity``,
            ``below-threshold``, ``too-many-signatures``; ``unsupported-version``,
            ``wrong-kind``, ``malformed-manifest``, ``inconsistent-manifest``, ``bad-path``,
            ``clock-wrong``, ``expired``.
        UsageProblem: ``naive-time``.
    """
    trust = _check_signatures(
        raw, signatures, kind="transfer", policy=policy, now=now, limits=limits
    )
    try:
        _check_header(raw, "transfer")
        m = decode_manifest(raw, TransferManifest)
        check_transfer_consistency(m, limits)
        _check_clock(m.created, now, what="transfer bundle")
        _check_expiry(m.expires, now)
    except InvalidData as err:
        setattr(err, _TRUST_ATTR, trust)
        raise
    return VerifiedTransfer(manifest=m, raw=raw, manifest_sha256=manifest_sha256(raw), trust=trust)


def verify_result_manifest(
    raw: bytes,
    signatures: Sequence[bytes],
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
) -> VerifiedResult:
    """Verify a result manifest (SPEC 8). Results do not expire.

    Raises:
        InvalidData: as `verify_transfer_manifest`, except ``expired``; also ``log-too-large``.
        UsageProblem: ``naive-time``.
    """
    trust = _check_signatures(raw, signatures, kind="result", policy=policy, now=now, limits=limits)
    try:
        _check_header(raw, "result")
        m = decode_manifest(raw, ResultManifest)
        check_result_consistency(m, limits)
        _check_clock(m.created, now, what="result bundle")
    except InvalidData as err:
        setattr(err, _TRUST_ATTR, trust)
        raise
    return VerifiedResult(manifest=m, raw=raw, manifest_sha256=manifest_sha256(raw), trust=trust)


def check_not_replayed(manifest: TransferManifest, *, last_sequence: int | None) -> None:
    """Refuse a transfer bundle whose sequence is not above the last one applied for its site.

    The applier keeps `last_sequence` per site (SPEC 4.4); this is the comparison.

    Raises:
        InvalidData: ``replayed``.
    """
    if last_sequence is not None and manifest.sequence <= last_sequence:
        raise InvalidData(
            f"transfer bundle sequence {manifest.sequence} for site {manifest.site!r} is not "
            f"newer than the last one applied ({last_sequence}): an old bundle replayed",
            remedy="use the newest bundle the operator packed for this site",
            code="replayed",
        )
