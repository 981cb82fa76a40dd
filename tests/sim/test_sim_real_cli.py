"""The real mender-cli 1.9 logs in to the stand-in and uploads an artifact made by the real
mender-artifact (issue 3 "Fidelity tests"). The password goes through stdin, never argv."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from gapferry.fixtures.sim import DEFAULT_PASSWORD, DEFAULT_USER, MenderSim, running_server

pytestmark = pytest.mark.real_tools


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (tests/run.sh installs it)"
    return path


def test_mender_cli_login_and_upload(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("payload\n")
    art = tmp_path / "cli-rel.mender"
    subprocess.run(
        [
            _tool("mender-artifact"),
            "write",
            "module-image",
            "-T",
            "single-file",
            "-n",
            "cli-rel",
            "-t",
            "dev-x",
            "-t",
            "dev-y",
            "-f",
            str(tmp_path / "p.txt"),
            "-o",
            str(art),
        ],
        check=True,
        capture_output=True,
    )
    sim = MenderSim(artifact_dir=tmp_path / "store", management_token="pat")
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    cli = _tool("mender-cli")
    with running_server(sim, cert_dir=tmp_path) as url:
        bad = subprocess.run(
            check=False,
            args=[cli, "login", "--server", url, "--skip-verify", "--username", DEFAULT_USER],
            env=env,
            input="wrong\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode != 0
        r = subprocess.run(
            check=False,
            args=[cli, "login", "--server", url, "--skip-verify", "--username", DEFAULT_USER],
            env=env,
            input=DEFAULT_PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "login successful" in r.stdout
        r = subprocess.run(
            check=False,
            args=[
                cli,
                "artifacts",
                "upload",
                "--server",
                url,
                "--skip-verify",
                "--no-progress",
                "--description",
                "via cli",
                str(art),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "upload successful" in r.stdout
        # the stand-in lists it, to mender-cli and through the management API
        r = subprocess.run(
            check=False,
            args=[cli, "artifacts", "list", "--server", url, "--skip-verify"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "Name: cli-rel" in r.stdout
        ctx = ssl.create_default_context(cafile=str(tmp_path / "sim-cert.pem"))
        with httpx.Client(base_url=url, verify=ctx, headers={"Authorization": "Bearer pat"}) as c:
            [listed] = c.get("/api/management/v1/deployments/artifacts").json()
        assert listed["name"] == "cli-rel"
        assert listed["device_types_compatible"] == ["dev-x", "dev-y"]
        # without a token the management API refuses
        r = subprocess.run(
            check=False,
            args=[
                cli,
                "artifacts",
                "upload",
                "--server",
                url,
                "--skip-verify",
                "--no-progress",
                "--token",
                str(tmp_path / "missing-token"),
                str(art),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0
    [a] = sim.artifacts()
    assert a["name"] == "cli-rel"
    assert a["device_types_compatible"] == ["dev-x", "dev-y"]
    assert a["description"] == "via cli"
    assert sim.artifact_path(a["id"]).read_bytes() == art.read_bytes()
    assert [(x.method, x.status) for x in sim.requests if x.path.endswith("/auth/login")] == [
        ("POST", 401),
        ("POST", 200),
    ]
