"""Everything one connected-side command needs: server connection, ledger, keystore (issue 5).

Configuration comes from the environment as in the seeds (``MENDER_SERVER_URL``,
``MENDER_API_TOKEN``, ``MENDER_TENANT_TOKEN``) plus ``GAPFERRY_STATE`` (the folder holding the
ledger and device keys; default ``~/.local/share/gapferry``), ``GAPFERRY_CA_BUNDLE`` and
``GAPFERRY_KEY_PASSPHRASE``. Device tokens are held in memory and, beside an unencrypted device
key, cached in ``<state>/keys/<site>/<device>.jwt`` (0600) for the next command, bound to the
server URL, identity, public key and tenant token (ADR 0045); never in the ledger, never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from gapferry.common.errors import UsageProblem
from gapferry.connected.keystore import Keystore, PassphraseSource
from gapferry.connected.ledger import Ledger
from gapferry.connected.mender.device import DeviceApi, identity_json
from gapferry.connected.mender.http import MenderHttp, RetryPolicy
from gapferry.connected.mender.management import ManagementApi
from gapferry.connected.site import SiteDevice

__all__ = ["Session", "default_state_dir", "passphrase_from_env", "token_binding"]


def default_state_dir() -> Path:
    env = os.environ.get("GAPFERRY_STATE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gapferry"


def passphrase_from_env(_name: str) -> bytes | None:
    """Device key passphrase from ``GAPFERRY_KEY_PASSPHRASE`` (never from argv)."""
    value = os.environ.get("GAPFERRY_KEY_PASSPHRASE")
    return value.encode() if value else None


def token_binding(
    *, server_url: str, identity: dict[str, str], public_pem: str, tenant_token: str | None
) -> str:
    """What a cached device token was issued for (ADR 0045): a SHA-256 over the server URL, the
    identity, the public key and the tenant token's digest. A token is reused only when all match,
    so it is never sent to another server nor used for another identity or key."""
    tenant = hashlib.sha256((tenant_token or "").encode()).hexdigest()
    doc = {
        "server": server_url.rstrip("/"),
        "identity": identity_json(identity),
        "pubkey": public_pem,
        "tenant": tenant,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class Session:
    """A connected-side working context. Close it (or use ``with``) to release the connection."""

    def __init__(
        self,
        *,
        state_dir: Path,
        server_url: str | None = None,
        api_token: str | None = None,
        tenant_token: str | None = None,
        ca_bundle: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        passphrase: PassphraseSource | None = passphrase_from_env,
        allowed_download_hosts: frozenset[str] = frozenset(),
        command: str = "",
    ) -> None:
        self.state_dir = state_dir
        self.ledger = Ledger(state_dir / "ledger.sqlite", command=command)
        self.artifact_dir = state_dir / "artifacts"
        self.clock = clock
        self.passphrase = passphrase
        self.tenant_token = tenant_token
        self.allowed_download_hosts = allowed_download_hosts
        self.concurrency = max(1, concurrency)
        self._server_url = server_url
        self._http: MenderHttp | None = None
        self._transport = transport
        self._ca_bundle = ca_bundle
        self._retry = retry
        self._api_token = api_token
        self._devices: dict[tuple[str, str], DeviceApi] = {}
        #: Device tokens obtained in this session, cached beside their keys at `close`.
        self._new_tokens: dict[tuple[str, str], tuple[str, str]] = {}
        #: Guards the lazily made connection and the device API cache (workers share them).
        self._lock = threading.RLock()

    def keystore(self, site: str) -> Keystore:
        """The device keys of one site (``<state>/keys/<site>/``)."""
        return Keystore(self.state_dir / "keys" / site)

    @classmethod
    def from_env(cls, *, state_dir: Path | None = None, **kw: object) -> Session:
        ca = os.environ.get("GAPFERRY_CA_BUNDLE")
        return cls(
            state_dir=state_dir or default_state_dir(),
            server_url=os.environ.get("MENDER_SERVER_URL") or None,
            api_token=os.environ.get("MENDER_API_TOKEN") or None,
            tenant_token=os.environ.get("MENDER_TENANT_TOKEN") or None,
            ca_bundle=Path(ca) if ca else None,
            **kw,  # type: ignore[arg-type]
        )

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            fresh, self._new_tokens = self._new_tokens, {}
        for (site, name), (token, binding) in fresh.items():
            with contextlib.suppress(OSError):  # a cache: a token not kept only costs an auth
                self.keystore(site).save_token(name, token, binding=binding)
        if self._http is not None:
            self._http.close()
        self.ledger.close()

    @property
    def http(self) -> MenderHttp:
        with self._lock:
            return self._connect()

    def _connect(self) -> MenderHttp:
        if self._http is None:
            if not self._server_url:
                raise UsageProblem(
                    "MENDER_SERVER_URL is not set",
                    remedy="export MENDER_SERVER_URL=https://hosted.mender.io (or your server)",
                    code="no-server-url",
                )
            self._http = MenderHttp(
                self._server_url,
                transport=self._transport,
                ca_bundle=self._ca_bundle,
                concurrency=self.concurrency,
                retry=self._retry,
                journal=self.ledger.journal,
            )
        return self._http

    @property
    def has_management(self) -> bool:
        return bool(self._api_token)

    @property
    def management(self) -> ManagementApi:
        if not self._api_token:
            raise UsageProblem(
                "MENDER_API_TOKEN is not set",
                remedy="create a personal access token in the Mender UI and export MENDER_API_TOKEN",
                code="no-api-token",
            )
        return ManagementApi(self.http, token=self._api_token)

    def device_api(self, site: str, device: SiteDevice) -> DeviceApi:
        """The device API for one device: its JWT from the state folder when one was cached for
        this server, identity and key (ADR 0045), else obtained (and cached) on first use. The
        private key is loaded only when a token must be obtained.

        Raises:
            UsageProblem: the device has no key in the keystore.
        """
        key = (site, device.name)
        with self._lock:
            api = self._devices.get(key)
        if api is not None:
            return api
        ks = self.keystore(site)
        name = device.name
        if not ks.exists(name):
            ks.load(name, passphrase=self.passphrase)  # raises the "no key" problem
        try:
            pub: str | None = ks.public_pem(name)
        except UsageProblem:
            pub = None  # no .pub beside the key: no cache, the key alone still works
        cached: str | None = None
        save: Callable[[str], None] | None = None
        if pub is not None:
            binding = token_binding(
                server_url=self.http.server_url,
                identity=dict(device.identity),
                public_pem=pub,
                tenant_token=self.tenant_token,
            )
            cached = ks.load_token(name, binding=binding)

            def save(token: str) -> None:
                # Written when the session closes, one after another: worker threads do no
                # file creation per device (ADR 0045). A crash before that only loses the cache.
                with self._lock:
                    self._new_tokens[key] = (token, binding)

        with self._lock:
            return self._devices.setdefault(
                key,
                DeviceApi(
                    self.http,
                    identity=dict(device.identity),
                    key=lambda: ks.load(name, passphrase=self.passphrase),
                    name=name,
                    tenant_token=self.tenant_token,
                    clock=self.clock,
                    allowed_download_hosts=self.allowed_download_hosts,
                    token=cached,
                    on_token=save,
                ),
            )

    def forget_device(self, site: str, name: str) -> None:
        """Drop the device's API object and its cached token (cleanup, ADR 0045)."""
        with self._lock:
            self._devices.pop((site, name), None)
            self._new_tokens.pop((site, name), None)
        self.keystore(site).remove_token(name)
