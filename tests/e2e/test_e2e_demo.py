"""`gapferry demo` (issue 9, ADR 0062): the whole round trip, twice, nothing left behind."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gapferry.fixtures.netns import list_zone_names
from gapferry.fixtures.zones import gapferry_argv, scrubbed_env

pytestmark = [pytest.mark.real_tools, pytest.mark.slow]


def _demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gapferry_argv("demo", *args),
        cwd=cwd,
        env=scrubbed_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{entry.name}: {cmd}")
    return found


def _zone_names(text: str) -> set[str]:
    """The isolated zones a demo run named in its output (other runs may be going on meanwhile)."""
    return set(re.findall(r"\bgf-iso-[0-9a-f]{8}\b", text))


def _summary(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert p.returncode == 0, f"rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    data: dict[str, Any] = json.loads(p.stdout)
    return data


def test_e2e_demo_twice_in_the_default_folder(tmp_path: Path) -> None:
    run1 = _demo("--json", cwd=tmp_path)
    first = _summary(run1)
    # Progress goes to stderr with --json, in numbered steps; stdout is one JSON document.
    assert run1.stderr.startswith("[1/9] Start the embedded Mender Server stand-in")
    assert "[9/9] Audit report" in run1.stderr
    workdir = tmp_path / "gapferry-demo"
    assert first["workdir"] == str(workdir)
    assert first["ok"] is True
    assert first["skipped"] == []
    by_name = {d["name"]: d for d in first["devices"]}
    assert set(by_name) == {"ssh-1", "file-1"}
    for d in by_name.values():
        assert d["deployment_status"] == "success"
        assert d["artifact_name"] == "demo-app-1.1"
    assert first["artifact"]["made_by"] == "mender-artifact"
    assert first["server"]["deployment_status"] == "finished"
    assert first["server"]["ssh_device_reports"] == "demo-app-1.1"
    assert Path(first["bundles"]["transfer"]).is_dir()
    assert Path(first["bundles"]["result"]).is_dir()
    assert (workdir / "devices" / "file-1" / "opt" / "demo-app" / "demo-app.conf").is_file()
    assert (workdir / "devices" / "ssh-1-opt" / "demo-app" / "demo-app.conf").is_file()
    assert "network namespace" in first["isolation"]
    assert json.loads((workdir / "summary.json").read_text())["ok"] is True
    assert first["audit"]["ok"] is True
    assert Path(first["audit"]["path"]).read_text().startswith("AUDIT PASS")
    assert Path(first["audit"]["html"]).is_file()

    run2 = _demo("--json", cwd=tmp_path)
    second = _summary(run2)
    assert second["ok"] is True
    assert second["bundles"]["transfer"] != first["bundles"]["transfer"]
    assert not Path(first["bundles"]["transfer"]).exists()

    # Each run made its own isolated zone and deleted it (other demos may run meanwhile, so only
    # the zones these runs named are checked).
    zones = _zone_names(run1.stderr) | _zone_names(run2.stderr)
    assert len(zones) == 2, run1.stderr + run2.stderr
    assert zones.isdisjoint(list_zone_names())
    assert _processes_mentioning(str(workdir)) == []


def test_e2e_demo_without_ssh_device_says_so(tmp_path: Path) -> None:
    p = _demo("--no-ssh", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[1/9] Start the embedded Mender Server stand-in" in p.stdout
    assert "device ssh-1 (SSH + real Mender client): SKIPPED, --no-ssh was given" in p.stdout
    assert "Round trip complete." in p.stdout
    assert "file-1  (file): deployment success, artifact demo-app-1.1" in p.stdout
    assert _processes_mentioning(str(tmp_path / "w")) == []


def test_e2e_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "important"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    p = _demo("--workdir", str(mine), cwd=tmp_path)
    assert p.returncode == 2
    assert "was not made by `gapferry demo`" in p.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(x.name for x in mine.iterdir()) == ["notes.txt"]


def test_e2e_demo_without_namespaces_says_what_it_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As on a machine without root: no isolated zone, no SSH device; file placement still runs."""
    from gapferry.fixtures import demo as demo_mod

    why = "network namespaces need root (run as root, or in a root container)"
    monkeypatch.setattr(demo_mod, "zone_support", lambda: (None, why))
    result = demo_mod.run_demo(workdir=tmp_path / "w", quiet=False)
    out = capsys.readouterr().out
    assert result.ok is True
    assert result.isolation.startswith("none (network namespaces need root")
    assert result.skipped == [{"device": "ssh-1", "why": why}]
    assert [d["name"] for d in result.devices] == ["file-1"]
    assert result.devices[0]["deployment_status"] == "success"
    assert f"isolated zone: SKIPPED, {why}" in out
    assert f"device ssh-1 (SSH + real Mender client): SKIPPED, {why}" in out
    assert _processes_mentioning(str(tmp_path / "w")) == []


@pytest.mark.parametrize(
    ("sig", "code", "message"),
    [
        (signal.SIGINT, 130, "interrupted; everything the demo started has stopped"),
        (signal.SIGTERM, 143, "stopped by SIGTERM; everything the demo started has stopped"),
        (signal.SIGHUP, 129, "stopped by SIGHUP; everything the demo started has stopped"),
    ],
)
def test_e2e_demo_interrupted_leaves_nothing_running(
    tmp_path: Path, sig: signal.Signals, code: int, message: str
) -> None:
    """Ctrl-C, `kill` and a closed terminal all stop the device's sshd and the namespace."""
    workdir = tmp_path / "w"
    proc = subprocess.Popen(
        gapferry_argv("demo", "--workdir", str(workdir)),
        env=scrubbed_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[3/9]"):
            break
    # The stand-in, the isolated zone and the device's sshd are all up by now.
    assert any("real sshd + mender client" in line for line in seen), seen
    (zone,) = _zone_names("".join(seen))
    assert zone in list_zone_names()
    assert _processes_mentioning(str(workdir))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out + err
    assert message in err
    assert zone not in list_zone_names()
    assert _processes_mentioning(str(workdir)) == []
