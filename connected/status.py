"""`status`: what is in flight, per site and device, beside what the server says (issue 5)."""

from __future__ import annotations

from typing import Any

import msgspec
from gapferry.common.errors import GapferryError
from gapferry.connected.session import Session

__all__ = ["StatusRow", "in_flight"]

_OPEN = ("polled", "downloaded", "packed", "travelling")


class StatusRow(msgspec.Struct, kw_only=True):
    site: str
    device: str
    deployment_id: str
    artifact_name: str
    state: str
    bundle: str | None = None
    server: str = "-"
    reports_owed: int = 0
    outcome: str | None = None
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def in_flight(
    session: Session, *, site: str | None = None, everything: bool = False, ask_server: bool = True
) -> list[StatusRow]:
    """Deployments the ledger tracks (open ones, or all with `everything`), with the server's
    per-device status when a management token is available."""
    ledger = session.ledger
    owed: dict[tuple[str, str, str | None], int] = {}
    for e in ledger.pending(site=site):
        k = (e.site, e.device, e.deployment_id)
        owed[k] = owed.get(k, 0) + 1
    seqs = {b.bundle_id: b.seq for b in ledger.bundles(site=site)}
    server_cache: dict[str, dict[str, str]] = {}
    rows = []
    for d in ledger.deployments(site=site):
        k = (d.site, d.device, d.deployment_id)
        if not everything and d.state not in _OPEN and k not in owed:
            continue
        server = "-"
        if ask_server and session.has_management:
            if d.deployment_id not in server_cache:
                try:
                    server_cache[d.deployment_id] = {
                        r.id: r.status
                        for r in session.management.deployment_devices(d.deployment_id)
                    }
                except GapferryError as e:
                    server_cache[d.deployment_id] = {"?": f"unavailable ({e.code})"}
            dev = ledger.device(d.site, d.device)
            recs = server_cache[d.deployment_id]
            server = recs.get(dev.device_id if dev and dev.device_id else "", recs.get("?", "-"))
        rows.append(
            StatusRow(
                site=d.site,
                device=d.device,
                deployment_id=d.deployment_id,
                artifact_name=d.artifact_name,
                state=d.state,
                bundle=f"#{seqs[d.bundle_id]}" if d.bundle_id in seqs else None,
                server=server,
                reports_owed=owed.get(k, 0),
                outcome=d.outcome,
            )
        )
    return rows
