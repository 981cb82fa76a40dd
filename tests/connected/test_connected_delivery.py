"""Outbox delivery for a fleet (ADR 0041, 0044): devices concurrently, each device in order, one
durable commit per report, every entry durably `attempted` before its call, crash-safe."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gapferry.connected.ledger import Ledger
from gapferry.connected.pack import pack
from gapferry.fixtures.connected_world import World

DEVICES = 7


class Crash(BaseException):
    pass


def _packed(tmp: Path, devices: int = DEVICES) -> tuple[World, str]:
    """A world whose transfer bundle came back with a result (pump-002 failed)."""
    w = World(tmp, devices=devices)
    dep_id = w.release()
    report = w.pack()
    assert report.ok, report
    assert report.bundle_path is not None
    w.write_result(report.bundle_path, outcomes={"pump-002": "failure"})
    return w, dep_id


def _per_device(world: World, dep_id: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d, dev, st in world.status_puts():
        if d == dep_id:
            out.setdefault(dev, []).append(st)
    return out


def _assert_each_device_once_in_order(world: World, dep_id: str, devices: int) -> None:
    per = _per_device(world, dep_id)
    assert len(per) == devices
    for statuses in per.values():
        # pack: `installing`; ingest: the final status alone (ADR 0046).
        assert statuses in (["installing", "success"], ["installing", "failure"]), statuses
    assert sorted(v[-1] for v in per.values()).count("failure") == 1
    assert world.sim.strict_violations == []


def test_ingest_reports_devices_concurrently_each_in_order(tmp_path: Path) -> None:
    w, dep_id = _packed(tmp_path)
    try:
        inner = w.sim.handler
        lock = threading.Lock()
        state = {"now": 0, "max": 0}

        def counting(request: httpx.Request) -> httpx.Response:
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            try:
                time.sleep(0.01)
                return inner(request)
            finally:
                with lock:
                    state["now"] -= 1

        w.handler = counting
        ing = w.ingest(concurrency=3)
        assert ing.ok, ing
        assert ing.reports_sent == DEVICES * 2 + 1  # final status, inventory; one log
        assert 2 <= state["max"] <= 3
        _assert_each_device_once_in_order(w, dep_id, DEVICES)
        # The failed device's log reached the server before its final status.
        failed_id = next(dev for dev, v in _per_device(w, dep_id).items() if v[-1] == "failure")
        mine = [r.path.rsplit("/", 1)[-1] for r in w.sim.requests if r.device_id == failed_id]
        assert mine.index("log") < len(mine) - 1 - mine[::-1].index("status")
    finally:
        w.close()


def test_every_report_is_attempted_durably_before_its_call_one_commit_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, dep_id = _packed(tmp_path)
    try:
        ledger_file = w.state / "ledger.sqlite"
        inner = w.sim.handler
        unmarked: list[str] = []

        def checking(request: httpx.Request) -> httpx.Response:
            if request.method in ("PUT", "PATCH") and "/api/devices/v1/" in request.url.path:
                # Another connection sees only committed rows: the entry this call delivers
                # must already be `attempted` there (ADR 0041: mark, commit, then call).
                body = json.loads(request.content)
                kind = (
                    "status"
                    if request.url.path.endswith("/status")
                    else "log"
                    if request.url.path.endswith("/log")
                    else "inventory"
                )
                with contextlib.closing(sqlite3.connect(ledger_file)) as db:
                    rows = db.execute(
                        "SELECT payload FROM outbox WHERE state = 'pending' AND attempted = 1 "
                        "AND kind = ?",
                        (kind,),
                    ).fetchall()
                wanted = {"status": body["status"]} if kind == "status" else None
                if kind == "status" and not any(json.loads(r[0]) == wanted for r in rows):
                    unmarked.append(f"{request.method} {request.url.path} {body}")
                if kind != "status" and not rows:
                    unmarked.append(f"{request.method} {request.url.path}")
            return inner(request)

        commits: list[int] = []
        real_tx = Ledger.tx

        @contextlib.contextmanager
        def counting_tx(self: Ledger, *, durable: bool = True) -> Iterator[sqlite3.Cursor]:
            with real_tx(self, durable=durable) as c:
                yield c
            if durable:
                commits.append(1)

        monkeypatch.setattr(Ledger, "tx", counting_tx)
        w.handler = checking
        ing = w.ingest(concurrency=3)
        assert ing.ok, ing
        assert unmarked == []
        _assert_each_device_once_in_order(w, dep_id, DEVICES)
        reports = DEVICES * 2 + 1
        assert ing.reports_sent == reports
        waves = -(-DEVICES // 3)  # the first entries of each wave of 3 devices: one commit
        # + the ledger's opening commit and the result's acceptance.
        assert len(commits) == reports + waves + 2
    finally:
        w.close()


@pytest.mark.parametrize("after", [False, True], ids=["before-call", "after-call"])
@pytest.mark.parametrize("at", [1, 5, 10, 15])  # 15: the last of 7 x (status, inventory) + 1 log
def test_ingest_killed_mid_fleet_then_rerun_reports_each_once(
    tmp_path: Path, at: int, after: bool
) -> None:
    w, dep_id = _packed(tmp_path)
    try:
        inner = w.sim.handler
        lock = threading.Lock()
        state = {"count": 0, "dead": False}

        def crasher(request: httpx.Request) -> httpx.Response:
            with lock:
                if state["dead"]:
                    raise Crash
                state["count"] += 1
                hit = state["count"] == at
                if hit:
                    state["dead"] = True
            if hit:
                if after:
                    inner(request).close()
                raise Crash
            return inner(request)

        w.handler = crasher
        with pytest.raises(Crash):
            w.ingest(concurrency=3)
        assert state["dead"]
        w.handler = inner
        again = w.ingest(concurrency=3)
        assert again.ok, again
        _assert_each_device_once_in_order(w, dep_id, DEVICES)
        logs = [r for r in w.sim.requests if r.path.endswith("/log") and r.status == 204]
        assert 1 <= len(logs) <= 2  # a log replaces the earlier one; repeating it is harmless
    finally:
        w.close()


def test_a_device_whose_key_is_missing_does_not_hold_up_the_others(tmp_path: Path) -> None:
    w, dep_id = _packed(tmp_path, devices=3)
    try:
        key = w.state / "keys" / "plant-north" / "pump-001.key"
        kept = key.read_bytes()
        key.unlink()
        ing = w.ingest(concurrency=2)
        assert not ing.ok
        assert [f.split(":", 1)[0] for f in ing.reports_failed] == ["pump-001"]
        per = _per_device(w, dep_id)
        assert sorted(len(v) for v in per.values()) == [1, 2, 2]  # pump-001 still owes one
        key.write_bytes(kept)
        key.chmod(0o600)
        assert w.ingest(concurrency=2).ok
        _assert_each_device_once_in_order(w, dep_id, 3)
    finally:
        w.close()


def test_pack_reports_only_installing_each_durably_attempted_before_its_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 0046: pack reports no `downloading`; the poll is recorded with the `downloaded` state
    in one commit (artifact at hand, ADR 0045) and `installing`, owed with the issued bundle,
    finds its entry durably `attempted` when it is sent."""
    w = World(tmp_path, devices=DEVICES)
    try:
        w.release()
        ledger_file = w.state / "ledger.sqlite"
        inner = w.sim.handler
        unmarked: list[str] = []

        def checking(request: httpx.Request) -> httpx.Response:
            if request.method == "PUT" and request.url.path.endswith("/status"):
                wanted = json.loads(request.content)
                with contextlib.closing(sqlite3.connect(ledger_file)) as db:
                    rows = db.execute(
                        "SELECT payload FROM outbox WHERE state = 'pending' AND attempted = 1"
                    ).fetchall()
                if not any(json.loads(r[0]) == wanted for r in rows):
                    unmarked.append(f"{request.url.path} {wanted}")
            return inner(request)

        commits: list[int] = []
        real_tx = Ledger.tx

        @contextlib.contextmanager
        def counting_tx(self: Ledger, *, durable: bool = True) -> Iterator[sqlite3.Cursor]:
            with real_tx(self, durable=durable) as c:
                yield c
            if durable:
                commits.append(1)

        monkeypatch.setattr(Ledger, "tx", counting_tx)
        w.handler = checking
        with w.session(concurrency=1) as s:  # one device after another: a countable sequence
            packed = pack(s, w.site, media=w.media, signer=w.signer)
        assert packed.ok, packed
        assert unmarked == []
        per = _per_device(w, packed.rows[0].deployment_id or "")
        assert list(per.values()) == [["installing"]] * DEVICES
        assert w.sim.strict_violations == []
        # Per device: the poll with its `downloaded` state (for the first device, which
        # downloads the artifact, the poll and the artifact are recorded before: 2 more),
        # `installing` marked (its wave: one device) and sent. Plus the opening commit and the
        # bundle (reserved with its items in one commit, then issued). The inventory record after
        # each PATCH is not fsynced (ADR 0046): losing it costs one PATCH more.
        assert len(commits) == DEVICES * 3 + 2 + 1 + 2
    finally:
        w.close()


def test_a_bundle_reserved_without_items_by_a_killed_pack_does_not_block_the_next(
    world: World,
) -> None:
    """Found by the crash trials: a kill between reserving the bundle and recording its items
    left a `writing` bundle with nothing in it, and every later pack failed (`no-devices`)."""
    world.release()
    with world.session() as s:
        s.ledger.reserve_bundle(site=world.site.name, bundle_id="killed", path=str(world.media))
    packed = world.pack()
    assert packed.ok, packed
    assert packed.bundle_seq == 2
    with world.session() as s:
        assert s.ledger.bundle("killed") is not None
        assert [b.state for b in s.ledger.bundles(site=world.site.name)] == ["abandoned", "issued"]
