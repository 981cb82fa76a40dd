"""Issue 11's request budget: <= 4 requests per device per cycle with cached tokens (ADR 0046).

A cycle is `pack` then `ingest` of its result. Requests are counted on the stand-in
(`World.sim.requests`); the device API is everything under ``/api/devices/``. Management calls
and the artifact download are made once per artifact or deployment, not per device.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from gapferry.connected import bundle_io
from gapferry.connected import devices as devops
from gapferry.connected.ledger import SCHEMA_VERSION, Ledger
from gapferry.fixtures.connected_world import DEVICE_TYPE, World
from gapferry.fixtures.sim import Fault

DEVICES = 3
INVENTORY = "/api/devices/v1/inventory/device/attributes"


class Crash(BaseException):
    """A process dying (not an error gapferry could handle)."""


def _cycle(world: World, *, outcome: str = "success") -> None:
    packed = world.pack()
    assert packed.ok, packed
    assert packed.bundle_path is not None
    world.write_result(packed.bundle_path, outcome=outcome)
    ingested = world.ingest()
    assert ingested.ok, ingested


def _device_calls(world: World, since: int) -> list[tuple[str | None, str, str]]:
    """(device id, method, what) of each device API request since `since`, in order."""
    out = []
    for r in world.sim.requests[since:]:
        if not r.path.startswith("/api/devices/"):
            continue
        if r.path.endswith("/status") and isinstance(r.json, dict):
            what = f"status {r.json.get('status')}"
        else:
            what = r.path.rsplit("/", 1)[-1]
        out.append((r.device_id, r.method, what))
    return out


def _patches(world: World, since: int = 0) -> list[Any]:
    return [r.json for r in world.sim.requests[since:] if r.method == "PATCH" and r.status == 200]


def _device_id(world: World, name: str = "pump-000") -> str:
    with world.session() as s:
        row = s.ledger.device(world.site.name, name)
    assert row is not None
    assert row.device_id is not None
    return row.device_id


@pytest.fixture
def fleet(tmp_path: Path) -> Any:
    w = World(tmp_path, devices=DEVICES)
    yield w
    w.close()


def test_a_steady_second_cycle_costs_four_requests_per_device(fleet: World) -> None:
    fleet.release("fw-1.1")
    _cycle(fleet)
    dep_id = fleet.release("fw-1.2")  # a second deployment to the same devices
    mark = len(fleet.sim.requests)
    _cycle(fleet)
    calls = _device_calls(fleet, mark)
    assert len(calls) == 4 * DEVICES, calls
    per: dict[str | None, list[tuple[str, str]]] = {}
    for dev, method, what in calls:
        per.setdefault(dev, []).append((method, what))
    assert len(per) == DEVICES
    for seq in per.values():
        # pack: /next, installing; ingest: the final status, the inventory. No authentication
        # (cached tokens), no inventory PATCH in pack (unchanged), no `downloading`/`rebooting`.
        assert seq == [
            ("POST", "next"),
            ("PUT", "status installing"),
            ("PUT", "status success"),
            ("PATCH", "attributes"),
        ], seq
    # The rest is per artifact or per deployment: the artifact's record, its one download, the
    # deployment's name.
    others = [r for r in fleet.sim.requests[mark:] if not r.path.startswith("/api/devices/")]
    assert len(others) == 3, [(r.method, r.path) for r in others]
    assert all(r.status < 400 for r in fleet.sim.requests[mark:])
    assert {r["status"] for r in fleet.sim.deployment_records(deployment_id=dep_id)} == {"success"}
    for name in ("pump-000", "pump-001", "pump-002"):
        inv = fleet.sim.inventory(_device_id(fleet, name))
        assert inv is not None
        assert inv.get("inventory/artifact_name") == "fw-1.2"
        assert inv.get("inventory/device_type") == DEVICE_TYPE
    assert fleet.sim.strict_violations == []


def test_the_deployment_stays_pending_until_the_bundle_is_verified(world: World) -> None:
    dep_id = world.release()
    seen: list[str] = []

    def write(*args: Any, **kw: Any) -> tuple[Path, str]:
        seen.extend(r["status"] for r in world.sim.deployment_records(deployment_id=dep_id))
        return bundle_io.write_and_verify(*args, **kw)

    packed = world.pack(write=write)
    assert packed.ok, packed
    assert seen == ["pending"]  # polled, downloaded: nothing reported yet
    assert [r["status"] for r in world.sim.deployment_records(deployment_id=dep_id)] == [
        "installing"
    ]


def test_ingest_of_a_failure_sends_log_failure_and_inventory(world: World) -> None:
    dep_id = world.release()
    packed = world.pack()
    assert packed.bundle_path is not None
    world.write_result(packed.bundle_path, outcome="failure")
    mark = len(world.sim.requests)
    ingested = world.ingest()
    assert ingested.ok, ingested
    assert [(m, w) for _, m, w in _device_calls(world, mark)] == [
        ("PUT", "log"),
        ("PUT", "status failure"),
        ("PATCH", "attributes"),
    ]
    dev_id = _device_id(world)
    log = world.sim.logs(dep_id, dev_id)
    assert log is not None
    assert log[0]["message"] == "install failed"
    assert world.sim.deployment_records(deployment_id=dep_id)[0]["status"] == "failure"
    inv = world.sim.inventory(dev_id)
    assert inv is not None
    assert inv.get("inventory/kernel") == "6.1"
    assert inv.get("inventory/artifact_name") == "fw-1.0"  # a failure changes nothing


def test_pack_patches_inventory_once_then_only_when_it_changes(world: World) -> None:
    world.release()
    first = world.pack()
    assert first.ok, first
    assert _patches(world) == [
        [
            {"name": "device_type", "value": DEVICE_TYPE},
            {"name": "artifact_name", "value": "fw-1.0"},
        ]
    ]
    mark = len(world.sim.requests)
    assert [r.action for r in world.pack().rows] == ["travelling"]
    assert _patches(world, mark) == []  # the server confirmed exactly these values
    # The operator edits the device's type in the site file: the next pack tells the server.
    world.site_file.write_text(world.site_file.read_text().replace(DEVICE_TYPE, "pump-board-r2"))
    mark = len(world.sim.requests)
    world.pack()
    assert _patches(world, mark) == [
        [
            {"name": "device_type", "value": "pump-board-r2"},
            {"name": "artifact_name", "value": "fw-1.0"},
        ]
    ]
    inv = world.sim.inventory(_device_id(world))
    assert inv is not None
    assert inv.get("inventory/device_type") == "pump-board-r2"
    mark = len(world.sim.requests)
    world.pack()
    assert _patches(world, mark) == []


def test_pack_patches_again_when_an_ingest_changed_the_artifact_name(world: World) -> None:
    world.release("fw-1.1")
    _cycle(world)
    # The ingest's own inventory report carried the new name and was confirmed: nothing more.
    mark = len(world.sim.requests)
    assert [r.action for r in world.pack().rows] == ["up-to-date"]
    assert _patches(world, mark) == []
    # A record that predates the ingest (the server last confirmed the old name): the ledger's
    # artifact name, which the ingest changed, differs from it, so pack sends it.
    with world.session() as s:
        s.ledger.record_inventory(
            site=world.site.name,
            device="pump-000",
            device_id=_device_id(world),
            attributes=[{"name": "artifact_name", "value": "fw-1.0"}],
        )
    mark = len(world.sim.requests)
    world.pack()
    assert _patches(world, mark) == [
        [
            {"name": "device_type", "value": DEVICE_TYPE},
            {"name": "artifact_name", "value": "fw-1.1"},
        ]
    ]


def test_a_new_device_id_starts_without_a_record(world: World) -> None:
    world.release("fw-1.1")
    _cycle(world)
    old_id = _device_id(world)
    with world.session() as s:
        rows = devops.cleanup(s, world.site, world.site.devices, decommission=True)
        assert rows[0].detail.startswith("decommissioned"), rows
    world.release("fw-1.2")  # enrolled again: the server gives it a new device ID
    new_id = _device_id(world)
    assert new_id != old_id
    mark = len(world.sim.requests)
    packed = world.pack()
    assert packed.ok, packed
    patches = [r for r in world.sim.requests[mark:] if r.method == "PATCH"]
    assert [(r.device_id, r.status) for r in patches] == [(new_id, 200)]
    inv = world.sim.inventory(new_id)
    assert inv is not None
    assert inv.get("inventory/artifact_name") == "fw-1.1"
    assert inv.get("inventory/device_type") == DEVICE_TYPE
    with contextlib.closing(sqlite3.connect(world.state / "ledger.sqlite")) as db:
        ids = {r[0] for r in db.execute("SELECT device_id FROM inventory_sent")}
    assert ids == {new_id}  # the old ID's record is gone


def _pack_dies_before_recording_inventory(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack killed right after the server took its inventory PATCH, before the ledger's record."""

    def dies(*_a: Any, **_kw: Any) -> None:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(Ledger, "record_inventory", dies)
        with pytest.raises(Crash):
            world.pack()


def test_a_crash_between_the_patch_and_its_record_does_not_lose_the_patch(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.release()
    _pack_dies_before_recording_inventory(world, monkeypatch)
    assert len(_patches(world)) == 1  # the server took it; the ledger did not record it
    mark = len(world.sim.requests)
    again = world.pack()
    assert again.ok, again
    assert len(_patches(world, mark)) == 1  # sent again: no record, no skip
    mark = len(world.sim.requests)
    world.pack()
    assert _patches(world, mark) == []  # recorded this time


def test_a_crash_after_a_changing_patch_leaves_no_stale_record(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record says A; pack PATCHes B and dies before recording it; the site file goes back
    to A. The record of A was dropped before the PATCH of B, so pack sends A again instead of
    trusting a record the server no longer matches."""
    world.release()
    assert world.pack().ok
    original = world.site_file.read_text()
    world.site_file.write_text(original.replace(DEVICE_TYPE, "pump-board-r2"))
    _pack_dies_before_recording_inventory(world, monkeypatch)
    inv = world.sim.inventory(_device_id(world))
    assert inv is not None
    assert inv.get("inventory/device_type") == "pump-board-r2"
    world.site_file.write_text(original)
    mark = len(world.sim.requests)
    world.pack()
    assert [p[0] for p in _patches(world, mark)] == [{"name": "device_type", "value": DEVICE_TYPE}]
    inv = world.sim.inventory(_device_id(world))
    assert inv is not None
    assert inv.get("inventory/device_type") == DEVICE_TYPE


def test_an_inventory_report_still_owed_makes_the_record_untrusted(world: World) -> None:
    """Ingest's inventory report could not be delivered: until it is, pack does not trust the
    record (the server may hold values it does not know), and the delivery records it."""
    world.release("fw-1.1")
    packed = world.pack()
    assert packed.bundle_path is not None
    world.write_result(packed.bundle_path)
    world.sim.faults.add(Fault(INVENTORY, kind="status", status=503, count=-1))
    ingested = world.ingest()
    assert not ingested.ok
    dev_id = _device_id(world)
    attrs = [
        {"name": "device_type", "value": DEVICE_TYPE},
        {"name": "artifact_name", "value": "fw-1.1"},
    ]
    with world.session() as s:
        owed = s.ledger.inventory_to_send(
            site=world.site.name, device="pump-000", device_id=dev_id, attributes=attrs
        )
        assert owed == ["device_type", "artifact_name"]
    world.sim.faults.clear()
    mark = len(world.sim.requests)
    assert world.ingest().ok  # delivers what is owed
    assert len(_patches(world, mark)) == 1
    with world.session() as s:
        owed = s.ledger.inventory_to_send(
            site=world.site.name, device="pump-000", device_id=dev_id, attributes=attrs
        )
        assert owed == []  # device_type from pack's PATCH, artifact_name from ingest's
    mark = len(world.sim.requests)
    world.pack()
    assert _patches(world, mark) == []


def test_a_version_1_ledger_gains_the_inventory_record_on_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as led:
        led.upsert_device(site="s", name="d", identity={"mac": "1"}, device_type="t")
    # What gapferry before ADR 0046 left: no `inventory_sent` table, schema 1.
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP TABLE inventory_sent")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    with Ledger(path) as led:
        assert led.device("s", "d") is not None  # kept
        attrs = [{"name": "device_type", "value": "t"}]
        assert led.inventory_to_send(site="s", device="d", device_id="id1", attributes=attrs) == [
            "device_type"
        ]
        led.record_inventory(site="s", device="d", device_id="id1", attributes=attrs)
        assert led.inventory_to_send(site="s", device="d", device_id="id1", attributes=attrs) == []
        # Another device ID (re-added on the server) has no record.
        assert led.inventory_to_send(site="s", device="d", device_id="id2", attributes=attrs) == [
            "device_type"
        ]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
    assert SCHEMA_VERSION == 2
