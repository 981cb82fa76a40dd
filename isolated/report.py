"""What happened to one device: the applier's own record of an outcome, kept in the local state
database and turned into a result-bundle entry (bundle_spec: result manifest, devices).

Outcomes (`gapferry.common.bundle.model.Outcome`), and how the applier uses them:

- ``success``: installed, committed, and the device reports the new artifact;
- ``already-installed``: the device already runs the artifact; nothing was sent;
- ``failure``: the install failed (the update was rolled back), or the artifact can never be
  installed on this device (wrong device type, unmet depends, bad or missing signature): the
  deployment has failed; the device was left as it was;
- ``skipped``: nothing was done and the reason can be fixed on site (the device is unreachable,
  its host key is unknown, an earlier update waits for commit, its verification key is missing,
  or it has no entry in the devices file). A later run of the same bundle tries it again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from gapferry.common.bundle import InventoryAttribute, LogLine, ResultDevicePlan, StatusStep
from gapferry.common.bundle.model import Outcome, StepStatus
from gapferry.common.limits import Limits

__all__ = ["DeviceLog", "DeviceReport", "now_utc"]

_MAX_REASON = 1024


def now_utc() -> datetime:
    """Now in UTC, to the millisecond (steps are ordered by time)."""
    t = datetime.now(tz=UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _reason(text: str) -> str:
    text = " ".join(text.split()) or "no reason given"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 6] + " [cut]"


class DeviceReport(msgspec.Struct, frozen=True, kw_only=True):
    """The final word on one device (stored in the state database as JSON)."""

    name: str
    mender_device_id: str
    deployment_id: str
    outcome: Outcome
    reason: str | None = None
    steps: list[StatusStep] = []
    log: list[LogLine] = []
    inventory: list[InventoryAttribute] = []
    artifact_name_after: str | None = None
    #: True when a later run of the same bundle should try this device again.
    retry: bool = False
    #: A short machine-readable reason code (``incompatible``, ``busy``, ``host-key``, ...).
    code: str | None = None

    def to_plan(self) -> ResultDevicePlan:
        return ResultDevicePlan(
            name=self.name,
            mender_device_id=self.mender_device_id,
            deployment_id=self.deployment_id,
            outcome=self.outcome,
            steps=self.steps,
            reason=self.reason,
            log=self.log,
            inventory=self.inventory,
            artifact_name_after=self.artifact_name_after,
        )


class DeviceLog:
    """Collects a device's status steps and log lines while an installer runs (thread-safe).

    The log is bounded: at most ``limits.log_lines`` lines of at most ``limits.log_line_bytes``
    are kept in memory (the oldest are dropped first, then the result writer keeps what fits).
    `on_event` (optional) sees every step and line: the CLI prints progress from it.
    """

    def __init__(
        self,
        *,
        name: str,
        limits: Limits,
        on_event: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.name = name
        self._limits = limits
        self._steps: list[StatusStep] = []
        self._lines: list[LogLine] = []
        self._dropped = 0
        self._lock = threading.Lock()
        self._on_event = on_event

    def step(self, status: StepStatus, substate: str | None = None) -> None:
        with self._lock:
            at = now_utc()
            if self._steps and at < self._steps[-1].at:
                at = self._steps[-1].at
            sub = substate[:200] if substate else None
            if len(self._steps) < self._limits.status_steps - 1 or status in (
                "success",
                "failure",
                "already-installed",
            ):
                self._steps.append(StatusStep(status=status, at=at, substate=sub))
        if self._on_event:
            self._on_event(self.name, "step", status + (f": {substate}" if substate else ""))

    def log(self, level: str, message: str) -> None:
        cut = self._limits.log_line_bytes - 200
        for raw in message.splitlines() or [""]:
            text = raw.rstrip()
            if not text:
                continue
            if len(text.encode()) > cut:
                text = text.encode()[:cut].decode("utf-8", "ignore") + " [cut]"
            with self._lock:
                self._lines.append(LogLine(timestamp=now_utc(), level=level[:16], message=text))
                if len(self._lines) > self._limits.log_lines:
                    del self._lines[0]
                    self._dropped += 1
            if self._on_event:
                self._on_event(self.name, level, text)

    def progress(self, done: int, total: int) -> None:
        if self._on_event:
            self._on_event(self.name, "progress", f"{done}/{total}")

    def finish(
        self,
        *,
        mender_device_id: str,
        deployment_id: str,
        outcome: Outcome,
        reason: str | None = None,
        inventory: list[InventoryAttribute] | None = None,
        artifact_name_after: str | None = None,
        retry: bool = False,
        code: str | None = None,
    ) -> DeviceReport:
        """Close the record: add the final step (except for ``skipped``) and freeze it."""
        if reason:
            self.log("error" if outcome in ("failure", "skipped") else "info", reason)
        if outcome != "skipped":
            self.step(outcome)
        with self._lock:
            steps = list(self._steps)
            lines = list(self._lines)
        if self._dropped:
            lines.insert(
                0,
                LogLine(
                    timestamp=lines[0].timestamp if lines else now_utc(),
                    level="info",
                    message=f"[{self._dropped} earlier lines dropped]",
                ),
            )
        return DeviceReport(
            name=self.name,
            mender_device_id=mender_device_id,
            deployment_id=deployment_id,
            outcome=outcome,
            reason=_reason(reason) if reason else None,
            steps=steps,
            log=lines,
            inventory=inventory or [],
            artifact_name_after=artifact_name_after,
            retry=retry,
            code=code,
        )
