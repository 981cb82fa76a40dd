"""The ledger: what the connected side has done and still owes the Mender Server (issue 5, ADR 0041).

SQLite (stdlib), WAL journal mode, every change inside one ``BEGIN IMMEDIATE`` transaction. Tables:

- ``devices``: per (site, device): identity, the Mender device ID, auth state, and the artifact the
  device runs as far as gapferry knows (updated by ingest).
- ``deployments``: per (deployment, site, device): the exact bytes of the first ``/next`` body (the
  server fails a deployment when a later poll differs), the artifact, the bundle carrying it and
  the state: ``polled`` -> ``downloaded`` -> ``packed`` -> ``travelling`` -> ``done`` /
  ``aborted`` / ``conflict``.
- ``bundles``: transfer bundles issued, with per-site sequence numbers (allocated in the same
  transaction that records the bundle, so a number is never given twice).
- ``results``: result bundles ingested (a second ingest of the same one is refused).
- ``outbox``: every report the server must get exactly once (status, log, inventory), recorded
  *before* the call (``pending``) and marked after it (``sent`` / ``conflict``). A killed run leaves
  ``pending`` rows; the next run delivers them first, in order, after asking the server whether the
  report already arrived (ADR 0041).
- ``inventory_sent``: per (site, device, Mender device ID) and attribute, the value the server
  confirmed (2xx) for the device's inventory, from pack's PATCH and from delivered inventory
  reports; pack skips its PATCH when nothing it would send differs (ADR 0046).
- ``journal``: append-only (triggers refuse UPDATE and DELETE) record of every Mender call:
  method, path, status, request id. Never a query string, a body, a token or a key. Rows are
  written with the ledger's next transaction (ADR 0045), so a call never waits to be journalled.

Schema changes are additive: every table is ``CREATE ... IF NOT EXISTS``, so opening an older
ledger adds what it lacks, and ``meta.schema`` is raised to `SCHEMA_VERSION` (never lowered).
Version 2 added ``inventory_sent`` (ADR 0046).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from gapferry.common.errors import EnvironmentFailure

__all__ = [
    "JOURNAL_BATCH",
    "Bundle",
    "DeploymentRow",
    "DeviceRow",
    "Ledger",
    "OutboxEntry",
    "utcnow",
]

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    site TEXT NOT NULL, name TEXT NOT NULL,
    identity TEXT NOT NULL, device_type TEXT NOT NULL,
    artifact_name TEXT,
    device_id TEXT, auth_set_id TEXT,
    auth_state TEXT NOT NULL DEFAULT 'none',
    updated TEXT NOT NULL,
    PRIMARY KEY (site, name)
);
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id TEXT PRIMARY KEY, name TEXT NOT NULL,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL, fetched TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    deployment_id TEXT NOT NULL, site TEXT NOT NULL, device TEXT NOT NULL,
    artifact_id TEXT, artifact_name TEXT NOT NULL,
    next_request BLOB NOT NULL,
    state TEXT NOT NULL,
    bundle_id TEXT,
    outcome TEXT,
    created TEXT NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (deployment_id, site, device)
);
CREATE TABLE IF NOT EXISTS bundles (
    bundle_id TEXT PRIMARY KEY, site TEXT NOT NULL, seq INTEGER NOT NULL,
    state TEXT NOT NULL, path TEXT NOT NULL, digest TEXT,
    created TEXT NOT NULL, updated TEXT NOT NULL,
    UNIQUE (site, seq)
);
CREATE TABLE IF NOT EXISTS bundle_items (
    bundle_id TEXT NOT NULL, deployment_id TEXT NOT NULL, site TEXT NOT NULL, device TEXT NOT NULL,
    PRIMARY KEY (bundle_id, deployment_id, device)
);
CREATE TABLE IF NOT EXISTS results (
    result_id TEXT PRIMARY KEY, bundle_id TEXT NOT NULL, state TEXT NOT NULL,
    digest TEXT, created TEXT NOT NULL, updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL, device TEXT NOT NULL, deployment_id TEXT,
    kind TEXT NOT NULL, payload TEXT NOT NULL, origin TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempted INTEGER NOT NULL DEFAULT 0,
    detail TEXT,
    created TEXT NOT NULL, done TEXT,
    UNIQUE (site, device, deployment_id, kind, payload, origin)
);
CREATE INDEX IF NOT EXISTS outbox_owed ON outbox (site, state, device);
CREATE TABLE IF NOT EXISTS inventory_sent (
    site TEXT NOT NULL, device TEXT NOT NULL, device_id TEXT NOT NULL,
    name TEXT NOT NULL, value TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (site, device, device_id, name)
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL, command TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
    status INTEGER NOT NULL, request_id TEXT, note TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS journal_no_update BEFORE UPDATE ON journal
    BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS journal_no_delete BEFORE DELETE ON journal
    BEGIN SELECT RAISE(ABORT, 'the journal is append-only'); END;
"""


T = TypeVar("T")


def _found(value: T | None, what: str) -> T:
    if value is None:  # only if another process deleted the row in between
        raise EnvironmentFailure(
            f"the ledger lost {what} while writing it",
            remedy="is another gapferry process using the same ledger? run again",
            code="ledger-race",
        )
    return value


def _inv(value: Any) -> str:
    """An inventory value as the ledger stores and compares it (canonical JSON)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class DeviceRow(msgspec.Struct, frozen=True, kw_only=True):
    site: str
    name: str
    identity: dict[str, str]
    device_type: str
    artifact_name: str | None
    device_id: str | None
    auth_set_id: str | None
    auth_state: str


class DeploymentRow(msgspec.Struct, frozen=True, kw_only=True):
    deployment_id: str
    site: str
    device: str
    artifact_id: str | None
    artifact_name: str
    next_request: bytes
    state: str
    bundle_id: str | None
    outcome: str | None


class Bundle(msgspec.Struct, frozen=True, kw_only=True):
    bundle_id: str
    site: str
    seq: int
    state: str
    path: str
    digest: str | None


class OutboxEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    site: str
    device: str
    deployment_id: str | None
    kind: str
    payload: str
    origin: str
    state: str
    #: 1 once a call was started: after a crash the server may or may not have it.
    attempted: int = 0


#: At most this many journal rows wait for the ledger's next transaction (`Ledger.journal`).
JOURNAL_BATCH = 256

#: Deployment states in which a deployment is "travelling": packed into a bundle not yet returned.
TRAVELLING = ("packed", "travelling")


class Ledger:
    """One SQLite ledger file. Thread-safe: writes go through one connection behind a lock;
    reads outside a transaction use a connection of the reading thread's own, so they never
    wait for another thread's commit (write-ahead log: a reader sees the last commit)."""

    def __init__(self, path: Path, *, command: str = "") -> None:
        self.path = path
        self.command = command
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise EnvironmentFailure(
                f"cannot open the ledger {path}: {e}",
                remedy="check the path and its permissions (--state / GAPFERRY_STATE)",
                code="ledger-unavailable",
            ) from e
        self._lock = threading.RLock()
        #: The thread inside `tx` (its reads must see its own uncommitted writes).
        self._owner: int | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()  # not `_lock`: a new reader must not wait for a tx
        #: Journal rows not yet written: each goes in with the ledger's next transaction (ADR 0045).
        self._journal_rows: list[tuple[str, str, str, str, int, str | None, str]] = []
        self._journal_lock = threading.Lock()
        with self.tx() as c:
            c.execute(
                "INSERT INTO meta VALUES ('schema', ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value "
                "WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (str(SCHEMA_VERSION),),
            )

    def close(self) -> None:
        self.flush_journal()
        with self._readers_lock:
            for r in self._readers:
                r.close()
            self._readers.clear()
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def tx(self, *, durable: bool = True) -> Iterator[sqlite3.Cursor]:
        """One transaction: committed when the block ends, rolled back on any exception.

        A durable commit is fsynced (``synchronous=FULL``). A non-durable one (journal rows
        only) is not fsynced itself but becomes durable with the next durable commit, which
        fsyncs the whole write-ahead log; both survive a killed process.
        """
        with self._lock:
            outer = self._owner
            self._owner = threading.get_ident()
            cur = self._db.cursor()
            if not durable:
                cur.execute("PRAGMA synchronous=NORMAL")
            try:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                    self._write_journal(cur)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            finally:
                self._owner = outer
                if not durable:
                    cur.execute("PRAGMA synchronous=FULL")

    def _reader(self) -> sqlite3.Connection | None:
        """This thread's read connection; None inside this thread's own transaction."""
        if self._owner == threading.get_ident():
            return None
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False, timeout=30
                )
                conn.execute("PRAGMA query_only=ON")
            except sqlite3.Error as e:
                raise EnvironmentFailure(
                    f"cannot read the ledger {self.path}: {e}",
                    remedy="check the path and its permissions (--state / GAPFERRY_STATE)",
                    code="ledger-unavailable",
                ) from e
            with self._readers_lock:
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection a read goes through: this thread's own, or, inside this thread's
        transaction, the writing one (behind the lock, which the thread holds already)."""
        reader = self._reader()
        if reader is not None:
            yield reader
            return
        with self._lock:
            yield self._db

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        with self._reading() as db:
            cur = db.execute(sql, args)
            try:
                return cur.fetchone()
            finally:
                cur.close()  # ends the read: the next one sees later commits

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._reading() as db:
            return db.execute(sql, args).fetchall()

    # --- journal ------------------------------------------------------------------------
    def journal(
        self, *, method: str, path: str, status: int, request_id: str | None, note: str
    ) -> None:
        """Append one Mender call to the journal (signature of `mender.http.Journal`).

        The row is written with the ledger's next transaction, whichever thread makes it, so it
        never waits for another thread's commit and is committed no later than any state change
        made after the call's answer; at the latest with `flush_journal` (on `close`, and when
        `JOURNAL_BATCH` rows wait). ADR 0045 amends ADR 0041 here.
        """
        row = (
            utcnow(),
            self.command,
            method,
            path.split("?", maxsplit=1)[0],
            status,
            request_id,
            note,
        )
        with self._journal_lock:
            self._journal_rows.append(row)
            full = len(self._journal_rows) >= JOURNAL_BATCH
        if full:
            self.flush_journal()

    def flush_journal(self) -> None:
        """Write the journal rows still waiting (a commit without its own fsync, ADR 0041)."""
        with self._journal_lock:
            if not self._journal_rows:
                return
        with self.tx(durable=False):
            pass  # `tx` writes the waiting rows before it commits

    def _write_journal(self, cur: sqlite3.Cursor) -> None:
        with self._journal_lock:
            rows, self._journal_rows = self._journal_rows, []
        if rows:
            try:
                cur.executemany(
                    "INSERT INTO journal (ts, command, method, path, status, request_id, note) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                with self._journal_lock:  # not written: keep them, in order, for the next commit
                    self._journal_rows[:0] = rows
                raise

    def journal_rows(self) -> list[dict[str, Any]]:
        self.flush_journal()
        rows = self._all(
            "SELECT ts, command, method, path, status, request_id, note FROM journal ORDER BY id"
        )
        keys = ("ts", "command", "method", "path", "status", "request_id", "note")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # --- devices ------------------------------------------------------------------------
    def upsert_device(
        self, *, site: str, name: str, identity: dict[str, str], device_type: str
    ) -> DeviceRow:
        """Record the device's identity and type; no write (no commit) when they are unchanged."""
        row = self.device(site, name)
        if row is not None and row.identity == identity and row.device_type == device_type:
            return row
        with self.tx() as c:
            c.execute(
                "INSERT INTO devices (site, name, identity, device_type, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (site, name) DO UPDATE SET "
                "identity = excluded.identity, device_type = excluded.device_type",
                (site, name, json.dumps(identity, sort_keys=True), device_type, utcnow()),
            )
        return _found(self.device(site, name), "device")

    def device(self, site: str, name: str) -> DeviceRow | None:
        r = self._one(
            "SELECT site, name, identity, device_type, artifact_name, device_id, auth_set_id, "
            "auth_state FROM devices WHERE site = ? AND name = ?",
            (site, name),
        )
        if r is None:
            return None
        return DeviceRow(
            site=r[0],
            name=r[1],
            identity=json.loads(r[2]),
            device_type=r[3],
            artifact_name=r[4],
            device_id=r[5],
            auth_set_id=r[6],
            auth_state=r[7],
        )

    def set_device(self, site: str, name: str, **fields: Any) -> None:
        allowed = {"artifact_name", "device_id", "auth_set_id", "auth_state"}
        if not set(fields) <= allowed:
            raise ValueError(f"not device fields: {sorted(set(fields) - allowed)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as c:
            c.execute(
                f"UPDATE devices SET {sets}, updated = ? WHERE site = ? AND name = ?",  # noqa: S608
                (*fields.values(), utcnow(), site, name),
            )

    # --- inventory the server confirmed (ADR 0046) -------------------------------------
    def inventory_to_send(
        self, *, site: str, device: str, device_id: str | None, attributes: Sequence[Any]
    ) -> list[str]:
        """Names of `attributes` (``{"name", "value"}``) whose value the server has not confirmed
        for this Mender device ID; empty when a PATCH of them would change nothing.

        Every name counts as unconfirmed while an inventory report of the device is still owed
        (outbox ``pending``): a run killed between such a call and its ``sent`` mark leaves the
        server holding values this record does not know.
        """
        names = [str(a["name"]) for a in attributes]
        if not device_id:
            return names
        owed = self._one(
            "SELECT 1 FROM outbox WHERE site = ? AND device = ? AND kind = 'inventory' "
            "AND state = 'pending' LIMIT 1",
            (site, device),
        )
        if owed is not None:
            return names
        known = dict(
            self._all(
                "SELECT name, value FROM inventory_sent "
                "WHERE site = ? AND device = ? AND device_id = ?",
                (site, device, device_id),
            )
        )
        return [str(a["name"]) for a in attributes if known.get(a["name"]) != _inv(a["value"])]

    def forget_inventory(
        self, *, site: str, device: str, device_id: str | None, names: Sequence[str]
    ) -> None:
        """Durably drop the record of `names` before a call that may change them: a crash after
        the server took the new values and before `record_inventory` must leave no record of the
        old ones (a skipped PATCH would then keep a wrong value). No commit when none is recorded.
        """
        if not device_id or not names:
            return
        marks = ", ".join("?" * len(names))
        where = f"WHERE site = ? AND device = ? AND device_id = ? AND name IN ({marks})"
        args = (site, device, device_id, *names)
        if self._one(f"SELECT 1 FROM inventory_sent {where} LIMIT 1", args) is None:  # noqa: S608
            return
        with self.tx() as c:
            c.execute(f"DELETE FROM inventory_sent {where}", args)  # noqa: S608

    def record_inventory(
        self,
        *,
        site: str,
        device: str,
        device_id: str | None,
        attributes: Sequence[Any],
        cursor: sqlite3.Cursor | None = None,
    ) -> None:
        """Record `attributes` as confirmed by the server (a 2xx answer) for this device ID, and
        forget what was recorded for the device's earlier IDs. With `cursor`, inside the caller's
        transaction; otherwise in a commit without its own fsync: losing it to a power cut only
        costs one PATCH more, as `forget_inventory` ran (durably) before the call."""
        if not device_id:
            return
        rows = [
            (site, device, device_id, str(a["name"]), _inv(a["value"]), utcnow())
            for a in attributes
        ]
        with contextlib.nullcontext(cursor) if cursor is not None else self.tx(durable=False) as c:
            c.execute(
                "DELETE FROM inventory_sent WHERE site = ? AND device = ? AND device_id != ?",
                (site, device, device_id),
            )
            c.executemany("INSERT OR REPLACE INTO inventory_sent VALUES (?, ?, ?, ?, ?, ?)", rows)

    # --- artifacts ----------------------------------------------------------------------
    def artifact(self, artifact_id: str) -> tuple[str, int, str, str] | None:
        r = self._one(
            "SELECT name, size, sha256, path FROM artifacts WHERE artifact_id = ?", (artifact_id,)
        )
        return None if r is None else (r[0], r[1], r[2], r[3])

    def record_artifact(
        self, *, artifact_id: str, name: str, size: int, sha256: str, path: str
    ) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?)",
                (artifact_id, name, size, sha256, path, utcnow()),
            )

    # --- deployments --------------------------------------------------------------------
    _DEP_COLS = (
        "deployment_id, site, device, artifact_id, artifact_name, next_request, state, "
        "bundle_id, outcome"
    )

    def _dep(self, r: Any) -> DeploymentRow:
        return DeploymentRow(
            deployment_id=r[0],
            site=r[1],
            device=r[2],
            artifact_id=r[3],
            artifact_name=r[4],
            next_request=bytes(r[5]),
            state=r[6],
            bundle_id=r[7],
            outcome=r[8],
        )

    def record_polled(
        self,
        *,
        site: str,
        device: str,
        deployment_id: str,
        artifact_id: str | None,
        artifact_name: str,
        next_request: bytes,
        cursor: sqlite3.Cursor | None = None,
    ) -> DeploymentRow:
        """Record what /next answered; an existing row keeps its first request bytes. With
        `cursor`, inside the caller's transaction."""
        with contextlib.nullcontext(cursor) if cursor is not None else self.tx() as c:
            c.execute(
                f"INSERT INTO deployments ({self._DEP_COLS}, created, updated) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, 'polled', NULL, NULL, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (
                    deployment_id,
                    site,
                    device,
                    artifact_id,
                    artifact_name,
                    next_request,
                    utcnow(),
                    utcnow(),
                ),
            )
        return _found(self.deployment(deployment_id, site, device), "deployment")

    def deployment(self, deployment_id: str, site: str, device: str) -> DeploymentRow | None:
        r = self._one(
            f"SELECT {self._DEP_COLS} FROM deployments "  # noqa: S608
            "WHERE deployment_id = ? AND site = ? AND device = ?",
            (deployment_id, site, device),
        )
        return None if r is None else self._dep(r)

    def active_deployment(self, site: str, device: str) -> DeploymentRow | None:
        """The device's deployment not yet finished from the ledger's view, if any."""
        r = self._one(
            f"SELECT {self._DEP_COLS} FROM deployments WHERE site = ? AND device = ? "  # noqa: S608
            "AND state IN ('polled', 'downloaded', 'packed', 'travelling') "
            "ORDER BY created DESC LIMIT 1",
            (site, device),
        )
        return None if r is None else self._dep(r)

    def deployments(self, *, site: str | None = None) -> list[DeploymentRow]:
        sql = f"SELECT {self._DEP_COLS} FROM deployments"  # noqa: S608
        args: tuple[Any, ...] = ()
        if site is not None:
            sql += " WHERE site = ?"
            args = (site,)
        return [self._dep(r) for r in self._all(sql + " ORDER BY site, device, created", args)]

    def set_deployment(
        self,
        deployment_id: str,
        site: str,
        device: str,
        *,
        state: str,
        bundle_id: str | None = None,
        outcome: str | None = None,
        cursor: sqlite3.Cursor | None = None,
    ) -> None:
        sql = (
            "UPDATE deployments SET state = ?, bundle_id = COALESCE(?, bundle_id), "
            "outcome = COALESCE(?, outcome), updated = ? "
            "WHERE deployment_id = ? AND site = ? AND device = ?"
        )
        args = (state, bundle_id, outcome, utcnow(), deployment_id, site, device)
        if cursor is not None:
            cursor.execute(sql, args)
            return
        with self.tx() as c:
            c.execute(sql, args)

    # --- bundles ------------------------------------------------------------------------
    def reserve_bundle(
        self, *, site: str, bundle_id: str, path: str, cursor: sqlite3.Cursor | None = None
    ) -> Bundle:
        """Allocate the site's next sequence number for a bundle being written. With `cursor`,
        inside the caller's transaction (pack adds the bundle's items in the same one)."""
        with contextlib.nullcontext(cursor) if cursor is not None else self.tx() as c:
            r = c.execute("SELECT COALESCE(MAX(seq), 0) FROM bundles WHERE site = ?", (site,))
            seq = int(r.fetchone()[0]) + 1
            c.execute(
                "INSERT INTO bundles VALUES (?, ?, ?, 'writing', ?, NULL, ?, ?)",
                (bundle_id, site, seq, path, utcnow(), utcnow()),
            )
        return _found(self.bundle(bundle_id), "bundle")

    def bundle(self, bundle_id: str) -> Bundle | None:
        r = self._one(
            "SELECT bundle_id, site, seq, state, path, digest FROM bundles WHERE bundle_id = ?",
            (bundle_id,),
        )
        return (
            None
            if r is None
            else Bundle(bundle_id=r[0], site=r[1], seq=r[2], state=r[3], path=r[4], digest=r[5])
        )

    def bundles(self, *, site: str | None = None, state: str | None = None) -> list[Bundle]:
        sql = "SELECT bundle_id, site, seq, state, path, digest FROM bundles WHERE 1=1"
        args: list[Any] = []
        if site is not None:
            sql += " AND site = ?"
            args.append(site)
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        return [
            Bundle(bundle_id=r[0], site=r[1], seq=r[2], state=r[3], path=r[4], digest=r[5])
            for r in self._all(sql + " ORDER BY site, seq", tuple(args))
        ]

    def set_bundle(
        self,
        bundle_id: str,
        *,
        state: str,
        digest: str | None = None,
        cursor: sqlite3.Cursor | None = None,
    ) -> None:
        sql = (
            "UPDATE bundles SET state = ?, digest = COALESCE(?, digest), updated = ? "
            "WHERE bundle_id = ?"
        )
        args = (state, digest, utcnow(), bundle_id)
        if cursor is not None:
            cursor.execute(sql, args)
            return
        with self.tx() as c:
            c.execute(sql, args)

    # --- results ------------------------------------------------------------------------
    def result_state(self, result_id: str) -> str | None:
        r = self._one("SELECT state FROM results WHERE result_id = ?", (result_id,))
        return None if r is None else str(r[0])

    # --- outbox -------------------------------------------------------------------------
    def enqueue(
        self,
        cursor: sqlite3.Cursor,
        *,
        site: str,
        device: str,
        deployment_id: str | None,
        kind: str,
        payload: Any,
        origin: str,
    ) -> int | None:
        """Record a report owed to the server, inside the caller's transaction. Returns the new
        entry's id, or None when the same report was owed already."""
        cursor.execute(
            "INSERT OR IGNORE INTO outbox (site, device, deployment_id, kind, payload, origin, "
            "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                site,
                device,
                deployment_id,
                kind,
                json.dumps(payload, sort_keys=True),
                origin,
                utcnow(),
            ),
        )
        return cursor.lastrowid if cursor.rowcount == 1 else None

    _OUT_COLS = "id, site, device, deployment_id, kind, payload, origin, state, attempted"

    def _outbox(self, where: str, args: tuple[Any, ...]) -> list[OutboxEntry]:
        rows = self._all(f"SELECT {self._OUT_COLS} FROM outbox {where} ORDER BY id", args)  # noqa: S608
        return [
            OutboxEntry(
                id=r[0],
                site=r[1],
                device=r[2],
                deployment_id=r[3],
                kind=r[4],
                payload=r[5],
                origin=r[6],
                state=r[7],
                attempted=r[8],
            )
            for r in rows
        ]

    def pending(self, *, site: str | None = None, device: str | None = None) -> list[OutboxEntry]:
        """Reports still owed to the server, oldest first."""
        where = "WHERE state = 'pending'"
        args: list[Any] = []
        if site is not None:
            where += " AND site = ?"
            args.append(site)
        if device is not None:
            where += " AND device = ?"
            args.append(device)
        return self._outbox(where, tuple(args))

    def outbox(self) -> list[OutboxEntry]:
        return self._outbox("", ())

    def mark_attempted(self, entry_ids: Sequence[int], *, cursor: sqlite3.Cursor) -> None:
        """Mark entries ``attempted`` inside the caller's (durable) transaction: the call may
        start only after that transaction committed (ADR 0041, 0044)."""
        cursor.executemany(
            "UPDATE outbox SET attempted = 1 WHERE id = ?", [(i,) for i in entry_ids]
        )

    def add_bundle_item(
        self, cursor: sqlite3.Cursor, *, bundle_id: str, deployment_id: str, site: str, device: str
    ) -> None:
        cursor.execute(
            "INSERT OR IGNORE INTO bundle_items VALUES (?, ?, ?, ?)",
            (bundle_id, deployment_id, site, device),
        )

    def bundle_items(self, bundle_id: str) -> list[tuple[str, str]]:
        """(deployment_id, device) pairs carried by a bundle."""
        rows = self._all(
            "SELECT deployment_id, device FROM bundle_items WHERE bundle_id = ? ORDER BY device",
            (bundle_id,),
        )
        return [(r[0], r[1]) for r in rows]

    def record_result(
        self, cursor: sqlite3.Cursor, *, result_id: str, bundle_id: str, digest: str | None
    ) -> None:
        cursor.execute(
            "INSERT INTO results VALUES (?, ?, 'accepted', ?, ?, ?)",
            (result_id, bundle_id, digest, utcnow(), utcnow()),
        )

    def mark(
        self,
        entry_id: int,
        state: str,
        detail: str | None = None,
        cursor: sqlite3.Cursor | None = None,
    ) -> None:
        sql = "UPDATE outbox SET state = ?, detail = ?, done = ? WHERE id = ?"
        args = (state, detail, utcnow(), entry_id)
        if cursor is not None:
            cursor.execute(sql, args)
            return
        with self.tx() as c:
            c.execute(sql, args)
