"""Apply a transfer bundle: verify, check, install with bounded parallelism, write the result
(issue 6 steps 1-5; ADR 0050, 0051).

`apply_bundle` is the library entry point the CLI calls. Order:

1. find and open the transfer bundle (`open_bundle`: completion marker, signatures against the
   trust policy with its threshold, shape, clock and expiry); check the site; check the local
   record for replays (`AppliedRecord`). Any problem here rejects the bundle: nothing is
   installed, nothing is written (`BundleRejected`, exit 3);
2. before anything is sent: read every artifact once from the bundle (its sha256 re-checked, its
   Mender manifest checked, and its Mender signature verified with the site's key when one is
   configured) and check each device's type against the artifact; a device that fails here gets
   ``failure`` and is never contacted;
3. install on up to ``parallel`` devices at a time with the installer its method names;
4. and 5. collect each device's report, keep it in the record, and write the signed result bundle
   (with the receipt: the transfer bundle's id and manifest sha256) onto the medium.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gapferry.common.artifact.errors import ArtifactError, ArtifactIncompatible
from gapferry.common.artifact.reader import ArtifactInfo, read_artifact
from gapferry.common.bundle import (
    MEDIA_ROOT_DIR,
    OpenedBundle,
    Receipt,
    TransferDevice,
    default_actor,
    find_bundles,
    open_bundle,
    write_result_bundle,
)
from gapferry.common.bundle.layout import kind_of_dir_name
from gapferry.common.digest import sha256_stream
from gapferry.common.errors import GapferryError, InvalidData, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.signers import Signer
from gapferry.common.trust import TrustPolicy
from gapferry.isolated.devices import DevicesFile
from gapferry.isolated.installers.base import InstallJob, get_installer
from gapferry.isolated.record import AppliedRecord
from gapferry.isolated.report import DeviceLog, DeviceReport, now_utc

__all__ = [
    "ApplyResult",
    "BundleRejected",
    "EventSink",
    "PlannedDevice",
    "apply_bundle",
    "find_transfer_bundle",
]

#: ``(device name, kind, text)``: kind is a step status, a log level, or ``progress``.
EventSink = Callable[[str, str, str], None]

#: Bundle codes that mean the medium's bytes are not what was verified: reject the whole bundle.
_MEDIA_CODES = frozenset({"digest-mismatch", "size-mismatch", "truncated-file", "missing-file"})


class BundleRejected(InvalidData):
    """The transfer bundle was refused as a whole: nothing was installed (exit 3)."""

    code = "bundle-rejected"


@dataclass(frozen=True, kw_only=True)
class PlannedDevice:
    """What will happen (or happened) to one device, decided before any device is contacted."""

    name: str
    method: str | None
    artifact: str
    target: str
    #: ``install``, ``done`` (final report from an earlier run), ``refuse``, ``skip``.
    action: str
    note: str = ""


@dataclass(kw_only=True)
class ApplyResult:
    bundle: Path
    site: str
    sequence: int
    bundle_id: str
    resumed: bool
    dry_run: bool
    plan: list[PlannedDevice]
    reports: list[DeviceReport] = field(default_factory=list)
    result_path: Path | None = None
    state_path: Path | None = None
    #: What the bundle's verification found, for the technician: who packed it, when, until when
    #: it is valid, and how many distinct trusted signatures it carries (of how many needed).
    packer: str = ""
    created: datetime | None = None
    expires: datetime | None = None
    trusted_signatures: int = 0
    threshold: int = 0

    @property
    def exit_code(self) -> int:
        """0 when every selected device ended in success or already-installed, else 1."""
        if self.dry_run:
            return 0
        bad = [
            r
            for r in self.reports
            if r.outcome in ("failure", "skipped") and r.code != "not-selected"
        ]
        return 1 if bad else 0


def _reject(e: GapferryError) -> BundleRejected:
    err = BundleRejected(e.message, remedy=e.remedy)
    err.code = e.code
    return err


def find_transfer_bundle(media: Path, *, site: str | None) -> Path:
    """The transfer bundle folder to apply: `media` itself when it is one, else the one transfer
    bundle for `site` on the medium (the newest sequence when there are several).

    Raises:
        UsageProblem: ``no-bundle`` (none found), ``several-sites`` (no site given and bundles
            for several sites).
    """
    media = Path(media)
    if kind_of_dir_name(media.name) == "transfer":
        return media
    found = [p for p in find_bundles(media) if kind_of_dir_name(p.name) == "transfer"]
    if site is not None:
        found = [p for p in found if p.name.startswith(f"transfer-{site}-")]
    if not found:
        raise UsageProblem(
            f"no transfer bundle{' for site ' + site if site else ''} on {media}",
            remedy=f"pass the medium's root (with a {MEDIA_ROOT_DIR}/ folder) or a transfer-..."
            " bundle folder; check --site",
            code="no-bundle",
        )
    sites = {p.name.split("-")[1] for p in found}
    if len(sites) > 1:
        raise UsageProblem(
            f"{media} holds transfer bundles for several sites ({', '.join(sorted(sites))})",
            remedy="pass --site NAME, or the bundle folder itself",
            code="several-sites",
        )

    def seq(p: Path) -> int:
        parts = p.name.split("-")
        return int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0

    return max(found, key=seq)


def _media_root(bundle: Path) -> Path:
    parent = bundle.parent
    return parent.parent if parent.name == MEDIA_ROOT_DIR else parent


def _read_key(path: Path) -> bytes:
    try:
        return path.read_bytes()[: 1 << 20]
    except OSError as e:
        raise UsageProblem(
            f"cannot read the artifact verification key {path}: {e.strerror}",
            remedy="fix artifact_verify_key in the devices file",
            code="verify-key-missing",
        ) from e


def apply_bundle(
    media: Path,
    *,
    policy: TrustPolicy,
    devices: DevicesFile,
    record: AppliedRecord,
    signers: Sequence[Signer],
    now: datetime,
    limits: Limits,
    applier_name: str,
    site: str | None = None,
    only: Sequence[str] = (),
    dry_run: bool = False,
    on_event: EventSink | None = None,
) -> ApplyResult:
    """Apply the transfer bundle on `media` (see the module docstring).

    Raises:
        BundleRejected: the bundle failed verification, is for another site, or is a replay.
        UsageProblem: no bundle found, an unknown install method or device name in `only`, an
            unreadable verification key.
        EnvironmentFailure: the result bundle could not be written (reports stay in `record`;
            run again to write it).
    """
    site = site or devices.site
    path = find_transfer_bundle(media, site=site)
    try:
        opened = open_bundle(path, policy=policy, now=now, limits=limits, check_files=False)
        verified = opened.transfer
    except InvalidData as e:
        raise _reject(e) from e
    m = verified.manifest
    if site is not None and m.site != site:
        raise BundleRejected(
            f"the bundle is for site {m.site!r}, this applier serves {site!r}",
            remedy="use the bundle packed for this site, or check --site / site in the devices file",
            code="wrong-site",
        )
    names = {d.name for d in m.devices}
    unknown = sorted(set(only) - names)
    if unknown:
        raise UsageProblem(
            f"--only names devices that are not in the bundle: {', '.join(unknown)}",
            remedy=f"choose from: {', '.join(sorted(names))}",
            code="unknown-device",
        )
    for d in m.devices:
        t = devices.devices.get(d.name)
        if t is not None:
            get_installer(t.method)
    try:
        resumed = record.check(verified)
    except InvalidData as e:
        raise _reject(e) from e
    started = now_utc()
    result = ApplyResult(
        bundle=path,
        site=m.site,
        sequence=m.sequence,
        bundle_id=m.bundle_id,
        resumed=resumed,
        dry_run=dry_run,
        plan=[],
        state_path=record.path,
        packer=m.packer.name,
        created=m.created,
        expires=m.expires,
        trusted_signatures=verified.trust.distinct_trusted,
        threshold=verified.trust.threshold,
    )
    # Step 2: every artifact, once per verification key, before anything is sent.
    checked: dict[tuple[str, Path | None], ArtifactInfo | ArtifactError] = {}
    for d in m.devices:
        key_path = devices.verify_key_for(d.name)
        k = (d.artifact.sha256, key_path)
        if k in checked:
            continue
        key = _read_key(key_path) if key_path else None
        try:
            with opened.open_artifact(d.artifact.sha256) as stream:
                try:
                    # The stream checks the signed sha256 at its end: not hashed twice.
                    info = read_artifact(
                        stream, verify_key=key, limits=limits, known_sha256=d.artifact.sha256
                    )
                    sha256_stream(stream)  # to the end, where the stream checks its sha256
                    checked[k] = info
                except ArtifactError as e:
                    # Bytes changed on the medium, or a broken artifact packed as it was? Read
                    # to the end: the stream re-checks the sha256 the bundle signed.
                    sha256_stream(stream)
                    checked[k] = e
        except InvalidData as e:
            if e.code in _MEDIA_CODES:
                raise _reject(e) from e
            raise
    if not dry_run:
        # Recorded once the medium's artifacts proved readable and unchanged.
        record.admit(verified)
    jobs: list[tuple[TransferDevice, ArtifactInfo]] = []
    reports: dict[str, DeviceReport] = {}
    for d in m.devices:
        t = devices.devices.get(d.name)
        key_path = devices.verify_key_for(d.name)
        art = checked[(d.artifact.sha256, key_path)]
        where = (t.host or t.path or "") if t else ""
        plan = PlannedDevice(
            name=d.name,
            method=t.method if t else None,
            artifact=d.artifact.name,
            target=where,
            action="install",
        )
        log = DeviceLog(name=d.name, limits=limits, on_event=None if dry_run else on_event)

        def fin(
            outcome: str,
            reason: str,
            code: str,
            *,
            retry: bool,
            dev: TransferDevice = d,
            lg: DeviceLog = log,
        ) -> DeviceReport:
            return lg.finish(
                mender_device_id=dev.mender_device_id,
                deployment_id=dev.deployment.id,
                outcome=outcome,  # type: ignore[arg-type]
                reason=reason,
                code=code,
                retry=retry,
            )

        earlier = record.final_report(m.bundle_id, d.name) if resumed else None
        if only and d.name not in only:
            plan = _with(plan, "skip", "not selected (--only)")
            reports[d.name] = earlier or fin(
                "skipped", "not selected with --only", "not-selected", retry=True
            )
        elif earlier is not None:
            plan = _with(plan, "done", f"{earlier.outcome} in an earlier run; not touched again")
            reports[d.name] = earlier
        elif t is None:
            plan = _with(plan, "skip", "no entry in the devices file")
            reports[d.name] = fin(
                "skipped",
                "the device has no entry in the devices file; add it, then run the same bundle again",
                "no-target",
                retry=True,
            )
        elif isinstance(art, ArtifactError):
            plan = _with(plan, "refuse", art.message)
            reports[d.name] = fin(
                "failure", f"refused before sending anything: {art.message}", art.code, retry=False
            )
        else:
            problem = _laptop_compat(art, d, t.method)
            if problem is not None:
                plan = _with(plan, "refuse", problem)
                reports[d.name] = fin(
                    "failure",
                    f"refused before sending anything: {problem}",
                    "incompatible",
                    retry=False,
                )
            else:
                jobs.append((d, art))
                if record.was_started(m.bundle_id, d.name):
                    plan = _with(plan, "install", "resuming: the device is checked first")
        result.plan.append(plan)
    if dry_run:
        return result
    for r in reports.values():
        if r.code != "not-selected":
            record.save(m.bundle_id, r)
    reports.update(
        _run_jobs(
            jobs, opened=opened, devices=devices, record=record, limits=limits, on_event=on_event
        )
    )
    result.reports = [reports[d.name] for d in m.devices]
    finished = now_utc()
    result.result_path = write_result_bundle(
        _media_root(path),
        site=m.site,
        sequence=m.sequence,
        receipt=Receipt(
            transfer_bundle_id=m.bundle_id, transfer_manifest_sha256=verified.manifest_sha256
        ),
        applier=default_actor(applier_name),
        started=started,
        finished=finished,
        devices=[r.to_plan() for r in result.reports],
        signers=signers,
        created=max(finished, now_utc()),
        limits=limits,
    )
    return result


def _with(plan: PlannedDevice, action: str, note: str) -> PlannedDevice:
    return PlannedDevice(
        name=plan.name,
        method=plan.method,
        artifact=plan.artifact,
        target=plan.target,
        action=action,
        note=note,
    )


def _laptop_compat(info: ArtifactInfo, device: TransferDevice, method: str) -> str | None:
    """The checks the laptop can make from the manifest alone. The device type is stable; the
    rest of artifact_depends is checked against the device's own values by the installer (for
    ``file`` devices, which have no client, the manifest's current artifact name is all there is).
    """
    if device.device_type not in info.device_types:
        return (
            f"the artifact is for device types [{' '.join(info.device_types)}], the device is"
            f" {device.device_type!r}"
        )
    if method == "file":
        try:
            from gapferry.common.artifact.compat import check_compatible  # noqa: PLC0415

            check_compatible(
                info,
                device_type=device.device_type,
                artifact_name=device.current_artifact_name,
                provides={},
            )
        except ArtifactIncompatible as e:
            return e.message
    return None


def _run_jobs(
    jobs: list[tuple[TransferDevice, ArtifactInfo]],
    *,
    opened: OpenedBundle,
    devices: DevicesFile,
    record: AppliedRecord,
    limits: Limits,
    on_event: EventSink | None,
) -> dict[str, DeviceReport]:
    bundle_id = opened.transfer.manifest.bundle_id
    tmp = Path(tempfile.mkdtemp(prefix="gapferry-apply-"))
    try:

        def one(index: int, device: TransferDevice, info: ArtifactInfo) -> DeviceReport:
            target = devices.devices[device.name]
            log = DeviceLog(name=device.name, limits=limits, on_event=on_event)
            workdir = tmp / f"device-{index:04d}"
            workdir.mkdir(mode=0o700)
            key_path = devices.verify_key_for(device.name)
            job = InstallJob(
                device=device,
                target=target,
                artifact=info,
                open_artifact=lambda: opened.open_artifact(info.sha256),
                verify_key=_read_key(key_path) if key_path else None,
                limits=limits,
                workdir=workdir,
                log=log,
                mark_started=lambda: record.mark_started(bundle_id, device.name),
                interrupted_before=record.was_started(bundle_id, device.name),
            )
            try:
                report = get_installer(target.method).install(job)
            except GapferryError as e:
                # An installer should report, not raise; if one raises, nothing is claimed.
                started = record.was_started(bundle_id, device.name)
                note = (
                    " The install had started: the device's state is not known; running the"
                    " same bundle again looks before it installs."
                    if started
                    else ""
                )
                report = log.finish(
                    mender_device_id=device.mender_device_id,
                    deployment_id=device.deployment.id,
                    outcome="skipped",
                    reason=f"{e.message}. {e.remedy}.{note}",
                    code=e.code,
                    retry=True,
                )
            record.save(bundle_id, report)
            return report

        out: dict[str, DeviceReport] = {}
        with ThreadPoolExecutor(max_workers=max(1, devices.parallel)) as pool:
            futures = [pool.submit(one, i, d, info) for i, (d, info) in enumerate(jobs)]
            for f in futures:
                r = f.result()
                out[r.name] = r
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
