"""What an operator sees: help with examples, exit codes and environment; configuration errors that
name the problem and the fix once (exit 2); progress for downloads and bundle writes; one
connection pool per run (issue 5 "Commands", "Progress")."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from gapferry.common.cli import main
from gapferry.common.media.progress import Progress
from gapferry.connected import pack as pack_mod
from gapferry.fixtures.connected_world import World
from gapferry.fixtures.sim import running_server
from gapferry.fixtures.sim._server import SimServer

COMMANDS = [
    ["pack"],
    ["ingest"],
    ["status"],
    ["device", "keygen"],
    ["device", "preauth"],
    ["device", "auth"],
    ["device", "status"],
    ["device", "cleanup"],
    ["device", "pubkey"],
    ["release", "upload"],
    ["release", "deploy"],
    ["site", "init"],
    ["site", "check"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_documents_examples_json_and_exit_codes(cmd: list[str]) -> None:
    r = CliRunner().invoke(main, [*cmd, "--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    assert "Example" in r.output
    assert f"gapferry {' '.join(cmd)}" in r.output  # the example is the command itself
    assert "--json" in r.output
    assert re.search(r"Exit codes:.*\b0\b.*\b2\b", r.output, re.S), r.output
    if cmd[0] not in ("site",):
        assert "MENDER_SERVER_URL" in r.output


def _env(world: World, **kw: str) -> dict[str, str]:
    return {
        "MENDER_SERVER_URL": "",
        "MENDER_API_TOKEN": world.sim.management_token,
        "MENDER_TENANT_TOKEN": "",
        "GAPFERRY_STATE": str(world.state),
        **kw,
    }


@pytest.mark.parametrize("cmd", [["device", "preauth"], ["device", "auth"], ["device", "cleanup"]])
def test_server_url_missing_is_one_usage_error_with_the_fix(world: World, cmd: list[str]) -> None:
    env = _env(world)
    r = CliRunner().invoke(main, [*cmd, "--site", str(world.site_file)], env=env)
    assert r.exit_code == 2, r.output
    assert r.output.count("MENDER_SERVER_URL is not set") == 1
    assert "what to do: export MENDER_SERVER_URL=" in r.output


def test_unreachable_server_names_the_server_and_the_fix(world: World) -> None:
    env = _env(world, MENDER_SERVER_URL="http://127.0.0.1:1")
    keygen = ["device", "keygen", "--site", str(world.site_file), "--algorithm", "ed25519"]
    assert CliRunner().invoke(main, keygen, env=env).exit_code == 0
    r = CliRunner().invoke(
        main, ["device", "auth", "--site", str(world.site_file), "--json"], env=env
    )
    assert r.exit_code == 1
    doc = json.loads(r.output)
    detail = doc["results"][0]["detail"]
    assert "cannot reach 127.0.0.1:1" in detail
    assert "what to do: check the network and MENDER_SERVER_URL" in detail


def test_deploying_an_unknown_artifact_says_to_upload_it(world: World) -> None:
    world.release()
    with running_server(world.sim) as url:
        r = CliRunner().invoke(
            main,
            ["release", "deploy", "--site", str(world.site_file), "--artifact-name", "fw-9"],
            env=_env(world, MENDER_SERVER_URL=url),
        )
    assert r.exit_code == 4, r.output
    assert "No artifact for the deployment" in r.output
    assert "request_id" in r.output
    assert "gapferry release upload" in r.output


def test_pack_shows_progress_for_the_download_and_the_bundle_write(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = io.StringIO()

    class Shown(Progress):
        def __init__(self, label: str, total: int, **_: Any) -> None:
            super().__init__(label, total, enabled=True, stream=shown, delay=0.0, interval=0.0)

    monkeypatch.setattr(pack_mod, "Progress", Shown)
    world.release()
    report = world.pack()
    assert report.ok, report
    lines = [ln.split("\x1b[K")[-1] for ln in shown.getvalue().splitlines()]
    assert any(ln.startswith("fw-1.1 [") and "100.0%" in ln for ln in lines), lines
    # One bar for the write and the read-back from the medium: twice the artifact's bytes.
    assert any(
        ln.startswith("bundle #1 (write, read back) [") and "100.0% 10.0 KiB/10.0 KiB" in ln
        for ln in lines
    ), lines


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> set[object]:
    peers: set[object] = set()
    real = SimServer.process_request

    def counting(self: SimServer, request: Any, client_address: Any) -> None:
        peers.add(client_address)
        real(self, request, client_address)

    monkeypatch.setattr(SimServer, "process_request", counting)
    return peers


def _run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_a_run_reuses_its_connections(tmp_path: Path, connections: set[object]) -> None:
    w = World(tmp_path, devices=6)
    try:
        w.release()
        with running_server(w.sim) as url:
            env = _env(w, MENDER_SERVER_URL=url)
            before = len(w.sim.requests)
            r = _run(
                env,
                "pack",
                "--site",
                str(w.site_file),
                "--to",
                str(w.media),
                "--sign",
                str(w.packer_key.private),
                "--jobs",
                "2",
            )
            assert r.exit_code == 0, r.output
        # The summary table: a header and one row per device.
        lines = r.output.splitlines()
        assert any(ln.split()[:3] == ["DEVICE", "ACTION", "OK"] for ln in lines), r.output
        assert sum(1 for ln in lines if " packed " in ln) == 6
        requests = len(w.sim.requests) - before
        assert requests >= 6 * 4
        assert 1 <= len(connections) <= 2  # --jobs 2: at most two kept-alive connections
    finally:
        w.close()


def test_one_device_of_a_site_preauth_with_force_then_decommission(tmp_path: Path) -> None:
    w = World(tmp_path, devices=3)
    try:
        site = str(w.site_file)
        with running_server(w.sim) as url:
            env = _env(w, MENDER_SERVER_URL=url)
            one = ["--site", site, "--device", "pump-001", "--json"]
            r = _run(env, "device", "keygen", *one, "--algorithm", "ed25519")
            assert [x["device"] for x in json.loads(r.output)["results"]] == ["pump-001"]
            assert sorted(p.name for p in (w.state / "keys" / "plant-north").glob("*.key")) == [
                "pump-001.key"
            ]
            for _ in range(2):  # force: true makes preauthorization safe to repeat
                r = _run(env, "device", "preauth", *one)
                assert r.exit_code == 0, r.output
            bodies = [
                q.json for q in w.sim.requests if q.path == "/api/management/v2/devauth/devices"
            ]
            assert len(bodies) == 2
            assert all(isinstance(b, dict) and b["force"] is True for b in bodies)
            assert len(w.sim.devices()) == 1
            r = _run(env, "device", "auth", *one)
            assert r.exit_code == 0, r.output
            r = _run(env, "device", "cleanup", *one, "--decommission")
            assert r.exit_code == 0, r.output
            assert json.loads(r.output)["results"][0]["detail"].startswith("decommissioned")
            w.sim.run_workflows()
            assert all(d.get("decommissioning") for d in w.sim.devices()) or not w.sim.devices()
    finally:
        w.close()
