"""`run_audit`: read the bundles, build the report (the one library call behind `gapferry audit`).

bundle_spec/VERIFYING.md describes the same checks done by hand with stock tools.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from gapferry.common.audit.core import build_report
from gapferry.common.audit.gather import gather_bundle
from gapferry.common.audit.model import AuditReport
from gapferry.common.bundle.layout import kind_of_dir_name
from gapferry.common.bundle.read import find_bundles
from gapferry.common.errors import UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.trust import TrustPolicy

__all__ = ["expand_results", "run_audit", "software_version"]


def software_version() -> str:
    try:
        return f"gapferry {version('gapferry')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "gapferry (unknown version)"


def expand_results(paths: Sequence[Path]) -> list[Path]:
    """Each path as given when it is a bundle folder; otherwise the result bundles in it (a
    medium's root or its ``gapferry`` folder).

    Raises:
        UsageProblem: ``no-bundle`` when a path is neither.
    """
    out: list[Path] = []
    for p in paths:
        if kind_of_dir_name(Path(p).name) is not None:
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
    """`path` when it is a transfer bundle folder, else the one transfer bundle in it."""
    if kind_of_dir_name(path.name) == "transfer":
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

    `transfer` is a transfer bundle folder, or a medium (or its ``gapferry`` folder) holding
    exactly one; each of `results` is a result bundle folder or a medium holding result bundles.

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
    t = gather_bundle(transfer, policy=policy, now=now, limits=limits, artifact_key=artifact_key)
    rs = [gather_bundle(p, policy=policy, now=now, limits=limits) for p in expand_results(results)]
    return build_report(
        t,
        rs,
        policy=policy,
        now=now,
        limits=limits,
        trust_source=trust_source,
        software=software_version(),
    )
