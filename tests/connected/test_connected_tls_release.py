"""TLS with an on-premises CA, artifact upload that must not be blindly repeated, decommission."""

from __future__ import annotations

from pathlib import Path

import pytest
from gapferry.connected import devices as devops
from gapferry.connected import release
from gapferry.connected.mender.errors import MenderUnavailable
from gapferry.connected.session import Session
from gapferry.fixtures.connected_world import World
from gapferry.fixtures.sim import Fault, running_server


def test_tls_is_verified_and_a_custom_ca_bundle_is_honoured(world: World, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    with running_server(world.sim, cert_dir=certs) as url:
        assert url.startswith("https://")
        plain = Session(
            state_dir=tmp_path / "s1", server_url=url, api_token=world.sim.management_token
        )
        try:
            with pytest.raises(MenderUnavailable) as e:
                plain.management.list_artifacts()
            assert e.value.code == "tls-untrusted"
            assert "GAPFERRY_CA_BUNDLE" in e.value.remedy
        finally:
            plain.close()
        trusted = Session(
            state_dir=tmp_path / "s2",
            server_url=url,
            api_token=world.sim.management_token,
            ca_bundle=certs / "sim-cert.pem",
        )
        try:
            assert trusted.management.list_artifacts() == []
            site = world.site
            devops.keygen(trusted, site, site.devices)
            devops.preauthorize(trusted, site, site.devices)
            rows = devops.authenticate(trusted, site, site.devices)
            assert rows[0].device_id
        finally:
            trusted.close()


def test_upload_after_a_server_error_checks_before_trying_again(world: World) -> None:
    art = world.make_artifact("fw-3.0")
    world.sim.faults.add(Fault(r"/deployments/artifacts$", method="POST", status=503, count=1))
    with world.session() as s:
        res = release.upload(s, art)
        assert res.action == "uploaded"
        again = release.upload(s, art)
        assert again.action == "already-there"
    uploads = [
        r for r in world.sim.requests if r.method == "POST" and r.path.endswith("/artifacts")
    ]
    assert [r.status for r in uploads] == [503, 201]
    assert len(world.sim.artifacts()) == 1


def test_deploy_twice_is_a_no_op(world: World) -> None:
    world.release("fw-1.1")
    with world.session() as s:
        res = release.deploy(s, world.site, world.site.devices, artifact_name="fw-1.1")
    assert res.action == "exists"
    assert len(world.sim.deployments()) == 1


def test_decommission_removes_the_device(world: World) -> None:
    world.release()
    with world.session() as s:
        rows = devops.cleanup(s, world.site, world.site.devices, decommission=True, force=True)
        assert rows[0].detail.startswith("decommissioned")
        assert not list((world.state / "keys" / "plant-north").glob("*.key"))
    world.sim.run_workflows()
    assert (
        all(d.get("decommissioning") or False for d in world.sim.devices())
        or not world.sim.devices()
    )
