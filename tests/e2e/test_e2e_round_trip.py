"""The whole round trip across a real air gap, with real parts (issue 9).

Connected zone (root network namespace): the Mender stand-in on 127.0.0.1, gapferry's connected
commands as subprocesses with MENDER_SERVER_URL / MENDER_API_TOKEN in their environment.
Isolated zone (a network namespace with only its own loopback): the applier, and a test device
that is a real sshd with the real mender client in a throwaway root. The "USB stick" is a folder.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gapferry.fixtures.artifacts import mender_artifact_write, single_file_payload
from gapferry.fixtures.device import FAILING_MODULE, TestDevice
from gapferry.fixtures.netns import probe_tcp_here
from gapferry.fixtures.zones import AirGap, zone_device

pytestmark = [pytest.mark.real_tools, pytest.mark.slow]

DEVICE_TYPE = "test-device"


def _site(path: Path, *, mode: str = "rotating") -> Path:
    lines = ['site = "e2e"', f'mode = "{mode}"', ""]
    for i, name in enumerate(("ssh-1", "file-1"), start=1):
        lines += [
            "[[device]]",
            f'name = "{name}"',
            f'device_type = "{DEVICE_TYPE}"',
            'artifact_name = "factory-image"',
            f'identity = {{ mac = "02:00:00:00:00:{i:02x}" }}',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def _ok(p: subprocess.CompletedProcess[str], what: str) -> Any:
    assert p.returncode == 0, f"{what}: rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout) if p.stdout.lstrip().startswith("{") else p.stdout


def _artifact(tmp: Path, name: str, *, dest_dir: Path, content: bytes) -> Path:
    files = single_file_payload(
        tmp / f"payload-{name}", dest_dir=str(dest_dir), filename="app.conf", content=content
    )
    return mender_artifact_write(
        tmp / f"{name}.mender",
        name=name,
        payload_type="single-file",
        files=files,
        device_types=[DEVICE_TYPE],
    )


def _deployment_status(gap: AirGap, dep_id: str) -> str:
    """The deployment's own status on the stand-in (``finished`` once every device reported)."""
    (dep,) = [d for d in gap.sim.deployments() if d.get("id") == dep_id]
    return str(dep.get("status"))


def _no_secrets_in_argv(gap: AirGap) -> None:
    token = gap.sim.management_token
    for _zone, argv, _rc in gap.history:
        assert not any(token in a for a in argv)


def test_e2e_connected_half_and_the_gap(gap: AirGap, tmp_path: Path) -> None:
    """Upload, deploy and pack through the real CLI; the isolated zone verifies the bundle and
    provably cannot reach the stand-in."""
    site = _site(tmp_path / "site.toml")
    art = _artifact(tmp_path, "app-v1", dest_dir=tmp_path / "dev-files", content=b"v1\n")
    for step in (
        ("device", "keygen", "--site", str(site), "--algorithm", "ed25519", "--json"),
        ("device", "preauth", "--site", str(site), "--json"),
    ):
        _ok(gap.connected(*step), " ".join(step))
    _ok(gap.connected("release", "upload", str(art), "--json"), "upload")
    deployed = _ok(
        gap.connected(
            "release", "deploy", "--site", str(site), "--artifact-name", "app-v1", "--json"
        ),
        "deploy",
    )
    dep_id = deployed["results"][0]["deployment_id"]
    packed = _ok(
        gap.connected(
            "pack",
            "--site",
            str(site),
            "--to",
            str(gap.usb),
            "--sign",
            str(gap.packer_key.private),
            "--json",
        ),
        "pack",
    )
    assert packed["ok"]
    assert {r["device"] for r in packed["results"]} == {"ssh-1", "file-1"}
    records = gap.sim.deployment_records(deployment_id=dep_id)
    assert sorted(r["status"] for r in records) == ["installing", "installing"]

    # The gap: from the isolated zone the stand-in's port is refused; from here it answers.
    assert probe_tcp_here("127.0.0.1", gap.port) == "connected"
    assert gap.zone.tcp_probe("127.0.0.1", gap.port) == "refused"
    seen = len(gap.sim.requests)
    verified = gap.isolated("verify", str(gap.usb), "--trust", str(gap.packers), "--json")
    report = _ok(verified, "verify in the isolated zone")
    assert report["ok"] is True
    assert report["verdict"] == "valid"
    assert report["kind"] == "transfer"
    assert len(gap.sim.requests) == seen
    _no_secrets_in_argv(gap)


def _devices_file(gap: AirGap, dev: TestDevice, file_root: Path) -> Path:
    path = gap.isolated_dir / "devices.toml"
    path.write_text(
        "\n".join(
            [
                'site = "e2e"',
                "",
                "[devices.ssh-1]",
                'method = "mender-ssh"',
                f'host = "{dev.host}"',
                f"port = {dev.port}",
                f'user = "{dev.user}"',
                f'identity_file = "{dev.identity_file}"',
                f'known_hosts = "{dev.known_hosts}"',
                "",
                "[devices.file-1]",
                'method = "file"',
                f'path = "{file_root}"',
                "",
            ]
        )
    )
    return path


def _cycle(
    gap: AirGap, site: Path, devices_file: Path, artifact: Path, name: str, *only: str
) -> tuple[str, dict[str, Any]]:
    """Upload and deploy `artifact`, pack, apply in the isolated zone, ingest; the deployment id
    and the applier's JSON report."""
    _ok(gap.connected("release", "upload", str(artifact), "--json"), f"upload {name}")
    deploy = ["release", "deploy", "--site", str(site), "--artifact-name", name, "--json"]
    for d in only:
        deploy += ["--device", d]
    dep_id = _ok(gap.connected(*deploy), f"deploy {name}")["results"][0]["deployment_id"]
    sign = str(gap.packer_key.private)
    packed = _ok(
        gap.connected("pack", "--site", str(site), "--to", str(gap.usb), "--sign", sign, "--json"),
        f"pack {name}",
    )
    assert packed["ok"], packed
    for r in gap.sim.deployment_records(deployment_id=dep_id):
        assert r["status"] == "installing"

    # Across the gap: the stand-in is refused from inside, and sees nothing while we apply.
    assert probe_tcp_here("127.0.0.1", gap.port) == "connected"
    assert gap.zone.tcp_probe("127.0.0.1", gap.port) == "refused"
    seen = len(gap.sim.requests)
    applied = gap.isolated(
        "apply",
        str(gap.usb),
        "--trust",
        str(gap.packers),
        "--devices",
        str(devices_file),
        "--sign",
        str(gap.applier_key.private),
        "--state",
        str(gap.applier_state),
        "--json",
    )
    assert applied.returncode in (0, 1), applied.stderr
    report = json.loads(applied.stdout)
    assert len(gap.sim.requests) == seen

    ingested = gap.connected("ingest", str(gap.usb), "--trust", str(gap.appliers), "--json")
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    return dep_id, report


def test_e2e_round_trip(gap: AirGap, tmp_path: Path) -> None:
    """Two cycles (success, then a failing install) and the rotating visit's cleanup."""
    site = _site(tmp_path / "site.toml")
    file_root = tmp_path / "file-device"
    file_root.mkdir()
    opt = tmp_path / "ssh-device-opt"
    opt.mkdir()
    for step in (
        ("device", "keygen", "--site", str(site), "--json"),
        ("device", "preauth", "--site", str(site), "--json"),
    ):
        _ok(gap.connected(*step), " ".join(step))
    ids = {d["identity_data"]["mac"]: d["id"] for d in gap.sim.devices()}
    dev_ids = {"ssh-1": ids["02:00:00:00:00:01"], "file-1": ids["02:00:00:00:00:02"]}

    with zone_device(
        gap.zone,
        tmp_path,
        name="ssh-1",
        device_type=DEVICE_TYPE,
        extra_modules={"failing-module": FAILING_MODULE},
        binds={"/opt": opt},
    ) as dev:
        # The device is only reachable from inside the isolated zone.
        assert gap.zone.run([*dev.ssh_base(), "true"]).returncode == 0
        from_host = dev.ssh(["true"])
        assert from_host.returncode == 255, from_host.stderr
        devices_file = _devices_file(gap, dev, file_root)

        # Cycle 1: app-v1 to both devices, installed by the real mender client and by placement.
        art1 = _artifact(tmp_path, "app-v1", dest_dir=Path("/opt/app"), content=b"v1\n")
        dep1, report1 = _cycle(gap, site, devices_file, art1, "app-v1")
        outcomes = {d["name"]: d["outcome"] for d in report1["devices"]}
        assert outcomes == {"ssh-1": "success", "file-1": "success"}, report1
        assert dev.show_artifact() == "app-v1"
        assert (opt / "app" / "app.conf").read_bytes() == b"v1\n"
        assert (file_root / "opt" / "app" / "app.conf").read_bytes() == b"v1\n"
        for name, dev_id in dev_ids.items():
            (rec,) = gap.sim.deployment_records(deployment_id=dep1, device_id=dev_id)
            assert rec["status"] == "success", name
            inv = gap.sim.inventory(dev_id) or {}
            assert inv.get("inventory/artifact_name") == "app-v1", (name, inv)
        assert _deployment_status(gap, dep1) == "finished"

        # Cycle 2: an artifact whose install fails on the SSH device; mender rolls back.
        bad = tmp_path / "payload-bad"
        bad.mkdir()
        (bad / "dest").write_text("/opt/app/app.conf")
        (bad / "content").write_bytes(b"v2-broken\n")
        art2 = mender_artifact_write(
            tmp_path / "app-v2-bad.mender",
            name="app-v2-bad",
            payload_type="failing-module",
            files=[bad / "dest", bad / "content"],
            device_types=[DEVICE_TYPE],
        )
        dep2, report2 = _cycle(gap, site, devices_file, art2, "app-v2-bad", "ssh-1")
        outcomes = {d["name"]: d["outcome"] for d in report2["devices"]}
        assert outcomes == {"ssh-1": "failure"}, report2
        assert dev.show_artifact() == "app-v1"
        assert (opt / "app" / "app.conf").read_bytes() == b"v1\n"
        (rec,) = gap.sim.deployment_records(deployment_id=dep2, device_id=dev_ids["ssh-1"])
        assert rec["status"] == "failure"
        assert _deployment_status(gap, dep2) == "finished"
        log = gap.sim.logs(dep2, dev_ids["ssh-1"]) or []
        text = "\n".join(str(m.get("message", "")) for m in log)
        assert "failing-module: simulated failure" in text, log
        inv = gap.sim.inventory(dev_ids["ssh-1"]) or {}
        assert inv.get("inventory/artifact_name") == "app-v1"

    # With the device stopped, nothing is left in the isolated zone: the applier left no SSH
    # master connection or other process behind.
    assert gap.zone.pids() == []

    # Rotating mode: the visit ends with cleanup; the stand-in shows the auth sets gone.
    assert len(gap.sim.auth_sets()) == 2
    cleaned = _ok(gap.connected("device", "cleanup", "--site", str(site), "--json"), "cleanup")
    assert cleaned["ok"]
    assert gap.sim.auth_sets() == []
    _no_secrets_in_argv(gap)
