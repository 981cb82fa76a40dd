"""Open a bundle folder from media and verify everything in it (bundle_spec/SPEC.md section 8).

The I/O shell around `gapferry.common.bundle.verify`: it reads the completion marker, the
manifest and the signatures (each within `Limits`, never through a link), hands the bytes to the
pure core, then checks the folder against the verified manifest: no unexpected, linked or special
files, every listed file present with its size and sha256 (streaming; split artifacts joined),
logs decompressed within their limits.

`open_bundle` composes the steps of `gapferry.common.bundle.scan` (the folder listing) and
`gapferry.common.bundle.steps` (marker, manifest, signatures, name, checksums, listing, hashes,
logs) in SPEC 8 order and stops at the first error; `gapferry audit` calls the same steps and
records each outcome. A rule lives in those two modules only.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from gapferry.common.bundle.layout import (
    MEDIA_ROOT_DIR,
    Kind,
    kind_of_dir_name,
)
from gapferry.common.bundle.model import ArtifactEntry, FileEntry, LogLine, TransferManifest
from gapferry.common.bundle.scan import (
    CUSTODY_NAME_RE,
    REMEDY,
    bundle_kind,
    incomplete_error,
    scan_folder,
)
from gapferry.common.bundle.steps import (
    check_checksums,
    check_file_digest,
    check_folder_name,
    check_joined_parts,
    check_listing,
    check_marker,
    read_log,
    read_manifest,
    read_marker,
    read_signatures,
    verify_manifest,
)
from gapferry.common.bundle.steps import hash_file as _hash_file_serial
from gapferry.common.bundle.verify import VerifiedResult, VerifiedTransfer
from gapferry.common.digest import CHUNK, OVERLAP_MIN, Progress, pump
from gapferry.common.errors import GapferryError, InvalidData, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.safepath import checked_relpath, open_regular
from gapferry.common.trust import TrustPolicy

__all__ = [
    "CUSTODY_NAME_RE",
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

_REMEDY = REMEDY
_incomplete = incomplete_error
#: The old private name of `read_log` (the fuzz harness imports it).
_read_log = read_log


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
                return [] if d.log is None else read_log(self.path, d.log, self.limits)
        raise UsageProblem(
            f"result bundle {self.path.name} has no device {device_name!r}",
            remedy="use a device name from the manifest",
            code="unknown-device",
        )


# --- hashing the content files (ADR 0034) -------------------------------------------------------
#: Artifacts hashed at once by `open_bundle`: hashlib and reads release the GIL, so artifacts hash
#: on separate cores. Capped so memory stays flat: each stream holds `_HASH_BUFFERS` x `CHUNK`.
def _usable_cores() -> int:
    """Cores this process may run on (respects ``taskset`` and cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - macOS


CORES = _usable_cores()
HASH_JOBS = max(1, min(4, CORES))
_HASH_BUFFERS = 4


def _hash_listed(
    root: Path,
    f: FileEntry,
    *,
    whole: Any,
    progress: Progress | None,
    cancel: threading.Event,
) -> str:
    """`steps.hash_file` with the next chunk read while this one is hashed (the part's and the
    whole artifact's hash each in a thread of their own). Same checks and errors.

    Raises:
        InvalidData: ``size-mismatch`` (it changed while reading), ``bad-path`` (link, special),
            ``cancelled`` (another artifact failed first).
        IncompleteBundle: ``missing-file``.
    """
    if f.size < OVERLAP_MIN or CORES == 1:
        # On one core the threads only take turns: a plain loop (the kernel's own read-ahead
        # still overlaps the disk) was 1.3-1.8x faster cold in bench/ (ADR 0034, amendment).
        return _hash_file_serial(root, f, whole=whole, progress=progress)
    try:
        fd = open_regular(root, PurePosixPath(f.path))
    except FileNotFoundError as e:
        raise _incomplete(f"{f.path} is missing", code="missing-file") from e

    def too_long(size: int) -> None:
        if size > f.size:
            raise InvalidData(
                f"{f.path}: expected {f.size} bytes, read more (changed while reading)",
                remedy=_REMEDY,
                code="size-mismatch",
            )

    h = hashlib.sha256()
    sinks = [h.update] if whole is None else [h.update, whole.update]
    with os.fdopen(fd, "rb", buffering=0) as src:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        size = pump(
            src,
            sinks,
            check=too_long,
            progress=progress,
            cancel=cancel,
            chunk=CHUNK,
            buffers=_HASH_BUFFERS,
            readahead=True,
        )
    if size != f.size:
        raise InvalidData(
            f"{f.path}: expected {f.size} bytes, read {size} (changed while reading)",
            remedy=_REMEDY,
            code="size-mismatch",
        )
    return h.hexdigest()


def _check_artifact(
    root: Path,
    a: ArtifactEntry,
    by_path: Mapping[str, FileEntry],
    *,
    progress: Progress | None,
    cancel: threading.Event,
) -> None:
    """`steps.check_artifact_files` over `_hash_listed` (parts in order, then joined)."""
    whole = hashlib.sha256() if a.parts else None
    for rel in a.parts or [a.path]:
        entry = by_path[rel]
        check_file_digest(
            entry, _hash_listed(root, entry, whole=whole, progress=progress, cancel=cancel)
        )
    if whole is not None:
        check_joined_parts(a, whole.hexdigest())


def _check_artifacts(
    root: Path,
    artifacts: list[ArtifactEntry],
    by_path: Mapping[str, FileEntry],
    *,
    progress: Progress | None,
) -> None:
    """Hash every artifact (SPEC 8 step "hashes"), up to `HASH_JOBS` at once.

    The error raised is the one a one-by-one check would raise: that of the first failing artifact
    in manifest order. When an artifact fails, the ones after it stop early; the ones before it
    finish, since one of them may fail too.

    Raises:
        InvalidData, IncompleteBundle: as `steps.check_artifact_files`.
    """
    cancels = [threading.Event() for _ in artifacts]
    if len(artifacts) <= 1 or HASH_JOBS == 1:
        for a, cancel in zip(artifacts, cancels, strict=True):
            _check_artifact(root, a, by_path, progress=progress, cancel=cancel)
        return
    lock = threading.Lock()
    shared: Progress | None = None
    if progress is not None:
        report = progress

        def shared(n: int) -> None:
            with lock:
                report(n)

    def one(i: int) -> None:
        try:
            _check_artifact(root, artifacts[i], by_path, progress=shared, cancel=cancels[i])
        except BaseException:
            for later in cancels[i + 1 :]:
                later.set()
            raise

    futures: list[Future[None]] = []
    with ThreadPoolExecutor(
        max_workers=min(HASH_JOBS, len(artifacts)), thread_name_prefix="gapferry-hash"
    ) as pool:
        try:
            futures = [pool.submit(one, i) for i in range(len(artifacts))]
            for fut in futures:
                fut.exception()  # wait for all, in order
        except BaseException:  # Ctrl-C: stop every stream, then let it propagate
            for c in cancels:
                c.set()
            raise
    for fut in futures:
        err = fut.exception()
        if err is not None:
            raise err


def _scan(root: Path, kind: Kind, limits: Limits) -> tuple[dict[str, int], list[str], list[str]]:
    """`scan_folder` as a tuple (content, signature names, skipped names), for `to_tar`.

    Raises:
        InvalidData: as `scan_folder`.
    """
    listing = scan_folder(root, kind, limits)
    return dict(listing.content), list(listing.signature_files), list(listing.ignored)


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
    kind = bundle_kind(root)
    bound = read_marker(root)
    listing = scan_folder(root, kind, limits)
    raw = read_manifest(root, limits)
    sigs = read_signatures(root, listing.signature_files, limits)
    verified = verify_manifest(raw, sigs, kind=kind, policy=policy, now=now, limits=limits)
    manifest = verified.manifest
    try:
        check_folder_name(root, manifest)
        check_marker(root, bound, verified.manifest_sha256)
        check_checksums(root, manifest, limits)
        check_listing(manifest.files, listing.content)
        if check_files:
            if isinstance(manifest, TransferManifest):
                by_path = {f.path: f for f in manifest.files}
                _check_artifacts(root, manifest.artifacts, by_path, progress=progress)
            else:
                for d in manifest.devices:
                    if d.log is not None:
                        read_log(root, d.log, limits)
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
        signature_files=listing.signature_files,
        files=checks,
        ignored=listing.ignored,
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
