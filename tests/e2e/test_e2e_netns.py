"""The isolated zone is really cut off (issue 9, fixtures/netns.py, ADR 0060)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from gapferry.fixtures.netns import (
    Backend,
    IsolatedZone,
    isolated_zone,
    list_zone_names,
    probe_tcp_here,
)
from gapferry.fixtures.sim import MenderSim, running_server

pytestmark = pytest.mark.real_tools


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 in the root namespace (the connected zone)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


_SERVE = (
    "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); "
    "s.listen(1); print('up', flush=True); time.sleep(60)"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours would still answer; reap-aware check through /proc.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("backend", ["ip-netns", "unshare"])
def test_e2e_zone_has_only_loopback_and_no_route(backend: Backend) -> None:
    with isolated_zone(backend=backend) as zone:
        links = zone.run(["ip", "-o", "link", "show"]).stdout.splitlines()
        assert [ln.split(":")[1].strip() for ln in links] == ["lo"]
        assert "UP" in links[0]
        assert zone.run(["ip", "-4", "route", "show"]).stdout.strip() == ""
        assert zone.tcp_probe("10.0.0.1", 80) == "unreachable"


@pytest.mark.parametrize("backend", ["ip-netns", "unshare"])
def test_e2e_stand_in_reachable_from_connected_zone_only(tmp_path: Path, backend: Backend) -> None:
    sim = MenderSim(artifact_dir=tmp_path / "store")
    with running_server(sim) as url:
        port = int(url.rsplit(":", 1)[1])
        assert probe_tcp_here("127.0.0.1", port) == "connected"
        with isolated_zone(backend=backend) as zone:
            assert zone.tcp_probe("127.0.0.1", port) == "refused"
        assert probe_tcp_here("127.0.0.1", port) == "connected"
    assert not any(r.path for r in sim.requests if r.path.startswith("/api"))


def test_e2e_zone_serves_its_own_loopback(listener: int) -> None:
    """Loopback inside works (the device's sshd will listen there), apart from the host's."""
    with isolated_zone() as zone:
        server = zone.popen(
            ["python3", "-c", _SERVE.format(port=listener)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "up"
        assert zone.tcp_probe("127.0.0.1", listener) == "connected"
    assert server.poll() is not None


def _start_and_fail(seen: list[IsolatedZone], pids: list[int]) -> None:
    with isolated_zone() as zone:
        seen.append(zone)
        tracked = zone.popen(["sleep", "300"])
        # A grandchild the zone did not start directly, detached into its own session.
        zone.run(["sh", "-c", "setsid sleep 301 >/dev/null 2>&1 < /dev/null &"])
        pids.extend(zone.pids())
        assert tracked.pid in pids
        assert len(pids) >= 2
        raise RuntimeError("boom")


def test_e2e_zone_cleans_up_after_failure() -> None:
    seen: list[IsolatedZone] = []
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        _start_and_fail(seen, pids)
    assert seen[0].closed
    assert seen[0].name not in list_zone_names()
    assert pids
    assert not any(_alive(p) for p in pids)
