"""The real mender-client 3.4 daemon against the stand-in over loopback (issue 3 "Fidelity tests").

The client runs in a private mount namespace (`unshare -m`) with throwaway directories bound over
/etc/mender (mender.conf, artifact_info) and /usr/share/mender/{identity,inventory}; the host's
files are never changed (artifact-and-client.md §3.1 for what the client needs).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from gapferry.common.artifact.writer import PayloadSource, write_module_image
from gapferry.fixtures.sim import MenderSim, running_server

pytestmark = pytest.mark.real_tools

DA = "/api/management/v2/devauth"


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start_client(
    root: Path, url: str, extra_conf: dict[str, object] | None = None
) -> subprocess.Popen[bytes]:
    for tool in ("mender", "unshare", "mount"):
        assert shutil.which(tool), f"{tool} is not installed (tests/run.sh installs it)"
    etc, ident, inv, data = root / "etc", root / "identity", root / "inventory", root / "data"
    for d in (etc, ident, inv, data):
        d.mkdir(parents=True, exist_ok=True)
    script = ident / "mender-device-identity"
    script.write_text("#!/bin/sh\necho mac=02:00:00:00:00:42\n")
    script.chmod(0o755)
    (etc / "artifact_info").write_text("artifact_name=factory\n")
    (data / "device_type").write_text("device_type=sim-device\n")
    conf = {
        "ServerURL": url,
        "UpdatePollIntervalSeconds": 1,
        "InventoryPollIntervalSeconds": 1,
        "RetryPollIntervalSeconds": 1,
        **(extra_conf or {}),
    }
    (etc / "mender.conf").write_text(json.dumps(conf))
    shell = (
        f"mount --bind {etc} /etc/mender && "
        f"mount --bind {ident} /usr/share/mender/identity && "
        f"mount --bind {inv} /usr/share/mender/inventory && "
        f"exec mender --config /etc/mender/mender.conf --fallback-config {root}/none.conf "
        f"--data {data} --no-syslog daemon"
    )
    with (root / "client.log").open("wb") as log:
        return subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", shell],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def single_file_artifact(out: Path, dest: Path) -> None:
    write_module_image(
        out,
        artifact_name="rel-1",
        device_types=["sim-device"],
        payload_type="single-file",
        files=[
            PayloadSource(name="dest_dir", data=str(dest).encode() + b"\n"),
            PayloadSource(name="filename", data=b"hello.txt\n"),
            PayloadSource(name="permissions", data=b"644\n"),
            PayloadSource(name="hello.txt", data=b"hello from the sim\n"),
        ],
    )


def run_client_flow(tmp_path: Path, *, tls: bool, approve: str) -> None:
    """Pending first; then the operator accepts the pending set (`approve="accept"`) or
    preauthorizes the device's identity and key with `force` (`approve="preauthorize"`,
    server-behaviour.md §2 "POST /devices"), and the client gets a token on its next request."""
    sim = MenderSim(artifact_dir=tmp_path / "store", management_token="pat", strict=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    art = tmp_path / "rel-1.mender"
    single_file_artifact(art, dest)
    cert_dir = tmp_path if tls else None
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(running_server(sim, cert_dir=cert_dir))
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(tmp_path / "sim-cert.pem")) if tls else True
        )
        extra: dict[str, object] | None = (
            {"ServerCertificate": str(tmp_path / "sim-cert.pem")} if tls else None
        )
        mgmt = httpx.Client(base_url=url, headers={"Authorization": "Bearer pat"}, verify=verify)
        stack.callback(mgmt.close)
        with art.open("rb") as f:
            r = mgmt.post("/api/management/v1/deployments/artifacts", files={"artifact": ("a", f)})
        assert r.status_code == 201, r.text
        client = start_client(tmp_path / "device", url, extra)
        try:
            # pending first: the unknown device gets 401 and shows up as pending
            wait_for(lambda: bool(sim.devices()), 30, "the client's first auth request")
            [dev] = sim.devices()
            assert dev["status"] == "pending"
            assert dev["identity_data"] == {"mac": "02:00:00:00:00:42"}
            assert any(r.path.endswith("/auth_requests") and r.status == 401 for r in sim.requests)
            [auth_set] = dev["auth_sets"]
            assert auth_set["status"] == "pending"
            before_approval = len(sim.requests)
            assert not any(
                r.path.endswith("/auth_requests") and r.status == 200 for r in sim.requests
            )
            if approve == "accept":
                r = mgmt.put(
                    f"{DA}/devices/{dev['id']}/auth/{auth_set['id']}/status",
                    json={"status": "accepted"},
                )
                assert r.status_code == 204
            else:
                r = mgmt.post(
                    f"{DA}/devices",
                    json={
                        "identity_data": dev["identity_data"],
                        "pubkey": auth_set["pubkey"],
                        "force": True,
                    },
                )
                assert r.status_code == 201
                # the pending set itself became preauthorized (or, if the client was quick,
                # already accepted by its next auth request): still one set, no new device
                [(set_id, status)] = [(a["id"], a["status"]) for a in sim.auth_sets(dev["id"])]
                assert set_id == auth_set["id"]
                assert status in ("preauthorized", "accepted")
                assert len(sim.devices()) == 1
            wait_for(
                lambda: any(
                    r.path.endswith("/auth_requests") and r.status == 200
                    for r in sim.requests[before_approval:]
                ),
                30,
                "the client to get a token",
            )
            now = sim.device(dev["id"])
            assert now is not None
            assert now["status"] == "accepted"
            r = mgmt.post(
                "/api/management/v1/deployments/deployments",
                json={"name": "d", "artifact_name": "rel-1", "devices": [dev["id"]]},
            )
            assert r.status_code == 201
            wait_for(
                lambda: any(x["status"] == "success" for x in sim.deployment_records()),
                60,
                "the client to report success",
            )
            if not tls:
                # tokens that expire now: the real client gets 401 and authenticates again
                seen = len(sim.requests)
                sim.expire_tokens_now()
                wait_for(
                    lambda: any(
                        r.path.endswith("/auth_requests") and r.status == 200
                        for r in sim.requests[seen:]
                    ),
                    30,
                    "the client to re-authenticate after its token expired",
                )
                assert any(r.status == 401 for r in sim.requests[seen:])
        finally:
            stop(client)
        assert (dest / "hello.txt").read_text() == "hello from the sim\n"
        reported = [
            r.json["status"]
            for r in sim.requests
            if r.method == "PUT"
            and r.path.startswith("/api/devices/")
            and r.path.endswith("/status")
            and r.status == 204
        ]
        assert reported[0] == "downloading"
        assert reported[-1] == "success"
        assert "installing" in reported
        assert any(r.path.startswith("/sim/download/") and r.status == 200 for r in sim.requests)
        # the real client repeats status reports; strict mode notices (a TI must not do this)
        assert all("repeated" in v for v in sim.strict_violations)
        inv = sim.inventory(dev["id"])
        assert inv is not None
        assert inv["inventory/device_type"] == "sim-device"
        dep = mgmt.get("/api/management/v1/deployments/deployments").json()[0]
        assert dep["status"] == "finished"
        assert dep["statistics"]["status"]["success"] == 1


def test_real_mender_client_http(tmp_path: Path) -> None:
    run_client_flow(tmp_path, tls=False, approve="accept")


def test_real_mender_client_https_preauthorized(tmp_path: Path) -> None:
    run_client_flow(tmp_path, tls=True, approve="preauthorize")
