"""Every fault the stand-in can inject, during pack and ingest: the run still ends with each
status reported exactly once, in order (strict mode on): `installing`, then the final one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from gapferry.connected.pack import pack
from gapferry.fixtures.connected_world import World
from gapferry.fixtures.sim import Fault

STATUS = r"/deployments/device/deployments/[^/]+/status"
NEXT = r"/deployments/device/deployments/next"
INVENTORY = r"/api/devices/v1/inventory/"
AUTH = r"/authentication/auth_requests"
DOWNLOAD = r"/sim/download/"


def _round_trip(world: World) -> str:
    dep_id = world.release()
    report = world.pack()
    assert report.ok, report
    assert report.bundle_path is not None
    world.write_result(report.bundle_path)
    ing = world.ingest()
    assert ing.ok, ing
    return dep_id


def _assert_exactly_once(world: World, dep_id: str) -> None:
    # pack: `installing` once the bundle is verified; ingest: the final status only (ADR 0046).
    assert [s for d, _, s in world.status_puts() if d == dep_id] == ["installing", "success"]
    assert world.sim.strict_violations == []


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("where", [STATUS, NEXT, INVENTORY, AUTH, DOWNLOAD])
def test_5xx_is_retried(world: World, status: int, where: str) -> None:
    world.sim.faults.add(Fault(where, kind="status", status=status, count=2))
    dep_id = _round_trip(world)
    _assert_exactly_once(world, dep_id)
    assert len(world.sleeps) >= 2


@pytest.mark.parametrize("where", [STATUS, NEXT, INVENTORY, AUTH, r"/management/"])
def test_429_waits_as_told(world: World, where: str) -> None:
    world.sim.faults.add(Fault(where, kind="retry_after", retry_after=3, count=2))
    dep_id = _round_trip(world)
    _assert_exactly_once(world, dep_id)
    assert world.sleeps.count(3.0) >= 2


@pytest.mark.parametrize("where", [STATUS, NEXT, INVENTORY, AUTH, DOWNLOAD, r"/log$"])
def test_dropped_connections_are_retried(world: World, where: str) -> None:
    world.sim.faults.add(Fault(where, kind="drop", count=1))
    dep_id = _round_trip(world)
    _assert_exactly_once(world, dep_id)


def test_slow_answers_are_waited_for(world: World) -> None:
    world.sim.faults.add(Fault(STATUS, kind="slow", delay=0.2, count=2))
    world.sim.faults.add(Fault(NEXT, kind="slow", delay=0.2, count=1))
    dep_id = _round_trip(world)
    _assert_exactly_once(world, dep_id)


def test_device_token_expired_mid_run_is_renewed(world: World) -> None:
    dep_id = world.release()
    expired: set[str] = set()
    inner = world.sim.handler

    def expiring(request: httpx.Request) -> httpx.Response:
        # The token dies after inventory, before the first /next and the first status report.
        kind = request.url.path.rsplit("/", 1)[-1]
        if kind in ("next", "status") and kind not in expired:
            expired.add(kind)
            world.sim.expire_tokens_now()
        return inner(request)

    world.handler = expiring
    report = world.pack()
    assert report.ok, report
    auths = [r for r in world.sim.requests if r.path.endswith("/auth_requests")]
    unauthorized = [r for r in world.sim.requests if r.status == 401]
    assert len(unauthorized) >= 2
    assert len(auths) >= 3  # release, pack, and the renewals
    assert report.bundle_path is not None
    world.write_result(report.bundle_path)
    world.sim.expire_tokens_now()
    assert world.ingest().ok
    _assert_exactly_once(world, dep_id)


def test_server_down_leaves_reports_owed_and_a_rerun_delivers(world: World) -> None:
    dep_id = world.release()
    world.sim.faults.add(Fault(STATUS, kind="status", status=503, count=-1))
    report = world.pack()
    assert not report.ok
    assert report.reports_failed
    assert [s for d, _, s in world.status_puts() if d == dep_id] == []
    world.sim.faults.clear()
    again = world.pack()
    assert again.ok, again
    assert [r.action for r in again.rows] == ["travelling"]
    assert [s for d, _, s in world.status_puts() if d == dep_id] == ["installing"]
    assert world.sim.strict_violations == []


def test_concurrency_towards_the_server_is_bounded(tmp_path: Path) -> None:
    w = World(tmp_path, devices=12)
    try:
        w.release()
        inner = w.sim.handler
        lock = threading.Lock()
        state = {"now": 0, "max": 0}

        def counting(request: httpx.Request) -> httpx.Response:
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            try:
                time.sleep(0.005)
                return inner(request)
            finally:
                with lock:
                    state["now"] -= 1

        w.handler = counting
        with w.session(concurrency=3) as s:
            report = pack(s, w.site, media=w.media, signer=w.signer)
        assert report.ok, report
        assert 2 <= state["max"] <= 3
    finally:
        w.close()
