"""`run_audit`: read the bundles, build the report (the one library call behind `gapferry audit`).

bundle_spec/VERIFYING.md describes the same checks done by hand with stock tools.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from gapferry.common.audit.core import build_report
from gapferry.common.audit.gather import BundleInput, gather_bundle
from gapferry.common.audit.model import AuditReport, Check, Status
from gapferry.common.bundle.layout import Kind, kind_of_dir_name
from gapferry.common.bundle.read import find_bundles
from gapferry.common.bundle.tarform import extract_tar
from gapferry.common.errors import GapferryError, IncompleteBundle, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.trust import TrustPolicy

__all__ = ["expand_results", "run_audit", "software_version"]


def software_version() -> str:
    try:
        return f"gapferry {version('gapferry')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "gapferry (unknown version)"


def expand_results(paths: Sequence[Path]) -> list[Path]:
    """Each path as given when it is a bundle folder or a file (the single-file form, SPEC 3.8);
    otherwise the result bundles in it (a medium's root or its ``gapferry`` folder).

    Raises:
        UsageProblem: ``no-bundle`` when a path is neither.
    """
    out: list[Path] = []
    for p in paths:
        if kind_of_dir_name(Path(p).name) is not None or Path(p).is_file():
            out.append(Path(p))
            continue
        found = [b for b in find_bundles(Path(p)) if kind_of_dir_name(b.name) == "result"]
        if not found:
            raise UsageProblem(
                f"{p} is not a bundle folder and holds no result bundle",
                remedy="pass result bundle folders (gapferry/result-...) or media holding them",
                code="no-bundle",
            )
        out += found
    return out


def _transfer_folder(path: Path) -> Path:
    """`path` when it is a transfer bundle folder or a file (the single-file form), else the one
    transfer bundle in it."""
    if kind_of_dir_name(path.name) == "transfer" or path.is_file():
        return path
    found = [b for b in find_bundles(path) if kind_of_dir_name(b.name) == "transfer"]
    if len(found) != 1 or kind_of_dir_name(path.name) is not None:
        raise UsageProblem(
            f"{path} is not a transfer bundle folder (gapferry/transfer-...)"
            + (f" and holds {len(found)} transfer bundles" if len(found) > 1 else ""),
            remedy="pass the transfer bundle folder first, then the result bundles",
            code="not-a-bundle",
        )
    return found[0]


def _gather_tar(
    tar: Path,
    work: Path,
    role: Kind,
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
    artifact_key: bytes | None,
) -> BundleInput:
    """Extract the single-file bundle `tar` into `work` with the tar form's own refusals
    (`gapferry.common.bundle.tarform`, SPEC 3.8) and audit the folder; the extraction is the
    ``single-file`` check. The folder is audited even when it would not verify: an audit records
    every check (`from_tar` keeps only verified bundles, so it is not used here).
    """
    try:
        top = extract_tar(tar, work, limits)
    except (GapferryError, OSError) as e:
        if isinstance(e, GapferryError):
            status: Status = "incomplete" if isinstance(e, IncompleteBundle) else "fail"
            summary = f"{e.code}: {e.message}"
        else:
            status, summary = "fail", f"unreadable: {e.strerror or e}"
        check = Check(scope=tar.name, name="single-file", status=status, summary=summary)
        return BundleInput(folder=tar.name, kind=role, checks=[check])
    if kind_of_dir_name(top) != role:
        check = Check(
            scope=tar.name,
            name="single-file",
            status="fail",
            summary=f"wrong-kind: {tar.name} holds {top}, not a {role} bundle",
        )
        return BundleInput(folder=tar.name, kind=role, checks=[check])
    extracted = Check(
        scope=top,
        name="single-file",
        status="pass",
        summary=f"extracted from {tar.name}: one bundle folder, only regular files and "
        "folders, no links, escaping names or duplicates, within the limits",
    )
    return gather_bundle(
        work / top,
        policy=policy,
        now=now,
        limits=limits,
        artifact_key=artifact_key,
        folder_checks=[extracted],
    )


def run_audit(
    transfer: Path,
    results: Sequence[Path],
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
    trust_source: str,
    artifact_key: bytes | None = None,
) -> AuditReport:
    """Audit a transfer bundle and the result bundles that answer it.

    `transfer` is a transfer bundle folder, its single-file form (a ``.tar``, extracted into a
    temporary folder), or a medium (or its ``gapferry`` folder) holding exactly one; each of
    `results` is a result bundle folder, its single-file form, or a medium holding result
    bundles.

    Raises:
        UsageProblem: ``not-a-bundle``, ``no-bundle``, ``naive-time``.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise UsageProblem(
            "the reference time must carry a timezone",
            remedy="pass an aware datetime",
            code="naive-time",
        )
    transfer = _transfer_folder(Path(transfer))
    result_paths = expand_results(results)
    with ExitStack() as stack:

        def gather(path: Path, role: Kind, key: bytes | None = None) -> BundleInput:
            if not path.is_file():
                return gather_bundle(path, policy=policy, now=now, limits=limits, artifact_key=key)
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gapferry-audit-")))
            return _gather_tar(
                path, work, role, policy=policy, now=now, limits=limits, artifact_key=key
            )

        t = gather(transfer, "transfer", artifact_key)
        rs = [gather(p, "result") for p in result_paths]
    return build_report(
        t,
        rs,
        policy=policy,
        now=now,
        limits=limits,
        trust_source=trust_source,
        software=software_version(),
    )
