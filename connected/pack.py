"""`pack`: from the Mender Server to a signed transfer bundle on removable media (seeds phases 4-6).

Per device (bounded concurrency): make sure it has keys, preauthorization and a JWT; report
inventory (``device_type``, ``artifact_name``) unless the ledger holds the server's confirmation
of exactly those values for the device's current Mender ID; poll ``/next`` with what the device
runs; download each needed artifact once (size checked against the server's artifact record and
the announced length; with `artifact_key`, the artifact's signature) and record it. No status is
reported for the download: the server's record stays ``pending``. Then one transfer bundle per site
is written, read back from the medium and verified, and only then ``installing`` is reported. With
cached tokens and an unchanged inventory a deployment costs pack two requests per device,
``/next`` and ``installing`` (ADR 0046).

The real server's traps (shared/mender/server-behaviour.md section 3):
- ``/next`` is sticky and compares each poll with the first one: the ledger keeps the first body's
  exact bytes and every later poll for that deployment re-sends them, so a device's site-file entry
  edited meanwhile cannot fail the deployment.
- Download links expire: an expired link is replaced by re-polling ``/next`` with the same bytes.

Crash safety (ADR 0041): every step is recorded before the next begins; a re-run resumes: reports
owed are delivered first (outbox), downloaded artifacts are reused, a bundle whose writing was
interrupted is abandoned (it has no completion marker, so no applier accepts it) and its
deployments are packed again into a new bundle with the next sequence number. A deployment already
travelling in an unreturned bundle is not packed again unless `repack`. A poll is recorded before
its download, or, with the artifact at hand, in one commit with the ``downloaded`` state (ADR
0045). The inventory record is dropped durably before a PATCH that changes it and written after
the server's 2xx, so a crash in between costs one PATCH more on the next run, never one less.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
from gapferry.common.artifact.reader import read_artifact_file
from gapferry.common.errors import GapferryError, InvalidData, UsageProblem
from gapferry.common.media.progress import Progress
from gapferry.common.signers import Signer
from gapferry.connected import bundle_io
from gapferry.connected.devices import ensure_ready
from gapferry.connected.ledger import TRAVELLING, DeploymentRow
from gapferry.connected.mender.device import (
    DeviceApi,
    LinkExpired,
    NextInstructions,
    encode_next_request,
)
from gapferry.connected.mender.errors import MenderConflict
from gapferry.connected.outbox import deliver_pending
from gapferry.connected.session import Session
from gapferry.connected.site import Site, SiteDevice

__all__ = ["PackReport", "PackRow", "pack"]

#: The bundle writer (`bundle_io.write_and_verify`; tests may wrap it to simulate crashes).
WriteBundle = Callable[..., tuple[Path, str]]

#: How often an expired download link is refreshed before giving up.
LINK_REFRESHES = 3


class PackRow(msgspec.Struct, kw_only=True):
    device: str
    action: str
    ok: bool = True
    deployment_id: str | None = None
    artifact_name: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class PackReport(msgspec.Struct, kw_only=True):
    site: str
    rows: list[PackRow]
    bundle_id: str | None = None
    bundle_seq: int | None = None
    bundle_path: str | None = None
    reports_sent: int = 0
    reports_confirmed: int = 0
    reports_failed: list[str] = []

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and not self.reports_failed


class _Packer:
    def __init__(
        self,
        session: Session,
        site: Site,
        *,
        artifact_key: bytes | None,
        repack: bool,
        progress: bool | None,
    ) -> None:
        self.session = session
        self.site = site
        self.ledger = session.ledger
        self.artifact_key = artifact_key
        self.repack = repack
        self.progress = progress
        self._names: dict[str, str | None] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _seq(self, bundle_id: str | None) -> str:
        b = self.ledger.bundle(bundle_id) if bundle_id else None
        return str(b.seq) if b is not None else "?"

    def _artifact_lock(self, artifact_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(artifact_id, threading.Lock())

    # --- one device -------------------------------------------------------------------------
    def device(self, dev: SiteDevice) -> PackRow:
        try:
            return self._device(dev)
        except GapferryError as e:
            if isinstance(e, UsageProblem) and e.code in ("no-server-url", "no-api-token"):
                raise  # the command's configuration, not this device's problem
            detail = f"{e.message}; what to do: {e.remedy}" if e.remedy else e.message
            return PackRow(device=dev.name, action="error", ok=False, detail=detail)

    def _device(self, dev: SiteDevice) -> PackRow:
        site = self.site.name
        ensure_ready(self.session, self.site, dev)
        api = self.session.device_api(site, dev)
        row = self.ledger.device(site, dev.name)
        current = (row.artifact_name if row else None) or dev.artifact_name
        self._report_inventory(
            api,
            dev,
            [
                {"name": "device_type", "value": dev.device_type},
                {"name": "artifact_name", "value": current},
            ],
        )
        active = self.ledger.active_deployment(site, dev.name)
        if active is not None and active.state in TRAVELLING and not self.repack:
            return PackRow(
                device=dev.name,
                action="travelling",
                deployment_id=active.deployment_id,
                artifact_name=active.artifact_name,
                detail=f"already in bundle #{self._seq(active.bundle_id)}; "
                "use --repack to pack it again",
            )
        if active is not None and active.state in ("downloaded", *TRAVELLING):
            self._ensure_artifact_file(api, active)
            return PackRow(
                device=dev.name,
                action="ready",
                deployment_id=active.deployment_id,
                artifact_name=active.artifact_name,
                detail="downloaded earlier",
            )
        body = (
            active.next_request
            if active is not None
            else encode_next_request(
                device_type=dev.device_type, artifact_name=current, provides=dict(dev.provides)
            )
        )
        try:
            ans = api.next_deployment(body)
        except MenderConflict as e:
            if active is not None:
                self.ledger.set_deployment(
                    active.deployment_id, site, dev.name, state="conflict", outcome="failure"
                )
            return PackRow(
                device=dev.name,
                action="conflict",
                ok=False,
                deployment_id=active.deployment_id if active else None,
                detail=e.message,
            )
        if ans is None:
            if active is not None:
                self.ledger.set_deployment(
                    active.deployment_id,
                    site,
                    dev.name,
                    state="gone",
                    outcome="no longer offered (aborted?)",
                )
                return PackRow(
                    device=dev.name,
                    action="aborted",
                    deployment_id=active.deployment_id,
                    detail="the server no longer offers this deployment",
                )
            return PackRow(device=dev.name, action="up-to-date", detail=f"runs {current}")
        if active is not None and ans.id != active.deployment_id:
            self.ledger.set_deployment(
                active.deployment_id,
                site,
                dev.name,
                state="gone",
                outcome="superseded on the server",
            )
        polled = functools.partial(
            self.ledger.record_polled,
            site=site,
            device=dev.name,
            deployment_id=ans.id,
            artifact_id=ans.artifact.id,
            artifact_name=ans.artifact.artifact_name,
            next_request=body,
        )
        cached = self._have_artifact(ans.artifact.id or f"name-{ans.artifact.artifact_name}")
        if not cached:
            # Recorded before the (long) download, so a re-run re-polls with the same bytes.
            dep = polled()
            self._fetch(api, dev, dep, ans)
        with self.ledger.tx() as c:
            if cached:
                # Nothing to download: the poll is recorded with the `downloaded` state in one
                # commit (ADR 0045); a crash before it leaves what a crash before recording the
                # poll alone would. No status is reported here: the server's record stays
                # `pending` until the bundle is verified and `installing` is reported (ADR 0046).
                dep = polled(cursor=c)
            self.ledger.set_deployment(
                dep.deployment_id, site, dev.name, state="downloaded", cursor=c
            )
        return PackRow(
            device=dev.name,
            action="downloaded",
            deployment_id=dep.deployment_id,
            artifact_name=dep.artifact_name,
        )

    def _report_inventory(
        self, api: DeviceApi, dev: SiteDevice, attributes: list[dict[str, Any]]
    ) -> None:
        """PATCH the device's inventory unless the server confirmed every value already for this
        Mender device ID (ADR 0046). The record is forgotten durably before a PATCH that changes
        it and written only after the server's 2xx, so a crash in between costs one PATCH more,
        never one less."""
        led = self.ledger
        site = self.site.name
        before = api.device_id
        changed = led.inventory_to_send(
            site=site, device=dev.name, device_id=before, attributes=attributes
        )
        if not changed:
            return
        led.forget_inventory(site=site, device=dev.name, device_id=before, names=changed)
        api.put_inventory(attributes)
        # The call may have renewed the token (a 401): the PATCH reached the ID it names now.
        led.record_inventory(
            site=site, device=dev.name, device_id=api.device_id, attributes=attributes
        )

    def _have_artifact(self, artifact_id: str) -> bool:
        """Whether the artifact is downloaded and recorded already (what `_fetch` skips on)."""
        known = self.ledger.artifact(artifact_id)
        return known is not None and Path(known[3]).exists()

    def _artifact_path(self, artifact_id: str) -> Path:
        return self.session.artifact_dir / f"{artifact_id}.mender"

    def _ensure_artifact_file(self, api: DeviceApi, dep: DeploymentRow) -> None:
        if dep.artifact_id is None:
            return
        known = self.ledger.artifact(dep.artifact_id)
        if known is not None and Path(known[3]).exists():
            return
        # Lost from the cache: a fresh link comes from re-polling with the same bytes.
        ans = api.next_deployment(dep.next_request)
        if ans is None or ans.id != dep.deployment_id:
            raise InvalidData(
                f"deployment {dep.deployment_id} is no longer offered for {dep.device}",
                remedy="check the deployment in the Mender UI (aborted?)",
                code="deployment-gone",
            )
        dev = next(d for d in self.site.devices if d.name == dep.device)
        self._fetch(api, dev, dep, ans)

    def _fetch(
        self, api: DeviceApi, dev: SiteDevice, dep: DeploymentRow, ans: NextInstructions
    ) -> None:
        art_id = ans.artifact.id or f"name-{ans.artifact.artifact_name}"
        with self._artifact_lock(art_id):
            known = self.ledger.artifact(art_id)
            if known is not None and Path(known[3]).exists():
                return
            expected: int | None = None
            if self.session.has_management and ans.artifact.id:
                rec = self.session.management.get_artifact(ans.artifact.id)
                expected = rec.size if rec is not None else None
            dest = self._artifact_path(art_id)
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            source = ans.artifact.source
            for attempt in range(LINK_REFRESHES + 1):
                try:
                    with Progress(
                        f"{ans.artifact.artifact_name}", expected or 0, enabled=self.progress
                    ) as p:
                        got = api.download(
                            source,
                            dest,
                            expected_size=expected,
                            progress=p.advance,
                            on_length=_total_setter(p),
                        )
                    break
                except LinkExpired:
                    if attempt == LINK_REFRESHES:
                        raise
                    fresh = api.next_deployment(dep.next_request)
                    if fresh is None or fresh.id != dep.deployment_id:
                        raise InvalidData(
                            f"deployment {dep.deployment_id} is no longer offered for {dev.name}",
                            remedy="check the deployment in the Mender UI (aborted?)",
                            code="deployment-gone",
                        ) from None
                    source = fresh.artifact.source
            try:
                info = read_artifact_file(dest, verify_key=self.artifact_key)
            except GapferryError:
                dest.unlink(missing_ok=True)  # never leave a refused artifact in the cache
                raise
            if info.name != ans.artifact.artifact_name or dev.device_type not in info.device_types:
                dest.unlink()
                raise InvalidData(
                    f"downloaded artifact is {info.name!r} for {list(info.device_types)}, the "
                    f"server announced {ans.artifact.artifact_name!r} for {dev.device_type!r}",
                    remedy="check the artifact on the server",
                    code="artifact-mismatch",
                )
            self.ledger.record_artifact(
                artifact_id=art_id, name=info.name, size=got.size, sha256=got.sha256, path=str(dest)
            )

    # --- the site's bundle ------------------------------------------------------------------
    def _deployment_name(self, deployment_id: str, fallback: str) -> str:
        """The deployment's name, asked once per deployment (not per device) per run."""
        if deployment_id not in self._names:
            name = None
            if self.session.has_management:
                name = self.session.management.deployment_name(deployment_id)
            self._names[deployment_id] = name
        return self._names[deployment_id] or fallback

    def _items(self, deps: list[DeploymentRow]) -> list[bundle_io.PackItem]:
        site = self.site.name
        items = []
        for d in deps:
            art = self.ledger.artifact(d.artifact_id or f"name-{d.artifact_name}")
            if art is None or not Path(art[3]).exists():
                raise InvalidData(
                    f"the artifact of deployment {d.deployment_id} is missing from the cache",
                    remedy="run gapferry pack again (it downloads it anew)",
                    code="artifact-missing",
                )
            dev = self.ledger.device(site, d.device)
            if dev is None or not dev.device_id:
                raise InvalidData(
                    f"device {d.device} has no Mender device ID in the ledger",
                    remedy="run gapferry device auth for it",
                    code="device-not-registered",
                )
            items.append(
                bundle_io.PackItem(
                    device=d.device,
                    mender_device_id=dev.device_id,
                    device_type=dev.device_type,
                    identity=dict(dev.identity),
                    deployment_id=d.deployment_id,
                    deployment_name=self._deployment_name(d.deployment_id, d.artifact_name),
                    artifact_name=d.artifact_name,
                    artifact_path=Path(art[3]),
                    artifact_size=art[1],
                    artifact_sha256=art[2],
                    current_artifact=json_artifact_name(d.next_request),
                )
            )
        return items

    def bundle(
        self, media: Path, *, signer: Signer, devices: set[str], write: WriteBundle
    ) -> tuple[str, int, str] | None:
        """Write the site's bundle: finish one a crash interrupted, or start a new one."""
        site = self.site.name
        led = self.ledger
        writing = led.bundles(site=site, state="writing")
        deps: list[DeploymentRow] = []
        if writing:
            b = writing[-1]
            carried = set(led.bundle_items(b.bundle_id))
            deps = [d for d in led.deployments(site=site) if (d.deployment_id, d.device) in carried]
            if not deps:
                # Reserved without items (a run killed between the two commits before they were
                # one): nothing was written for it; start a new bundle.
                led.set_bundle(b.bundle_id, state="abandoned")
        if not deps:
            deps = [
                d
                for d in led.deployments(site=site)
                if d.device in devices
                and (d.state == "downloaded" or (self.repack and d.state in TRAVELLING))
            ]
            if not deps:
                return None
            with led.tx() as c:
                # Reserved with its items in one commit: a crash leaves both or neither.
                b = led.reserve_bundle(
                    site=site, bundle_id=str(uuid.uuid4()), path=str(media), cursor=c
                )
                for d in deps:
                    led.add_bundle_item(
                        c,
                        bundle_id=b.bundle_id,
                        deployment_id=d.deployment_id,
                        site=site,
                        device=d.device,
                    )
        items = self._items(deps)
        total = sum(i.artifact_size for i in items)
        # One bar for both passes: each byte is written, then read back from the medium.
        with Progress(f"bundle #{b.seq} (write, read back)", 2 * total, enabled=self.progress) as p:
            path, digest = write(
                media,
                site=site,
                seq=b.seq,
                bundle_id=b.bundle_id,
                items=items,
                signer=signer,
                progress=p.advance,
                verify_progress=p.advance,
            )
        with led.tx() as c:
            led.set_bundle(b.bundle_id, state="issued", digest=digest, cursor=c)
            for d in deps:
                led.set_deployment(
                    d.deployment_id,
                    site,
                    d.device,
                    state="travelling",
                    bundle_id=b.bundle_id,
                    cursor=c,
                )
                led.enqueue(
                    c,
                    site=site,
                    device=d.device,
                    deployment_id=d.deployment_id,
                    kind="status",
                    payload={"status": "installing"},
                    origin="pack",
                )
        return b.bundle_id, b.seq, str(path)


def _total_setter(p: Progress) -> Callable[[int], None]:
    def set_total(n: int) -> None:
        p.total_bytes = n

    return set_total


def json_artifact_name(next_request: bytes) -> str:
    """The artifact name the device reported in its first /next body."""
    return str(msgspec.json.decode(next_request).get("artifact_name", ""))


def pack(
    session: Session,
    site: Site,
    *,
    media: Path,
    signer: Signer,
    artifact_key: bytes | None = None,
    repack: bool = False,
    device: str | None = None,
    progress: bool | None = None,
    write: WriteBundle | None = None,
) -> PackReport:
    """Pack the site's pending deployments into one signed transfer bundle on `media`.

    Raises:
        GapferryError: the bundle could not be written or did not verify (device-level
            problems are reported per row instead).
    """
    devices = site.select(device)
    by_name = {d.name: d for d in devices}
    packer = _Packer(session, site, artifact_key=artifact_key, repack=repack, progress=progress)
    first = deliver_pending(session, site.name, by_name)
    with ThreadPoolExecutor(max_workers=session.concurrency) as pool:
        rows = list(pool.map(packer.device, devices))
    report = PackReport(site=site.name, rows=rows)
    # Only devices whose step succeeded in this run go into the bundle.
    ready = {r.device for r in rows if r.ok and r.action in ("downloaded", "ready", "travelling")}
    made = packer.bundle(
        media, signer=signer, devices=ready, write=write or bundle_io.write_and_verify
    )
    if made is not None:
        report.bundle_id, report.bundle_seq, report.bundle_path = made
        for r in rows:
            if r.action in ("downloaded", "ready") or (repack and r.action == "travelling"):
                r.action = "packed"
                r.detail = f"bundle #{made[1]}"
    last = deliver_pending(session, site.name, by_name)
    report.reports_sent = first.sent + last.sent
    report.reports_confirmed = first.confirmed + last.confirmed
    report.reports_failed = last.failed
    for c in first.conflicts + last.conflicts:
        name = c.split(":", 1)[0]
        for r in rows:
            if r.device == name:
                r.action = "aborted"
                r.detail = c
    return report
