"""Read and verify a Mender Artifact (format v2 and v3) in one streaming pass.

Implements `../shared/mender/artifact-and-client.md` sections 1 and 2 (mender-artifact 3.9,
`areader/reader.go`):

- outer tar order: ``version``, ``manifest``, [``manifest.sig``], [``manifest-augment``],
  ``header.tar{,.gz,.xz}``, [``header-augment.tar{,.gz,.xz}``], ``data/NNNN.tar{,.gz,.xz}``...
  (augment members only in v3); ``.tar.zst`` members are refused with their own error because
  Mender 3.x clients cannot read zstd;
- every manifest line is checked against the member bytes in the same pass: data files hashed
  uncompressed, the header hashed as stored (compressed), ``version`` as stored; a file without a
  line, a line without a file, or a line not in canonical form (64 lowercase hex digits, two
  spaces, name, ``\\n``) is refused;
- the signature (`signature.verify_manifest`) is checked over the exact manifest bytes before any
  header is parsed; with a key, an unsigned artifact is refused (unlike the client, which silently
  skips verification when its key file is missing, 3.2);
- constant memory: payload bytes stream through a hash (and through ``payload_sink`` when given);
  `Limits` caps member counts, header size and decompressed bytes.

Unknown JSON fields in header-info and type-info are ignored, as Go's encoding/json does in the
client (ADR 0010): the header is Mender's format, not ours, and refusing what the client installs
would only make gapferry fail where Mender works.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from gapferry.common.artifact._stream import (
    CHUNK,
    CountingReader,
    HashingReader,
    SourceReader,
    decompressor,
)
from gapferry.common.artifact._tar import MemberReader, TarReader
from gapferry.common.artifact.errors import (
    ArtifactChecksumError,
    ArtifactHeaderError,
    ArtifactStructureError,
    ArtifactTooLarge,
    ArtifactUnsigned,
    ArtifactVersionError,
    ArtifactZstd,
)
from gapferry.common.artifact.signature import verify_manifest
from gapferry.common.digest import Readable
from gapferry.common.errors import UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "ArtifactInfo",
    "PayloadFile",
    "PayloadInfo",
    "PayloadSink",
    "read_artifact",
    "read_artifact_file",
]


class PayloadFile(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a payload: its basename in ``data/NNNN.tar``, size and sha256 (uncompressed).

    Passed to a payload sink before its bytes are read: ``sha256`` is then the manifest's claim,
    which `read_artifact` checks after the sink returns (a mismatch raises, so a sink must stage,
    not install). In `ArtifactInfo` it is verified.
    """

    name: str
    size: int
    sha256: str
    #: Listed in ``manifest-augment`` (not covered by the signature) rather than ``manifest``.
    augmented: bool = False


class PayloadInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One payload: its type (the update module; ``None`` for an empty payload) and files."""

    index: int
    type: str | None
    files: tuple[PayloadFile, ...]
    #: ``headers/NNNN/meta-data`` as decoded JSON, or None when absent or empty.
    meta_data: dict[str, Any] | None
    #: type-info ``artifact_provides``, ``artifact_depends`` and ``clears_artifact_provides``.
    provides: dict[str, str]
    depends: dict[str, list[str] | str]
    clears_provides: tuple[str, ...]
    #: Compression of ``data/NNNN.tar*`` (none, gzip, lzma), or None when the payload has no data member.
    compression: str | None


class ArtifactInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a verified read of an artifact found. Every field comes from checked bytes."""

    name: str
    format_version: int
    device_types: tuple[str, ...]
    #: header-info artifact_provides merged with every type-info artifact_provides.
    provides: dict[str, str]
    #: header-info artifact_depends (lists, including device_type) merged with type-info depends.
    depends: dict[str, list[str] | str]
    clears_provides: tuple[str, ...]
    payloads: tuple[PayloadInfo, ...]
    state_scripts: tuple[str, ...]
    signed: bool
    signature_verified: bool
    #: Key kind that verified the signature (``rsa-3072``, ``ecdsa-p256``), or None.
    signature_key: str | None
    #: Compression of the header member: none, gzip or lzma.
    compression: str
    #: True when manifest-augment / header-augment are present (their content is unsigned).
    augmented: bool
    manifest_sha256: str
    #: Bytes and sha256 of the whole artifact file.
    size: int
    sha256: str


PayloadSink = Callable[[int, PayloadFile, Readable], None]

# --- header JSON (Mender's format: unknown fields ignored, ADR 0010) ---------------------------


class _PayloadType(msgspec.Struct):
    type: str | None = None


class _HeaderProvides(msgspec.Struct):
    artifact_name: str
    artifact_group: str | None = None


class _HeaderDepends(msgspec.Struct):
    artifact_name: list[str] | None = None
    device_type: list[str] | None = None
    artifact_group: list[str] | None = None


class _HeaderInfoV3(msgspec.Struct):
    payloads: list[_PayloadType] | None
    artifact_provides: _HeaderProvides
    artifact_depends: _HeaderDepends | None = None


class _HeaderInfoV2(msgspec.Struct):
    updates: list[_PayloadType] | None
    device_types_compatible: list[str]
    artifact_name: str


class _TypeInfo(msgspec.Struct):
    type: str | None = None
    artifact_provides: dict[str, str] | None = None
    artifact_depends: dict[str, str | list[str]] | None = None
    clears_artifact_provides: list[str] | None = None


class _Version(msgspec.Struct):
    format: str
    version: int


# --- names --------------------------------------------------------------------------------------

_COMPRESSION = {".tar": "none", ".tar.gz": "gzip", ".tar.xz": "lzma"}
_OUTER = re.compile(r"^(header|header-augment|data/(\d{4}))(\.tar(?:\.gz|\.xz|\.zst|\.[^/]*)?)$")
_HEADER_SUB = re.compile(r"^headers/(\d{4})/(type-info|meta-data|files)$")
_MANIFEST_LINE = re.compile(rb"^([0-9a-f]{64})  ([!-~]+)$")
_MAX_NAME = 255

_NEXT: dict[str | None, frozenset[str]] = {
    None: frozenset({"version"}),
    "version": frozenset({"manifest"}),
    "manifest": frozenset({"manifest.sig", "manifest-augment", "header"}),
    "manifest.sig": frozenset({"manifest-augment", "header"}),
    "manifest-augment": frozenset({"header"}),
    "header": frozenset({"header-augment", "data"}),
    "header-augment": frozenset({"data"}),
    "data": frozenset({"data"}),
}


def _classify(name: str) -> tuple[str, str, int | None]:
    """Grammar symbol, compression and data index of an outer member name."""
    if name in ("version", "manifest", "manifest.sig", "manifest-augment"):
        return name, "none", None
    m = _OUTER.match(name)
    if m is None:
        raise ArtifactStructureError(f"Invalid structure: unexpected member {name!r}")
    suffix = m.group(3)
    if suffix == ".tar.zst":
        raise ArtifactZstd(
            f"member {name!r} is zstd-compressed: Mender 3.x clients (mender-artifact 3.9,"
            " mender-client 3.4) cannot read zstd (it arrived in mender-artifact 3.10)",
            remedy="rebuild the artifact with --compression gzip, lzma or none",
        )
    compression = _COMPRESSION.get(suffix)
    if compression is None:
        raise ArtifactStructureError(
            f"Invalid structure: member {name!r} has an unknown compression suffix {suffix!r}"
        )
    part = "data" if m.group(2) is not None else m.group(1)
    return part, compression, int(m.group(2)) if m.group(2) is not None else None


def _check_payload_name(name: str) -> str:
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\0" in name
        or len(name.encode("utf-8")) > _MAX_NAME
    ):
        raise ArtifactStructureError(
            f"payload file name {name!r} is not a plain file name (Mender payload files are basenames)"
        )
    return name


def _decode(raw: bytes, typ: type[Any], what: str) -> Any:
    try:
        return msgspec.json.decode(raw, type=typ)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise ArtifactHeaderError(f"{what} is not valid Mender JSON: {e}") from e


def _parse_manifest(raw: bytes, what: str, limits: Limits) -> dict[str, str]:
    if not raw:
        raise ArtifactChecksumError(f"{what} is empty")
    if not raw.endswith(b"\n"):
        raise ArtifactChecksumError(
            f"{what} does not end in a newline: Mender drops the last line"
            " (mender: checksum missing for file)",
        )
    out: dict[str, str] = {}
    for i, line in enumerate(raw[:-1].split(b"\n"), start=1):
        m = _MANIFEST_LINE.match(line)
        if m is None:
            raise ArtifactChecksumError(
                f"{what} line {i} is not '<64 lowercase hex>  <name>': {line[:120]!r}"
            )
        name = m.group(2).decode("ascii")
        if name in out:
            raise ArtifactChecksumError(f"{what} lists {name!r} twice")
        out[name] = m.group(1).decode("ascii")
        if len(out) > limits.artifact_members:
            raise ArtifactTooLarge(f"{what} has more than {limits.artifact_members} lines")
    return out


class _Checksums:
    """Manifest lines and which of them the artifact has matched so far."""

    def __init__(self) -> None:
        self.expected: dict[str, str] = {}
        self.augmented: set[str] = set()
        self.seen: set[str] = set()

    def add(self, lines: dict[str, str], *, augmented: bool) -> None:
        for name, digest in lines.items():
            if name in self.expected:
                raise ArtifactChecksumError(f"{name!r} is listed in both manifests")
            self.expected[name] = digest
            if augmented:
                self.augmented.add(name)

    def expect(self, name: str) -> str:
        digest = self.expected.get(name)
        if digest is None:
            raise ArtifactChecksumError(
                f"checksum missing for file: {name!r} (every member must have a manifest line)"
            )
        if name in self.seen:
            raise ArtifactStructureError(f"{name!r} appears twice in the artifact")
        return digest

    def check(self, name: str, actual: str) -> None:
        expected = self.expect(name)
        if not hmac.compare_digest(expected, actual):
            raise ArtifactChecksumError(
                f"{name}: invalid checksum (manifest says {expected}, content is {actual})"
            )
        self.seen.add(name)

    def finish(self) -> None:
        missing = sorted(set(self.expected) - self.seen)
        if missing:
            raise ArtifactChecksumError(
                "Files found in manifest(s), that were not part of artifact: " + ", ".join(missing)
            )


class _Header(msgspec.Struct, kw_only=True):
    name: str = ""
    device_types: tuple[str, ...] = ()
    provides: dict[str, str] = msgspec.field(default_factory=dict)
    depends: dict[str, list[str] | str] = msgspec.field(default_factory=dict)
    payload_types: list[str | None] = msgspec.field(default_factory=list)
    type_infos: dict[int, _TypeInfo] = msgspec.field(default_factory=dict)
    meta: dict[int, dict[str, Any] | None] = msgspec.field(default_factory=dict)
    scripts: list[str] = msgspec.field(default_factory=list)


def _read_small(member: MemberReader, limit: int, what: str) -> bytes:
    if member.remaining > limit:
        raise ArtifactTooLarge(
            f"{what} is {member.remaining} bytes, more than the limit of {limit}"
        )
    return member.readall(limit)


def _parse_header(src: CountingReader, version: int, limits: Limits, *, augment: bool) -> _Header:
    """Parse ``header.tar`` (sections 1.1 and 2): header-info, scripts/*, headers/NNNN/*."""
    h = _Header()
    what = "header-augment" if augment else "header"
    stage = 0  # 0: want header-info, 1: scripts, 2: headers
    last_sub: tuple[int, int] = (-1, -1)
    sub_order = {"files": 0, "type-info": 1, "meta-data": 2}
    tar = TarReader(src, what=what, max_members=limits.artifact_members)
    for entry, member in tar:
        if entry.kind != "file":
            raise ArtifactStructureError(f"{what}: {entry.name!r} is not a regular file")
        raw = _read_small(member, limits.artifact_header_bytes, f"{what}: {entry.name}")
        if stage == 0:
            if entry.name != "header-info":
                raise ArtifactStructureError(
                    f"{what}: first member must be header-info, found {entry.name!r}"
                )
            stage = 1
            if augment:
                continue  # augmented header-info repeats the signed one; not trusted, not used
            if version == 2:
                v2 = _decode(raw, _HeaderInfoV2, "header-info")
                h.name = v2.artifact_name
                h.device_types = tuple(v2.device_types_compatible)
                h.payload_types = [p.type for p in v2.updates or []]
                h.provides = {"artifact_name": v2.artifact_name}
                h.depends = {"device_type": list(v2.device_types_compatible)}
            else:
                v3 = _decode(raw, _HeaderInfoV3, "header-info")
                h.name = v3.artifact_provides.artifact_name
                h.payload_types = [p.type for p in v3.payloads or []]
                h.provides = {"artifact_name": h.name}
                if v3.artifact_provides.artifact_group:
                    h.provides["artifact_group"] = v3.artifact_provides.artifact_group
                dep = v3.artifact_depends or _HeaderDepends()
                h.device_types = tuple(dep.device_type or ())
                for key, val in (
                    ("artifact_name", dep.artifact_name),
                    ("device_type", dep.device_type),
                    ("artifact_group", dep.artifact_group),
                ):
                    if val:
                        h.depends[key] = list(val)
            if not h.name:
                raise ArtifactHeaderError("header-info: artifact_name is empty")
            if not h.device_types:
                raise ArtifactHeaderError("header-info: no compatible device types")
            continue
        if entry.name.startswith("scripts/"):
            if stage != 1 or augment:
                raise ArtifactStructureError(f"{what}: state script {entry.name!r} out of place")
            script = entry.name.removeprefix("scripts/")
            _check_payload_name(script)
            h.scripts.append(script)
            continue
        m = _HEADER_SUB.match(entry.name)
        if m is None:
            raise ArtifactStructureError(f"{what}: unexpected member {entry.name!r}")
        stage = 2
        idx, kind = int(m.group(1)), m.group(2)
        pos = (idx, sub_order[kind])
        if pos <= last_sub or (kind == "files" and version != 2):
            raise ArtifactStructureError(f"{what}: member {entry.name!r} out of order")
        last_sub = pos
        if not augment and idx >= len(h.payload_types):
            raise ArtifactStructureError(
                f"{what}: {entry.name!r} but header-info lists {len(h.payload_types)} payload(s)"
            )
        if kind == "type-info":
            ti = _decode(raw, _TypeInfo, entry.name)
            if not augment:
                h.type_infos[idx] = ti
        elif kind == "meta-data":
            meta: dict[str, Any] | None = None
            if raw.strip():
                meta = _decode(raw, dict[str, Any], entry.name)
            if not augment:
                h.meta[idx] = meta
    if stage == 0:
        raise ArtifactStructureError(f"{what}: header-info is missing")
    if not augment:
        for i in range(len(h.payload_types)):
            if i not in h.type_infos:
                raise ArtifactStructureError(f"{what}: headers/{i:04d}/type-info is missing")
    return h


def read_artifact(
    stream: Readable,
    *,
    verify_key: bytes | None = None,
    require_signature: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    payload_sink: PayloadSink | None = None,
    known_sha256: str | None = None,
) -> ArtifactInfo:
    """Read, check and (with `verify_key`) verify an artifact from `stream` to its end.

    `verify_key` is a PEM public key (RSA or ECDSA P-256); when given, the artifact must be signed
    and the signature must verify, before anything else is parsed. `require_signature` without a
    key only demands that a signature is present (``signature_verified`` stays False).
    `payload_sink(index, file, reader)` is called for every payload file, in artifact order; it may
    read any part of ``reader`` (the rest is drained). The file's checksum is checked after the sink
    returns: a sink must stage what it reads and only use it once `read_artifact` has returned.
    `known_sha256`: the whole artifact's sha256 when `stream` itself refuses other bytes (an
    `ArtifactStream` of a verified bundle checks the signed sha256 at its end): it becomes the
    result's ``sha256`` and the bytes are not hashed a second time. The caller must read `stream`
    to its end before trusting the result.

    Raises:
        ArtifactError (an `InvalidData`): structure, version, zstd, checksum, header, limit,
            unsigned, wrong-key-type or bad-signature problems, each with its own ``code``.
        EnvironmentFailure: reading `stream` failed.
    """
    src = SourceReader(stream, max_bytes=limits.artifact_bytes, hashing=known_sha256 is None)
    outer = TarReader(src, what="artifact", max_members=limits.artifact_members)
    sums = _Checksums()
    prev: str | None = None
    version = 0
    version_sha = ""
    manifest_raw = b""
    sig_raw: bytes | None = None
    augment_raw: bytes | None = None
    verified_kind: str | None = None
    manifest_parsed = False
    header: _Header | None = None
    header_compression = "none"
    data_compression: dict[int, str] = {}
    files: dict[int, list[PayloadFile]] = {}
    decompressed_total = 0

    def after_manifest() -> None:
        # Runs once, at the first member after the manifest (and its signature): verify first,
        # then parse (STYLE.md practice 2).
        nonlocal manifest_parsed, verified_kind
        if manifest_parsed:
            return
        manifest_parsed = True
        if sig_raw is None and (verify_key is not None or require_signature):
            raise ArtifactUnsigned(
                "expecting signed artifact, but no signature file found (manifest.sig is absent)",
                remedy="ask the publisher for a signed artifact (mender-artifact write ... -k KEY)",
            )
        if sig_raw is not None and verify_key is not None:
            verified_kind = verify_manifest(manifest_raw, sig_raw, verify_key)
        sums.add(_parse_manifest(manifest_raw, "manifest", limits), augmented=False)
        if augment_raw is not None:
            sums.add(_parse_manifest(augment_raw, "manifest-augment", limits), augmented=True)
        if version == 3 or "version" in sums.expected:
            sums.check("version", version_sha)

    for entry, member in outer:
        part, compression, index = _classify(entry.name)
        if entry.kind != "file":
            raise ArtifactStructureError(f"Invalid structure: {entry.name!r} is not a regular file")
        allowed = _NEXT[prev]
        if version == 2:
            allowed = allowed - {"manifest-augment", "header-augment"}
        if part not in allowed:
            raise ArtifactStructureError(
                f"Invalid structure: wrong element: {entry.name} (after {prev or 'the start'};"
                f" expected one of {', '.join(sorted(allowed))})"
            )
        if part == "data" and index != len(data_compression):
            raise ArtifactStructureError(
                f"Invalid structure: wrong element: {entry.name} (expected data/{len(data_compression):04d})"
            )
        prev = part
        if part == "version":
            raw = _read_small(member, 4096, "version")
            version_sha = hashlib.sha256(raw).hexdigest()
            v = _decode(raw, _Version, "version")
            if v.format != "mender":
                raise ArtifactVersionError(f"version: format is {v.format!r}, not 'mender'")
            if v.version == 1:
                raise ArtifactVersionError(
                    "reader: Mender-Artifact version 1 is no longer supported",
                    remedy="rebuild the artifact with mender-artifact 3.x (format version 3)",
                )
            if v.version not in (2, 3):
                raise ArtifactVersionError(
                    f"unsupported version: Mender Artifact format {v.version} (gapferry reads 2 and 3)",
                    remedy="rebuild the artifact with mender-artifact 3.x (format version 3)",
                )
            version = v.version
        elif part == "manifest":
            manifest_raw = _read_small(member, limits.artifact_header_bytes, "manifest")
        elif part == "manifest.sig":
            sig_raw = _read_small(member, limits.signature_bytes, "manifest.sig")
        elif part == "manifest-augment":
            augment_raw = _read_small(member, limits.artifact_header_bytes, "manifest-augment")
        elif part in ("header", "header-augment"):
            after_manifest()
            hashed = HashingReader(member)
            inner = CountingReader(
                decompressor(hashed, compression),
                max_bytes=limits.artifact_header_bytes,
                what=entry.name,
            )
            parsed = _parse_header(inner, version, limits, augment=part == "header-augment")
            hashed.drain()
            sums.check(entry.name, hashed.hash.hexdigest())
            if part == "header":
                header = parsed
                header_compression = compression
        else:
            after_manifest()
            if header is None or index is None:  # unreachable: the grammar puts the header first
                raise ArtifactStructureError(f"Invalid structure: {entry.name} before header")
            if index >= len(header.payload_types):
                raise ArtifactStructureError(
                    f"Invalid structure: {entry.name} but header-info lists"
                    f" {len(header.payload_types)} payload(s)"
                )
            data_compression[index] = compression
            inner = CountingReader(
                decompressor(member, compression),
                max_bytes=limits.artifact_decompressed_bytes - decompressed_total,
                what=entry.name,
            )
            plist = files.setdefault(index, [])
            for fentry, fmember in TarReader(
                inner, what=entry.name, max_members=limits.artifact_members
            ):
                if fentry.kind != "file":
                    raise ArtifactStructureError(
                        f"{entry.name}: {fentry.name!r} is not a regular file (a {fentry.kind})"
                    )
                fname = _check_payload_name(fentry.name)
                if fentry.size > limits.payload_decompressed_bytes:
                    raise ArtifactTooLarge(
                        f"{entry.name}: {fname} is {fentry.size} bytes, more than the limit of"
                        f" {limits.payload_decompressed_bytes}"
                    )
                mname = f"data/{index:04d}/{fname}"
                expected = sums.expect(mname)
                pfile = PayloadFile(
                    name=fname,
                    size=fentry.size,
                    sha256=expected,
                    augmented=mname in sums.augmented,
                )
                tee = HashingReader(fmember)
                if payload_sink is not None:
                    payload_sink(index, pfile, tee)
                tee.drain()
                sums.check(mname, tee.hash.hexdigest())
                plist.append(pfile)
            # Drain what follows the inner tar's end (padding, compression trailer).
            while inner.read(CHUNK):
                pass
            decompressed_total += inner.size

    if prev is None or prev in ("version", "manifest", "manifest.sig", "manifest-augment"):
        raise ArtifactStructureError(
            f"Invalid structure: artifact ends after {prev or 'nothing'}; header.tar is missing"
            " (is this a Mender Artifact?)"
        )
    src.drain()
    sums.finish()
    if header is None:  # unreachable: checked by the grammar above
        raise ArtifactStructureError("Invalid structure: header.tar is missing")

    provides = dict(header.provides)
    depends: dict[str, list[str] | str] = dict(header.depends)
    clears: list[str] = []
    payloads: list[PayloadInfo] = []
    for i, ptype in enumerate(header.payload_types):
        ti = header.type_infos[i]
        if version == 3 and ti.type is not None and ti.type not in (ptype or "", ""):
            raise ArtifactHeaderError(
                f"headers/{i:04d}/type-info type {ti.type!r} differs from header-info {ptype!r}"
            )
        tprov = dict(ti.artifact_provides or {})
        tdep = dict(ti.artifact_depends or {})
        tclear = tuple(ti.clears_artifact_provides or ())
        provides.update(tprov)
        depends.update(tdep)
        clears.extend(c for c in tclear if c not in clears)
        payloads.append(
            PayloadInfo(
                index=i,
                type=ptype,
                files=tuple(files.get(i, ())),
                meta_data=header.meta.get(i),
                provides=tprov,
                depends=tdep,
                clears_provides=tclear,
                compression=data_compression.get(i),
            )
        )
    return ArtifactInfo(
        name=header.name,
        format_version=version,
        device_types=header.device_types,
        provides=provides,
        depends=depends,
        clears_provides=tuple(clears),
        payloads=tuple(payloads),
        state_scripts=tuple(header.scripts),
        signed=sig_raw is not None,
        signature_verified=verified_kind is not None,
        signature_key=verified_kind,
        compression=header_compression,
        augmented=augment_raw is not None,
        manifest_sha256=hashlib.sha256(manifest_raw).hexdigest(),
        size=src.size,
        sha256=known_sha256 or src.hash.hexdigest(),
    )


def read_artifact_file(
    path: Path,
    *,
    verify_key: bytes | None = None,
    require_signature: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    payload_sink: PayloadSink | None = None,
) -> ArtifactInfo:
    """`read_artifact` on a regular file (links and devices refused).

    Raises:
        UsageProblem: the file cannot be opened.
        the errors of `read_artifact`.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not hang; it is refused below as not a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise UsageProblem(
            f"cannot open artifact {str(path)!r}: {e.strerror}",
            remedy="check the path (symbolic links are not followed)",
            code="no-such-artifact",
        ) from e
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageProblem(
                f"{str(path)!r} is not a regular file",
                remedy="give the path of a .mender file",
                code="no-such-artifact",
            )
        os.set_blocking(fd, True)
        return read_artifact(
            f,
            verify_key=verify_key,
            require_signature=require_signature,
            limits=limits,
            payload_sink=payload_sink,
        )
