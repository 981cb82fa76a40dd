"""The single-file form of a bundle: one uncompressed POSIX (pax) tar, for data diodes and
file-transfer appliances (bundle_spec/SPEC.md section 3.8).

The tar holds ``<bundle folder name>/`` and the bundle's files beneath it, the completion marker
last. Importing extracts it with the same refusals as reading media (no links, devices, escaping
names, duplicates or surplus entries; sizes within `Limits`), then verifies the folder with
`open_bundle`; only a verified bundle is left under `dest_dir`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path, PurePosixPath

from gapferry.common.atomic import atomic_open
from gapferry.common.bundle.layout import (
    CHECKSUMS_NAME,
    CUSTODY_DIR,
    MANIFEST_NAME,
    MARKER_NAME,
    kind_of_dir_name,
)
from gapferry.common.bundle.read import CUSTODY_NAME_RE, OpenedBundle, _scan, open_bundle
from gapferry.common.digest import CHUNK
from gapferry.common.errors import IncompleteBundle, InvalidData, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.safepath import checked_relpath
from gapferry.common.trust import TrustPolicy

__all__ = ["extract_tar", "from_tar", "to_tar"]

_REMEDY = "do not use this file; ask the sender for a new one"


def _order(name: str) -> tuple[int, str]:
    if name == MANIFEST_NAME:
        return (0, name)
    if name.startswith(MANIFEST_NAME + ".sig"):
        return (1, name)
    if name == CHECKSUMS_NAME:
        return (2, name)
    if name == MARKER_NAME:
        return (9, name)
    return (5, name)


def to_tar(bundle_dir: Path, out: Path, *, limits: Limits) -> Path:
    """Write the single-file form of `bundle_dir` to `out` (crash-safe; deterministic metadata).

    The bundle is not verified here (the receiver does that), but links and special files are
    refused as a reader would.

    Raises:
        UsageProblem: ``not-a-bundle``.
        InvalidData: ``unsafe-file``, ``unexpected-file`` (from the folder scan).
    """
    src = Path(bundle_dir)
    kind = kind_of_dir_name(src.name)
    if kind is None or not src.is_dir() or src.is_symlink():
        raise UsageProblem(
            f"{src} is not a bundle folder", remedy="pass a bundle folder", code="not-a-bundle"
        )
    content, sigs, _ignored = _scan(src, kind, limits)
    names = [n for n in (MANIFEST_NAME, CHECKSUMS_NAME, MARKER_NAME) if (src / n).is_file()]
    names += sigs + sorted(content)
    # Custody events travel with the bundle (SPEC 3.9); _scan has already checked their shape.
    custody = src / CUSTODY_DIR
    if custody.is_dir() and not custody.is_symlink():
        names += sorted(
            f"{CUSTODY_DIR}/{e.name}" for e in custody.iterdir() if CUSTODY_NAME_RE.match(e.name)
        )
    names.sort(key=_order)
    dirs = sorted({str(PurePosixPath(n).parent) for n in names} - {"."})
    with (
        atomic_open(Path(out)) as f,
        tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for d in [None, *dirs]:
            info = tarfile.TarInfo(src.name if d is None else f"{src.name}/{d}")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for n in names:
            fd = os.open(src / n, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as data:
                info = tarfile.TarInfo(f"{src.name}/{n}")
                info.size = os.fstat(data.fileno()).st_size
                info.mode = 0o644
                tar.addfile(info, data)
    return Path(out)


def _bad(what: str, code: str = "unsafe-file") -> InvalidData:
    return InvalidData(f"single-file bundle: {what}", remedy=_REMEDY, code=code)


def extract_tar(tar_path: Path, work: Path, limits: Limits) -> str:
    """Extract the single-file form into `work`, refusing anything a bundle cannot contain
    (SPEC 3.8), and return the bundle folder's name. The content is NOT verified: callers run
    `open_bundle` (as `from_tar` does) or the audit's checks on the extracted folder.

    Raises:
        InvalidData: ``not-a-tar``, ``not-a-bundle``, ``unsafe-file``, ``bad-path``,
            ``too-many-files``, ``too-large``.
        IncompleteBundle: the tar is damaged or cut short.
    """
    top: str | None = None
    seen: set[str] = set()
    budget = limits.files + limits.signatures + 16
    try:
        tar = tarfile.open(tar_path, mode="r:")  # noqa: SIM115 - closed below
    except (tarfile.TarError, OSError) as e:
        raise _bad(f"{tar_path} is not an uncompressed tar ({e})", code="not-a-tar") from e
    with tar:
        try:
            for member in tar:
                if len(seen) >= budget:
                    raise _bad(f"more than {budget} entries", code="too-many-files")
                name = member.name.rstrip("/")
                first, _, rest = name.partition("/")
                if top is None:
                    if kind_of_dir_name(first) is None:
                        raise _bad(
                            f"first entry {name!r} is not a bundle folder", code="not-a-bundle"
                        )
                    top = first
                if first != top:
                    raise _bad(f"entry {name!r} is outside {top}/")
                if name in seen:
                    raise _bad(f"entry {name!r} appears twice")
                seen.add(name)
                if not rest:
                    if not member.isdir():
                        raise _bad(f"{name!r} must be a folder")
                    continue
                rel = checked_relpath(rest, limits=limits)
                if member.isdir():
                    (work / top / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile() or member.issparse():
                    raise _bad(f"{name!r} is a link, a sparse or a special file")
                if member.size > limits.artifact_bytes:
                    raise _bad(
                        f"{name!r} is larger than {limits.artifact_bytes} bytes", code="too-large"
                    )
                dst = work / top / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - isfile() members always have data
                    raise _bad(f"{name!r} has no data")
                fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as out, src:
                    shutil.copyfileobj(src, out, CHUNK)
        except tarfile.TarError as e:
            raise IncompleteBundle(
                f"single-file bundle {tar_path.name} is damaged or cut short ({e})",
                remedy="transfer the file again",
                code="incomplete",
            ) from e
    if top is None:
        raise _bad("the tar is empty", code="not-a-bundle")
    return top


def from_tar(
    tar_path: Path,
    dest_dir: Path,
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
) -> OpenedBundle:
    """Import a single-file bundle into ``dest_dir/<bundle folder>/`` and verify it.

    Nothing is left under `dest_dir` unless the bundle verifies.

    Raises:
        InvalidData: ``not-a-tar``, ``not-a-bundle``, ``unsafe-file``, ``bad-path``,
            ``too-many-files``, ``too-large``, and everything `open_bundle` raises.
        UsageProblem: ``bundle-exists`` when the folder already exists in `dest_dir`.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".incoming-", dir=dest))
    try:
        top = extract_tar(Path(tar_path), work, limits)
        try:
            opened = open_bundle(work / top, policy=policy, now=now, limits=limits)
        except UsageProblem as e:
            # Inside a tar, "not a bundle folder" is a fact about the file's content, not about
            # how the command was called: the data is invalid (exit 1, not 2).
            raise _bad(f"{top!r} inside the tar: {e.message}", code=e.code) from e
        final = dest / top
        if final.exists():
            raise UsageProblem(
                f"{final} already exists",
                remedy="remove it or import elsewhere",
                code="bundle-exists",
            )
        (work / top).rename(final)
        return OpenedBundle(
            path=final,
            kind=opened.kind,
            verified=opened.verified,
            signature_files=opened.signature_files,
            files=opened.files,
            ignored=opened.ignored,
            limits=limits,
        )
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
