"""The whole Trusted Intermediary lifecycle against the stand-in (strict mode)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gapferry.connected.keystore import KeyAlgorithm
from gapferry.connected.pack import pack
from gapferry.fixtures.artifacts import make_rsa_key
from gapferry.fixtures.connected_world import World


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_lifecycle_one_device(world: World, algorithm: KeyAlgorithm) -> None:
    dep_id = world.release(algorithm=algorithm)
    report = world.pack()
    assert report.ok, report
    assert [r.action for r in report.rows] == ["packed"]
    assert report.bundle_seq == 1
    assert report.bundle_path is not None
    world.write_result(report.bundle_path)
    ing = world.ingest()
    assert ing.ok, ing
    assert [r.action for r in ing.rows] == ["reported"]
    statuses = [s for d, _, s in world.status_puts() if d == dep_id]
    assert statuses == ["installing", "success"]
    assert world.sim.strict_violations == []
    dep = next(d for d in world.sim.deployments() if d["id"] == dep_id)
    assert dep["status"] == "finished"
    with world.session() as s:
        journal = s.ledger.journal_rows()
    assert len(journal) == len(world.sim.requests)  # every call, none missing
    assert {(r["method"], r["status"]) for r in journal} >= {("PUT", 204), ("POST", 200)}
    sim_ids = {r.request_id for r in world.sim.requests}
    assert [r["request_id"] for r in journal] == [r.request_id for r in world.sim.requests]
    assert sim_ids


def test_lifecycle_two_hundred_devices(tmp_path: Path) -> None:
    w = World(tmp_path, devices=200)
    try:
        dep_id = w.release()
        report = w.pack()
        assert report.ok, [r for r in report.rows if not r.ok][:3]
        assert {r.action for r in report.rows} == {"packed"}
        assert report.bundle_path is not None
        transfer = w.transfer(report.bundle_path).transfer.manifest
        assert len(transfer.devices) == 200
        assert len(transfer.artifacts) == 1  # downloaded and stored once
        downloads = [r for r in w.sim.requests if r.path.startswith("/sim/download/")]
        assert len(downloads) == 1
        # The deployment's name is asked once per deployment, not once per device.
        lookups = [
            r
            for r in w.sim.requests
            if r.method == "GET"
            and r.path == f"/api/management/v1/deployments/deployments/{dep_id}"
        ]
        assert len(lookups) == 1
        w.write_result(report.bundle_path, outcomes={"pump-007": "failure"})
        ing = w.ingest()
        assert ing.ok, ing.reports_failed
        puts = w.status_puts()
        per_device: dict[str, list[str]] = {}
        for d, dev, st in puts:
            assert d == dep_id
            per_device.setdefault(dev, []).append(st)
        assert len(per_device) == 200
        finals = sorted(v[-1] for v in per_device.values())
        assert finals.count("failure") == 1
        # installing (pack), then the final status alone (ingest, ADR 0046).
        assert all(v == ["installing", v[-1]] for v in per_device.values())
        assert w.sim.strict_violations == []
        logs = [r for r in w.sim.requests if r.path.endswith("/log")]
        assert len(logs) == 1
    finally:
        w.close()


def test_signed_artifact_is_checked_and_packed(world: World, tmp_path: Path) -> None:
    key = make_rsa_key(tmp_path / "artkeys")
    world.release(artifact_key=key)
    report = world.pack(artifact_key=key.public_pem())
    assert report.ok, report
    assert [r.action for r in report.rows] == ["packed"]
    other = make_rsa_key(tmp_path / "other", name="other")
    for f in (world.state / "artifacts").glob("*.mender"):
        f.unlink()
    refused = world.pack(artifact_key=other.public_pem(), repack=True)
    assert not refused.ok
    assert refused.rows[0].action == "error"
    assert "signature" in refused.rows[0].detail
    assert not list((world.state / "artifacts").glob("*.mender"))


def test_device_token_is_renewed_before_it_expires(tmp_path: Path) -> None:
    w = World(tmp_path)
    try:
        w.release()
        now = [time.time()]
        with w.session(clock=lambda: now[0]) as s:
            site = w.site
            api = s.device_api(site.name, site.devices[0])
            first = api.token()
            assert api.token() == first  # cached
            now[0] = api.token_expiry - 60  # inside the renewal margin
            time.sleep(1.1)  # a new iat, so a new token
            assert api.token() != first
    finally:
        w.close()


def test_pack_and_ingest_need_no_management_token_once_enrolled(world: World) -> None:
    dep_id = world.release()
    before = len(world.sim.requests)
    with world.session(management=False) as s:
        report = pack(s, world.site, media=world.media, signer=world.signer)
    assert report.ok, report
    assert report.bundle_path is not None
    assert not [r for r in world.sim.requests[before:] if "/management/" in r.path]
    world.write_result(report.bundle_path)
    assert world.ingest(management=False).ok
    assert [s for d, _, s in world.status_puts() if d == dep_id] == ["installing", "success"]
