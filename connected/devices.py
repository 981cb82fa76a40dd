"""Device lifecycle for a site: key generation, preauthorization, authentication, status, cleanup.

Seeds phases 1, 2, 3 and 7, for one device or a whole site. Every step is idempotent: an existing
key is kept, preauthorization uses ``force: true`` (an upsert), a removed auth set counts as
removed. Each function returns one result row per device for the summary table and ``--json``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from gapferry.common.errors import GapferryError, UsageProblem
from gapferry.connected.keystore import KeyAlgorithm
from gapferry.connected.ledger import TRAVELLING
from gapferry.connected.mender.management import DeviceRecord
from gapferry.connected.session import Session
from gapferry.connected.site import Mode, Site, SiteDevice

__all__ = [
    "DeviceResult",
    "authenticate",
    "cleanup",
    "device_status",
    "ensure_ready",
    "keygen",
    "preauthorize",
]


class DeviceResult(msgspec.Struct, kw_only=True):
    device: str
    action: str
    ok: bool = True
    detail: str = ""
    device_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


#: Usage problems of the whole command (configuration), not of one device: raised, not a row.
_COMMAND_PROBLEMS = ("no-server-url", "no-api-token")


def _failed_row(dev: SiteDevice, action: str, e: GapferryError) -> DeviceResult:
    """A device's failure as its row (message and remedy), or the command's when it is the
    configuration's (e.g. MENDER_SERVER_URL unset: exit 2 once, not one row per device).

    Raises:
        UsageProblem: ``no-server-url``, ``no-api-token``.
    """
    if isinstance(e, UsageProblem) and e.code in _COMMAND_PROBLEMS:
        raise e
    detail = f"{e.message}; what to do: {e.remedy}" if e.remedy else e.message
    return DeviceResult(device=dev.name, action=action, ok=False, detail=detail)


def _each(
    devices: list[SiteDevice], action: str, step: Callable[[SiteDevice], DeviceResult]
) -> list[DeviceResult]:
    """Run `step` per device; a device's failure is its row, the others go on."""
    out = []
    for dev in devices:
        try:
            out.append(step(dev))
        except GapferryError as e:
            out.append(_failed_row(dev, action, e))
    return out


def _register(session: Session, site: Site, dev: SiteDevice) -> None:
    session.ledger.upsert_device(
        site=site.name, name=dev.name, identity=dict(dev.identity), device_type=dev.device_type
    )


def keygen(
    session: Session,
    site: Site,
    devices: list[SiteDevice],
    *,
    algorithm: KeyAlgorithm = KeyAlgorithm.RSA3072,
    passphrase: bytes | None = None,
) -> list[DeviceResult]:
    """Phase 1: a key pair per device (kept if it exists)."""
    out = []
    ks = session.keystore(site.name)
    for dev in devices:
        _register(session, site, dev)
        existed = ks.exists(dev.name)
        ks.generate(dev.name, algorithm=algorithm, passphrase=passphrase)
        row = session.ledger.device(site.name, dev.name)
        if row is not None and row.auth_state in ("none", "cleaned"):
            session.ledger.set_device(site.name, dev.name, auth_state="keys")
        out.append(
            DeviceResult(
                device=dev.name, action="keygen", detail="kept" if existed else "generated"
            )
        )
    return out


def _preauth_one(session: Session, site: Site, dev: SiteDevice) -> DeviceResult:
    _register(session, site, dev)
    pub = session.keystore(site.name).public_pem(dev.name)
    device_id = session.management.preauthorize(identity=dict(dev.identity), pubkey_pem=pub)
    fields: dict[str, Any] = {"auth_state": "preauthorized"}
    if device_id:
        fields["device_id"] = device_id
    session.ledger.set_device(site.name, dev.name, **fields)
    return DeviceResult(
        device=dev.name, action="preauth", detail="preauthorized", device_id=device_id
    )


def preauthorize(session: Session, site: Site, devices: list[SiteDevice]) -> list[DeviceResult]:
    """Phase 2: register (identity, public key) as preauthorized, with ``force: true``."""
    return _each(devices, "preauth", lambda dev: _preauth_one(session, site, dev))


def authenticate(session: Session, site: Site, devices: list[SiteDevice]) -> list[DeviceResult]:
    """Phase 3: a signed auth request per device; the JWT is cached beside an unencrypted key
    for later commands (ADR 0045), never in the ledger."""

    def step(dev: SiteDevice) -> DeviceResult:
        _register(session, site, dev)
        api = session.device_api(site.name, dev)
        api.token(force=True)
        session.ledger.set_device(
            site.name, dev.name, auth_state="accepted", device_id=api.device_id
        )
        return DeviceResult(
            device=dev.name, action="auth", detail="accepted", device_id=api.device_id
        )

    return _each(devices, "auth", step)


def ensure_ready(session: Session, site: Site, dev: SiteDevice) -> None:
    """Whatever phases 1-3 still lack for this device, then a valid JWT.

    Rotating mode creates keys and preauthorizes as needed (a visit starts from nothing); static
    mode does so too on first use, then keeps them.
    """
    _register(session, site, dev)
    row = session.ledger.device(site.name, dev.name)
    ks = session.keystore(site.name)
    if not ks.exists(dev.name):
        if site.mode is Mode.STATIC and row is not None and row.auth_state == "accepted":
            raise UsageProblem(
                f"device {dev.name!r} was authorized with a key that is no longer in {ks.root}",
                remedy="restore the key from backup, or run `gapferry device keygen` and "
                "`gapferry device preauth` for a new identity key",
                code="key-lost",
            )
        keygen(session, site, [dev])
        row = session.ledger.device(site.name, dev.name)
    if (row is None or row.auth_state in ("none", "keys", "cleaned")) and session.has_management:
        _preauth_one(session, site, dev)
    api = session.device_api(site.name, dev)
    api.token()
    if row is None or row.auth_state != "accepted" or row.device_id != api.device_id:
        session.ledger.set_device(
            site.name, dev.name, auth_state="accepted", device_id=api.device_id
        )


def _server_record(session: Session, site: Site, dev: SiteDevice) -> DeviceRecord | None:
    row = session.ledger.device(site.name, dev.name)
    mgmt = session.management
    if row is not None and row.device_id:
        rec = mgmt.get_device(row.device_id)
        if rec is not None:
            return rec
    return mgmt.find_device(dict(dev.identity))


def _same_key(a: str, b: str) -> bool:
    try:
        ka = serialization.load_pem_public_key(a.encode())
        kb = serialization.load_pem_public_key(b.encode())
    except ValueError:
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ka.public_bytes(*fmt) == kb.public_bytes(*fmt)


def device_status(session: Session, site: Site, devices: list[SiteDevice]) -> list[DeviceResult]:
    """The ledger's view beside the server's: auth state, device status, our auth set."""
    out = []
    ks = session.keystore(site.name)
    for dev in devices:
        row = session.ledger.device(site.name, dev.name)
        local = row.auth_state if row else "unknown"
        server = "-"
        device_id = row.device_id if row else None
        if session.has_management:
            rec = _server_record(session, site, dev)
            if rec is None:
                server = "not on server"
            else:
                device_id = rec.id
                ours = "-"
                if ks.exists(dev.name):
                    pub = ks.public_pem(dev.name)
                    for s in rec.auth_sets or []:
                        if _same_key(s.pubkey, pub):
                            ours = s.status
                server = f"device {rec.status}, our key {ours}"
        out.append(
            DeviceResult(
                device=dev.name,
                action="status",
                detail=f"ledger: {local}; server: {server}; key: "
                + ("present" if ks.exists(dev.name) else "absent"),
                device_id=device_id,
            )
        )
    return out


def cleanup(
    session: Session,
    site: Site,
    devices: list[SiteDevice],
    *,
    decommission: bool = False,
    force: bool = False,
) -> list[DeviceResult]:
    """Phase 7: remove the auth set (or decommission); rotating mode also deletes local keys.

    Refuses a device whose deployment is still travelling (its result could then not be
    reported) unless `force`.
    """
    mgmt = session.management
    ks = session.keystore(site.name)
    out = []
    for dev in devices:
        active = session.ledger.active_deployment(site.name, dev.name)
        if active is not None and active.state in TRAVELLING and not force:
            out.append(
                DeviceResult(
                    device=dev.name,
                    action="cleanup",
                    ok=False,
                    detail=f"deployment {active.deployment_id} still travelling; ingest its "
                    "result first (or --force)",
                )
            )
            continue
        try:
            rec = _server_record(session, site, dev)
            detail = "not on server"
            if rec is not None and decommission:
                mgmt.decommission(rec.id)
                detail = "decommissioned"
            elif rec is not None:
                removed = 0
                pub = ks.public_pem(dev.name) if ks.exists(dev.name) else None
                for s in rec.auth_sets or []:
                    if pub is not None and _same_key(s.pubkey, pub):
                        removed += mgmt.delete_auth_set(rec.id, s.id)
                detail = f"removed {removed} auth set(s)"
        except GapferryError as e:
            out.append(_failed_row(dev, "cleanup", e))
            continue
        if (site.mode is Mode.ROTATING or decommission) and ks.remove(dev.name):
            detail += ", deleted local key"
        session.forget_device(site.name, dev.name)
        if session.ledger.device(site.name, dev.name) is not None:
            session.ledger.set_device(
                site.name,
                dev.name,
                auth_state="cleaned" if not ks.exists(dev.name) else "keys",
            )
        out.append(
            DeviceResult(
                device=dev.name,
                action="cleanup",
                detail=detail,
                device_id=rec.id if rec is not None else None,
            )
        )
    return out
