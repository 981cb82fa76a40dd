"""Interrupted at every step, run again: no status report is lost or sent twice (ADR 0041).

A crash is a `Crash` (a BaseException, so nothing in gapferry can swallow it) raised from the
transport at the N-th request of pack + ingest, either before the request reaches the stand-in
or after the stand-in has acted on it but before gapferry sees the answer. From then on every
request fails the same way (the process is dead); the re-run uses a fresh session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from gapferry.fixtures.connected_world import World


class Crash(BaseException):
    pass


class Crasher:
    def __init__(self, world: World, *, at: int, after: bool) -> None:
        self.inner = world.sim.handler
        self.at = at
        self.after = after
        self.count = 0
        self.dead = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.dead:
            raise Crash
        self.count += 1
        if self.count == self.at:
            self.dead = True
            if self.after:
                self.inner(request).close()
            raise Crash
        return self.inner(request)


def _finish(world: World, dep_id: str) -> None:
    """Run pack and ingest to the end (as an operator would after the crash) and check."""
    world.handler = world.sim.handler
    report = world.pack()
    assert report.ok, report
    bundles = sorted((world.media / "gapferry").glob("transfer-*"))
    done = [b for b in bundles if (b / "COMPLETE").exists() or any(b.glob("*COMPLETE*"))]
    paths = [str(p) for p in (done or bundles)]
    results = list((world.media / "gapferry").glob("result-*"))
    if not results:
        world.write_result(report.bundle_path or paths[-1])
    ing = world.ingest()
    assert ing.ok, ing
    statuses = [s for d, _, s in world.status_puts() if d == dep_id]
    assert statuses == ["installing", "success"]
    assert world.sim.strict_violations == []


def _run_until_crash(world: World, crasher: Crasher) -> None:
    world.handler = crasher
    try:
        report = world.pack()
        if report.bundle_path is not None:
            world.write_result(report.bundle_path)
        world.ingest()
    except Crash:
        return


def _count_requests(tmp: Path) -> int:
    w = World(tmp)
    try:
        w.release()
        before = len(w.sim.requests)
        report = w.pack()
        assert report.bundle_path is not None
        w.write_result(report.bundle_path)
        w.ingest()
        return len(w.sim.requests) - before
    finally:
        w.close()


@pytest.mark.parametrize("after", [False, True], ids=["before-call", "after-call"])
def test_crash_at_every_request_then_rerun(tmp_path: Path, after: bool) -> None:
    total = _count_requests(tmp_path / "count")
    # pack: inventory, /next, artifact record, download, deployment name, installing;
    # ingest: final status, inventory (ADR 0046).
    assert total >= 8
    for n in range(1, total + 1):
        w = World(tmp_path / f"n{n}")
        try:
            dep_id = w.release()
            crasher = Crasher(w, at=n, after=after)
            _run_until_crash(w, crasher)
            assert crasher.dead, f"request {n} never happened"
            _finish(w, dep_id)
        except AssertionError as e:
            raise AssertionError(
                f"crash at request {n} ({'after' if after else 'before'}): {e}"
            ) from e
        finally:
            w.close()


@pytest.mark.parametrize("stage", ["before-write", "after-write"])
def test_crash_while_writing_the_bundle(world: World, stage: str) -> None:
    from gapferry.connected import bundle_io, pack

    dep_id = world.release()

    def crashing(*args: Any, **kw: Any) -> tuple[Path, str]:
        if stage == "after-write":
            bundle_io.write_and_verify(*args, **kw)
        raise Crash

    with world.session() as s, pytest.raises(Crash):
        pack.pack(s, world.site, media=world.media, signer=world.signer, write=crashing)
    # Nothing reported before the bundle is verified: the server's record is still `pending`.
    assert [s for d, _, s in world.status_puts() if d == dep_id] == []
    assert [r["status"] for r in world.sim.deployment_records(deployment_id=dep_id)] == ["pending"]
    report = world.pack()
    assert report.ok, report
    assert report.bundle_seq == 1  # the interrupted bundle was finished, not replaced
    assert len(list((world.media / "gapferry").glob("transfer-*"))) == 1
    assert report.bundle_path is not None
    world.write_result(report.bundle_path)
    assert world.ingest().ok
    assert [s for d, _, s in world.status_puts() if d == dep_id] == ["installing", "success"]
    assert world.sim.strict_violations == []
