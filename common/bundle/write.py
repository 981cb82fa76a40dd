"""Write transfer and result bundles crash-safely (bundle_spec/SPEC.md section 7 "Writing order").

Content files first (each copied in one pass, read back from the medium, resumable), then
``SHA256SUMS``, ``manifest.json``, the signatures, and the completion marker ``COMPLETE`` last.
A bundle folder without ``COMPLETE`` is incomplete to every reader; running the same write again
(same bundle id) resumes it: content files already present and verified are not rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import zstandard
from gapferry.common.bundle.canonical import encode, manifest_sha256, render_sha256sums
from gapferry.common.bundle.layout import (
    ARTIFACTS_DIR,
    CHECKSUMS_NAME,
    FAT32_MAX_FILE_SIZE,
    LOGS_DIR,
    MANIFEST_NAME,
    MARKER_NAME,
    MEDIA_ROOT_DIR,
    Kind,
    artifact_part_path,
    artifact_path,
    bundle_dir_name,
    log_path,
    marker_bytes,
    namespace_for,
    signature_name,
)
from gapferry.common.bundle.model import (
    Actor,
    ArtifactEntry,
    ArtifactRef,
    Deployment,
    FileEntry,
    InventoryAttribute,
    LogLine,
    LogRef,
    Outcome,
    Receipt,
    ResultDevice,
    ResultManifest,
    StatusStep,
    TransferDevice,
    TransferManifest,
)
from gapferry.common.bundle.verify import check_result_consistency, check_transfer_consistency
from gapferry.common.digest import CHUNK, Progress, sha256_file
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS, Limits
from gapferry.common.media.fsinfo import check_fits
from gapferry.common.media.readback import drop_cache
from gapferry.common.media.write import copy_to_medium, discard_partials, is_verified
from gapferry.common.signers import Signer
from gapferry.common.streams import RangeReader, TeeReader

__all__ = [
    "DEFAULT_VALIDITY",
    "ArtifactSource",
    "ResultDevicePlan",
    "TransferDevicePlan",
    "default_actor",
    "utc_now",
    "write_result_bundle",
    "write_transfer_bundle",
]

#: How long a transfer bundle stays valid unless the caller says otherwise.
DEFAULT_VALIDITY = timedelta(days=30)

_SIG_RE = re.compile(r"^manifest\.json\.sig(\.[0-9]+)?$")


def utc_now() -> datetime:
    """Now, in UTC, to the second (manifests carry whole seconds)."""
    return datetime.now(tz=UTC).replace(microsecond=0)


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise UsageProblem(
            "times written into a bundle must carry a timezone",
            remedy="pass aware datetimes (datetime.now(tz=UTC))",
            code="naive-time",
        )
    return dt.astimezone(UTC).replace(microsecond=0)


def default_actor(name: str) -> Actor:
    """An `Actor` for this machine: `name`, the host name, and this gapferry's version."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        ver = version("gapferry")
    except PackageNotFoundError:  # pragma: no cover - running from a bare tree
        ver = "unknown"
    return Actor(name=name, host=socket.gethostname() or "unknown", software=f"gapferry {ver}")


@dataclass(frozen=True, kw_only=True)
class ArtifactSource:
    """A Mender Artifact file to carry. Pass `sha256` and `size` when known (from a cache or the
    server): the copy then reads the source once; otherwise it is hashed first."""

    path: Path
    #: The artifact_name in the artifact's header.
    name: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True, kw_only=True)
class TransferDevicePlan:
    """One device of a transfer bundle, before its artifact is stored (SPEC 4.2)."""

    name: str
    mender_device_id: str
    identity: dict[str, str]
    device_type: str
    current_artifact_name: str
    deployment: Deployment
    artifact: ArtifactSource


@dataclass(frozen=True, kw_only=True)
class ResultDevicePlan:
    """One device of a result bundle, with its log lines still in memory (SPEC 5.2)."""

    name: str
    mender_device_id: str
    deployment_id: str
    outcome: Outcome
    steps: Sequence[StatusStep]
    reason: str | None = None
    log: Sequence[LogLine] = ()
    inventory: Sequence[InventoryAttribute] = ()
    artifact_name_after: str | None = None


@dataclass
class _Stored:
    """Content files written so far (path -> entry)."""

    files: dict[str, FileEntry] = field(default_factory=dict)


def _prepare_dir(media_root: Path, name: str) -> Path:
    root = Path(media_root) / MEDIA_ROOT_DIR
    target = root / name
    if target.is_symlink() or root.is_symlink():
        raise UsageProblem(
            f"{target} is a symbolic link", remedy="remove it", code="target-is-link"
        )
    if (target / MARKER_NAME).exists():
        raise UsageProblem(
            f"bundle {target} is already complete",
            remedy="use a new bundle id and sequence, or remove the old bundle first",
            code="bundle-exists",
        )
    target.mkdir(parents=True, exist_ok=True)
    return target


def _write_small(path: Path, data: bytes) -> None:
    """Small files (manifest, sums, signatures, marker): written, renamed and read back."""
    copy_to_medium(io.BytesIO(data), path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _store_artifact(
    target: Path,
    src: ArtifactSource,
    *,
    max_file_size: int,
    stored: _Stored,
    progress: Progress | None,
    verify_progress: Progress | None,
) -> ArtifactEntry:
    """Store one artifact under its content hash, whole or in parts; resume what is there."""
    if src.sha256 is None or src.size is None:
        hashed = sha256_file(src.path)
        sha, size = hashed.sha256, hashed.size
    else:
        sha, size = src.sha256, src.size
    whole = artifact_path(sha)
    if size <= max_file_size:
        dst = target / whole
        if not is_verified(dst, sha256=sha, size=size, progress=verify_progress):
            with Path(src.path).open("rb", buffering=0) as f:
                copy_to_medium(
                    f,
                    dst,
                    size=size,
                    sha256=sha,
                    progress=progress,
                    verify_progress=verify_progress,
                )
        stored.files[whole] = FileEntry(path=whole, size=size, sha256=sha)
        return ArtifactEntry(sha256=sha, size=size, name=src.name, path=whole, parts=[])
    count = -(-size // max_file_size)
    overall = hashlib.sha256()
    parts: list[FileEntry] = []
    fd = os.open(src.path, os.O_RDONLY)
    try:
        for i in range(count):
            rel = artifact_part_path(sha, i)
            offset = i * max_file_size
            length = min(max_file_size, size - offset)
            dst = target / rel
            existing = _existing_part(dst, length, overall)
            if existing is not None:
                # Resume: the part on the medium fed the whole-artifact hash checked below.
                parts.append(FileEntry(path=rel, size=length, sha256=existing))
                continue
            result = copy_to_medium(
                TeeReader(RangeReader(fd, offset, length), overall),
                dst,
                size=length,
                progress=progress,
                verify_progress=verify_progress,
            )
            parts.append(FileEntry(path=rel, size=length, sha256=result.sha256))
    finally:
        os.close(fd)
    if overall.hexdigest() != sha:
        for p in parts:
            with contextlib.suppress(OSError):
                (target / p.path).unlink()
        raise InvalidData(
            f"artifact {src.path}: expected sha256 {sha}, the parts written add up to "
            f"{overall.hexdigest()}",
            remedy="the source changed while it was copied, or the announced hash is wrong; "
            "run again (a damaged part on the medium is written anew)",
            code="digest-mismatch",
        )
    for p in parts:
        stored.files[p.path] = p
    return ArtifactEntry(
        sha256=sha, size=size, name=src.name, path=whole, parts=[p.path for p in parts]
    )


def _existing_part(dst: Path, length: int, overall: Any) -> str | None:
    """Hash a part already on the medium with the right size (read back from the medium, its
    bytes also feed `overall`); None when there is none. The caller's whole-artifact check
    catches a damaged part."""
    try:
        if dst.is_symlink() or not dst.is_file() or dst.stat().st_size != length:
            return None
    except OSError:
        return None
    h = hashlib.sha256()
    fd = os.open(dst, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as f:
        drop_cache(f.fileno())
        buf = memoryview(bytearray(CHUNK))
        while n := f.readinto(buf):
            h.update(buf[:n])
            overall.update(buf[:n])
    return h.hexdigest()


def _remove_strays(folder: Path, keep: set[str], prefix: str) -> None:
    """Resume after a change of plan: drop content files this bundle no longer lists (they would
    be unexpected files to every reader)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        rel = f"{prefix}/{entry.name}"
        if rel not in keep and not entry.is_symlink() and entry.is_file():
            entry.unlink()


def _require_signers(signers: Sequence[Signer]) -> None:
    if not signers:
        raise UsageProblem(
            "a bundle needs at least one signer",
            remedy="pass --sign KEY (an OpenSSH private key, agent:KEY.pub, or a FIDO key)",
            code="unsigned",
        )


def _finish(
    target: Path, *, kind: Kind, raw: bytes, checksums: bytes, signers: Sequence[Signer]
) -> None:
    """SHA256SUMS, manifest, signatures, then the marker (SPEC 7)."""
    _require_signers(signers)
    for entry in target.iterdir():
        if _SIG_RE.match(entry.name):  # from an interrupted earlier attempt: stale
            entry.unlink()
    _write_small(target / CHECKSUMS_NAME, checksums)
    _write_small(target / MANIFEST_NAME, raw)
    ns = namespace_for(kind)
    for i, signer in enumerate(signers, start=1):
        _write_small(target / signature_name(i), signer.sign_sshsig(raw, ns))
    _write_small(target / MARKER_NAME, marker_bytes(manifest_sha256(raw)))


def write_transfer_bundle(
    media_root: Path,
    *,
    site: str,
    sequence: int,
    packer: Actor,
    devices: Sequence[TransferDevicePlan],
    signers: Sequence[Signer],
    bundle_id: str | None = None,
    created: datetime | None = None,
    expires: datetime | None = None,
    max_file_size: int = FAT32_MAX_FILE_SIZE,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
    verify_progress: Progress | None = None,
) -> Path:
    """Write a signed transfer bundle under ``<media_root>/gapferry/`` and return its folder.

    Each distinct artifact is stored once by content hash; artifacts larger than
    `max_file_size` (default 4 GiB - 1, FAT32's limit, so the bundle stays portable) are split.
    Every file is read back from the medium (page cache dropped) and checked before the
    completion marker is written; `progress` counts bytes written, `verify_progress` bytes read
    back. Pass the same `bundle_id` to resume an interrupted write.

    Raises:
        UsageProblem: ``bundle-exists``, ``unsigned``, ``naive-time``, ``bad-bundle-name``.
        EnvironmentFailure: media codes (``media-full``, ``media-read-only``, ...).
        InvalidData: ``digest-mismatch``/``size-mismatch`` (a source differs from what was
            announced), ``readback-mismatch``, ``malformed-manifest`` (a field out of range).
    """
    _require_signers(signers)
    if not devices:
        raise UsageProblem(
            "a transfer bundle needs at least one device",
            remedy="select devices with a pending deployment",
            code="no-devices",
        )
    bundle_id = bundle_id or str(uuid.uuid4())
    created = _utc(created) if created else utc_now()
    expires = _utc(expires) if expires else created + DEFAULT_VALIDITY
    if max_file_size < 1:
        raise UsageProblem("max_file_size must be positive", remedy="", code="bad-option")
    name = bundle_dir_name("transfer", site=site, sequence=sequence, bundle_id=bundle_id)
    sources: dict[Path, ArtifactSource] = {}
    for d in devices:
        sources.setdefault(Path(d.artifact.path), d.artifact)
    target = _prepare_dir(media_root, name)
    (target / ARTIFACTS_DIR).mkdir(exist_ok=True)
    for folder in (target, target / ARTIFACTS_DIR):
        discard_partials(folder)
    needed = sum(
        (s.size if s.size is not None else s.path.stat().st_size) for s in sources.values()
    )
    present = sum(
        e.stat().st_size for e in (target / ARTIFACTS_DIR).iterdir() if e.is_file()
    )  # resume: what is there already is mostly kept
    medium = check_fits(target, max(0, needed - present), files=len(sources) + 8)
    if medium.max_file_size is not None:
        max_file_size = min(max_file_size, medium.max_file_size)
    stored = _Stored()
    entries: dict[Path, ArtifactEntry] = {}
    for path, src in sources.items():
        entries[path] = _store_artifact(
            target,
            src,
            max_file_size=max_file_size,
            stored=stored,
            progress=progress,
            verify_progress=verify_progress,
        )
    _remove_strays(target / ARTIFACTS_DIR, set(stored.files), ARTIFACTS_DIR)
    artifacts = {e.sha256: e for e in entries.values()}
    wire_devices = []
    for d in devices:
        e = entries[Path(d.artifact.path)]
        wire_devices.append(
            TransferDevice(
                name=d.name,
                mender_device_id=d.mender_device_id,
                identity=dict(d.identity),
                device_type=d.device_type,
                current_artifact_name=d.current_artifact_name,
                deployment=d.deployment,
                artifact=ArtifactRef(name=e.name, size=e.size, sha256=e.sha256, path=e.path),
            )
        )
    files = sorted(stored.files.values(), key=lambda f: f.path)
    checksums = render_sha256sums(files)
    manifest = TransferManifest(
        format_version=1,
        kind="transfer",
        bundle_id=bundle_id,
        site=site,
        sequence=sequence,
        created=created,
        expires=expires,
        packer=packer,
        devices=wire_devices,
        artifacts=sorted(artifacts.values(), key=lambda a: a.sha256),
        files=files,
        checksums_sha256=hashlib.sha256(checksums).hexdigest(),
    )
    raw = _validated(manifest, TransferManifest, limits)
    _finish(target, kind="transfer", raw=raw, checksums=checksums, signers=signers)
    return target


def _validated(manifest: TransferManifest | ResultManifest, type_: type, limits: Limits) -> bytes:
    """Encode, decode once more and check consistency, so a writer can never produce what
    readers refuse (SPEC 4.3, 5.5)."""
    raw = encode(manifest)
    try:
        msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as e:
        raise InvalidData(
            f"cannot write this manifest: {e}",
            remedy="check the names and values given to the writer",
            code="malformed-manifest",
        ) from e
    if isinstance(manifest, TransferManifest):
        check_transfer_consistency(manifest, limits)
    else:
        check_result_consistency(manifest, limits)
    if len(raw) > limits.manifest_bytes:
        raise InvalidData(
            f"the manifest would be {len(raw)} bytes, more than {limits.manifest_bytes}",
            remedy="split the devices over several bundles",
            code="manifest-too-large",
        )
    return raw


def _log_bytes(lines: Sequence[LogLine], limits: Limits) -> tuple[bytes, int]:
    """JSON Lines, keeping the last lines that fit the limits (SPEC 5.3)."""
    kept: list[bytes] = []
    total = 0
    for line in reversed(lines):
        data = msgspec.json.encode(line)
        if len(data) + 1 > limits.log_line_bytes:
            cut = limits.log_line_bytes - 200
            short = LogLine(
                timestamp=line.timestamp,
                level=line.level,
                message=line.message.encode()[:cut].decode("utf-8", "ignore") + " [cut]",
            )
            data = msgspec.json.encode(short)
        if len(kept) >= limits.log_lines or total + len(data) + 1 > limits.log_bytes:
            break
        kept.append(data)
        total += len(data) + 1
    kept.reverse()
    return b"".join(d + b"\n" for d in kept), len(kept)


def write_result_bundle(
    media_root: Path,
    *,
    site: str,
    sequence: int,
    receipt: Receipt,
    applier: Actor,
    started: datetime,
    finished: datetime,
    devices: Sequence[ResultDevicePlan],
    signers: Sequence[Signer],
    result_id: str | None = None,
    created: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Path:
    """Write a signed result bundle under ``<media_root>/gapferry/`` and return its folder.

    Each device's log is stored zstd-compressed as ``logs/<sha256>.log.zst`` (the last lines
    that fit `limits`).

    Raises:
        As `write_transfer_bundle`.
    """
    _require_signers(signers)
    result_id = result_id or str(uuid.uuid4())
    created = _utc(created) if created else utc_now()
    name = bundle_dir_name("result", site=site, sequence=sequence, bundle_id=result_id)
    target = _prepare_dir(media_root, name)
    (target / LOGS_DIR).mkdir(exist_ok=True)
    for folder in (target, target / LOGS_DIR):
        discard_partials(folder)
    stored = _Stored()
    cctx = zstandard.ZstdCompressor(level=19, write_content_size=True)
    wire_devices = []
    for d in devices:
        ref = None
        if d.log:
            plain, count = _log_bytes(d.log, limits)
            packed = cctx.compress(plain)
            sha = hashlib.sha256(packed).hexdigest()
            rel = log_path(sha)
            if not is_verified(target / rel, sha256=sha, size=len(packed)):
                _write_small(target / rel, packed)
            stored.files[rel] = FileEntry(path=rel, size=len(packed), sha256=sha)
            ref = LogRef(
                path=rel, size=len(packed), sha256=sha, decompressed_size=len(plain), lines=count
            )
        wire_devices.append(
            ResultDevice(
                name=d.name,
                mender_device_id=d.mender_device_id,
                deployment_id=d.deployment_id,
                outcome=d.outcome,
                reason=d.reason,
                steps=[
                    StatusStep(status=s.status, at=_utc(s.at), substate=s.substate) for s in d.steps
                ],
                log=ref,
                inventory=list(d.inventory),
                artifact_name_after=d.artifact_name_after,
            )
        )
    _remove_strays(target / LOGS_DIR, set(stored.files), LOGS_DIR)
    if not stored.files:
        with contextlib.suppress(OSError):
            (target / LOGS_DIR).rmdir()
    files = sorted(stored.files.values(), key=lambda f: f.path)
    checksums = render_sha256sums(files)
    manifest = ResultManifest(
        format_version=1,
        kind="result",
        result_id=result_id,
        site=site,
        sequence=sequence,
        receipt=receipt,
        applier=applier,
        started=_utc(started),
        finished=_utc(finished),
        created=created,
        devices=wire_devices,
        files=files,
        checksums_sha256=hashlib.sha256(checksums).hexdigest(),
    )
    raw = _validated(manifest, ResultManifest, limits)
    _finish(target, kind="result", raw=raw, checksums=checksums, signers=signers)
    return target
