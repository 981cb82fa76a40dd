"""Open a bundle folder from media and verify everything in it (bundle_spec/SPEC.md section 8).

The I/O shell around `gapferry.common.bundle.verify`: it reads the completion marker, the
manifest and the signatures (each within `Limits`, never through a link), hands the bytes to the
pure core, then checks the folder against the verified manifest: no unexpected, linked or special
files, every listed file present with its size and sha256 (streaming; split artifacts joined),
logs decompressed within their limits.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import msgspec
import zstandard
from gapferry.common.bundle.canonical import reject_duplicate_keys, render_sha256sums
from gapferry.common.bundle.layout import (
    ARTIFACTS_DIR,
    CHECKSUMS_NAME,
    CUSTODY_DIR,
    LOGS_DIR,
    MANIFEST_NAME,
    MARKER_NAME,
    MEDIA_ROOT_DIR,
    Kind,
    bundle_dir_name,
    is_ignored_name,
    kind_of_dir_name,
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
from gapferry.common.bundle.verify import (
    VerifiedResult,
    VerifiedTransfer,
    verify_result_manifest,
    verify_transfer_manifest,
)
from gapferry.common.digest import CHUNK, Progress
from gapferry.common.errors import GapferryError, IncompleteBundle, InvalidData, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.safepath import checked_relpath, open_regular
from gapferry.common.trust import TrustPolicy

__all__ = [
    "VERIFIED_ATTR",
    "ArtifactStream",
    "FileCheck",
    "OpenedBundle",
    "find_bundles",
    "open_bundle",
]

#: When `open_bundle` fails after the signatures and the manifest verified, the error carries the
#: `VerifiedTransfer`/`VerifiedResult` under this attribute (for reports of what was checked).
VERIFIED_ATTR = "verified"

_SIG_RE = re.compile(r"^manifest\.json\.sig(?:\.([2-9]|[1-9][0-9]{1,3}))?$")
_MARKER_MAX = 256
_REMEDY = "do not use this bundle; ask the sender for a new one"


@dataclass(frozen=True, kw_only=True)
class FileCheck:
    """One content file: as listed, and whether its bytes were hashed and matched."""

    path: str
    size: int
    sha256: str
    verified: bool

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "verified": self.verified,
        }


def _incomplete(what: str, *, code: str = "incomplete") -> IncompleteBundle:
    return IncompleteBundle(
        what,
        remedy="the bundle is still being written, was interrupted, or was copied only in part; "
        "write or copy it again (gapferry resumes where it stopped)",
        code=code,
    )


def _unsafe(rel: str, why: str) -> InvalidData:
    return InvalidData(f"refusing {rel!r}: {why}", remedy=_REMEDY, code="unsafe-file")


def _unexpected(*rels: str) -> InvalidData:
    shown = ", ".join(repr(r) for r in rels[:10]) + (
        f" and {len(rels) - 10} more" if len(rels) > 10 else ""
    )
    return InvalidData(
        f"unexpected file(s) in the bundle, not listed in the manifest: {shown}",
        remedy="someone added them to the bundle; " + _REMEDY,
        code="unexpected-file",
    )


def _read_small(root: Path, rel: str, limit: int, *, too_large: str) -> bytes | None:
    """Read a small regular file, at most `limit` bytes; None when absent."""
    try:
        fd = open_regular(root, PurePosixPath(rel))
    except FileNotFoundError:
        return None
    except InvalidData as e:
        raise _unsafe(rel, e.message) from e
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidData(
            f"{rel} is larger than the limit of {limit} bytes", remedy=_REMEDY, code=too_large
        )
    return data


class ArtifactStream:
    """A `Readable` over an artifact's bytes (parts joined) that re-checks size and sha256.

    The check happens when the end is reached: `readinto` raises `InvalidData`
    (``digest-mismatch``/``size-mismatch``) instead of returning the final 0 if the bytes on the
    medium changed since verification. Consumers must not commit anything before the end.
    """

    def __init__(self, root: Path, entry: ArtifactEntry, limits: Limits) -> None:
        self._root = root
        self._entry = entry
        self._paths = entry.parts or [entry.path]
        self._limits = limits
        self._index = 0
        self._file: Any = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False

    def __enter__(self) -> ArtifactStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def readinto(self, buffer: memoryview, /) -> int:
        while not self._done:
            if self._file is None:
                if self._index >= len(self._paths):
                    self._finish()
                    return 0
                rel = self._paths[self._index]
                try:
                    fd = open_regular(self._root, checked_relpath(rel, limits=self._limits))
                except FileNotFoundError as e:
                    raise _incomplete(f"{rel} is missing", code="missing-file") from e
                self._file = os.fdopen(fd, "rb", buffering=0)
            n = self._file.readinto(buffer)
            if n:
                self._hash.update(buffer[:n])
                self._size += n
                if self._size > self._entry.size:
                    raise InvalidData(
                        f"artifact {self._entry.name!r} is longer than {self._entry.size} bytes",
                        remedy=_REMEDY,
                        code="size-mismatch",
                    )
                return int(n)
            self.close()
            self._index += 1
        return 0

    def _finish(self) -> None:
        self._done = True
        if self._size != self._entry.size:
            raise _incomplete(
                f"artifact {self._entry.name!r}: expected {self._entry.size} bytes, read "
                f"{self._size}",
                code="truncated-file",
            )
        if self._hash.hexdigest() != self._entry.sha256:
            raise InvalidData(
                f"artifact {self._entry.name!r}: expected sha256 {self._entry.sha256}, read "
                f"{self._hash.hexdigest()}",
                remedy=_REMEDY,
                code="digest-mismatch",
            )


@dataclass(frozen=True, kw_only=True)
class OpenedBundle:
    """A bundle folder whose completion marker, signatures, manifest and files were verified."""

    path: Path
    kind: Kind
    verified: VerifiedTransfer | VerifiedResult
    #: Signature file names, in the order they were checked (index = TrustResult check index).
    signature_files: tuple[str, ...]
    files: tuple[FileCheck, ...]
    #: Operating-system litter and leftover temporary files that were skipped.
    ignored: tuple[str, ...]
    limits: Limits

    @property
    def transfer(self) -> VerifiedTransfer:
        """The verified transfer manifest. Raises `UsageProblem` for a result bundle."""
        if not isinstance(self.verified, VerifiedTransfer):
            raise UsageProblem(
                f"{self.path.name} is a result bundle, not a transfer bundle",
                remedy="pass a transfer bundle",
                code="wrong-kind",
            )
        return self.verified

    @property
    def result(self) -> VerifiedResult:
        """The verified result manifest. Raises `UsageProblem` for a transfer bundle."""
        if not isinstance(self.verified, VerifiedResult):
            raise UsageProblem(
                f"{self.path.name} is a transfer bundle, not a result bundle",
                remedy="pass a result bundle",
                code="wrong-kind",
            )
        return self.verified

    def open_artifact(self, sha256: str) -> ArtifactStream:
        """Stream an artifact's bytes (use as a context manager; see `ArtifactStream`).

        Raises:
            UsageProblem: ``unknown-artifact`` when the bundle has no artifact with that hash.
        """
        for a in self.transfer.manifest.artifacts:
            if a.sha256 == sha256:
                return ArtifactStream(self.path, a, self.limits)
        raise UsageProblem(
            f"bundle {self.path.name} has no artifact {sha256}",
            remedy="use a sha256 from the manifest",
            code="unknown-artifact",
        )

    def read_log(self, device_name: str) -> list[LogLine]:
        """A device's log lines from a result bundle (empty when it has none).

        Raises:
            InvalidData: ``digest-mismatch``, ``zstd-bomb``, ``bad-log``.
        """
        for d in self.result.manifest.devices:
            if d.name == device_name:
                return [] if d.log is None else _read_log(self.path, d.log, self.limits)
        raise UsageProblem(
            f"result bundle {self.path.name} has no device {device_name!r}",
            remedy="use a device name from the manifest",
            code="unknown-device",
        )


def _bad_log(ref: LogRef, why: str, code: str = "bad-log") -> InvalidData:
    return InvalidData(f"log {ref.path}: {why}", remedy=_REMEDY, code=code)


def _read_log(root: Path, ref: LogRef, limits: Limits) -> list[LogLine]:
    """Read, hash and decompress one log within its declared and configured limits."""
    packed = _read_small(root, ref.path, ref.size, too_large="size-mismatch")
    if packed is None:
        raise _incomplete(f"{ref.path} is missing", code="missing-file")
    if len(packed) != ref.size:
        raise _incomplete(
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


def _scan(root: Path, kind: Kind, limits: Limits) -> tuple[dict[str, int], list[str], list[str]]:
    """List the folder without following links: content files (path -> size), signature
    names and skipped names.

    Raises:
        InvalidData: ``unsafe-file`` (link, device, FIFO, socket, hard link, nested folder),
            ``unexpected-file``, ``too-many-files``.
    """
    content: dict[str, int] = {}
    sigs: list[str] = []
    ignored: list[str] = []
    unexpected: list[str] = []
    fixed = {MANIFEST_NAME, CHECKSUMS_NAME, MARKER_NAME}
    subdir = ARTIFACTS_DIR if kind == "transfer" else LOGS_DIR
    budget = limits.files + limits.signatures + 16

    def entries(folder: Path) -> list[os.DirEntry[str]]:
        with os.scandir(folder) as it:
            found = []
            for e in it:
                found.append(e)
                if len(found) > budget:
                    raise InvalidData(
                        f"{folder} holds more than {budget} entries",
                        remedy=_REMEDY,
                        code="too-many-files",
                    )
            return sorted(found, key=lambda e: e.name)

    def is_leftover(name: str) -> bool:
        return name.startswith(".") and name.endswith(".part")

    for e in entries(root):
        name = e.name
        if is_ignored_name(name) or is_leftover(name):
            ignored.append(name)
            continue
        st = e.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise _unsafe(name, "is a symbolic link")
        if name == CUSTODY_DIR and stat.S_ISDIR(st.st_mode):
            _check_custody_shape(Path(e.path), entries, limits)
            continue
        if name == subdir and stat.S_ISDIR(st.st_mode):
            for sub in entries(Path(e.path)):
                rel = f"{subdir}/{sub.name}"
                if is_ignored_name(sub.name) or is_leftover(sub.name):
                    ignored.append(rel)
                    continue
                sst = sub.stat(follow_symlinks=False)
                if stat.S_ISLNK(sst.st_mode):
                    raise _unsafe(rel, "is a symbolic link")
                if stat.S_ISDIR(sst.st_mode):
                    unexpected.append(rel + "/")
                    continue
                if not stat.S_ISREG(sst.st_mode):
                    raise _unsafe(rel, "is not a regular file")
                if sst.st_nlink > 1:
                    raise _unsafe(rel, "has other hard links")
                content[rel] = sst.st_size
            continue
        if stat.S_ISDIR(st.st_mode):
            unexpected.append(name + "/")
            continue
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(name, "is not a regular file")
        if st.st_nlink > 1:
            raise _unsafe(name, "has other hard links")
        if name in fixed:
            continue
        if _SIG_RE.match(name):
            sigs.append(name)
            continue
        unexpected.append(name)
    if unexpected:
        raise _unexpected(*unexpected)

    def sig_index(n: str) -> int:
        m = _SIG_RE.match(n)
        return int(m.group(1)) if m and m.group(1) else 1

    return content, sorted(sigs, key=sig_index), ignored


#: Names allowed in the custody folder (SPEC 3.9).
CUSTODY_NAME_RE = re.compile(r"^[0-9]{4}\.json(\.sig)?$")


def _check_custody_shape(
    folder: Path, entries: Callable[[Path], list[os.DirEntry[str]]], limits: Limits
) -> None:
    """The optional custody folder (SPEC 3.7): only numbered event files and their signatures,
    regular, not hard-linked, bounded in count. Events are verified by `gapferry audit` and
    `gapferry custody show`, never here: they are not part of the signed manifest.

    Raises:
        InvalidData: ``unsafe-file``, ``unexpected-file``, ``too-many-files``.
    """
    found = entries(folder)
    if len(found) > 2 * limits.custody_events + 16:
        raise InvalidData(
            f"{CUSTODY_DIR}/ holds {len(found)} entries, more than the limit of "
            f"{2 * limits.custody_events} events and signatures",
            remedy=_REMEDY,
            code="too-many-files",
        )
    for sub in found:
        rel = f"{CUSTODY_DIR}/{sub.name}"
        if is_ignored_name(sub.name) or (sub.name.startswith(".") and sub.name.endswith(".part")):
            continue
        sst = sub.stat(follow_symlinks=False)
        if stat.S_ISLNK(sst.st_mode):
            raise _unsafe(rel, "is a symbolic link")
        if not stat.S_ISREG(sst.st_mode):
            raise _unsafe(rel, "is not a regular file")
        if sst.st_nlink > 1:
            raise _unsafe(rel, "has other hard links")
        if not CUSTODY_NAME_RE.match(sub.name):
            raise _unexpected(rel)


def _check_listing(root: Path, files: Sequence[FileEntry], present: dict[str, int]) -> None:
    listed = {f.path: f for f in files}
    extra = sorted(set(present) - set(listed))
    if extra:
        raise _unexpected(*extra)
    for f in files:
        size = present.get(f.path)
        if size is None:
            raise _incomplete(
                f"{f.path} is listed in the manifest but missing", code="missing-file"
            )
        if size < f.size:
            raise _incomplete(
                f"{f.path}: expected {f.size} bytes, found {size} (truncated)",
                code="truncated-file",
            )
        if size > f.size:
            raise InvalidData(
                f"{f.path}: expected {f.size} bytes, found {size}",
                remedy=_REMEDY,
                code="size-mismatch",
            )


def _hash_file(root: Path, f: FileEntry, *, whole: Any, progress: Progress | None) -> None:
    fd = open_regular(root, PurePosixPath(f.path))
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
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
            remedy=_REMEDY,
            code="size-mismatch",
        )
    if h.hexdigest() != f.sha256:
        raise InvalidData(
            f"{f.path}: expected sha256 {f.sha256}, found {h.hexdigest()}",
            remedy="the file was altered or the medium is failing; " + _REMEDY,
            code="digest-mismatch",
        )


def open_bundle(
    path: Path,
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
    check_files: bool = True,
    progress: Progress | None = None,
) -> OpenedBundle:
    """Open and verify the bundle folder `path` (SPEC 8).

    With `check_files` False the content files are checked for presence and size only, not
    hashed (`open_artifact` still checks each artifact's hash as it is read).

    Raises:
        IncompleteBundle (InvalidData, exit 3): ``incomplete`` (no or malformed marker),
            ``missing-file``, ``truncated-file``.
        InvalidData: every code of `verify_transfer_manifest`, plus ``name-mismatch``,
            ``marker-mismatch``,
            ``unexpected-file``, ``unsafe-file``, ``too-many-files``, ``size-mismatch``,
            ``digest-mismatch``, ``zstd-bomb``, ``bad-log``.
        UsageProblem: ``not-a-bundle`` when `path` is not a bundle folder.
    """
    root = Path(path)
    kind = kind_of_dir_name(root.name)
    if kind is None or root.is_symlink() or not root.is_dir():
        raise UsageProblem(
            f"{root} is not a bundle folder (transfer-... or result-...)",
            remedy="pass a bundle folder, a single-file bundle (.tar), or a medium with one bundle",
            code="not-a-bundle",
        )
    try:
        marker = _read_small(root, MARKER_NAME, _MARKER_MAX, too_large="marker-too-large")
    except InvalidData as e:
        if e.code != "marker-too-large":
            raise
        raise _incomplete(f"{root.name}: the completion marker is malformed") from e
    if marker is None:
        raise _incomplete(f"{root.name} has no completion marker ({MARKER_NAME})")
    bound = parse_marker(marker)
    if bound is None:
        raise _incomplete(f"{root.name}: the completion marker is malformed")
    present, sig_names, ignored = _scan(root, kind, limits)
    raw = _read_small(root, MANIFEST_NAME, limits.manifest_bytes, too_large="manifest-too-large")
    if raw is None:
        raise _incomplete(f"{root.name} has no {MANIFEST_NAME}", code="missing-file")
    if len(sig_names) > limits.signatures:
        raise InvalidData(
            f"{len(sig_names)} signature files, more than the limit of {limits.signatures}",
            remedy=_REMEDY,
            code="too-many-signatures",
        )
    sigs = []
    for name in sig_names:
        data = _read_small(root, name, limits.signature_bytes, too_large="bad-signature")
        if data is None:  # listed by _scan a moment ago: removed while we read
            raise _incomplete(f"{name} disappeared while reading", code="missing-file")
        sigs.append(data)
    verified: VerifiedTransfer | VerifiedResult
    if kind == "transfer":
        verified = verify_transfer_manifest(raw, sigs, policy=policy, now=now, limits=limits)
        manifest: TransferManifest | ResultManifest = verified.manifest
    else:
        verified = verify_result_manifest(raw, sigs, policy=policy, now=now, limits=limits)
        manifest = verified.manifest
    try:
        ident = manifest.bundle_id if isinstance(manifest, TransferManifest) else manifest.result_id
        expected = bundle_dir_name(
            kind, site=manifest.site, sequence=manifest.sequence, bundle_id=ident
        )
        if root.name != expected:
            raise InvalidData(
                f"the bundle folder is named {root.name!r} but its manifest says {expected!r}",
                remedy="the folder was renamed; rename it back, or " + _REMEDY,
                code="name-mismatch",
            )
        if verified.manifest_sha256 != bound:
            raise InvalidData(
                f"{root.name}: the completion marker binds manifest sha256 {bound}, but "
                f"manifest.json has {verified.manifest_sha256}",
                remedy="the bundle was altered after it was written; " + _REMEDY,
                code="marker-mismatch",
            )
        sums = _read_small(
            root, CHECKSUMS_NAME, 64 + (limits.files + 1) * 600, too_large="too-large"
        )
        if sums is None:
            raise _incomplete(f"{root.name} has no {CHECKSUMS_NAME}", code="missing-file")
        if hashlib.sha256(sums).hexdigest() != manifest.checksums_sha256:
            raise InvalidData(
                f"{CHECKSUMS_NAME}: sha256 differs from the manifest's checksums_sha256",
                remedy=_REMEDY,
                code="digest-mismatch",
            )
        if sums != render_sha256sums(manifest.files):
            raise InvalidData(
                f"{CHECKSUMS_NAME} does not list exactly the manifest's files",
                remedy="the signer's software is buggy; " + _REMEDY,
                code="inconsistent-manifest",
            )
        _check_listing(root, manifest.files, present)
        by_path = {f.path: f for f in manifest.files}
        if check_files:
            if isinstance(manifest, TransferManifest):
                for a in manifest.artifacts:
                    whole = hashlib.sha256() if a.parts else None
                    for rel in a.parts or [a.path]:
                        _hash_file(root, by_path[rel], whole=whole, progress=progress)
                    if whole is not None and whole.hexdigest() != a.sha256:
                        raise InvalidData(
                            f"artifact {a.name!r}: its parts joined have sha256 {whole.hexdigest()}, "
                            f"expected {a.sha256}",
                            remedy=_REMEDY,
                            code="digest-mismatch",
                        )
            else:
                for d in manifest.devices:
                    if d.log is not None:
                        _read_log(root, d.log, limits)
    except GapferryError as err:
        # Callers (the verify CLI) report what was verified before the failure.
        setattr(err, VERIFIED_ATTR, verified)
        raise
    checks = tuple(
        FileCheck(path=f.path, size=f.size, sha256=f.sha256, verified=check_files)
        for f in manifest.files
    )
    return OpenedBundle(
        path=root,
        kind=kind,
        verified=verified,
        signature_files=tuple(sig_names),
        files=checks,
        ignored=tuple(ignored),
        limits=limits,
    )


def find_bundles(media_root: Path) -> list[Path]:
    """Bundle folders under ``<media_root>/gapferry/`` (or under `media_root` itself when it is
    the ``gapferry`` folder), sorted by name. Links and other names are skipped.

    Complete or not: `open_bundle` decides.
    """
    base = Path(media_root)
    if base.name != MEDIA_ROOT_DIR and (base / MEDIA_ROOT_DIR).is_dir():
        base = base / MEDIA_ROOT_DIR
    if base.is_symlink() or not base.is_dir():
        return []
    found = []
    with os.scandir(base) as it:
        for e in it:
            if kind_of_dir_name(e.name) and e.is_dir(follow_symlinks=False):
                found.append(base / e.name)
    return sorted(found)
