"""The applier's local record of applied transfer bundles (SQLite), for replay protection and
resume (issue 6 step 1; ADR 0050).

Where: ``$XDG_STATE_HOME/gapferry/applier.db``, by default ``~/.local/state/gapferry/applier.db``
(``--state PATH`` overrides). The folder is created 0700, the file 0600. It is the laptop's
memory, not a shared truth: with several applier laptops at one site each keeps its own record
(ADR 0050 says what that means).

Rules:
- per site, a transfer bundle whose sequence is not above the highest admitted one is refused
  (``replayed``), unless it is the very same bundle (same id and manifest sha256): then the run
  resumes: devices with a final outcome are not touched again, their stored reports are reused;
- a known bundle id with different manifest bytes is refused (``bundle-id-reused``);
- a device is marked ``started`` before anything is sent to it, and gets its report when done,
  each in its own transaction (``synchronous=FULL``), so a crash leaves an honest record.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import msgspec
from gapferry.common.bundle import VerifiedTransfer, check_not_replayed
from gapferry.common.errors import EnvironmentFailure, InvalidData
from gapferry.isolated.report import DeviceReport, now_utc

__all__ = ["AppliedRecord", "default_state_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles (
    bundle_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    first_run TEXT NOT NULL,
    last_run TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS bundles_site ON bundles (site, sequence);
CREATE TABLE IF NOT EXISTS devices (
    bundle_id TEXT NOT NULL REFERENCES bundles (bundle_id),
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('started', 'done')),
    -- 1 once an install began on the device (in any run), even if a report followed
    touched INTEGER NOT NULL DEFAULT 0,
    report TEXT,
    updated TEXT NOT NULL,
    PRIMARY KEY (bundle_id, name)
);
"""


def default_state_path() -> Path:
    """``$XDG_STATE_HOME/gapferry/applier.db`` or ``~/.local/state/gapferry/applier.db``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gapferry" / "applier.db"


class AppliedRecord:
    """The state database. Safe to use from several threads (one lock around one connection)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
                os.close(fd)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise EnvironmentFailure(
                f"cannot open the applier's state database {self.path}: {e}",
                remedy="check the path and its permissions, or pass --state with another path",
                code="state-db",
            ) from e
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AppliedRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            with self._lock:
                return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as e:
            raise EnvironmentFailure(
                f"the applier's state database {self.path} failed: {e}",
                remedy="check free space and permissions; the database is kept as it is",
                code="state-db",
            ) from e

    def last_sequence(self, site: str) -> int | None:
        rows = self._q("SELECT MAX(sequence) FROM bundles WHERE site = ?", (site,))
        value = rows[0][0] if rows else None
        return int(value) if isinstance(value, int) else None

    def check(self, verified: VerifiedTransfer) -> bool:
        """Is this bundle admissible? True when it was seen before (a resume). Changes nothing.

        Raises:
            InvalidData: ``replayed``, ``bundle-id-reused``.
        """
        m = verified.manifest
        rows = self._q(
            "SELECT manifest_sha256, site FROM bundles WHERE bundle_id = ?", (m.bundle_id,)
        )
        if rows:
            if rows[0][0] != verified.manifest_sha256 or rows[0][1] != m.site:
                raise InvalidData(
                    f"a different transfer bundle with the same id {m.bundle_id} was applied here",
                    remedy="do not use this bundle; ask the operator for a new one",
                    code="bundle-id-reused",
                )
            return True
        check_not_replayed(m, last_sequence=self.last_sequence(m.site))
        return False

    def admit(self, verified: VerifiedTransfer) -> bool:
        """`check`, then record the bundle (or its new run). Returns True on a resume."""
        m = verified.manifest
        resumed = self.check(verified)
        now = now_utc().isoformat()
        if resumed:
            self._q("UPDATE bundles SET last_run = ? WHERE bundle_id = ?", (now, m.bundle_id))
        else:
            self._q(
                "INSERT INTO bundles VALUES (?, ?, ?, ?, ?, ?)",
                (m.bundle_id, m.site, m.sequence, verified.manifest_sha256, now, now),
            )
        return resumed

    def final_report(self, bundle_id: str, name: str) -> DeviceReport | None:
        """The stored report of a device that needs no further attempt, or None."""
        rows = self._q(
            "SELECT report FROM devices WHERE bundle_id = ? AND name = ? AND state = 'done'",
            (bundle_id, name),
        )
        if not rows or not isinstance(rows[0][0], str):
            return None
        report = msgspec.json.decode(rows[0][0], type=DeviceReport)
        return None if report.retry else report

    def was_started(self, bundle_id: str, name: str) -> bool:
        """Did a run of this bundle ever begin changing this device?"""
        rows = self._q(
            "SELECT touched FROM devices WHERE bundle_id = ? AND name = ?", (bundle_id, name)
        )
        return bool(rows and rows[0][0])

    def mark_started(self, bundle_id: str, name: str) -> None:
        self._q(
            "INSERT INTO devices (bundle_id, name, state, touched, report, updated) VALUES (?, ?,"
            " 'started', 1, NULL, ?) ON CONFLICT (bundle_id, name) DO UPDATE SET state ="
            " 'started', touched = 1, updated = excluded.updated",
            (bundle_id, name, now_utc().isoformat()),
        )

    def save(self, bundle_id: str, report: DeviceReport) -> None:
        self._q(
            "INSERT INTO devices (bundle_id, name, state, report, updated) VALUES (?, ?, 'done',"
            " ?, ?) ON CONFLICT (bundle_id, name) DO UPDATE SET state = 'done', report ="
            " excluded.report, updated = excluded.updated",
            (
                bundle_id,
                report.name,
                msgspec.json.encode(report).decode(),
                now_utc().isoformat(),
            ),
        )
