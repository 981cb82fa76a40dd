"""Ingest refuses results that do not answer this ledger's bundles, and pack reports inventory
before it polls (issue 5, "pack" and "ingest"): one named test each, asserting that nothing was
reported for a refused result."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3

import httpx
from gapferry.common.trust import TrustPolicy
from gapferry.connected.ingest import ingest
from gapferry.connected.session import Session
from gapferry.fixtures.connected_world import DEVICE_TYPE, SERVER, World


def _puts(world: World, dep_id: str) -> list[str]:
    return [s for d, _, s in world.status_puts() if d == dep_id]


def test_pack_reports_inventory_before_it_polls(world: World) -> None:
    world.release()
    report = world.pack()
    assert report.ok, report
    dev_id = world.status_puts()[0][1]
    inv = world.sim.inventory(dev_id)
    assert inv is not None
    assert inv.get("inventory/device_type") == DEVICE_TYPE
    assert inv.get("inventory/artifact_name") == "fw-1.0"  # what the site file says it runs
    mine = [
        r.path.rsplit("/", 1)[-1]
        for r in world.sim.requests
        if r.device_id == dev_id and r.path.startswith("/api/devices/")
    ]
    assert mine.index("attributes") < mine.index("next")


def test_result_whose_receipt_digest_differs_from_the_issued_bundle_is_rejected(
    world: World,
) -> None:
    dep_id = world.release()
    report = world.pack()
    assert report.bundle_path is not None
    world.write_result(report.bundle_path)
    # The ledger issued a bundle with another digest than the one the result's receipt names.
    with contextlib.closing(sqlite3.connect(world.state / "ledger.sqlite")) as db, db:
        db.execute("UPDATE bundles SET digest = ?", ("0" * 64,))
    ing = world.ingest()
    assert not ing.ok
    assert ing.rows[0].action == "rejected"
    assert "receipt-mismatch" in ing.rows[0].detail
    assert _puts(world, dep_id) == ["installing"]


def test_result_for_a_bundle_another_ledger_issued_is_rejected(world: World) -> None:
    dep_id = world.release()
    report = world.pack()
    assert report.bundle_path is not None
    world.write_result(report.bundle_path)
    with Session(
        state_dir=world.tmp / "other-operator",
        server_url=SERVER,
        transport=httpx.MockTransport(world.sim.handler),
        command="test",
    ) as s:
        ing = ingest(
            s,
            world.media,
            trust=TrustPolicy.from_file(world.appliers),
            now=dt.datetime.now(dt.UTC).timestamp(),
        )
    assert not ing.ok
    assert "unknown-transfer-bundle" in ing.rows[0].detail
    assert _puts(world, dep_id) == ["installing"]
    # The rightful ledger still takes it.
    assert world.ingest().ok
    assert _puts(world, dep_id) == ["installing", "success"]
