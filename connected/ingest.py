"""`ingest`: from result bundles on removable media back to the Mender Server (seeds phase 6, end).

For each result bundle: verify it (trusted applier key, through the bundle format's verifier);
check that its receipt names a transfer bundle this ledger issued (same digest), that every device
result belongs to a deployment carried by that bundle, and that it was not ingested before. Then,
in ONE ledger transaction, record the result and queue every report it implies (per device: the
log on failure, the final status, an inventory PATCH) and the device's new artifact name. Only the
final status is reported (ADR 0046): the server keeps no status history and counts only each
device's current status, so ``rebooting`` and the like would cost a request each and leave
nothing behind; the applier's steps stay in the result bundle and its audit report. Delivery
follows through the outbox, so a killed ingest resumes where it stopped and never sends a report
twice (ADR 0041); a delivered inventory report is recorded as what the server last confirmed (pack
skips its own PATCH when nothing changed). A deployment aborted meanwhile answers 409: recorded
and shown, not fatal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from gapferry.common.bundle.layout import MARKER_NAME
from gapferry.common.errors import GapferryError, IncompleteBundle, InvalidData
from gapferry.connected import bundle_io
from gapferry.connected.outbox import deliver_pending
from gapferry.connected.session import Session
from gapferry.connected.site import SiteDevice

__all__ = ["IngestReport", "IngestRow", "ingest", "ledger_devices"]

#: Deployment states after which a result for it is not reported again.
FINISHED = ("done", "aborted", "conflict", "gone")


class IngestRow(msgspec.Struct, kw_only=True):
    bundle: str
    device: str = "-"
    deployment_id: str | None = None
    result: str | None = None
    action: str = ""
    ok: bool = True
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class IngestReport(msgspec.Struct, kw_only=True):
    rows: list[IngestRow]
    reports_sent: int = 0
    reports_confirmed: int = 0
    reports_failed: list[str] = []

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and not self.reports_failed


def ledger_devices(session: Session, site: str) -> dict[str, SiteDevice]:
    """The site's devices as the ledger knows them (ingest needs no site file)."""
    out: dict[str, SiteDevice] = {}
    for dep in session.ledger.deployments(site=site):
        row = session.ledger.device(site, dep.device)
        if row is not None and row.name not in out:
            out[row.name] = SiteDevice(
                name=row.name,
                device_type=row.device_type,
                artifact_name=row.artifact_name or "",
                identity=row.identity,
            )
    return out


def _bad(what: str, code: str) -> InvalidData:
    return InvalidData(
        what,
        remedy="this result bundle does not belong to this ledger's bundles; do not report it",
        code=code,
    )


def _check_artifact_claims(
    result_id: str, o: bundle_io.DeviceOutcome, *, carried: str | None, previous: str | None
) -> None:
    """A result may only claim the artifact the bundle carried (after success or
    already-installed) or, otherwise, that or the one the device ran before. Anything else would
    let a result make the server believe a device runs software nobody deployed.

    Raises:
        InvalidData: ``artifact-mismatch``.
    """
    claimed = {o.artifact_name} if o.artifact_name else set()
    claimed |= {str(a.get("value")) for a in o.inventory if a.get("name") == "artifact_name"}
    installed = o.final in ("success", "already-installed")
    allowed = {carried} if installed else {carried, previous}
    wrong = sorted(claimed - {n for n in allowed if n})
    if wrong:
        raise _bad(
            f"artifact-mismatch: result {result_id} says {o.device} runs {', '.join(wrong)} after "
            f"deployment {o.deployment_id} ({o.final}), but the bundle carried "
            f"{carried or 'no known artifact'} and the device ran {previous or 'an unknown artifact'}",
            "artifact-mismatch",
        )


def _accept(session: Session, view: bundle_io.ResultView) -> dict[tuple[str, str], str]:
    """Check the result against the ledger and queue its reports (one transaction).

    Raises:
        InvalidData: unknown transfer bundle, digest mismatch, deployment not in the bundle.
    """
    ledger = session.ledger
    b = ledger.bundle(view.transfer_bundle_id)
    if b is None or b.state not in ("issued", "returned"):
        raise _bad(
            f"result {view.result_id} answers transfer bundle {view.transfer_bundle_id}, which "
            "this ledger did not issue",
            "unknown-transfer-bundle",
        )
    if b.site != view.site:
        raise _bad(f"result for site {view.site!r}, bundle was for {b.site!r}", "site-mismatch")
    if view.transfer_digest and b.digest and view.transfer_digest != b.digest:
        raise _bad(
            f"result {view.result_id} names transfer bundle {b.bundle_id} with digest "
            f"{view.transfer_digest}, the ledger issued {b.digest}",
            "receipt-mismatch",
        )
    carried = set(ledger.bundle_items(b.bundle_id))
    for o in view.outcomes:
        known = ledger.device(b.site, o.device)
        if known is None or known.device_id != o.mender_device_id:
            raise _bad(
                f"result {view.result_id} names device {o.device} with Mender ID "
                f"{o.mender_device_id}, the ledger knows "
                f"{known.device_id if known else 'no such device'}",
                "device-mismatch",
            )
        if (o.deployment_id, o.device) not in carried:
            raise _bad(
                f"result {view.result_id} reports deployment {o.deployment_id} for {o.device}, "
                f"which bundle #{b.seq} did not carry",
                "deployment-not-in-bundle",
            )
        dep = ledger.deployment(o.deployment_id, b.site, o.device)
        _check_artifact_claims(
            view.result_id,
            o,
            carried=dep.artifact_name if dep is not None else None,
            previous=known.artifact_name,
        )
    origin = f"result:{view.result_id}"
    special: dict[tuple[str, str], str] = {}
    with ledger.tx() as c:
        ledger.record_result(c, result_id=view.result_id, bundle_id=b.bundle_id, digest=view.digest)
        for o in view.outcomes:
            dep = ledger.deployment(o.deployment_id, b.site, o.device)
            if dep is not None and dep.state in FINISHED:
                special[(o.device, o.deployment_id)] = (
                    "aborted" if dep.state == "aborted" else "already-reported"
                )
                continue  # answered already by another result (a repacked deployment)
            if o.final == "skipped":
                # Not attempted: it goes into the next bundle; nothing to report yet.
                ledger.set_deployment(
                    o.deployment_id,
                    b.site,
                    o.device,
                    state="downloaded",
                    outcome=f"skipped: {o.reason or 'no reason given'}",
                    cursor=c,
                )
                special[(o.device, o.deployment_id)] = "skipped"
                continue
            common = {
                "site": b.site,
                "device": o.device,
                "deployment_id": o.deployment_id,
                "origin": origin,
            }
            if o.final == "failure" and o.log:
                ledger.enqueue(c, kind="log", payload={"messages": o.log}, **common)
            ledger.enqueue(c, kind="status", payload={"status": o.final}, **common)
            inventory = list(o.inventory)
            if (
                o.final == "success"
                and o.artifact_name
                and not any(a.get("name") == "artifact_name" for a in inventory)
            ):
                inventory.append({"name": "artifact_name", "value": o.artifact_name})
            if inventory:
                ledger.enqueue(c, kind="inventory", payload={"attributes": inventory}, **common)
            ledger.set_deployment(
                o.deployment_id, b.site, o.device, state="done", outcome=o.final, cursor=c
            )
            if o.final == "success" and o.artifact_name:
                c.execute(
                    "UPDATE devices SET artifact_name = ? WHERE site = ? AND name = ?",
                    (o.artifact_name, b.site, o.device),
                )
        ledger.set_bundle(b.bundle_id, state="returned", cursor=c)
    return special


def _superseded(incomplete: Path, found: list[Path]) -> bool:
    """An incomplete result folder (no completion marker: an apply killed while writing) is
    superseded when a result for the same site and transfer sequence, with its marker, is on the
    medium: the re-run wrote that one (SPEC 3.2: ``result-<site>-<sequence>-<id8>``). Ignoring an
    incomplete folder is always safe; this only decides whether it is worth a failure."""
    prefix = incomplete.name.rsplit("-", 1)[0] + "-"
    return any(
        p != incomplete and p.name.startswith(prefix) and (p / MARKER_NAME).is_file() for p in found
    )


def ingest(session: Session, media: Path, *, trust: Any, now: float) -> IngestReport:
    """Ingest every result bundle on `media`."""
    rows: list[IngestRow] = []
    views: list[bundle_io.ResultView] = []
    found = bundle_io.find_results(media)
    for path in found:
        try:
            view = bundle_io.open_result(path, trust=trust, now=now)
        except IncompleteBundle as e:
            if e.code == "incomplete" and _superseded(path, found):
                rows.append(
                    IngestRow(
                        bundle=path.name,
                        action="superseded",
                        detail="left incomplete by an interrupted apply; a complete result for "
                        "the same transfer bundle is on the medium (you may delete this folder)",
                    )
                )
                continue
            rows.append(
                IngestRow(
                    bundle=path.name, action="rejected", ok=False, detail=f"{e.code}: {e.message}"
                )
            )
            continue
        except GapferryError as e:
            rows.append(
                IngestRow(
                    bundle=path.name, action="rejected", ok=False, detail=f"{e.code}: {e.message}"
                )
            )
            continue
        if session.ledger.result_state(view.result_id) is not None:
            rows.append(
                IngestRow(
                    bundle=path.name,
                    action="already-ingested",
                    detail=f"result {view.result_id} was ingested before",
                )
            )
            views.append(view)  # its reports may still be owed after a crash
            continue
        try:
            special = _accept(session, view)
        except InvalidData as e:
            rows.append(
                IngestRow(
                    bundle=path.name, action="rejected", ok=False, detail=f"{e.code}: {e.message}"
                )
            )
            continue
        views.append(view)
        for o in view.outcomes:
            rows.append(
                IngestRow(
                    bundle=path.name,
                    device=o.device,
                    deployment_id=o.deployment_id,
                    result=o.final,
                    action=special.get((o.device, o.deployment_id), "queued"),
                )
            )
    report = IngestReport(rows=rows)
    for site in sorted({v.site for v in views}):
        d = deliver_pending(session, site, ledger_devices(session, site))
        report.reports_sent += d.sent
        report.reports_confirmed += d.confirmed
        report.reports_failed += d.failed
    # Final per-device state from the outbox.
    states: dict[tuple[str, str | None], list[str]] = {}
    for entry in session.ledger.outbox():
        if entry.origin.startswith("result:"):
            states.setdefault((entry.device, entry.deployment_id), []).append(entry.state)
    for r in rows:
        if r.action == "skipped":
            r.detail = "not attempted; `gapferry pack` puts it into the next bundle"
        if r.action == "aborted":
            r.detail = "the deployment was aborted on the server; result recorded, not reported"
        if r.action != "queued":
            continue
        st = states.get((r.device, r.deployment_id), [])
        if "conflict" in st:
            r.action = "aborted"
            r.detail = "the deployment was aborted on the server meanwhile; result recorded"
        elif "pending" in st:
            r.action = "pending"
            r.ok = False
            r.detail = "reports still owed; run ingest again when the server is reachable"
        else:
            r.action = "reported"
    return report
