"""List a bundle folder on media without following links (bundle_spec/SPEC.md sections 3 and 8).

The first step of reading a bundle, shared by `gapferry.common.bundle.read.open_bundle` (which
stops at the first problem) and `gapferry audit` (which records every problem and goes on):
the folder's name, its entries (no links, devices, FIFOs, sockets, hard links, nested folders or
unexpected names; OS litter and leftover temporaries skipped), the shape of the ``custody/``
folder, and reading a small file within a cap. Each rule exists here once.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gapferry.common.bundle.layout import (
    ARTIFACTS_DIR,
    CHECKSUMS_NAME,
    CUSTODY_DIR,
    LOGS_DIR,
    MANIFEST_NAME,
    MARKER_NAME,
    Kind,
    is_ignored_name,
    kind_of_dir_name,
)
from gapferry.common.errors import IncompleteBundle, InvalidData, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.safepath import open_regular

__all__ = [
    "CUSTODY_NAME_RE",
    "REMEDY",
    "SIGNATURE_NAME_RE",
    "BundleListing",
    "Report",
    "bundle_kind",
    "incomplete_error",
    "read_small",
    "scan_folder",
    "unexpected_error",
    "unsafe_error",
]

#: The remedy of every refusal of hostile or broken bundle data.
REMEDY = "do not use this bundle; ask the sender for a new one"

#: Signature file names (SPEC 3.3): ``manifest.json.sig``, then ``.sig.2`` ... ``.sig.9999``
#: (``.sig.1`` is not a name: the first signature has no number).
SIGNATURE_NAME_RE = re.compile(r"^manifest\.json\.sig(?:\.([2-9]|[1-9][0-9]{1,3}))?$")

#: Names allowed in the custody folder (SPEC 3.9).
CUSTODY_NAME_RE = re.compile(r"^[0-9]{4}\.json(\.sig)?$")

#: Where `scan_folder` sends each problem it finds: ``raise`` it (the reader) or record it.
Report = Callable[[InvalidData], None]


def incomplete_error(what: str, *, code: str = "incomplete") -> IncompleteBundle:
    """The error for a bundle still being written, interrupted, or copied in part (exit 3)."""
    return IncompleteBundle(
        what,
        remedy="the bundle is still being written, was interrupted, or was copied only in part; "
        "write or copy it again (gapferry resumes where it stopped)",
        code=code,
    )


def unsafe_error(rel: str, why: str) -> InvalidData:
    """A link, device, FIFO, socket or hard-linked file in the bundle (``unsafe-file``)."""
    return InvalidData(f"refusing {rel!r}: {why}", remedy=REMEDY, code="unsafe-file")


def unexpected_error(*rels: str) -> InvalidData:
    """Files the format does not allow or the manifest does not list (``unexpected-file``)."""
    shown = ", ".join(repr(r) for r in rels[:10]) + (
        f" and {len(rels) - 10} more" if len(rels) > 10 else ""
    )
    return InvalidData(
        f"unexpected file(s) in the bundle, not listed in the manifest: {shown}",
        remedy="someone added them to the bundle; " + REMEDY,
        code="unexpected-file",
    )


def bundle_kind(root: Path) -> Kind:
    """The kind `root`'s name announces, when it is a real folder (not a link) (SPEC 3.2).

    Raises:
        UsageProblem: ``not-a-bundle``.
    """
    kind = kind_of_dir_name(root.name)
    if kind is None or root.is_symlink() or not root.is_dir():
        raise UsageProblem(
            f"{root} is not a bundle folder (transfer-... or result-...)",
            remedy="pass a bundle folder, a single-file bundle (.tar), or a medium with one bundle",
            code="not-a-bundle",
        )
    return kind


def read_small(root: Path, rel: str, limit: int, *, too_large: str) -> bytes | None:
    """Read a small regular file below `root`, at most `limit` bytes; None when absent.

    Raises:
        InvalidData: ``unsafe-file`` for a link or special file; `too_large` beyond `limit`.
    """
    try:
        fd = open_regular(root, PurePosixPath(rel))
    except FileNotFoundError:
        return None
    except InvalidData as e:
        raise unsafe_error(rel, e.message) from e
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidData(
            f"{rel} is larger than the limit of {limit} bytes", remedy=REMEDY, code=too_large
        )
    return data


@dataclass(frozen=True, kw_only=True)
class BundleListing:
    """What `scan_folder` found: content files, signatures, skipped names."""

    #: Files under ``artifacts/`` (transfer) or ``logs/`` (result): path -> size.
    content: dict[str, int] = field(default_factory=dict)
    #: Signature file names, first signature first (index = TrustResult check index).
    signature_files: tuple[str, ...] = ()
    #: Operating-system litter and leftover temporary files that were skipped.
    ignored: tuple[str, ...] = ()


def _raise(err: InvalidData) -> None:
    raise err


def _is_leftover(name: str) -> bool:
    return name.startswith(".") and name.endswith(".part")


def scan_folder(
    root: Path, kind: Kind, limits: Limits, *, report: Report = _raise
) -> BundleListing:
    """List the bundle folder `root` without following links (SPEC 3, SPEC 8 step "layout").

    Each unsafe entry is passed to `report` as it is found, in name order; names the format does
    not allow are passed as one ``unexpected-file`` error at the end. The default `report`
    raises, so the first problem stops the scan (the reader); a recording `report` (the audit)
    sees every problem and gets the listing of the safe entries.

    Raises:
        InvalidData: ``too-many-files`` (always raised: the listing is not bounded); and, with
            the default `report`, ``unsafe-file`` (link, device, FIFO, socket, hard link) and
            ``unexpected-file`` (including nested folders and bad custody names).
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
                        remedy=REMEDY,
                        code="too-many-files",
                    )
            return sorted(found, key=lambda e: e.name)

    def regular(rel: str, st: os.stat_result) -> bool:
        """Report `rel` unless it is a regular file with no other hard links."""
        if stat.S_ISLNK(st.st_mode):
            report(unsafe_error(rel, "is a symbolic link"))
        elif not stat.S_ISREG(st.st_mode):
            report(unsafe_error(rel, "is not a regular file"))
        elif st.st_nlink > 1:
            report(unsafe_error(rel, "has other hard links"))
        else:
            return True
        return False

    for e in entries(root):
        name = e.name
        if is_ignored_name(name) or _is_leftover(name):
            ignored.append(name)
            continue
        st = e.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            report(unsafe_error(name, "is a symbolic link"))
            continue
        if name == CUSTODY_DIR and stat.S_ISDIR(st.st_mode):
            _check_custody_shape(Path(e.path), entries, limits, report)
            continue
        if name == subdir and stat.S_ISDIR(st.st_mode):
            for sub in entries(Path(e.path)):
                rel = f"{subdir}/{sub.name}"
                if is_ignored_name(sub.name) or _is_leftover(sub.name):
                    ignored.append(rel)
                    continue
                sst = sub.stat(follow_symlinks=False)
                if stat.S_ISDIR(sst.st_mode):
                    unexpected.append(rel + "/")
                elif regular(rel, sst):
                    content[rel] = sst.st_size
            continue
        if stat.S_ISDIR(st.st_mode):
            unexpected.append(name + "/")
            continue
        if not regular(name, st) or name in fixed:
            continue
        if SIGNATURE_NAME_RE.match(name):
            sigs.append(name)
            continue
        unexpected.append(name)
    if unexpected:
        report(unexpected_error(*unexpected))

    def sig_index(n: str) -> int:
        m = SIGNATURE_NAME_RE.match(n)
        return int(m.group(1)) if m and m.group(1) else 1

    return BundleListing(
        content=content,
        signature_files=tuple(sorted(sigs, key=sig_index)),
        ignored=tuple(ignored),
    )


def _check_custody_shape(
    folder: Path,
    entries: Callable[[Path], list[os.DirEntry[str]]],
    limits: Limits,
    report: Report,
) -> None:
    """The optional custody folder (SPEC 3.7): only numbered event files and their signatures,
    regular, not hard-linked, bounded in count. Events are verified by `gapferry audit` and
    `gapferry custody show`, never here: they are not part of the signed manifest.

    Raises:
        InvalidData: ``too-many-files``; whatever `report` raises for ``unsafe-file`` and
            ``unexpected-file``.
    """
    found = entries(folder)
    if len(found) > 2 * limits.custody_events + 16:
        raise InvalidData(
            f"{CUSTODY_DIR}/ holds {len(found)} entries, more than the limit of "
            f"{2 * limits.custody_events} events and signatures",
            remedy=REMEDY,
            code="too-many-files",
        )
    for sub in found:
        rel = f"{CUSTODY_DIR}/{sub.name}"
        if is_ignored_name(sub.name) or _is_leftover(sub.name):
            continue
        sst = sub.stat(follow_symlinks=False)
        if stat.S_ISLNK(sst.st_mode):
            report(unsafe_error(rel, "is a symbolic link"))
        elif not stat.S_ISREG(sst.st_mode):
            report(unsafe_error(rel, "is not a regular file"))
        elif sst.st_nlink > 1:
            report(unsafe_error(rel, "has other hard links"))
        elif not CUSTODY_NAME_RE.match(sub.name):
            report(unexpected_error(rel))
