"""The ledger: append-only journal, idempotent outbox, per-site bundle numbers (ADR 0041)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest
from gapferry.connected.ledger import JOURNAL_BATCH, Ledger


def test_journal_is_append_only_and_keeps_no_query(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite", command="test") as led:
        led.journal(
            method="GET", path="/a/b?X-Amz-Signature=secret", status=200, request_id="r1", note=""
        )
        rows = led.journal_rows()
        assert rows[0]["path"] == "/a/b"
        assert rows[0]["command"] == "test"
        with pytest.raises(sqlite3.IntegrityError, match="append-only"), led.tx() as c:
            c.execute("UPDATE journal SET status = 500")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"), led.tx() as c:
            c.execute("DELETE FROM journal")
        assert len(led.journal_rows()) == 1


def test_outbox_enqueue_is_idempotent_and_ordered(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as led:
        for _ in range(2):
            with led.tx() as c:
                for st in ("installing", "success"):
                    led.enqueue(
                        c,
                        site="s",
                        device="d",
                        deployment_id="dep",
                        kind="status",
                        payload={"status": st},
                        origin="pack",
                    )
        pend = led.pending(site="s")
        assert [p.payload for p in pend] == [
            '{"status": "installing"}',
            '{"status": "success"}',
        ]
        led.mark(pend[0].id, "sent")
        assert len(led.pending()) == 1


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    def half_done(led: Ledger) -> None:
        with led.tx() as c:
            led.enqueue(
                c,
                site="s",
                device="d",
                deployment_id="x",
                kind="status",
                payload={"status": "installing"},
                origin="pack",
            )
            raise Boom

    with Ledger(tmp_path / "l.sqlite") as led:
        with pytest.raises(Boom):
            half_done(led)
        assert led.pending() == []


def test_bundle_sequence_numbers_are_per_site_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as led:
        assert led.reserve_bundle(site="a", bundle_id="b1", path="/m").seq == 1
        assert led.reserve_bundle(site="a", bundle_id="b2", path="/m").seq == 2
        assert led.reserve_bundle(site="b", bundle_id="b3", path="/m").seq == 1
    with Ledger(path) as led:
        assert led.reserve_bundle(site="a", bundle_id="b4", path="/m").seq == 3
        assert [b.seq for b in led.bundles(site="a")] == [1, 2, 3]


def test_first_next_request_bytes_are_kept(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as led:
        led.record_polled(
            site="s",
            device="d",
            deployment_id="dep",
            artifact_id="a",
            artifact_name="n",
            next_request=b"first",
        )
        row = led.record_polled(
            site="s",
            device="d",
            deployment_id="dep",
            artifact_id="a",
            artifact_name="n",
            next_request=b"second",
        )
        assert row.next_request == b"first"
        active = led.active_deployment("s", "d")
        assert active is not None
        assert active.state == "polled"


def test_journal_rows_go_in_with_the_next_transaction_and_at_close(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"

    def committed() -> list[str]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return [r[0] for r in db.execute("SELECT request_id FROM journal ORDER BY id")]

    led = Ledger(path, command="test")
    led.journal(method="PUT", path="/a", status=204, request_id="r1", note="")
    assert committed() == []  # waits for the ledger's next transaction (ADR 0045)
    with led.tx() as c:
        led.enqueue(
            c, site="s", device="d", deployment_id="x", kind="status", payload={}, origin="o"
        )
    assert committed() == ["r1"]  # committed with it, no later than the state change
    led.journal(method="PUT", path="/b", status=204, request_id="r2", note="")
    with pytest.raises(RuntimeError), led.tx():
        raise RuntimeError("rolled back")
    assert committed() == ["r1"]  # a rolled-back transaction keeps the row waiting
    led.journal(method="PUT", path="/c", status=204, request_id="r3", note="")
    led.close()
    assert committed() == ["r1", "r2", "r3"]  # in call order


def test_journal_rows_never_wait_in_memory_without_bound(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as led:
        for i in range(JOURNAL_BATCH):
            led.journal(method="GET", path="/a", status=200, request_id=str(i), note="")
        with contextlib.closing(sqlite3.connect(tmp_path / "l.sqlite")) as db:
            (n,) = db.execute("SELECT count(*) FROM journal").fetchone()
        assert n == JOURNAL_BATCH


def test_reads_do_not_wait_for_another_threads_transaction(tmp_path: Path) -> None:
    """A read from another thread answers from the last commit while a transaction is open
    (it does not queue behind it); the thread inside the transaction sees its own writes."""
    with Ledger(tmp_path / "ledger.db") as led:
        led.record_artifact(artifact_id="a1", name="fw-1", size=1, sha256="00", path="/x")
        inside = threading.Event()
        release = threading.Event()
        seen_inside: list[object] = []

        def writer() -> None:
            with led.tx() as c:
                c.execute("UPDATE artifacts SET name = 'fw-2' WHERE artifact_id = 'a1'")
                seen_inside.append(led.artifact("a1"))
                inside.set()
                release.wait(10)

        t = threading.Thread(target=writer)
        t.start()
        try:
            assert inside.wait(10)
            seen: list[object] = []
            reader = threading.Thread(target=lambda: seen.append(led.artifact("a1")))
            reader.start()
            reader.join(5)
            assert not reader.is_alive(), "the read waited for the open transaction"
            assert seen == [("fw-1", 1, "00", "/x")]
        finally:
            release.set()
            t.join(10)
        assert seen_inside == [("fw-2", 1, "00", "/x")]
        assert led.artifact("a1") == ("fw-2", 1, "00", "/x")  # the commit is seen at once
