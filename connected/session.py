"""Everything one connected-side command needs: server connection, ledger, keystore (issue 5).

Configuration comes from the environment as in the seeds (``MENDER_SERVER_URL``,
``MENDER_API_TOKEN``, ``MENDER_TENANT_TOKEN``) plus ``GAPFERRY_STATE`` (the folder holding the
ledger and device keys; default ``~/.local/share/gapferry``), ``GAPFERRY_CA_BUNDLE`` and
``GAPFERRY_KEY_PASSPHRASE``. Tokens are held in memory only: never in the ledger, never logged.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from gapferry.common.errors import UsageProblem
from gapferry.connected.keystore import Keystore, PassphraseSource
from gapferry.connected.ledger import Ledger
from gapferry.connected.mender.device import DeviceApi
from gapferry.connected.mender.http import MenderHttp, RetryPolicy
from gapferry.connected.mender.management import ManagementApi
from gapferry.connected.site import SiteDevice

__all__ = ["Session", "default_state_dir", "passphrase_from_env"]


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
        """The device API for one device (key loaded once, JWT cached for the session)."""
        key = (site, device.name)
        with self._lock:
            api = self._devices.get(key)
        if api is not None:
            return api
        # Loading (and maybe decrypting) the key outside the lock: other devices go on meanwhile.
        private = self.keystore(site).load(device.name, passphrase=self.passphrase)
        with self._lock:
            return self._devices.setdefault(
                key,
                DeviceApi(
                    self.http,
                    identity=dict(device.identity),
                    key=private,
                    tenant_token=self.tenant_token,
                    clock=self.clock,
                    allowed_download_hosts=self.allowed_download_hosts,
                ),
            )

    def forget_device(self, site: str, name: str) -> None:
        with self._lock:
            self._devices.pop((site, name), None)
