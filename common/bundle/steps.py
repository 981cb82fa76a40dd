"""The individual checks of reading a bundle folder (bundle_spec/SPEC.md section 8), each once.

`gapferry.common.bundle.read.open_bundle` composes them in order and stops at the first error;
`gapferry audit` calls each inside its recorder and goes on where that is meaningful. Every step
raises a `GapferryError` with the code the spec names. Bytes are verified before they are parsed
(STYLE practice 2): the manifest is decoded only by `verify_manifest`, after its signatures.
The folder listing is `gapferry.common.bundle.scan.scan_folder`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
import zstandard
from gapferry.common.bundle.canonical import reject_duplicate_keys, render_sha256sums
from gapferry.common.bundle.layout import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    MARKER_NAME,
    Kind,
    bundle_dir_name,
    parse_marker,
)
from gapferry.common.bundle.model import (
    ArtifactEntry,
    FileEntry,
    LogLine,
    LogRef,
    ResultManifest,
    TransferManifest,
)
from gapferry.common.bundle.scan import REMEDY, incomplete_error, read_small, unexpected_error
from gapferry.common.bundle.verify import (
    VerifiedResult,
    VerifiedTransfer,
    verify_result_manifest,
    verify_transfer_manifest,
)
from gapferry.common.digest import CHUNK, Progress
from gapferry.common.errors import InvalidData
from gapferry.common.limits import Limits
from gapferry.common.safepath import open_regular
from gapferry.common.trust import TrustPolicy

__all__ = [
    "MARKER_MAX",
    "check_artifact_files",
    "check_checksums",
    "check_file_digest",
    "check_folder_name",
    "check_joined_parts",
    "check_listing",
    "check_marker",
    "check_no_unlisted",
    "check_present",
    "hash_file",
    "read_log",
    "read_manifest",
    "read_marker",
    "read_signatures",
    "unlisted_files",
    "verify_manifest",
]

#: Largest completion marker read (SPEC 3.7: one short line).
MARKER_MAX = 256


def read_marker(root: Path) -> str:
    """The manifest sha256 the completion marker binds (SPEC 3.7; read before anything else).

    Raises:
        IncompleteBundle: ``incomplete`` when the marker is absent, too large or malformed.
        InvalidData: ``unsafe-file`` when it is a link or special file.
    """
    try:
        marker = read_small(root, MARKER_NAME, MARKER_MAX, too_large="marker-too-large")
    except InvalidData as e:
        if e.code != "marker-too-large":
            raise
        raise incomplete_error(f"{root.name}: the completion marker is malformed") from e
    if marker is None:
        raise incomplete_error(f"{root.name} has no completion marker ({MARKER_NAME})")
    bound = parse_marker(marker)
    if bound is None:
        raise incomplete_error(f"{root.name}: the completion marker is malformed")
    return bound


def read_manifest(root: Path, limits: Limits) -> bytes:
    """The manifest's bytes, unparsed, within ``limits.manifest_bytes`` (SPEC 8 step 1).

    Raises:
        IncompleteBundle: ``missing-file``.
        InvalidData: ``manifest-too-large``, ``unsafe-file``.
    """
    raw = read_small(root, MANIFEST_NAME, limits.manifest_bytes, too_large="manifest-too-large")
    if raw is None:
        raise incomplete_error(f"{root.name} has no {MANIFEST_NAME}", code="missing-file")
    return raw


def read_signatures(root: Path, names: Sequence[str], limits: Limits) -> list[bytes]:
    """The bytes of the signature files `names` (from `scan_folder`), each within its cap.

    Raises:
        InvalidData: ``too-many-signatures``, ``bad-signature`` (too large), ``unsafe-file``.
        IncompleteBundle: ``missing-file`` when one disappeared since the scan.
    """
    if len(names) > limits.signatures:
        raise InvalidData(
            f"{len(names)} signature files, more than the limit of {limits.signatures}",
            remedy=REMEDY,
            code="too-many-signatures",
        )
    sigs = []
    for name in names:
        data = read_small(root, name, limits.signature_bytes, too_large="bad-signature")
        if data is None:  # listed by scan_folder a moment ago: removed while we read
            raise incomplete_error(f"{name} disappeared while reading", code="missing-file")
        sigs.append(data)
    return sigs


def verify_manifest(
    raw: bytes,
    signatures: Sequence[bytes],
    *,
    kind: Kind,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
) -> VerifiedTransfer | VerifiedResult:
    """The pure core for `kind`: `verify_transfer_manifest` or `verify_result_manifest`.

    Raises:
        InvalidData: every code of those two.
        UsageProblem: ``naive-time``.
    """
    if kind == "transfer":
        return verify_transfer_manifest(raw, signatures, policy=policy, now=now, limits=limits)
    return verify_result_manifest(raw, signatures, policy=policy, now=now, limits=limits)


def check_folder_name(root: Path, manifest: TransferManifest | ResultManifest) -> None:
    """The folder is named for its verified manifest (SPEC 3.2): a renamed folder is refused.

    Raises:
        InvalidData: ``name-mismatch``.
    """
    if isinstance(manifest, TransferManifest):
        kind: Kind = "transfer"
        ident = manifest.bundle_id
    else:
        kind, ident = "result", manifest.result_id
    expected = bundle_dir_name(
        kind, site=manifest.site, sequence=manifest.sequence, bundle_id=ident
    )
    if root.name != expected:
        raise InvalidData(
            f"the bundle folder is named {root.name!r} but its manifest says {expected!r}",
            remedy="the folder was renamed; rename it back, or " + REMEDY,
            code="name-mismatch",
        )


def check_marker(root: Path, bound: str, manifest_sha256: str) -> None:
    """The completion marker binds these manifest bytes (SPEC 3.7).

    Raises:
        InvalidData: ``marker-mismatch``.
    """
    if manifest_sha256 != bound:
        raise InvalidData(
            f"{root.name}: the completion marker binds manifest sha256 {bound}, but "
            f"manifest.json has {manifest_sha256}",
            remedy="the bundle was altered after it was written; " + REMEDY,
            code="marker-mismatch",
        )


def check_checksums(
    root: Path, manifest: TransferManifest | ResultManifest, limits: Limits
) -> None:
    """``SHA256SUMS`` has the manifest's ``checksums_sha256`` and lists exactly its files
    (SPEC 3.5).

    Raises:
        IncompleteBundle: ``missing-file``.
        InvalidData: ``too-large``, ``unsafe-file``, ``digest-mismatch``,
            ``inconsistent-manifest``.
    """
    sums = read_small(root, CHECKSUMS_NAME, 64 + (limits.files + 1) * 600, too_large="too-large")
    if sums is None:
        raise incomplete_error(f"{root.name} has no {CHECKSUMS_NAME}", code="missing-file")
    if hashlib.sha256(sums).hexdigest() != manifest.checksums_sha256:
        raise InvalidData(
            f"{CHECKSUMS_NAME}: sha256 differs from the manifest's checksums_sha256",
            remedy=REMEDY,
            code="digest-mismatch",
        )
    if sums != render_sha256sums(manifest.files):
        raise InvalidData(
            f"{CHECKSUMS_NAME} does not list exactly the manifest's files",
            remedy="the signer's software is buggy; " + REMEDY,
            code="inconsistent-manifest",
        )


def check_no_unlisted(files: Sequence[FileEntry], present: Mapping[str, int]) -> None:
    """No content file on the medium that the manifest does not list (SPEC 8).

    Raises:
        InvalidData: ``unexpected-file``.
    """
    extra = unlisted_files(files, present)
    if extra:
        raise unexpected_error(*extra)


def unlisted_files(files: Sequence[FileEntry], present: Mapping[str, int]) -> list[str]:
    """Content files on the medium (`scan_folder`) that `files` does not list, sorted."""
    return sorted(set(present) - {f.path for f in files})


def check_present(f: FileEntry, present: Mapping[str, int]) -> None:
    """The listed file `f` is on the medium with its listed size (not hashed here).

    Raises:
        IncompleteBundle: ``missing-file``, ``truncated-file``.
        InvalidData: ``size-mismatch`` when it is larger.
    """
    size = present.get(f.path)
    if size is None:
        raise incomplete_error(
            f"{f.path} is listed in the manifest but missing", code="missing-file"
        )
    if size < f.size:
        raise incomplete_error(
            f"{f.path}: expected {f.size} bytes, found {size} (truncated)",
            code="truncated-file",
        )
    if size > f.size:
        raise InvalidData(
            f"{f.path}: expected {f.size} bytes, found {size}",
            remedy=REMEDY,
            code="size-mismatch",
        )


def check_listing(files: Sequence[FileEntry], present: Mapping[str, int]) -> None:
    """`check_no_unlisted`, then `check_present` for each file in manifest order."""
    check_no_unlisted(files, present)
    for f in files:
        check_present(f, present)


def hash_file(
    root: Path, f: FileEntry, *, whole: Any = None, progress: Progress | None = None
) -> str:
    """Stream the listed file `f` (never more than its size) and return its sha256; the bytes
    also go to `whole` (a hashlib object) when given, for split artifacts.

    Raises:
        InvalidData: ``size-mismatch`` (it changed while reading), ``bad-path`` (link, special).
        IncompleteBundle: ``missing-file``.
    """
    try:
        fd = open_regular(root, PurePosixPath(f.path))
    except FileNotFoundError as e:
        raise incomplete_error(f"{f.path} is missing", code="missing-file") from e
    h = hashlib.sha256()
    size = 0
    view = memoryview(bytearray(CHUNK))
    with os.fdopen(fd, "rb", buffering=0) as src:
        while n := src.readinto(view):
            size += n
            if size > f.size:
                break
            h.update(view[:n])
            if whole is not None:
                whole.update(view[:n])
            if progress is not None:
                progress(n)
    if size != f.size:
        raise InvalidData(
            f"{f.path}: expected {f.size} bytes, read {size} (changed while reading)",
            remedy=REMEDY,
            code="size-mismatch",
        )
    return h.hexdigest()


def check_file_digest(f: FileEntry, digest: str) -> None:
    """The sha256 read from the medium (`hash_file`) is the listed one.

    Raises:
        InvalidData: ``digest-mismatch``.
    """
    if digest != f.sha256:
        raise InvalidData(
            f"{f.path}: expected sha256 {f.sha256}, found {digest}",
            remedy="the file was altered or the medium is failing; " + REMEDY,
            code="digest-mismatch",
        )


def check_joined_parts(a: ArtifactEntry, digest: str) -> None:
    """A split artifact's parts joined have the artifact's sha256 (SPEC 3.4).

    Raises:
        InvalidData: ``digest-mismatch``.
    """
    if digest != a.sha256:
        raise InvalidData(
            f"artifact {a.name!r}: its parts joined have sha256 {digest}, expected {a.sha256}",
            remedy=REMEDY,
            code="digest-mismatch",
        )


def check_artifact_files(
    root: Path,
    a: ArtifactEntry,
    by_path: Mapping[str, FileEntry],
    *,
    progress: Progress | None = None,
) -> None:
    """Hash an artifact's file (or each of its parts, then the parts joined) in one pass.

    Raises:
        InvalidData: ``size-mismatch``, ``digest-mismatch``, ``bad-path``.
        IncompleteBundle: ``missing-file``.
    """
    whole = hashlib.sha256() if a.parts else None
    for rel in a.parts or [a.path]:
        entry = by_path[rel]
        check_file_digest(entry, hash_file(root, entry, whole=whole, progress=progress))
    if whole is not None:
        check_joined_parts(a, whole.hexdigest())


def _bad_log(ref: LogRef, why: str, code: str = "bad-log") -> InvalidData:
    return InvalidData(f"log {ref.path}: {why}", remedy=REMEDY, code=code)


def read_log(root: Path, ref: LogRef, limits: Limits) -> list[LogLine]:
    """Read, hash and decompress one log within its declared and configured limits (SPEC 3.6),
    verifying its sha256 before decompressing it.

    Raises:
        IncompleteBundle: ``missing-file``, ``truncated-file``.
        InvalidData: ``size-mismatch``, ``digest-mismatch``, ``zstd-bomb``, ``bad-log``,
            ``unsafe-file``.
    """
    packed = read_small(root, ref.path, ref.size, too_large="size-mismatch")
    if packed is None:
        raise incomplete_error(f"{ref.path} is missing", code="missing-file")
    if len(packed) != ref.size:
        raise incomplete_error(
            f"{ref.path}: expected {ref.size} bytes, found {len(packed)}", code="truncated-file"
        )
    if hashlib.sha256(packed).hexdigest() != ref.sha256:
        raise _bad_log(ref, "sha256 differs from the manifest", code="digest-mismatch")
    cap = min(ref.decompressed_size, limits.log_bytes)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(packed, read_across_frames=True)
        with reader:
            plain = reader.read(cap + 1)
            if len(plain) <= cap:
                # read() may return less than asked before the end; drain up to the cap.
                while len(plain) <= cap and (more := reader.read(cap + 1 - len(plain))):
                    plain += more
    except zstandard.ZstdError as e:
        raise _bad_log(ref, f"not valid zstd data ({e})") from e
    if len(plain) > cap:
        raise _bad_log(
            ref,
            f"decompresses to more than the declared {ref.decompressed_size} bytes "
            f"(limit {limits.log_bytes}): a decompression bomb",
            code="zstd-bomb",
        )
    if len(plain) != ref.decompressed_size:
        raise _bad_log(ref, f"decompresses to {len(plain)} bytes, not {ref.decompressed_size}")
    if plain and not plain.endswith(b"\n"):
        raise _bad_log(ref, "does not end with a newline")
    raw_lines = plain.split(b"\n")[:-1]
    if len(raw_lines) != ref.lines or len(raw_lines) > limits.log_lines:
        raise _bad_log(ref, f"has {len(raw_lines)} lines, the manifest says {ref.lines}")
    out = []
    decoder = msgspec.json.Decoder(LogLine)
    for i, line in enumerate(raw_lines, start=1):
        if len(line) > limits.log_line_bytes:
            raise _bad_log(ref, f"line {i} is longer than {limits.log_line_bytes} bytes")
        try:
            reject_duplicate_keys(line, what=f"log line {i}")
            out.append(decoder.decode(line))
        except msgspec.DecodeError as e:
            raise _bad_log(ref, f"line {i}: {e}") from e
        except InvalidData as e:
            raise _bad_log(ref, e.message) from e
    return out
