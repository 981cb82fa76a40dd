"""Delivering the ledger's outbox: each status, log and inventory report exactly once (ADR 0041).

Protocol per entry: the entry was written ``pending`` in the same transaction as the state change
that made it owed. Before the call it is durably marked ``attempted``; after the call ``sent`` (or
``conflict`` on 409). When a run dies between the call and the mark, the entry is still
``pending`` but ``attempted``: the next run asks the server (management API, the deployment's
per-device record) whether the status already arrived, and marks it sent without repeating it. A
status report is never sent out of order: entries of one device are delivered oldest first and
delivery of that device stops at the first failure.

One durable commit per delivered report (ADR 0044): the ``attempted`` mark of a device's next
entry is written in the same transaction that marks its previous entry ``sent``; the first entry of
each device is marked in one transaction for a whole wave of devices. Devices are delivered
concurrently (at most ``Session.concurrency`` at once), from one scan of the outbox grouped by
device; the reports of one device stay in order, in one thread.

A delivered inventory report also records, in the commit that marks it ``sent``, the values the
server confirmed for the device's Mender ID (ADR 0046: pack skips its PATCH when they match).

Without a management token the uncertain entry is re-sent; the server treats a repeated status as a
no-op (shared/mender/server-behaviour.md section 3, "PUT .../status", rule 3), so the deployment's
history is unchanged either way.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgspec
from gapferry.common.errors import EnvironmentFailure, GapferryError, UsageProblem
from gapferry.connected.ledger import Ledger, OutboxEntry
from gapferry.connected.mender.device import DeviceApi
from gapferry.connected.mender.errors import MenderConflict
from gapferry.connected.session import Session
from gapferry.connected.site import SiteDevice

__all__ = ["STATUS_ORDER", "DeliveryReport", "deliver_pending"]

#: The order of the Mender statuses (gapferry reports ``installing`` and then the final one, ADR
#: 0046); a server status at or past an entry's means "arrived".
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


@dataclasses.dataclass(kw_only=True)
class _Device:
    """One device's pending entries (oldest first) and what their delivery did."""

    dev: SiteDevice
    entries: list[OutboxEntry]
    report: DeliveryReport = dataclasses.field(default_factory=DeliveryReport)
    conflicts: list[tuple[OutboxEntry, MenderConflict]] = dataclasses.field(default_factory=list)


class _Waves:
    """Hands devices to the workers; marks the first entry of a wave of devices ``attempted``
    in one durable commit before any of them is started (ADR 0044)."""

    def __init__(self, ledger: Ledger, work: list[_Device], *, wave: int) -> None:
        self._ledger = ledger
        self._work = work
        self._wave = max(1, wave)
        self._next = 0
        self._marked = 0
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def take(self) -> _Device | None:
        with self._lock:
            if self.stop.is_set() or self._next >= len(self._work):
                return None
            if self._next >= self._marked:
                end = min(len(self._work), self._next + self._wave)
                heads = [d.entries[0].id for d in self._work[self._next : end]]
                if heads:
                    with self._ledger.tx() as c:
                        self._ledger.mark_attempted(heads, cursor=c)
                self._marked = end
            item = self._work[self._next]
            self._next += 1
            return item


def _deliver_device(
    session: Session,
    site: str,
    item: _Device,
    stop: threading.Event,
) -> None:
    """Deliver one device's entries in order; stop at its first failure.

    The first entry was marked ``attempted`` by `_Waves`. Every later entry is marked in the same
    durable transaction that closes the entry before it, so each report costs one fsync and an
    entry is always durably ``attempted`` before its call starts.
    """
    ledger = session.ledger
    report = item.report
    api: DeviceApi | None = None
    marked = item.entries[0].id
    for i, entry in enumerate(item.entries):
        if stop.is_set():
            return
        following = item.entries[i + 1].id if i + 1 < len(item.entries) else None
        try:
            if entry.id != marked:  # the previous entry did not close normally
                with ledger.tx() as c:
                    ledger.mark_attempted([entry.id], cursor=c)
                marked = entry.id
            # `entry.attempted` is the state before this run: an earlier run may have sent it.
            if entry.attempted:
                row = ledger.device(site, entry.device)
                if _arrived(session, entry, row.device_id if row else None):
                    with ledger.tx() as c:
                        ledger.mark(
                            entry.id, "sent", "confirmed on the server after a restart", cursor=c
                        )
                        if following is not None:
                            ledger.mark_attempted([following], cursor=c)
                    if following is not None:
                        marked = following
                    report.confirmed += 1
                    continue
            if api is None:
                api = session.device_api(site, item.dev)
            _send(api, entry)
        except MenderConflict as e:
            with ledger.tx() as c:
                ledger.mark(entry.id, "conflict", e.server_error or e.message, cursor=c)
                if entry.deployment_id:
                    ledger.set_deployment(
                        entry.deployment_id,
                        site,
                        entry.device,
                        state="aborted",
                        outcome=f"aborted on the server ({e.server_error or e.status})",
                        cursor=c,
                    )
            report.conflicts.append(f"{entry.device}: {e.server_error or e.message}")
            item.conflicts.append((entry, e))
            continue
        except GapferryError as e:
            # Server unavailable, a key that cannot be loaded, ...: this device waits for the
            # next run, the others go on. A configuration problem stops the command.
            if isinstance(e, UsageProblem) and e.code in ("no-server-url", "no-api-token"):
                raise
            report.failed.append(f"{entry.device}: {e.message}")
            return
        with ledger.tx() as c:
            ledger.mark(entry.id, "sent", cursor=c)
            if entry.kind == "inventory":
                # What the server confirmed, for pack's "unchanged?" check (ADR 0046): in the
                # commit that closes the entry, so a crash leaves the entry owed (and the record
                # untrusted) rather than a record the server may not match.
                ledger.record_inventory(
                    site=site,
                    device=entry.device,
                    device_id=api.device_id,
                    attributes=json.loads(entry.payload)["attributes"],
                    cursor=c,
                )
            if following is not None:
                ledger.mark_attempted([following], cursor=c)
        if following is not None:
            marked = following
        report.sent += 1


def deliver_pending(
    session: Session,
    site: str,
    devices: dict[str, SiteDevice],
    *,
    only: set[str] | None = None,
    on_conflict: Callable[[OutboxEntry, MenderConflict], None] | None = None,
) -> DeliveryReport:
    """Deliver the site's pending outbox entries in order (optionally for `only` these devices).

    One scan of the outbox, grouped by device; up to ``session.concurrency`` devices at once,
    each device's entries oldest first in one thread. A device whose report fails (server
    unavailable) keeps its remaining entries for the next run; other devices continue.
    Conflicts (409: aborted deployment) are recorded, not raised; `on_conflict` is called for each
    after delivery, in the calling thread.

    Raises:
        BaseException: whatever interrupts a worker (KeyboardInterrupt, a simulated crash) is
            re-raised here after the other workers stopped at their next entry.
    """
    ledger = session.ledger
    if only is not None and len(only) == 1:
        entries = ledger.pending(site=site, device=next(iter(only)))
    else:
        entries = [e for e in ledger.pending(site=site) if only is None or e.device in only]
    grouped: dict[str, list[OutboxEntry]] = {}
    for entry in entries:
        grouped.setdefault(entry.device, []).append(entry)
    report = DeliveryReport()
    work: list[_Device] = []
    for name, group in grouped.items():
        dev = devices.get(name)
        if dev is None:
            report.failed.append(f"{name}: not in the site file any more")
            continue
        work.append(_Device(dev=dev, entries=group))
    if not work:
        return report
    workers = min(session.concurrency, len(work))
    waves = _Waves(ledger, work, wave=workers)

    def worker() -> None:
        try:
            while (item := waves.take()) is not None:
                _deliver_device(session, site, item, waves.stop)
        except BaseException:
            waves.stop.set()
            raise

    if workers == 1:
        worker()
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver") as pool:
            futures = [pool.submit(worker) for _ in range(workers)]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                waves.stop.set()
                raise
    for item in work:
        report.sent += item.report.sent
        report.confirmed += item.report.confirmed
        report.conflicts += item.report.conflicts
        report.failed += item.report.failed
        if on_conflict is not None:
            for entry, exc in item.conflicts:
                on_conflict(entry, exc)
    return report
