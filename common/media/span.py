"""A bundle spread over several sticks when one is too small (issue 8; bundle_spec/SPAN.md).

A *span* is a transport wrapper around an ordinary bundle folder: the bundle's files (manifest,
signatures, artifacts or their parts, completion marker) are cut into *segments* that fit the
sticks' free space and file size limits, and every stick carries

    <stick>/gapferry-span-<span_id>/
        span-index.json         the signed index: every file, its segments and their sticks
        span-index.json.sig     SSHSIG signature over the exact index bytes; co-signatures
        span-index.json.sig.2   ... as span-index.json.sig.<n> (like manifest.json.sig[.n])
        stick-pending.json      the same as stick.json, written FIRST and removed at the end
        stick.json              which stick this is; written LAST (the stick's completion marker)
        data/<dir>/<name>[.segNNN]   the segments stored on this stick

so that the applier, with any subset of the sticks inserted, can verify the index and name the
missing, unfinished or corrupt stick *before* it starts (`check_span`), then `assemble` the
bundle into a local folder and verify it as usual.

Pure core: `plan_span` (assignment) and `check_span` take data and return data; `write_stick`,
`read_index` and `assemble` are the I/O shell. Signing and verification are passed in as
callables, so this module depends on no key type or trust file format (STYLE.md practice 8):
``sign=lambda m: signer.sign_sshsig(m, SPAN_NAMESPACE)`` and a `verify` callable that raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Final, Literal

import msgspec
from gapferry.common import trust
from gapferry.common.digest import CHUNK, Progress
from gapferry.common.errors import EnvironmentFailure, IncompleteBundle, InvalidData
from gapferry.common.limits import DEFAULT_LIMITS, Limits
from gapferry.common.media.fsinfo import check_fits
from gapferry.common.media.progress import format_bytes
from gapferry.common.media.write import copy_to_medium, discard_partials, is_verified
from gapferry.common.safepath import checked_name, checked_relpath
from gapferry.common.streams import RangeReader
from gapferry.common.trust import TrustPolicy

__all__ = [
    "INDEX_NAME",
    "SPAN_INDEX_FORMAT",
    "SPAN_NAMESPACE",
    "STICK_FILE",
    "FileEntry",
    "Segment",
    "SourceFile",
    "SpanIndex",
    "SpanPlan",
    "SpanReport",
    "StickEntry",
    "StickId",
    "StickSpace",
    "StickStatus",
    "assemble",
    "build_index",
    "check_span",
    "encode_index",
    "find_span_dirs",
    "plan_span",
    "read_index",
    "signature_name",
    "span_dir_name",
    "trust_verifier",
    "write_stick",
]

#: SSHSIG namespace of span index signatures (distinct from manifest namespaces, so a manifest
#: signature can never be replayed as an index signature or the other way round).
SPAN_NAMESPACE = "gapferry-span-index-v1@gapferry"
SPAN_INDEX_FORMAT: Final = "gapferry-span-index"
STICK_FORMAT: Final = "gapferry-span-stick"
INDEX_NAME = "span-index.json"
STICK_FILE = "stick.json"
#: Same content as stick.json, written FIRST, so an unfinished stick can still be identified.
PENDING_FILE = "stick-pending.json"
DATA_DIR = "data"
_DIR_PREFIX = "gapferry-span-"
_STICK_FILE_MAX = 4096
#: Bytes kept free on every stick for the index, its signatures and stick.json.
DEFAULT_METADATA_RESERVE = 1024 * 1024

# ---------------------------------------------------------------------------------------------
# Wire types (bundle_spec/SPAN.md, "span-index.json" and "stick.json")


class StickEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: 1-based stick number, as written on the stick's paper label ("stick 2 of 3").
    number: int
    #: Random per-stick id, repeated in that stick's stick.json.
    stick_id: str
    #: File system label of the stick when it was written, to help a person find it.
    label: str | None = None
    #: Bytes of segments stored on this stick.
    bytes: int


class Segment(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    stick: int
    offset: int
    length: int
    #: File name of the segment on the stick, in ``data/`` + the file's folder.
    name: str
    #: sha256 of the segment bytes; empty in a plan before `build_index` hashes it.
    sha256: str = ""


class FileEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Path of the file inside the bundle folder ('/'-separated).
    path: str
    size: int
    sha256: str
    segments: list[Segment]


class SpanIndex(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: Literal["gapferry-span-index"]
    version: Literal[1]
    span_id: str
    #: Name of the bundle folder the files belong to (``transfer-...`` or ``result-...``).
    bundle: str
    created: str
    sticks: list[StickEntry]
    files: list[FileEntry]


class StickId(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: Literal["gapferry-span-stick"]
    version: Literal[1]
    span_id: str
    number: int
    of: int
    stick_id: str


# ---------------------------------------------------------------------------------------------
# Planning (pure)


class SourceFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    size: int


class StickSpace(msgspec.Struct, frozen=True, kw_only=True):
    free_bytes: int
    max_file_size: int | None = None
    block_size: int = 4096
    label: str | None = None


class SpanPlan(msgspec.Struct, frozen=True, kw_only=True):
    sticks: list[StickSpace]
    #: Per file (in the order given), its segments (sha256 still empty).
    files: list[tuple[SourceFile, list[Segment]]]

    def stick_bytes(self, number: int) -> int:
        return sum(s.length for _, segs in self.files for s in segs if s.stick == number)

    def stick_files(self, number: int) -> int:
        return sum(1 for _, segs in self.files for s in segs if s.stick == number)


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block if block > 0 else n


def plan_span(
    files: Sequence[SourceFile],
    sticks: Sequence[StickSpace],
    *,
    metadata_reserve: int = DEFAULT_METADATA_RESERVE,
    limits: Limits = DEFAULT_LIMITS,
) -> SpanPlan:
    """Assign the bundle's files to sticks, splitting a file into segments only when it does not
    fit whole on any stick (or exceeds a stick's file size limit).

    Whole files go, largest first, to the first stick with room (first-fit decreasing); what
    fits nowhere whole is cut across the sticks in order. Each stick keeps `metadata_reserve`
    bytes free for the index and its signatures, and every segment is charged whole allocation
    blocks. The result is deterministic for the same input.

    Raises:
        EnvironmentFailure: ``media-full`` when all sticks together are too small, saying how
            much more space is needed.
        InvalidData: ``too-many-sticks`` above `Limits.span_sticks`.
    """
    if len(sticks) > limits.span_sticks:
        raise InvalidData(
            f"{len(sticks)} sticks given, at most {limits.span_sticks} allowed",
            remedy="use larger sticks",
            code="too-many-sticks",
        )
    for f in files:
        checked_relpath(f.path, limits=limits)
    room = [max(0, s.free_bytes - metadata_reserve) for s in sticks]
    placed: dict[str, list[Segment]] = {}
    order = sorted(files, key=lambda f: (-f.size, f.path))
    leftovers: list[SourceFile] = []
    for f in order:
        base = PurePosixPath(f.path).name
        for i, s in enumerate(sticks):
            need = _round_up(f.size, s.block_size)
            fits_fs = s.max_file_size is None or f.size <= s.max_file_size
            if fits_fs and need <= room[i]:
                room[i] -= need
                placed[f.path] = [
                    Segment(stick=i + 1, offset=0, length=f.size, name=checked_name(base))
                ]
                break
        else:
            leftovers.append(f)
    for f in leftovers:
        base = PurePosixPath(f.path).name
        segs: list[Segment] = []
        offset = 0
        for i, s in enumerate(sticks):
            while offset < f.size:
                usable = (room[i] // s.block_size) * s.block_size if s.block_size else room[i]
                length = min(f.size - offset, usable)
                if s.max_file_size is not None:
                    length = min(length, s.max_file_size)
                if length <= 0:
                    break
                segs.append(
                    Segment(
                        stick=i + 1,
                        offset=offset,
                        length=length,
                        name=checked_name(f"{base}.seg{len(segs) + 1:03d}"),
                    )
                )
                room[i] -= _round_up(length, s.block_size)
                offset += length
            if offset >= f.size:
                break
        if offset < f.size:
            total_needed = sum(f.size for f in files) + metadata_reserve * len(sticks)
            total_free = sum(s.free_bytes for s in sticks)
            raise EnvironmentFailure(
                f"the bundle ({format_bytes(sum(x.size for x in files))}) does not fit on "
                f"{len(sticks)} stick(s) with {format_bytes(total_free)} free in total; about "
                f"{format_bytes(max(0, total_needed - total_free) + (f.size - offset))} more "
                "is needed; nothing was written",
                remedy="add another stick or use larger ones",
                code="media-full",
            )
        placed[f.path] = segs
    return SpanPlan(sticks=list(sticks), files=[(f, placed[f.path]) for f in files])


# ---------------------------------------------------------------------------------------------
# Index building and encoding


def _open_source(root: Path, rel: str) -> int:
    fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidData(
            f"{rel} in {root} is not a regular file",
            remedy="pack the bundle again",
            code="bad-path",
        )
    return fd


def _hash_range(fd: int, offset: int, length: int) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    r = RangeReader(fd, offset, length)
    while n := r.readinto(view):
        h.update(view[:n])
    return h.hexdigest()


def build_index(
    plan: SpanPlan,
    *,
    source_root: Path,
    bundle: str,
    created: str,
    span_id: str | None = None,
) -> SpanIndex:
    """Hash every file and segment of the planned bundle in `source_root` (the packer's staging
    folder, a local disk) and return the index to sign. Segment digests are computed here, before
    any stick is written, so that every stick can carry the complete signed index.

    Raises:
        InvalidData: a source file is not a regular file or changed size since planning.
    """
    sid = span_id or secrets.token_hex(8)
    entries = []
    for f, segs in plan.files:
        fd = _open_source(source_root, f.path)
        try:
            if os.fstat(fd).st_size != f.size:
                raise InvalidData(
                    f"{f.path} changed size since the span was planned",
                    remedy="do not modify the bundle while writing it; pack again",
                    code="size-mismatch",
                )
            whole = _hash_range(fd, 0, f.size)
            hashed = [
                msgspec.structs.replace(s, sha256=_hash_range(fd, s.offset, s.length)) for s in segs
            ]
        finally:
            os.close(fd)
        entries.append(FileEntry(path=f.path, size=f.size, sha256=whole, segments=hashed))
    sticks = [
        StickEntry(
            number=i + 1,
            stick_id=secrets.token_hex(8),
            label=s.label,
            bytes=plan.stick_bytes(i + 1),
        )
        for i, s in enumerate(plan.sticks)
    ]
    return SpanIndex(
        format=SPAN_INDEX_FORMAT,
        version=1,
        span_id=sid,
        bundle=bundle,
        created=created,
        sticks=sticks,
        files=entries,
    )


def encode_index(index: SpanIndex) -> bytes:
    """The exact bytes that are signed and stored (JSON, keys in definition order, one line)."""
    return msgspec.json.encode(index) + b"\n"


def signature_name(index: int) -> str:
    """``span-index.json.sig`` for the first signature, ``span-index.json.sig.<n>`` after."""
    return f"{INDEX_NAME}.sig" if index == 1 else f"{INDEX_NAME}.sig.{index}"


def trust_verifier(
    policy: TrustPolicy, *, now: datetime, limits: Limits = DEFAULT_LIMITS
) -> Callable[[bytes, Sequence[bytes]], None]:
    """The `verify` callable for `read_index`: the span index must be signed, for
    `SPAN_NAMESPACE`, by `policy.threshold` distinct keys trusted at `now`.

    The returned callable raises `gapferry.common.trust.TrustFailure` (InvalidData).
    """

    def verify(raw: bytes, signatures: Sequence[bytes]) -> None:
        trust.require(
            trust.evaluate(
                raw, signatures, policy=policy, namespace=SPAN_NAMESPACE, now=now, limits=limits
            )
        )

    return verify


def span_dir_name(span_id: str) -> str:
    return f"{_DIR_PREFIX}{span_id}"


def _validate_index(index: SpanIndex, limits: Limits) -> None:
    """Structural checks a verified index must still pass (a signed index can be buggy)."""

    def bad(why: str) -> InvalidData:
        return InvalidData(
            f"span index is malformed: {why}",
            remedy="write the span again with a current gapferry",
            code="bad-span-index",
        )

    checked_name(span_dir_name(index.span_id), limits=limits)
    checked_name(index.bundle, limits=limits)
    if not 1 <= len(index.sticks) <= limits.span_sticks:
        raise bad(f"{len(index.sticks)} sticks (1..{limits.span_sticks} allowed)")
    if [s.number for s in index.sticks] != list(range(1, len(index.sticks) + 1)):
        raise bad("sticks are not numbered 1..n")
    if sum(len(f.segments) for f in index.files) > limits.files:
        raise bad(f"more than {limits.files} segments")
    seen: set[str] = set()
    for f in index.files:
        rel = checked_relpath(f.path, limits=limits)
        if f.path in seen:
            raise bad(f"{f.path} listed twice")
        seen.add(f.path)
        if f.size > limits.artifact_bytes or f.size < 0:
            raise bad(f"{f.path}: size {f.size} out of range")
        pos = 0
        for s in f.segments:
            checked_name(s.name, limits=limits)
            if s.offset != pos or s.length < 0 or not 1 <= s.stick <= len(index.sticks):
                raise bad(f"{f.path}: segments do not tile the file")
            pos += s.length
            checked_relpath(str(rel.parent / s.name), limits=limits)
        if pos != f.size:
            raise bad(f"{f.path}: segments cover {pos} of {f.size} bytes")


# ---------------------------------------------------------------------------------------------
# Writing one stick (resumable)


def _stick_rel(f: FileEntry, s: Segment) -> PurePosixPath:
    return PurePosixPath(DATA_DIR) / PurePosixPath(f.path).parent / s.name


def write_stick(
    *,
    index: SpanIndex,
    raw_index: bytes,
    signatures: Sequence[bytes],
    number: int,
    source_root: Path,
    stick_root: Path,
    progress: Progress | None = None,
) -> Path:
    """Write stick `number` of the span to the medium mounted at `stick_root`: its segments (each
    read back), then the index and its signatures, then stick.json last. Returns the span folder.

    Resumable: interrupted temporary files are discarded and segments already on the stick and
    verified by read-back are not written again. Space is checked before anything is written.

    Raises:
        EnvironmentFailure: ``media-full`` and the other media codes (common/media/write.py).
        InvalidData: the source changed (``digest-mismatch``), or `raw_index` is not `index`.
    """
    if msgspec.json.decode(raw_index, type=SpanIndex) != index:
        raise InvalidData(
            "raw_index is not the encoding of index",
            remedy="pass the bytes that were signed",
            code="bad-span-index",
        )
    entry = index.sticks[number - 1]
    mine = [(f, s) for f in index.files for s in f.segments if s.stick == number]
    span_dir = stick_root / span_dir_name(index.span_id)
    meta = len(raw_index) * 2 + sum(len(x) for x in signatures) + _STICK_FILE_MAX
    todo = [
        (f, s)
        for f, s in mine
        if not is_verified(span_dir / _stick_rel(f, s), sha256=s.sha256, size=s.length)
    ]
    check_fits(
        stick_root, sum(s.length for _, s in todo) + meta, files=len(todo) + len(signatures) + 2
    )
    span_dir.mkdir(exist_ok=True)
    discard_partials(span_dir)
    stick_file = span_dir / STICK_FILE
    with contextlib.suppress(FileNotFoundError):
        stick_file.unlink()  # rewriting: the stick is unfinished until stick.json comes back
    stick = StickId(
        format=STICK_FORMAT,
        version=1,
        span_id=index.span_id,
        number=number,
        of=len(index.sticks),
        stick_id=entry.stick_id,
    )
    raw_stick = msgspec.json.encode(stick) + b"\n"
    pending = span_dir / PENDING_FILE
    if not is_verified(pending, sha256=hashlib.sha256(raw_stick).hexdigest(), size=len(raw_stick)):
        copy_to_medium(io.BytesIO(raw_stick), pending, size=len(raw_stick))
    folders = {(span_dir / _stick_rel(f, s)).parent for f, s in mine}
    for d in sorted(folders):
        d.mkdir(parents=True, exist_ok=True)
        discard_partials(d)
    for f, s in todo:
        fd = _open_source(source_root, f.path)
        try:
            copy_to_medium(
                RangeReader(fd, s.offset, s.length),
                span_dir / _stick_rel(f, s),
                size=s.length,
                sha256=s.sha256,
                progress=progress,
            )
        finally:
            os.close(fd)
    copy_to_medium(io.BytesIO(raw_index), span_dir / INDEX_NAME, size=len(raw_index))
    for i, sig in enumerate(signatures, start=1):
        copy_to_medium(io.BytesIO(sig), span_dir / signature_name(i), size=len(sig))
    copy_to_medium(io.BytesIO(raw_stick), stick_file, size=len(raw_stick))
    pending.unlink()
    return span_dir


# ---------------------------------------------------------------------------------------------
# Reading and checking


def _read_small(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidData(
                f"{path} is not a regular file",
                remedy="the stick is malformed or hostile; do not use it",
                code="bad-path",
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InvalidData(
            f"{path} is larger than the limit of {limit} bytes",
            remedy="the stick is malformed or hostile; do not use it",
            code="too-large",
        )
    return data


def find_span_dirs(root: Path) -> list[Path]:
    """Span folders at `root` (a stick's mount point), or `root` itself if it is one."""
    if root.name.startswith(_DIR_PREFIX) and (root / INDEX_NAME).is_file():
        return [root]
    try:
        return sorted(
            p
            for p in root.iterdir()
            if p.name.startswith(_DIR_PREFIX) and p.is_dir() and not p.is_symlink()
        )
    except OSError:
        return []


def read_index(
    span_dir: Path,
    *,
    verify: Callable[[bytes, Sequence[bytes]], object],
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[SpanIndex, bytes]:
    """Read the span index from one stick's span folder, verify its signatures over the raw bytes
    with `verify` (which raises when they do not satisfy the trust policy), and only then decode
    it (STYLE.md practice 2). Returns the index and its raw bytes.

    Raises:
        IncompleteBundle: ``span-index-missing`` when there is no index or no signature.
        InvalidData: whatever `verify` raises; ``bad-span-index`` when the bytes do not decode
            or fail the structural checks; ``too-large`` / ``bad-path``.
    """
    try:
        raw = _read_small(span_dir / INDEX_NAME, limits.span_index_bytes)
    except FileNotFoundError as e:
        raise IncompleteBundle(
            f"{span_dir} has no {INDEX_NAME}",
            remedy="the stick was not finished; write it again",
            code="span-index-missing",
        ) from e
    sigs = []
    for i in range(1, limits.signatures + 1):
        try:
            sigs.append(_read_small(span_dir / signature_name(i), limits.signature_bytes))
        except FileNotFoundError:
            break
    if not sigs:
        raise IncompleteBundle(
            f"{span_dir} has no signature for {INDEX_NAME}",
            remedy="the stick was not finished or the signature was removed; write it again",
            code="span-index-missing",
        )
    verify(raw, sigs)
    try:
        index = msgspec.json.decode(raw, type=SpanIndex)
    except msgspec.DecodeError as e:
        raise InvalidData(
            f"{span_dir / INDEX_NAME} does not decode: {e}",
            remedy="write the span again with a current gapferry",
            code="bad-span-index",
        ) from e
    _validate_index(index, limits)
    return index, raw


StickState = Literal["ok", "missing", "unfinished", "corrupt", "foreign"]


class StickStatus(msgspec.Struct, frozen=True, kw_only=True):
    number: int
    of: int
    label: str | None
    stick_id: str
    state: StickState
    root: Path | None = None
    problems: list[str] = msgspec.field(default_factory=list)

    def describe(self) -> str:
        name = f"stick {self.number} of {self.of}"
        if self.label:
            name += f" (label {self.label})"
        return name


class SpanReport(msgspec.Struct, frozen=True, kw_only=True):
    span_id: str
    bundle: str
    sticks: list[StickStatus]

    @property
    def ok(self) -> bool:
        return all(s.state == "ok" for s in self.sticks)

    def require(self) -> None:
        """Raise unless every stick is present and intact, naming each stick that is not.

        Raises:
            IncompleteBundle: ``span-stick-missing`` when sticks are missing or unfinished.
            InvalidData: ``span-stick-corrupt`` when a stick's content does not match the index.
        """
        bad = [s for s in self.sticks if s.state != "ok"]
        if not bad:
            return
        lines = []
        for s in bad:
            where = f" at {s.root}" if s.root else ""
            detail = f": {'; '.join(s.problems[:5])}" if s.problems else ""
            lines.append(f"{s.describe()} is {s.state}{where}{detail}")
        msg = f"bundle {self.bundle} (span {self.span_id}): " + "; ".join(lines)
        if any(s.state in ("corrupt", "foreign") for s in bad):
            raise InvalidData(
                msg,
                remedy="write the named stick(s) again from the packer's copy; nothing was applied",
                code="span-stick-corrupt",
            )
        raise IncompleteBundle(
            msg,
            remedy="insert (or finish writing) the named stick(s) and run again; nothing was applied",
            code="span-stick-missing",
        )


def _check_segments(
    span_dir: Path, index: SpanIndex, number: int, *, deep: bool, progress: Progress | None
) -> list[str]:
    problems = []
    for f in index.files:
        for s in f.segments:
            if s.stick != number:
                continue
            p = span_dir / _stick_rel(f, s)
            try:
                st = p.lstat()
            except FileNotFoundError:
                problems.append(f"{_stick_rel(f, s)} missing")
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{_stick_rel(f, s)} is not a regular file")
            elif st.st_size != s.length:
                problems.append(f"{_stick_rel(f, s)} has {st.st_size} bytes, expected {s.length}")
            elif deep and not is_verified(p, sha256=s.sha256, size=s.length, progress=progress):
                problems.append(f"{_stick_rel(f, s)} digest mismatch")
    return problems


def check_span(
    index: SpanIndex,
    mounted_roots: Iterable[Path],
    *,
    deep: bool = True,
    progress: Progress | None = None,
) -> SpanReport:
    """Find each stick of the (verified) span among `mounted_roots` and check it against the
    index: present, finished (stick.json), and every segment with the right size and, with
    `deep`, the right digest. Never raises for a bad stick: the report names it (`require`).
    """
    n = len(index.sticks)
    found: dict[int, tuple[Path | None, StickState, list[str]]] = {}
    dir_name = span_dir_name(index.span_id)
    for root in mounted_roots:
        span_dir = root if root.name == dir_name else root / dir_name
        if not span_dir.is_dir() or span_dir.is_symlink():
            continue
        try:
            stick = msgspec.json.decode(
                _read_small(span_dir / STICK_FILE, _STICK_FILE_MAX), type=StickId
            )
        except FileNotFoundError:
            # No stick.json: an unfinished stick. Which one? stick-pending.json says, else
            # its segments do.
            try:
                pend = msgspec.json.decode(
                    _read_small(span_dir / PENDING_FILE, _STICK_FILE_MAX), type=StickId
                )
                if pend.span_id == index.span_id and 1 <= pend.number <= n:
                    found.setdefault(pend.number, (span_dir, "unfinished", ["stick.json missing"]))
                    continue
            except (FileNotFoundError, msgspec.DecodeError, InvalidData):
                pass
            numbers = {
                s.stick
                for f in index.files
                for s in f.segments
                if (span_dir / _stick_rel(f, s)).exists()
            }
            for num in numbers:
                found.setdefault(num, (span_dir, "unfinished", ["stick.json missing"]))
            continue
        except (msgspec.DecodeError, InvalidData) as e:
            found.setdefault(0, (span_dir, "foreign", [f"unreadable stick.json: {e}"]))
            continue
        num = stick.number
        if stick.span_id != index.span_id or not 1 <= num <= n or stick.of != n:
            continue
        if stick.stick_id != index.sticks[num - 1].stick_id:
            found[num] = (span_dir, "foreign", ["stick.json id differs from the index"])
            continue
        problems = _check_segments(span_dir, index, num, deep=deep, progress=progress)
        state: StickState = "corrupt" if problems else "ok"
        prev = found.get(num)
        if prev is None or prev[1] != "ok":
            found[num] = (span_dir, state, problems)
    statuses = []
    for entry in index.sticks:
        where, state, problems = found.get(entry.number, (None, "missing", []))
        statuses.append(
            StickStatus(
                number=entry.number,
                of=n,
                label=entry.label,
                stick_id=entry.stick_id,
                state=state,
                root=where,
                problems=problems,
            )
        )
    return SpanReport(span_id=index.span_id, bundle=index.bundle, sticks=statuses)


def assemble(
    index: SpanIndex,
    report: SpanReport,
    dest: Path,
    *,
    progress: Progress | None = None,
) -> Path:
    """Join the segments into the bundle folder ``dest/<index.bundle>`` (local disk), checking
    every file's size and sha256. Requires a report in which every stick is ok.

    Raises:
        IncompleteBundle / InvalidData: from `SpanReport.require`; ``digest-mismatch`` when a
            joined file does not match the index.
    """
    report.require()
    roots = {s.number: s.root for s in report.sticks}
    out_root = dest / index.bundle
    for f in index.files:
        target = out_root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        h = hashlib.sha256()
        with tmp.open("wb") as out:
            for s in f.segments:
                root = roots[s.stick]
                if root is None:  # pragma: no cover - require() has checked
                    raise AssertionError("stick root missing after require()")
                fd = os.open(root / _stick_rel(f, s), os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    r = RangeReader(fd, 0, s.length)
                    buf = bytearray(CHUNK)
                    view = memoryview(buf)
                    while k := r.readinto(view):
                        h.update(view[:k])
                        out.write(view[:k])
                        if progress is not None:
                            progress(k)
                finally:
                    os.close(fd)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != f.sha256:
            tmp.unlink()
            raise InvalidData(
                f"{f.path} joined from the sticks has sha256 {h.hexdigest()}, expected {f.sha256}",
                remedy="a stick changed while reading; check the sticks and run again",
                code="digest-mismatch",
            )
        tmp.replace(target)
    return out_root
