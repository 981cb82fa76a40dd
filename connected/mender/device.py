"""The Mender device API, spoken on behalf of one air-gapped device (seeds phases 3, 4 and 6).

- Authentication (shared/mender/server-behaviour.md section 1): the body is
  ``{"id_data": "<JSON of the identity object>", "pubkey": PEM, "tenant_token": ...}`` serialised
  once; exactly those bytes are signed (`DeviceKey.sign`) and sent, with the standard-base64
  signature in ``X-MEN-Signature``. The answer is the raw JWT (``application/jwt``), not JSON.
- The JWT is cached with its ``exp`` and renewed `renew_margin` seconds before it expires, and once
  when the server answers 401 (an expired token gets a bare 401, section 0 "DA token verify").
  A token from an earlier command may be passed in (`token`); each new one goes to `on_token`
  (the session persists it beside the key, ADR 0045). The private key is loaded only when a
  token must be obtained (`key` may be a loader).
- ``/next`` (section 3) is POSTed with bytes the caller keeps: repeating it with different data
  fails the deployment, so the ledger stores the first body and `next_deployment` re-sends exactly
  those bytes.
- Download links are refused when they point to another host than the server unless that host is
  allowed, and the length must match what was announced.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from gapferry.common.digest import CopyResult, copy_hashed
from gapferry.common.errors import InvalidData
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.connected.keystore import DeviceKey
from gapferry.connected.mender.errors import (
    ArtifactMismatch,
    MenderAuthRejected,
    MenderError,
    MenderLinkRefused,
    MenderUnavailable,
)
from gapferry.connected.mender.http import REQUEST_ID_HEADER, MenderHttp, error_for

__all__ = [
    "ArtifactSource",
    "DeviceApi",
    "LinkExpired",
    "NextArtifact",
    "NextInstructions",
    "encode_next_request",
    "identity_json",
]

AUTH_PATH = "/api/devices/v1/authentication/auth_requests"
INVENTORY_PATH = "/api/devices/v1/inventory/device/attributes"
DEPLOYMENTS = "/api/devices/v1/deployments/device/deployments"


class LinkExpired(MenderError):
    """The presigned download link has expired (or the storage refused it); re-poll /next."""

    code = "link-expired"


class ArtifactSource(msgspec.Struct, frozen=True, kw_only=True):
    uri: str
    expire: str | None = None
    method: str | None = None


class NextArtifact(msgspec.Struct, frozen=True, kw_only=True):
    id: str | None = None
    artifact_name: str
    source: ArtifactSource
    device_types_compatible: list[str] = []


class NextInstructions(msgspec.Struct, frozen=True, kw_only=True):
    """The 200 answer of /next (section 3). Unknown fields are ignored: the server may add some."""

    id: str
    artifact: NextArtifact


def identity_json(identity: dict[str, str]) -> str:
    """The ``id_data`` string: the identity object as compact JSON with sorted keys."""
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


def encode_next_request(
    *, device_type: str, artifact_name: str, provides: dict[str, str] | None = None
) -> bytes:
    """The /next body, as bytes to be stored and re-sent verbatim."""
    body: dict[str, Any] = {"artifact_name": artifact_name, "device_type": device_type}
    if provides:
        body["artifact_provides"] = dict(sorted(provides.items()))
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _jwt_claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError) as e:
        raise InvalidData(
            "the server's auth answer is not a JWT",
            remedy="check MENDER_SERVER_URL points at a Mender Server",
            code="bad-device-token",
        ) from e
    if not isinstance(claims, dict):
        raise InvalidData(
            "the server's device token has no claims object",
            remedy="check MENDER_SERVER_URL points at a Mender Server",
            code="bad-device-token",
        )
    return claims


class _StreamReader:
    """Adapts an httpx byte iterator to `readinto` for `copy_hashed`."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readinto(self, buffer: memoryview, /) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class DeviceApi:
    """Device API calls for one device. Thread-safe token handling."""

    def __init__(
        self,
        http: MenderHttp,
        *,
        identity: dict[str, str],
        key: DeviceKey | Callable[[], DeviceKey],
        name: str | None = None,
        tenant_token: str | None = None,
        clock: Callable[[], float] = time.time,
        renew_margin: float = 300.0,
        allowed_download_hosts: frozenset[str] = frozenset(),
        token: str | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        self.http = http
        self.identity = identity
        self._key: DeviceKey | None = None
        self._load_key: Callable[[], DeviceKey]
        if isinstance(key, DeviceKey):
            self._key, self._load_key, self.name = key, lambda: key, key.name
        elif name is None:
            raise TypeError("a key loader needs the device name")
        else:
            self._load_key, self.name = key, name
        self._on_token = on_token
        self.tenant_token = tenant_token or ""
        self.clock = clock
        self.renew_margin = renew_margin
        self.allowed_download_hosts = allowed_download_hosts
        self._lock = threading.Lock()
        self._token: str | None = None
        self._exp: float = 0.0
        self.device_id: str | None = None
        if token:
            try:
                self._adopt(token)
            except InvalidData:
                self._token = None  # a damaged cached token is not used: authenticate instead

    def __repr__(self) -> str:
        return f"DeviceApi(device={self.name!r})"

    @property
    def key(self) -> DeviceKey:
        """The device's private key, loaded on first use.

        Raises:
            GapferryError: whatever the loader raises (missing key, wrong passphrase).
        """
        if self._key is None:
            self._key = self._load_key()
        return self._key

    def _adopt(self, token: str) -> None:
        claims = _jwt_claims(token)
        exp = claims.get("exp")
        self._exp = float(exp) if isinstance(exp, int | float) else self.clock() + 3600
        sub = claims.get("sub")
        self.device_id = sub if isinstance(sub, str) else None
        self._token = token

    @property
    def token_expiry(self) -> float:
        return self._exp

    def auth_body(self) -> bytes:
        body = {
            "id_data": identity_json(self.identity),
            "pubkey": self.key.public_pem,
            "tenant_token": self.tenant_token,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def authenticate(self) -> str:
        """Obtain a fresh device JWT (phase 3) and cache it.

        Raises:
            MenderAuthRejected: the server does not (yet) accept this identity and key.
            MenderError: any other answer.
        """
        body = self.auth_body()
        sig = base64.b64encode(self.key.sign(body)).decode()
        resp = self.http.request(
            "POST",
            AUTH_PATH,
            idempotent=True,
            headers={"Content-Type": "application/json", "X-MEN-Signature": sig},
            content=body,
            what=f"authenticate device {self.name}",
        )
        if resp.status_code == 401:
            err = error_for(resp, what=f"authenticate device {self.name}")
            raise MenderAuthRejected(
                err.message,
                remedy="preauthorize the device (`gapferry device preauth`) or accept it in the UI",
                status=401,
                server_error=err.server_error,
                request_id=err.request_id,
                method="POST",
                path=AUTH_PATH,
            )
        if resp.status_code != 200:
            raise error_for(resp, what=f"authenticate device {self.name}")
        token = resp.text.strip()
        self._adopt(token)
        if self._on_token is not None:
            self._on_token(token)
        return token

    def token(self, *, force: bool = False) -> str:
        """The cached JWT, renewed if it expires within `renew_margin` seconds."""
        with self._lock:
            if force or self._token is None or self._exp - self.clock() < self.renew_margin:
                return self.authenticate()
            return self._token

    def _call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        what: str,
        json_body: Any = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        stale = self.token()
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {stale}"}
            if content is not None:
                headers["Content-Type"] = "application/json"
            resp = self.http.request(
                method,
                path,
                idempotent=idempotent,
                headers=headers,
                json_body=json_body,
                content=content,
                what=what,
            )
            if resp.status_code != 401 or attempt == 1:
                return resp
            with self._lock:
                # Another thread may have renewed already.
                stale = self.authenticate() if self._token == stale else (self._token or "")
        raise AssertionError("unreachable")  # pragma: no cover

    def put_inventory(self, attributes: list[dict[str, Any]], *, replace: bool = False) -> None:
        """Report inventory (phase 4): PATCH upserts; PUT (replace) drops other attributes."""
        what = f"report inventory of {self.name}"
        resp = self._call(
            "PUT" if replace else "PATCH",
            INVENTORY_PATH,
            idempotent=True,
            json_body=attributes,
            what=what,
        )
        if resp.status_code != 200:
            raise error_for(resp, what=what)

    def next_deployment(self, body: bytes) -> NextInstructions | None:
        """POST /next with exactly `body`; None when nothing is pending (204).

        Raises:
            MenderConflict: 409, the body differs from the first poll of an active deployment
                (the server has now failed that deployment for this device).
        """
        what = f"poll /next for {self.name}"
        resp = self._call("POST", f"{DEPLOYMENTS}/next", idempotent=True, content=body, what=what)
        if resp.status_code == 204:
            return None
        if resp.status_code == 409:
            raise error_for(
                resp,
                what=what,
                remedy="the server failed this deployment for the device; create a new deployment",
            )
        if resp.status_code != 200:
            raise error_for(resp, what=what)
        try:
            return msgspec.json.decode(resp.content, type=NextInstructions)
        except msgspec.DecodeError as e:
            raise InvalidData(
                f"{what}: unexpected answer: {e}",
                remedy="check the server version (Mender Server 4.x expected)",
                code="bad-next-answer",
            ) from e

    def put_status(self, deployment_id: str, status: str, *, substate: str | None = None) -> None:
        """Report a deployment status (phase 6); the server treats a repeat as a no-op.

        Raises:
            MenderConflict: 409, the deployment was aborted or the device decommissioned.
        """
        body: dict[str, str] = {"status": status}
        if substate:
            body["substate"] = substate[:200]
        what = f"report {status!r} for {self.name} in deployment {deployment_id}"
        resp = self._call(
            "PUT",
            f"{DEPLOYMENTS}/{deployment_id}/status",
            idempotent=True,
            json_body=body,
            what=what,
        )
        if resp.status_code != 204:
            raise error_for(resp, what=what)

    def put_log(self, deployment_id: str, messages: list[dict[str, str]]) -> None:
        """Upload the deployment log (replaces an earlier one, so repeating is safe)."""
        what = f"upload the log of {self.name} for deployment {deployment_id}"
        resp = self._call(
            "PUT",
            f"{DEPLOYMENTS}/{deployment_id}/log",
            idempotent=True,
            json_body={"messages": messages},
            what=what,
        )
        if resp.status_code != 204:
            raise error_for(resp, what=what)

    def check_link(self, source: ArtifactSource) -> None:
        """Refuse links to other hosts and links already expired by the server's own stamp."""
        parts = urlsplit(source.uri)
        if parts.scheme not in ("https", "http"):
            raise MenderLinkRefused(
                f"download link scheme {parts.scheme!r} is not http(s)",
                remedy="check the server's storage configuration",
            )
        if parts.netloc != self.http.netloc and parts.netloc not in self.allowed_download_hosts:
            raise MenderLinkRefused(
                f"download link points to {parts.netloc!r}, not the Mender Server {self.http.netloc!r}",
                remedy=f"if that storage host is yours, allow it with --allow-download-host {parts.hostname}",
            )
        if source.expire:
            try:
                when = datetime.fromisoformat(source.expire.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return
            if when <= self.clock():
                raise LinkExpired(
                    f"download link expired at {source.expire}",
                    remedy="poll /next again for a fresh link (gapferry does this itself)",
                )

    def download(
        self,
        source: ArtifactSource,
        dest: Path,
        *,
        expected_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        on_length: Callable[[int], None] | None = None,
        max_bytes: int = DEFAULT_LIMITS.artifact_bytes,
    ) -> CopyResult:
        """Fetch an artifact from a presigned link into `dest`, crash-safely, never more than
        `max_bytes` (a download whose size nobody announced is still bounded).

        Raises:
            LinkExpired: the storage refused the link (403/410) or it was past its expiry.
            MenderLinkRefused: another host than allowed.
            ArtifactMismatch: the length differs from what was announced.
            MenderUnavailable: connection errors or 5xx after the retries.
        """
        self.check_link(source)
        http = self.http
        path = urlsplit(source.uri).path
        attempt = 0
        while True:
            try:
                with http.slots, http.client.stream("GET", source.uri) as resp:
                    rid = resp.headers.get(REQUEST_ID_HEADER)
                    if http.journal is not None:
                        http.journal(
                            method="GET",
                            path=path,
                            status=resp.status_code,
                            request_id=rid,
                            note="artifact download",
                        )
                    if resp.status_code in (401, 403, 410):
                        raise LinkExpired(
                            f"download link refused with HTTP {resp.status_code} (expired?)",
                            remedy="poll /next again for a fresh link (gapferry does this itself)",
                            status=resp.status_code,
                            request_id=rid,
                            method="GET",
                            path=path,
                        )
                    if resp.status_code >= 500 or resp.status_code == 429:
                        resp.read()
                        raise error_for(resp, what="download artifact")
                    if resp.status_code != 200:
                        resp.read()
                        raise error_for(resp, what="download artifact")
                    announced = resp.headers.get("Content-Length")
                    size = expected_size
                    if announced is not None and announced.isdigit():
                        if size is not None and int(announced) != size:
                            raise ArtifactMismatch(
                                f"artifact download announces {announced} bytes, the server's "
                                f"artifact record says {size}",
                                remedy="the storage serves a different object; check the server",
                            )
                        size = int(announced)
                    if size is not None and size > max_bytes:
                        raise ArtifactMismatch(
                            f"artifact download announces {size} bytes, more than the limit of "
                            f"{max_bytes}",
                            remedy="check the artifact on the server; raise the limit if it is real",
                        )
                    if size is not None and on_length is not None:
                        on_length(size)
                    try:
                        return copy_hashed(
                            _StreamReader(resp.iter_bytes()),
                            dest,
                            expected_size=size,
                            max_bytes=max_bytes,
                            progress=progress,
                            mode=0o644,
                        )
                    except InvalidData as e:
                        raise ArtifactMismatch(e.message, remedy=e.remedy) from e
            except (httpx.TransportError, MenderUnavailable) as e:
                if http.journal is not None and isinstance(e, httpx.TransportError):
                    http.journal(
                        method="GET",
                        path=path,
                        status=0,
                        request_id=None,
                        note=f"transport error: {type(e).__name__}",
                    )
                if attempt + 1 >= http.retry.attempts:
                    if isinstance(e, MenderError):
                        raise
                    raise MenderUnavailable(
                        f"download of {source.uri.split('?')[0]} failed: {type(e).__name__}",
                        remedy="check the network, then run again",
                        method="GET",
                        path=path,
                    ) from e
                http.retry.sleep(http.retry.delay(attempt, None))
                attempt += 1
