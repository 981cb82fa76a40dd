"""The chain of custody of a bundle: signed events in ``custody/`` beside the signed manifest
(bundle_spec/VERIFYING.md section 6 "Custody events"; ADR 0070).

A custody event says who handled a bundle, when, and what they did ("received at the gate",
"handed to technician bob"). Each event is one canonical JSON file ``custody/NNNN.json``
(``0001`` first) with one detached SSHSIG ``custody/NNNN.json.sig`` over its exact bytes in the
namespace ``gapferry-custody-v1@gapferry``. An event names the bundle (kind, id and the sha256 of
its ``manifest.json``) and the sha256 of the previous event's bytes (for the first event: the
manifest's sha256), so the events form a hash chain anchored in the signed manifest. Adding an
event never touches the manifest, its signatures or the completion marker.

- `read_custody_folder` (I/O): list and read ``custody/`` with the bundle reader's safety rules
  (no links, no devices, no hard links, sizes within `Limits`, unexpected names reported).
- `verify_custody` (pure): every event's signature (before decoding), shape, numbering, bundle
  binding, chain link and time order; never raises for bad data, every finding is recorded.
- `append_custody_event` (I/O): write the next event crash-safely: signature first, the event
  file last (its presence is the commit point).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import msgspec
from gapferry.common.atomic import atomic_write_bytes, temp_name_for
from gapferry.common.bundle.layout import (
    CUSTODY_DIR,
    CUSTODY_NAMESPACE,
    MANIFEST_NAME,
    MARKER_NAME,
    Kind,
    is_ignored_name,
    kind_of_dir_name,
    parse_marker,
)
from gapferry.common.errors import EnvironmentFailure, IncompleteBundle, InvalidData, UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS, Limits
from gapferry.common.safepath import open_regular
from gapferry.common.signers import Signer
from gapferry.common.trust import SignatureCheck, TrustPolicy, evaluate

__all__ = [
    "CLOCK_TOLERANCE",
    "CUSTODY_DIR",
    "CUSTODY_NAMESPACE",
    "CustodyActor",
    "CustodyChain",
    "CustodyEvent",
    "CustodyEventCheck",
    "CustodyFolder",
    "RawCustodyEvent",
    "append_custody_event",
    "default_custody_actor",
    "encode_event",
    "event_name",
    "read_custody_folder",
    "verify_custody",
]

#: How far an event's time may lie after the verifying machine's clock before it is refused.
CLOCK_TOLERANCE = timedelta(minutes=10)
#: Event numbers have four digits: at most 9999 events by name (`Limits.custody_events` is lower).
_MAX_NUMBER = 9999
_EVENT_RE = re.compile(r"^([0-9]{4})\.json$")
_SIG_RE = re.compile(r"^([0-9]{4})\.json\.sig$")
_LEFTOVER_RE = re.compile(r"^\.[0-9]{4}\.json(\.sig)?\.part$")

Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Uuid = Annotated[
    str, msgspec.Meta(pattern="^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
EventText = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Number = Annotated[int, msgspec.Meta(ge=1, le=_MAX_NUMBER)]


class CustodyActor(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who recorded the event, as they name themselves (the signature says which key)."""

    name: Text
    host: Text


class CustodyEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One custody event, the content of ``custody/NNNN.json`` (VERIFYING.md section 6)."""

    format_version: Literal[1]
    kind: Literal["custody"]
    bundle_kind: Literal["transfer", "result"]
    #: The transfer bundle's ``bundle_id`` or the result bundle's ``result_id``.
    bundle_id: Uuid
    #: sha256 of the bundle's ``manifest.json`` bytes.
    manifest_sha256: Sha256Hex
    #: 1 for ``0001.json``, 2 for ``0002.json``, ...
    number: Number
    #: sha256 of the previous event file's bytes; for event 1, the manifest's sha256.
    previous_sha256: Sha256Hex
    at: Annotated[datetime, msgspec.Meta(tz=True)]
    actor: CustodyActor
    event: EventText


_ENCODER = msgspec.json.Encoder(order="sorted")


def encode_event(event: CustodyEvent) -> bytes:
    """Canonical bytes of an event: sorted keys, no whitespace, one final newline."""
    return _ENCODER.encode(event) + b"\n"


def event_name(number: int) -> str:
    """``custody/NNNN.json`` (relative to the bundle folder)."""
    return f"{CUSTODY_DIR}/{number:04d}.json"


@dataclass(frozen=True, kw_only=True)
class RawCustodyEvent:
    """One event file as read from the medium (bytes not yet verified)."""

    number: int
    #: None when the file is larger than `Limits.custody_event_bytes` (not read).
    raw: bytes | None
    #: None when the event has no signature file.
    signature: bytes | None


@dataclass(frozen=True, kw_only=True)
class CustodyFolder:
    """What ``custody/`` holds: events by number, and what was wrong or skipped."""

    events: tuple[RawCustodyEvent, ...] = ()
    #: Findings that make the log untrustworthy (unexpected or unsafe entries).
    problems: tuple[str, ...] = ()
    #: Litter and leftovers of interrupted writes that were skipped.
    ignored: tuple[str, ...] = ()


def _damaged(what: str) -> InvalidData:
    return InvalidData(
        what,
        remedy="the custody log was altered or the medium is failing; report it",
        code="bad-custody",
    )


def _read_capped(folder: Path, name: str, limit: int) -> bytes | None:
    fd = open_regular(folder, PurePosixPath(name))
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    return None if len(data) > limit else data


def read_custody_folder(bundle_dir: Path, *, limits: Limits = DEFAULT_LIMITS) -> CustodyFolder:
    """Read ``<bundle_dir>/custody/`` without following links (an absent folder is an empty log).

    Unsafe or unexpected entries are reported in `CustodyFolder.problems`, not raised, so that an
    audit can list them with everything else.

    Raises:
        InvalidData: ``bad-custody`` when ``custody`` is a link or not a folder.
    """
    folder = Path(bundle_dir) / CUSTODY_DIR
    try:
        st = folder.lstat()
    except FileNotFoundError:
        return CustodyFolder()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise _damaged(f"{CUSTODY_DIR} in {bundle_dir.name} is a link or not a folder")
    problems: list[str] = []
    ignored: list[str] = []
    events: dict[int, bytes | None] = {}
    sigs: dict[int, bytes] = {}
    budget = 2 * limits.custody_events + 16
    with os.scandir(folder) as it:
        entries = []
        for e in it:
            entries.append(e)
            if len(entries) > budget:
                raise _damaged(f"{CUSTODY_DIR}/ holds more than {budget} entries")
    for e in sorted(entries, key=lambda e: e.name):
        rel = f"{CUSTODY_DIR}/{e.name}"
        if is_ignored_name(e.name) or _LEFTOVER_RE.match(e.name):
            ignored.append(rel)
            continue
        est = e.stat(follow_symlinks=False)
        if stat.S_ISLNK(est.st_mode):
            problems.append(f"{rel} is a symbolic link")
            continue
        if not stat.S_ISREG(est.st_mode):
            problems.append(f"{rel} is not a regular file")
            continue
        if est.st_nlink > 1:
            problems.append(f"{rel} has other hard links")
            continue
        ev, sg = _EVENT_RE.match(e.name), _SIG_RE.match(e.name)
        if ev and 1 <= int(ev.group(1)) <= _MAX_NUMBER:
            events[int(ev.group(1))] = _read_capped(folder, e.name, limits.custody_event_bytes)
        elif sg and 1 <= int(sg.group(1)) <= _MAX_NUMBER:
            data = _read_capped(folder, e.name, limits.signature_bytes)
            if data is None:
                problems.append(f"{rel} is larger than {limits.signature_bytes} bytes")
            else:
                sigs[int(sg.group(1))] = data
        else:
            problems.append(f"unexpected file {rel}")
    for n in sorted(set(sigs) - set(events)):
        # A signature without its event: an interrupted `custody add` (the event is written last).
        ignored.append(f"{CUSTODY_DIR}/{n:04d}.json.sig")
    raw_events = tuple(
        RawCustodyEvent(number=n, raw=events[n], signature=sigs.get(n)) for n in sorted(events)
    )
    return CustodyFolder(events=raw_events, problems=tuple(problems), ignored=tuple(ignored))


@dataclass(frozen=True, kw_only=True)
class CustodyEventCheck:
    """Everything checked about one event; `ok` when nothing is wrong."""

    file: str
    number: int
    #: sha256 of the event file's bytes (None when it was too large to read).
    sha256: str | None
    signature: SignatureCheck | None
    #: The decoded event: only when its signature verified.
    event: CustodyEvent | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, kw_only=True)
class CustodyChain:
    """The verified custody log of one bundle."""

    events: tuple[CustodyEventCheck, ...]
    #: Log-level findings: unexpected files, gaps, too many events.
    problems: tuple[str, ...]
    ignored: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems and all(e.ok for e in self.events)


def _check_event(
    raw_event: RawCustodyEvent,
    *,
    expected_number: int,
    previous_sha256: str,
    previous_at: datetime | None,
    bundle_kind: Kind,
    bundle_id: str,
    manifest_sha256: str,
    created: datetime,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits,
) -> CustodyEventCheck:
    name = event_name(raw_event.number)
    problems: list[str] = []
    if raw_event.raw is None:
        return CustodyEventCheck(
            file=name,
            number=raw_event.number,
            sha256=None,
            signature=None,
            event=None,
            problems=(f"larger than {limits.custody_event_bytes} bytes",),
        )
    raw = raw_event.raw
    digest = hashlib.sha256(raw).hexdigest()
    if raw_event.number != expected_number:
        problems.append(f"expected event number {expected_number} here (a gap in the log)")
    check: SignatureCheck | None = None
    if raw_event.signature is None:
        problems.append(f"no signature ({name}.sig is missing)")
    else:
        one = TrustPolicy(signers=policy.signers, threshold=1)
        result = evaluate(
            raw,
            [raw_event.signature],
            policy=one,
            namespace=CUSTODY_NAMESPACE,
            now=now,
            limits=limits,
        )
        check = result.checks[0]
        if not check.ok:
            problems.append(f"signature: {check.reason}: {check.detail}")
    event: CustodyEvent | None = None
    if check is not None and check.ok:
        try:
            event = msgspec.json.decode(raw, type=CustodyEvent)
        except msgspec.DecodeError as e:
            problems.append(f"not a custody event of format version 1: {e}")
    if event is not None:
        if event.number != raw_event.number:
            problems.append(f"says it is event {event.number}, but is stored as {name}")
        if event.bundle_kind != bundle_kind or event.bundle_id != bundle_id:
            problems.append(
                f"names {event.bundle_kind} bundle {event.bundle_id}, not this {bundle_kind} "
                f"bundle {bundle_id} (copied from another bundle)"
            )
        if event.manifest_sha256 != manifest_sha256:
            problems.append(
                f"binds manifest sha256 {event.manifest_sha256}, but this bundle's manifest "
                f"has {manifest_sha256}"
            )
        if event.previous_sha256 != previous_sha256:
            problems.append(
                f"chain broken: previous_sha256 is {event.previous_sha256}, expected "
                f"{previous_sha256} (an event was removed, replaced or reordered)"
            )
        if event.at + CLOCK_TOLERANCE < created:
            problems.append(f"dated {event.at.isoformat()}, before the bundle was created")
        if previous_at is not None and event.at < previous_at:
            problems.append(
                f"dated {event.at.isoformat()}, before the previous event "
                f"({previous_at.isoformat()})"
            )
        if event.at > now + CLOCK_TOLERANCE:
            problems.append(f"dated {event.at.isoformat()}, in the future (now {now.isoformat()})")
    return CustodyEventCheck(
        file=name,
        number=raw_event.number,
        sha256=digest,
        signature=check,
        event=event,
        problems=tuple(problems),
    )


def verify_custody(
    folder: CustodyFolder,
    *,
    bundle_kind: Kind,
    bundle_id: str,
    manifest_sha256: str,
    created: datetime,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
) -> CustodyChain:
    """Verify a custody log against its (already verified) bundle. Pure: no disk, no network.

    Each event's signature must be by a signer of `policy` (one signature suffices; the
    policy's threshold applies to manifests, not to custody events) in `CUSTODY_NAMESPACE`,
    checked before the bytes are decoded; then its shape (unknown fields refused), its number,
    the bundle it names, the chain link to the previous event and the time order are checked.

    Raises:
        UsageProblem: ``naive-time``.
    """
    problems = list(folder.problems)
    if len(folder.events) > limits.custody_events:
        problems.append(
            f"{len(folder.events)} custody events, more than the limit of {limits.custody_events}"
        )
    checks: list[CustodyEventCheck] = []
    previous = manifest_sha256
    previous_at: datetime | None = None
    for i, raw_event in enumerate(folder.events[: limits.custody_events], start=1):
        c = _check_event(
            raw_event,
            expected_number=i,
            previous_sha256=previous,
            previous_at=previous_at,
            bundle_kind=bundle_kind,
            bundle_id=bundle_id,
            manifest_sha256=manifest_sha256,
            created=created,
            policy=policy,
            now=now,
            limits=limits,
        )
        checks.append(c)
        previous = c.sha256 or previous
        if c.event is not None:
            previous_at = c.event.at
    return CustodyChain(events=tuple(checks), problems=tuple(problems), ignored=folder.ignored)


class _BundleIds(msgspec.Struct, frozen=True, kw_only=True):
    """The ids `append_custody_event` names the bundle by (other fields ignored here)."""

    kind: str
    bundle_id: str | None = None
    result_id: str | None = None


def _bundle_identity(bundle_dir: Path, limits: Limits) -> tuple[Kind, str, str]:
    """Kind, id and manifest sha256 of a complete bundle folder (marker and manifest agree)."""
    kind = kind_of_dir_name(bundle_dir.name)
    if kind is None or bundle_dir.is_symlink() or not bundle_dir.is_dir():
        raise UsageProblem(
            f"{bundle_dir} is not a bundle folder (transfer-... or result-...)",
            remedy="pass the bundle folder itself",
            code="not-a-bundle",
        )
    try:
        marker = _read_capped(bundle_dir, MARKER_NAME, 256)
        raw = _read_capped(bundle_dir, MANIFEST_NAME, limits.manifest_bytes)
    except FileNotFoundError as e:
        raise IncompleteBundle(
            f"{bundle_dir.name} has no {e.filename and Path(e.filename).name}",
            remedy="record custody only for a complete bundle; write or copy it again",
            code="incomplete",
        ) from e
    bound = parse_marker(marker) if marker is not None else None
    if raw is None or bound is None or hashlib.sha256(raw).hexdigest() != bound:
        raise IncompleteBundle(
            f"{bundle_dir.name}: the completion marker does not bind manifest.json",
            remedy="run `gapferry verify` on the bundle; do not record custody of a damaged one",
            code="marker-mismatch",
        )
    try:
        ids = msgspec.json.decode(raw, type=_BundleIds)
    except msgspec.DecodeError as e:
        raise InvalidData(
            f"{bundle_dir.name}: manifest.json is not a gapferry manifest: {e}",
            remedy="run `gapferry verify` on the bundle",
            code="malformed-manifest",
        ) from e
    bundle_id = ids.bundle_id if kind == "transfer" else ids.result_id
    if ids.kind != kind or bundle_id is None:
        raise InvalidData(
            f"{bundle_dir.name}: manifest.json is not a {kind} manifest",
            remedy="run `gapferry verify` on the bundle",
            code="wrong-kind",
        )
    return kind, bundle_id, bound


def default_custody_actor(name: str | None) -> CustodyActor:
    """`name` (default: the login name) on this host."""
    return CustodyActor(
        name=name or getpass.getuser() or "unknown", host=socket.gethostname() or "unknown"
    )


def append_custody_event(
    bundle_dir: Path,
    *,
    signer: Signer,
    event: str,
    actor: CustodyActor,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
) -> Path:
    """Append one signed event to the bundle's custody log; return the event file.

    The manifest, its signatures and the completion marker are not touched. The signature is
    written first and the event file last (each crash-safely with `atomic_write_bytes`), so an
    interrupted run leaves at most an orphan signature that readers skip and the next run
    replaces.

    Raises:
        UsageProblem: ``not-a-bundle``, ``naive-time``, ``bad-event`` (empty or too long text),
            ``concurrent-add``.
        IncompleteBundle: ``incomplete``, ``marker-mismatch``.
        EnvironmentFailure: ``custody-not-written`` (read-only or full medium).
        InvalidData: ``bad-custody`` (the existing log has gaps or unexpected files),
            ``too-many-events``, ``malformed-manifest``, ``wrong-kind``.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise UsageProblem(
            "the event time must carry a timezone",
            remedy="pass datetime.now(tz=UTC)",
            code="naive-time",
        )
    root = Path(bundle_dir)
    kind, bundle_id, manifest_sha = _bundle_identity(root, limits)
    folder = read_custody_folder(root, limits=limits)
    if folder.problems:
        raise _damaged(f"{root.name}: custody log: {'; '.join(folder.problems)}")
    numbers = [e.number for e in folder.events]
    if numbers != list(range(1, len(numbers) + 1)):
        raise _damaged(f"{root.name}: custody events are not numbered 1..{len(numbers)}")
    if len(numbers) >= limits.custody_events:
        raise InvalidData(
            f"{root.name} already has {len(numbers)} custody events (the limit)",
            remedy="no more events can be recorded on this bundle",
            code="too-many-events",
        )
    if folder.events:
        last = folder.events[-1].raw
        if last is None:
            raise _damaged(f"{root.name}: the last custody event is too large to chain to")
        previous = hashlib.sha256(last).hexdigest()
    else:
        previous = manifest_sha
    number = len(numbers) + 1
    try:
        record = CustodyEvent(
            format_version=1,
            kind="custody",
            bundle_kind=kind,
            bundle_id=bundle_id,
            manifest_sha256=manifest_sha,
            number=number,
            previous_sha256=previous,
            at=now.replace(microsecond=0),
            actor=actor,
            event=event,
        )
        raw = encode_event(record)
        msgspec.json.decode(raw, type=CustodyEvent)
    except msgspec.ValidationError as e:
        raise UsageProblem(
            f"cannot record this event: {e}",
            remedy="give an event text of 1-1024 characters and an actor name of 1-256",
            code="bad-event",
        ) from e
    if len(raw) > limits.custody_event_bytes:
        raise UsageProblem(
            f"the event would be {len(raw)} bytes, more than {limits.custody_event_bytes}",
            remedy="shorten the event text",
            code="bad-event",
        )
    sig = signer.sign_sshsig(raw, CUSTODY_NAMESPACE)
    target = root / CUSTODY_DIR
    if target.is_symlink():
        raise _damaged(f"{root.name}: {CUSTODY_DIR} is a symbolic link")
    path = root / event_name(number)
    try:
        target.mkdir(exist_ok=True)
        if path.exists() or temp_name_for(path).exists():
            raise UsageProblem(
                f"{path} appeared while this event was written (another `custody add` at once?)",
                remedy="run `gapferry custody show` and add the event again",
                code="concurrent-add",
            )
        atomic_write_bytes(path.with_name(path.name + ".sig"), sig)
        atomic_write_bytes(path, raw)
    except OSError as e:
        # An orphan signature left behind is skipped by readers and replaced by the next add.
        raise EnvironmentFailure(
            f"cannot write custody event {number} to {target}: {e.strerror or e}",
            remedy="check that the medium is mounted read-write and has free space, then run "
            "the same `gapferry custody add` again",
            code="custody-not-written",
        ) from e
    return path
