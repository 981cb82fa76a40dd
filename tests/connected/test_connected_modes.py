"""Static and rotating intermediaries (seeds "Static vs. rotating"; ADR 0040)."""

from __future__ import annotations

from pathlib import Path

from gapferry.connected import devices as devops
from gapferry.connected.pack import pack
from gapferry.fixtures.connected_world import World


def test_rotating_visit_leaves_no_keys_or_auth_sets(tmp_path: Path) -> None:
    w = World(tmp_path, devices=3, mode="rotating")
    try:
        dep_id = w.release()
        report = w.pack()
        assert report.ok
        with w.session() as s:
            refused = devops.cleanup(s, w.site, w.site.devices)
        assert [r.ok for r in refused] == [False, False, False]  # still travelling
        assert report.bundle_path is not None
        w.write_result(report.bundle_path)
        assert w.ingest().ok
        with w.session() as s:
            done = devops.cleanup(s, w.site, w.site.devices)
            assert all(r.ok for r in done), done
            assert not list((w.state / "keys" / "plant-north").glob("*.key"))
            again = devops.cleanup(s, w.site, w.site.devices)  # idempotent
            assert all(r.ok for r in again)
        for dev in w.sim.devices():
            assert not [a for a in dev.get("auth_sets") or [] if a["status"] == "accepted"]
        statuses = [st for d, _, st in w.status_puts() if d == dep_id]
        assert statuses.count("success") == 3
        # The next visit starts from nothing: pack creates keys and preauthorizes again.
        w.release("fw-1.2")
        nxt = w.pack()
        assert nxt.ok, nxt
        assert nxt.bundle_seq == 2
    finally:
        w.close()


def test_static_site_keeps_keys_and_refuses_a_lost_key(world: World) -> None:
    world.release()
    assert world.pack().ok
    with world.session() as s:
        kept = devops.cleanup(s, world.site, world.site.devices, force=True)
        assert all(r.ok for r in kept)
        assert list((world.state / "keys" / "plant-north").glob("*.key"))
        status = devops.device_status(s, world.site, world.site.devices)
        assert "key: present" in status[0].detail
    (world.state / "keys" / "plant-north" / "pump-000.key").unlink()
    with world.session() as s:
        s.ledger.set_device("plant-north", "pump-000", auth_state="accepted")
        report = pack(s, world.site, media=world.media, signer=world.signer)
    assert report.rows[0].action == "error"
    assert "no longer in" in report.rows[0].detail
