"""The real server's traps and the attacks on the connected side, one named test each."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from gapferry.connected.mender.device import encode_next_request
from gapferry.connected.mender.errors import MenderConflict
from gapferry.fixtures.artifacts import make_rsa_key
from gapferry.fixtures.connected_world import DEVICE_TYPE, World
from gapferry.fixtures.sim import Fault
from gapferry.fixtures.sshkeys import generate_key


def _puts(world: World, dep_id: str) -> list[str]:
    return [s for d, _, s in world.status_puts() if d == dep_id]


def _next_bodies(world: World) -> list[object]:
    return [r.json for r in world.sim.requests if r.path.endswith("/next")]


def test_next_is_repeated_with_the_same_bytes_after_the_site_file_changed(world: World) -> None:
    dep_id = world.release()
    first = world.pack()
    assert first.ok
    # The operator edits the device's current artifact while the bundle travels.
    world.site_file.write_text(world.site_file.read_text().replace("fw-1.0", "fw-0.9-hotfix"))
    # ...and the artifact cache is gone, so a fresh download link is needed: /next again.
    for f in (world.state / "artifacts").glob("*.mender"):
        f.unlink()
    again = world.pack(repack=True)
    assert again.ok, again
    assert again.bundle_seq == 2
    bodies = _next_bodies(world)
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]
    assert all(r.status != 409 for r in world.sim.requests)
    assert _puts(world, dep_id) == ["installing"]  # not reported twice
    assert world.sim.strict_violations == []
    rec = world.sim.deployment_records(deployment_id=dep_id)[0]
    assert rec["status"] == "installing"


def test_travelling_deployment_is_not_packed_twice(world: World) -> None:
    world.release()
    assert world.pack().bundle_seq == 1
    again = world.pack()
    assert again.ok
    assert again.bundle_seq is None
    assert [r.action for r in again.rows] == ["travelling"]
    assert len(_next_bodies(world)) == 1


def test_conflicting_next_fails_the_deployment_and_is_reported_as_such(world: World) -> None:
    dep_id = world.release()
    with world.session() as s:
        site = world.site
        api = s.device_api(site.name, site.devices[0])
        body = encode_next_request(device_type=DEVICE_TYPE, artifact_name="fw-1.0")
        assert api.next_deployment(body) is not None
        other = encode_next_request(device_type=DEVICE_TYPE, artifact_name="something-else")
        with pytest.raises(MenderConflict) as e:
            api.next_deployment(other)
    assert e.value.status == 409
    assert "conflicting request data" in e.value.message
    assert e.value.request_id
    assert world.sim.deployment_records(deployment_id=dep_id)[0]["status"] == "failure"


def test_expired_download_link_is_refreshed_with_the_same_next_data(world: World) -> None:
    dep_id = world.release()
    world.sim.faults.add(Fault(r"/sim/download/", kind="status", status=403, count=1))
    report = world.pack()
    assert report.ok, report
    bodies = _next_bodies(world)
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]
    assert len([r for r in world.sim.requests if r.path.startswith("/sim/download/")]) == 2
    assert _puts(world, dep_id) == ["installing"]


def _rewrite_next(world: World, edit: object) -> None:
    inner = world.sim.handler

    def handler(request: httpx.Request) -> httpx.Response:
        resp = inner(request)
        if request.url.path.endswith("/next") and resp.status_code == 200:
            body = json.loads(resp.read())
            edit(body)  # type: ignore[operator]
            return httpx.Response(200, json=body, headers={"X-MEN-RequestID": "x"})
        return resp

    world.handler = handler


def test_download_link_to_another_host_is_refused(world: World) -> None:
    dep_id = world.release()

    def evil(body: dict[str, dict[str, dict[str, str]]]) -> None:
        src = body["artifact"]["source"]
        src["uri"] = src["uri"].replace("mender.sim", "evil.example")

    _rewrite_next(world, evil)
    report = world.pack()
    assert not report.ok
    assert report.rows[0].action == "error"
    assert "evil.example" in report.rows[0].detail
    assert not [r for r in world.sim.requests if r.path.startswith("/sim/download/")]
    assert _puts(world, dep_id) == []
    assert report.bundle_path is None


def test_truncated_download_is_refused(world: World) -> None:
    dep_id = world.release()
    inner = world.sim.handler

    def truncating(request: httpx.Request) -> httpx.Response:
        resp = inner(request)
        if request.url.path.startswith("/sim/download/"):
            data = resp.read()
            resp.close()
            return httpx.Response(200, content=data[: len(data) // 2])
        return resp

    world.handler = truncating
    report = world.pack()
    assert not report.ok
    assert "bytes" in report.rows[0].detail
    assert _puts(world, dep_id) == []
    assert not list((world.state / "artifacts").glob("*.mender"))


def test_unsigned_artifact_is_refused_when_a_key_is_required(world: World, tmp_path: Path) -> None:
    dep_id = world.release()
    key = make_rsa_key(tmp_path / "artkeys")
    report = world.pack(artifact_key=key.public_pem())
    assert not report.ok
    assert "sign" in report.rows[0].detail
    assert _puts(world, dep_id) == []


def test_deployment_aborted_while_its_bundle_travels(world: World) -> None:
    dep_id = world.release()
    report = world.pack()
    assert report.bundle_path is not None
    with world.session() as s:
        assert s.management.abort_deployment(dep_id)
    world.write_result(report.bundle_path)
    ing = world.ingest()
    assert ing.ok, ing
    assert [r.action for r in ing.rows] == ["aborted"]
    assert _puts(world, dep_id) == ["installing"]
    with world.session() as s:
        dep = s.ledger.deployments()[0]
        assert dep.state == "aborted"
        assert s.ledger.pending() == []
    assert world.sim.strict_violations == []


def test_result_bundle_ingested_twice_reports_once(world: World) -> None:
    dep_id = world.release()
    report = world.pack()
    assert report.bundle_path is not None
    world.write_result(report.bundle_path)
    assert world.ingest().ok
    before = len(world.sim.requests)
    second = world.ingest()
    assert second.ok
    assert [r.action for r in second.rows] == ["already-ingested"]
    assert len(world.sim.requests) == before
    assert _puts(world, dep_id) == ["installing", "success"]


def test_result_signed_by_an_untrusted_key_is_rejected(world: World, tmp_path: Path) -> None:
    dep_id = world.release()
    report = world.pack()
    assert report.bundle_path is not None
    stranger = generate_key(tmp_path, "stranger")
    world.write_result(report.bundle_path, signer_key=stranger.private)
    ing = world.ingest()
    assert not ing.ok
    assert ing.rows[0].action == "rejected"
    assert _puts(world, dep_id) == ["installing"]


def test_result_for_a_deployment_the_bundle_did_not_carry_is_rejected(world: World) -> None:
    dep_id = world.release()
    report = world.pack()
    assert report.bundle_path is not None
    world.write_result(report.bundle_path, deployment_id="11111111-2222-4333-8444-555555555555")
    ing = world.ingest()
    assert not ing.ok
    assert "deployment-not-in-bundle" in ing.rows[0].detail
    assert _puts(world, dep_id) == ["installing"]


def test_failure_uploads_the_log_before_the_final_status(world: World) -> None:
    dep_id = world.release()
    report = world.pack()
    assert report.bundle_path is not None
    world.write_result(report.bundle_path, outcome="failure")
    assert world.ingest().ok
    tail = [
        r.path.rsplit("/", 1)[-1]
        for r in world.sim.requests
        if r.method == "PUT" and dep_id in r.path
    ]
    # installing (pack); then the log, and the final status alone (ADR 0046).
    assert tail == ["status", "log", "status"]
    assert _puts(world, dep_id) == ["installing", "failure"]
    dev_id = world.status_puts()[0][1]
    log = world.sim.logs(dep_id, dev_id)
    assert log is not None
    assert log[0]["message"] == "install failed"


def test_ingest_records_the_new_artifact_for_the_next_poll(world: World) -> None:
    world.release("fw-1.1")
    report = world.pack()
    assert report.bundle_path is not None
    world.write_result(report.bundle_path)
    assert world.ingest().ok
    with world.session() as s:
        row = s.ledger.device("plant-north", "pump-000")
        assert row is not None
        assert row.artifact_name == "fw-1.1"
    inv = world.sim.inventory(world.status_puts()[0][1])
    assert inv is not None
    assert inv.get("inventory/artifact_name") == "fw-1.1"
    nothing = world.pack()
    assert [r.action for r in nothing.rows] == ["up-to-date"]


def test_repacked_deployment_is_reported_once_whichever_result_returns(world: World) -> None:
    dep_id = world.release()
    first = world.pack()
    second = world.pack(repack=True)
    assert first.bundle_path is not None
    assert second.bundle_path is not None
    world.write_result(first.bundle_path)
    world.write_result(second.bundle_path)
    ing = world.ingest()
    assert ing.ok, ing
    assert sorted(r.action for r in ing.rows) == ["already-reported", "reported"]
    assert _puts(world, dep_id) == ["installing", "success"]
    assert world.sim.strict_violations == []


def test_skipped_device_goes_into_the_next_bundle(world: World) -> None:
    dep_id = world.release()
    first = world.pack()
    assert first.bundle_path is not None
    world.write_result(first.bundle_path, outcome="skipped")
    ing = world.ingest()
    assert ing.ok, ing
    assert [r.action for r in ing.rows] == ["skipped"]
    second = world.pack()
    assert second.bundle_seq == 2
    assert [r.action for r in second.rows] == ["packed"]
    assert _puts(world, dep_id) == ["installing"]


def test_result_naming_another_mender_device_is_rejected(world: World) -> None:
    dep_id = world.release()
    report = world.pack()
    assert report.bundle_path is not None
    world.write_result(report.bundle_path, mender_device_id="someone-elses-device")
    ing = world.ingest()
    assert not ing.ok
    assert "device-mismatch" in ing.rows[0].detail
    assert _puts(world, dep_id) == ["installing"]
    with world.session() as s:
        assert s.ledger.deployments()[0].state == "travelling"
