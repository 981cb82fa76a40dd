"""The commands as an operator runs them, against the stand-in on loopback (real HTTP), and a real
`kill -9` of `gapferry pack` in the middle of a status report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from gapferry.common.cli import main
from gapferry.fixtures.connected_world import World
from gapferry.fixtures.sim import Fault, running_server


@pytest.fixture
def served(world: World) -> Iterator[tuple[World, dict[str, str]]]:
    with running_server(world.sim) as url:
        env = {
            "MENDER_SERVER_URL": url,
            "MENDER_API_TOKEN": world.sim.management_token,
            "MENDER_TENANT_TOKEN": "",
            "GAPFERRY_STATE": str(world.state),
        }
        yield world, env


def _run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _json(env: dict[str, str], *args: str) -> dict[str, object]:
    r = _run(env, *args, "--json")
    doc = json.loads(r.output)
    assert isinstance(doc, dict)
    doc["exit"] = r.exit_code
    return doc


def test_operator_round_trip_over_loopback(served: tuple[World, dict[str, str]]) -> None:
    world, env = served
    site = str(world.site_file)
    assert _json(env, "device", "keygen", "--site", site, "--algorithm", "ed25519")["ok"]
    keys = _json(env, "device", "pubkey", "--site", site)["public_keys"]
    assert isinstance(keys, dict)
    assert keys["pump-000"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in json.dumps(keys)
    assert _json(env, "device", "preauth", "--site", site)["ok"]
    auth = _json(env, "device", "auth", "--site", site)
    assert auth["ok"]
    art = world.make_artifact("fw-2.0")
    up = _json(env, "release", "upload", str(art))
    assert up["results"][0]["action"] == "uploaded"  # type: ignore[index]
    again = _json(env, "release", "upload", str(art))
    assert again["results"][0]["action"] == "already-there"  # type: ignore[index]
    dep = _json(env, "release", "deploy", "--site", site, "--artifact-name", "fw-2.0")
    assert dep["ok"]
    packed = _json(
        env,
        "pack",
        "--site",
        site,
        "--to",
        str(world.media),
        "--sign",
        str(world.packer_key.private),
    )
    assert packed["ok"], packed
    assert packed["bundle_seq"] == 1
    st = _json(env, "status")
    rows = st["results"]
    assert isinstance(rows, list)
    assert rows[0]["state"] == "travelling"
    assert rows[0]["server"] == "installing"
    # --site takes the site file here too, as in every other connected command.
    by_file = _json(env, "status", "--site", site, "--offline")["results"]
    assert isinstance(by_file, list)
    assert [r["device"] for r in by_file] == [r["device"] for r in rows]
    table = _run(env, "status")
    assert "travelling" in table.output
    assert "DEVICE" in table.output
    world.write_result(str(packed["bundle_path"]))
    ing = _json(env, "ingest", str(world.media), "--trust", str(world.appliers))
    assert ing["ok"], ing
    again_ing = _json(env, "ingest", str(world.media), "--trust", str(world.appliers))
    assert again_ing["results"][0]["action"] == "already-ingested"  # type: ignore[index]
    assert _json(env, "status")["results"] == []
    cleaned = _json(env, "device", "cleanup", "--site", site)
    assert cleaned["ok"], cleaned
    dev_status = _json(env, "device", "status", "--site", site)
    detail = dev_status["results"][0]["detail"]  # type: ignore[index]
    assert "our key -" in str(detail) or "not on server" in str(detail)
    statuses = [s for _, _, s in world.status_puts()]
    assert statuses == ["installing", "success"]
    assert world.sim.strict_violations == []
    # No token ever reached the ledger or the output.
    ledger = (world.state / "ledger.sqlite").read_bytes()
    assert world.sim.management_token.encode() not in ledger
    assert b"eyJ" not in ledger  # no JWT (device or management) was stored
    for key in (world.state / "keys").rglob("*.key"):
        assert key.read_bytes() not in ledger
    assert world.sim.management_token not in table.output


def test_kill_minus_9_during_a_status_report_then_rerun(
    served: tuple[World, dict[str, str]],
) -> None:
    world, env = served
    dep_id = world.release()
    # The first status report hangs on the server side for a while: kill the client meanwhile.
    slow = world.sim.faults.add(Fault(r"/status$", method="PUT", kind="slow", delay=2.0, count=1))
    cmd = [
        sys.executable,
        "-c",
        "from gapferry.common.cli import main; main()",
        "pack",
        "--site",
        str(world.site_file),
        "--to",
        str(world.media),
        "--sign",
        str(world.packer_key.private),
    ]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if slow.fired:
                break
            time.sleep(0.02)
        time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # The server finishes the report the dead client sent.
    deadline = time.monotonic() + 20
    while not world.status_puts() and time.monotonic() < deadline:
        time.sleep(0.05)
    # pack's only status report, `installing`, comes after the bundle was verified (ADR 0046).
    assert [s for d, _, s in world.status_puts() if d == dep_id] == ["installing"]
    rerun = subprocess.run(
        [*cmd, "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    doc = json.loads(rerun.stdout)
    # The killed run issued bundle #1; the re-run finds the report arrived and sends nothing.
    assert doc["bundle_seq"] is None
    assert [r["action"] for r in doc["results"]] == ["travelling"]
    assert doc["reports_sent"] == 0
    bundles = sorted((world.media / "gapferry").glob("transfer-*"))
    assert [b.name.split("-")[3] for b in bundles] == ["00000001"]
    world.write_result(str(bundles[0]))
    assert world.ingest().ok
    assert [s for d, _, s in world.status_puts() if d == dep_id] == ["installing", "success"]
    assert world.sim.strict_violations == []


def test_help_has_examples() -> None:
    for cmd in (
        ["pack"],
        ["ingest"],
        ["status"],
        ["device", "keygen"],
        ["release", "upload"],
        ["release", "deploy"],
        ["device", "cleanup"],
        ["site", "init"],
    ):
        r = CliRunner().invoke(main, [*cmd, "--help"])
        assert r.exit_code == 0
        assert "Example" in r.output, cmd
        assert "--json" in r.output, cmd


def test_pack_without_server_url_is_a_usage_error(world: World, tmp_path: Path) -> None:
    env = {"MENDER_SERVER_URL": "", "GAPFERRY_STATE": str(world.state)}
    r = CliRunner().invoke(
        main,
        [
            "pack",
            "--site",
            str(world.site_file),
            "--to",
            str(world.media),
            "--sign",
            str(world.packer_key.private),
            "--json",
        ],
        env=env,
    )
    assert r.exit_code == 2, r.output  # once, before any device is touched
    err = json.loads(r.output)["error"]
    assert err["code"] == "no-server-url"
    assert err["remedy"].startswith("export MENDER_SERVER_URL=")
    assert not (world.state / "keys").exists()
