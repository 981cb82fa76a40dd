"""Delivering the ledger's outbox: each status, log and inventory report exactly once (ADR 0041).

Protocol per entry: the entry was written ``pending`` in the same transaction as the state change
that made it owed. Before the call it is marked ``attempted``; after the call ``sent`` (or
``conflict`` on 409). When a run dies between the call and the mark, the entry is still
``pending`` but ``attempted``: the next run asks the server (management API, the deployment's
per-device record) whether the status already arrived, and marks it sent without repeating it. A
status report is never sent out of order: entries of one device are delivered oldest first and
delivery of that device stops at the first failure.

Without a management token the uncertain entry is re-sent; the server treats a repeated status as a
no-op (shared/mender/server-behaviour.md section 3, "PUT .../status", rule 3), so the deployment's
history is unchanged either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import msgspec
from gapferry.common.errors import EnvironmentFailure
from gapferry.connected.ledger import OutboxEntry
from gapferry.connected.mender.device import DeviceApi
from gapferry.connected.mender.errors import MenderConflict
from gapferry.connected.session import Session
from gapferry.connected.site import SiteDevice

__all__ = ["STATUS_ORDER", "DeliveryReport", "deliver_pending"]

#: The order gapferry reports statuses in; a server status at or past an entry's means "arrived".
STATUS_ORDER = {
    "pending": 0,
    "downloading": 1,
    "pause_before_installing": 2,
    "installing": 3,
    "pause_before_rebooting": 4,
    "rebooting": 5,
    "pause_before_committing": 6,
    "success": 9,
    "failure": 9,
    "already-installed": 9,
}


class DeliveryReport(msgspec.Struct, kw_only=True):
    sent: int = 0
    confirmed: int = 0
    conflicts: list[str] = []
    failed: list[str] = []


def _arrived(session: Session, entry: OutboxEntry, device_id: str | None) -> bool | None:
    """For an attempted status entry: did the server get it? None when it cannot tell."""
    if entry.kind != "status" or not session.has_management or not device_id:
        return None
    if not entry.deployment_id:
        return None
    status = json.loads(entry.payload)["status"]
    for rec in session.management.deployment_devices(entry.deployment_id):
        if rec.id != device_id:
            continue
        if rec.status == "aborted":
            return None  # let the PUT tell (409), so the conflict is recorded as such
        here = STATUS_ORDER.get(rec.status, -1)
        want = STATUS_ORDER.get(status, 99)
        return rec.status == status or (here >= want and want < 9)
    return False


def _send(api: DeviceApi, entry: OutboxEntry) -> None:
    payload = json.loads(entry.payload)
    if entry.kind == "status":
        api.put_status(
            entry.deployment_id or "", payload["status"], substate=payload.get("substate")
        )
    elif entry.kind == "log":
        api.put_log(entry.deployment_id or "", payload["messages"])
    elif entry.kind == "inventory":
        api.put_inventory(payload["attributes"])
    else:
        raise EnvironmentFailure(
            f"unknown outbox entry kind {entry.kind!r}",
            remedy="the ledger was written by a newer gapferry; upgrade",
            code="ledger-version",
        )


def deliver_pending(
    session: Session,
    site: str,
    devices: dict[str, SiteDevice],
    *,
    only: set[str] | None = None,
    on_conflict: Callable[[OutboxEntry, MenderConflict], None] | None = None,
) -> DeliveryReport:
    """Deliver the site's pending outbox entries in order (optionally for `only` these devices).

    A device whose report fails (server unavailable) keeps its remaining entries for the next run;
    other devices continue. Conflicts (409: aborted deployment) are recorded, not raised.
    """
    report = DeliveryReport()
    blocked: set[str] = set()
    for entry in session.ledger.pending(site=site):
        if (only is not None and entry.device not in only) or entry.device in blocked:
            continue
        dev = devices.get(entry.device)
        if dev is None:
            blocked.add(entry.device)
            report.failed.append(f"{entry.device}: not in the site file any more")
            continue
        row = session.ledger.device(site, entry.device)
        try:
            if entry.attempted and _arrived(session, entry, row.device_id if row else None):
                session.ledger.mark(entry.id, "sent", "confirmed on the server after a restart")
                report.confirmed += 1
                continue
            api = session.device_api(site, dev)
            session.ledger.mark_attempted(entry.id)
            _send(api, entry)
        except MenderConflict as e:
            with session.ledger.tx() as c:
                session.ledger.mark(entry.id, "conflict", e.server_error or e.message, cursor=c)
                if entry.deployment_id:
                    session.ledger.set_deployment(
                        entry.deployment_id,
                        site,
                        entry.device,
                        state="aborted",
                        outcome=f"aborted on the server ({e.server_error or e.status})",
                        cursor=c,
                    )
            report.conflicts.append(f"{entry.device}: {e.server_error or e.message}")
            if on_conflict is not None:
                on_conflict(entry, e)
            continue
        except EnvironmentFailure as e:
            blocked.add(entry.device)
            report.failed.append(f"{entry.device}: {e.message}")
            continue
        session.ledger.mark(entry.id, "sent")
        report.sent += 1
    return report
