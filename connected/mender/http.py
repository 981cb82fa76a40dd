"""The HTTP core shared by the management and device APIs: retries, backoff, concurrency, journal.

- One `httpx.Client` for the whole run (connection reuse); tests pass
  ``httpx.MockTransport(sim.handler)`` through `transport`.
- TLS verification is always on; `ca_bundle` adds an on-premises CA (there is no switch to turn
  verification off).
- Retries with exponential backoff and jitter on connection errors and 5xx, but only for requests
  the caller marked `idempotent`; 429 is retried for every request and honours ``Retry-After``
  (the server refuses before doing anything, shared/mender/server-behaviour.md section 0 "Rate
  limits").
- At most `concurrency` requests are in flight at once (a semaphore), whatever the caller's threads.
- Every attempt is reported to `journal` with method, path (never the query: presigned links carry
  signatures there), status and request id. Tokens never reach the journal or an error message.
"""

from __future__ import annotations

import email.utils
import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from gapferry.common.errors import InvalidData
from gapferry.connected.mender.errors import (
    MenderConflict,
    MenderError,
    MenderNotFound,
    MenderUnauthorized,
    MenderUnavailable,
)

__all__ = [
    "REQUEST_ID_HEADER",
    "Journal",
    "MenderHttp",
    "RetryPolicy",
    "error_for",
    "server_error_of",
]

REQUEST_ID_HEADER = "X-MEN-RequestID"


class Journal(Protocol):
    """Receives one record per HTTP attempt (the ledger's append-only journal)."""

    def __call__(
        self, *, method: str, path: str, status: int, request_id: str | None, note: str
    ) -> None: ...


class RetryPolicy:
    """How often and how long to retry. `sleep` is injectable so tests do not wait."""

    def __init__(
        self,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.sleep = sleep

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        base = min(self.backoff * (2**attempt), self.backoff_max)
        return float(base * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not security


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _tls_refused(e: BaseException) -> bool:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(e)


def server_error_of(resp: httpx.Response) -> tuple[str | None, str | None]:
    """The ``error`` text and request id of a Mender error answer (section 0, "Error body")."""
    rid = resp.headers.get(REQUEST_ID_HEADER)
    text: str | None = None
    try:
        body = json.loads(resp.content) if resp.content else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, str):
            text = err[:500]
        brid = body.get("request_id")
        if isinstance(brid, str) and brid:
            rid = brid
    return text, rid


def error_for(resp: httpx.Response, *, what: str, remedy: str | None = None) -> MenderError:
    """Turn an unexpected answer into the matching `MenderError` subclass."""
    text, rid = server_error_of(resp)
    method = resp.request.method
    path = resp.request.url.path
    msg = f"{what}: {method} {path} answered HTTP {resp.status_code}"
    kw: dict[str, Any] = {
        "status": resp.status_code,
        "server_error": text,
        "request_id": rid,
        "method": method,
        "path": path,
    }
    if resp.status_code == 401:
        return MenderUnauthorized(
            msg,
            remedy=remedy
            or "check MENDER_API_TOKEN (expired or revoked?) or the device's authorization",
            **kw,
        )
    if resp.status_code == 404:
        return MenderNotFound(msg, remedy=remedy or "check the ID and the server URL", **kw)
    if resp.status_code == 409:
        return MenderConflict(msg, remedy=remedy or "see the server's message", **kw)
    if resp.status_code == 429 or resp.status_code >= 500:
        return MenderUnavailable(
            msg, remedy=remedy or "the server is busy or failing; run the command again later", **kw
        )
    return MenderError(msg, remedy=remedy or "see the server's message", **kw)


class MenderHttp:
    """A connection to one Mender Server. Thread-safe; use as a context manager or `close()`."""

    def __init__(
        self,
        server_url: str,
        *,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        ca_bundle: Path | None = None,
        timeout: float = 60.0,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        journal: Journal | None = None,
        max_response_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        parts = urlsplit(server_url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise MenderError(
                f"MENDER_SERVER_URL must be an http(s) URL, found {server_url!r}",
                remedy="set MENDER_SERVER_URL to e.g. https://hosted.mender.io",
                code="bad-server-url",
            )
        self.server_url = server_url.rstrip("/")
        self.netloc = parts.netloc
        if client is None:
            verify: Any = True
            if ca_bundle is not None:
                verify = ssl.create_default_context(cafile=str(ca_bundle))
            limits = httpx.Limits(
                max_connections=max(1, concurrency), max_keepalive_connections=max(1, concurrency)
            )
            client = httpx.Client(
                transport=transport,
                verify=verify,
                timeout=httpx.Timeout(timeout),
                limits=limits,
                follow_redirects=False,
            )
        self.client = client
        self.retry = retry or RetryPolicy()
        self.journal = journal
        self.max_response_bytes = max_response_bytes
        #: Bounds the requests in flight (downloads included) to `concurrency`.
        self.slots = threading.BoundedSemaphore(max(1, concurrency))

    def __enter__(self) -> MenderHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def url(self, path: str) -> str:
        return self.server_url + path

    def _record(self, method: str, url: str, status: int, rid: str | None, note: str) -> None:
        if self.journal is not None:
            self.journal(
                method=method, path=urlsplit(url).path, status=status, request_id=rid, note=note
            )

    def _send(
        self,
        *,
        method: str,
        url: str,
        hdrs: dict[str, str],
        content: bytes | None,
        files: Any,
        data: Any,
        what: str,
    ) -> httpx.Response:
        """Send and read the answer, refusing one longer than `max_response_bytes`."""
        req = self.client.build_request(
            method, url, headers=hdrs, content=content, files=files, data=data
        )
        resp = self.client.send(req, stream=True)
        try:
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > self.max_response_bytes:
                    raise InvalidData(
                        f"{what}: the server's answer to {method} {urlsplit(url).path} is longer "
                        f"than {self.max_response_bytes} bytes",
                        remedy="check MENDER_SERVER_URL points at a Mender Server",
                        code="answer-too-large",
                    )
        finally:
            resp.close()
        return httpx.Response(
            resp.status_code, headers=resp.headers, content=bytes(body), request=req
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json_body: Any = None,
        files: Any = None,
        data: Any = None,
        what: str,
    ) -> httpx.Response:
        """Send one request with retries; return the final answer whatever its status.

        Raises:
            MenderUnavailable: no answer (connection error) or still 5xx/429 after the retries.
        """
        if url.startswith("/"):
            url = self.url(url)
        hdrs = dict(headers or {})
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode()
            hdrs.setdefault("Content-Type", "application/json")
        attempt = 0
        while True:
            try:
                with self.slots:
                    resp = self._send(
                        method=method,
                        url=url,
                        hdrs=hdrs,
                        content=content,
                        files=files,
                        data=data,
                        what=what,
                    )
            except httpx.TransportError as e:
                self._record(method, url, 0, None, f"transport error: {type(e).__name__}")
                if _tls_refused(e):
                    raise MenderUnavailable(
                        f"{what}: the server's TLS certificate is not trusted ({e})",
                        remedy="for an on-premises server with its own CA, set GAPFERRY_CA_BUNDLE "
                        "to the CA certificate file (verification is never switched off)",
                        method=method,
                        path=urlsplit(url).path,
                        code="tls-untrusted",
                    ) from e
                if not idempotent or attempt + 1 >= self.retry.attempts:
                    raise MenderUnavailable(
                        f"{what}: {method} {urlsplit(url).path} failed: cannot reach "
                        f"{self.netloc} ({type(e).__name__}: {e or 'no detail'})",
                        remedy="check the network and MENDER_SERVER_URL, then run again",
                        method=method,
                        path=urlsplit(url).path,
                    ) from e
                self.retry.sleep(self.retry.delay(attempt, None))
                attempt += 1
                continue
            _, rid = (
                server_error_of(resp)
                if resp.status_code >= 400
                else (None, resp.headers.get(REQUEST_ID_HEADER))
            )
            self._record(method, url, resp.status_code, rid, "")
            retryable = resp.status_code == 429 or (resp.status_code >= 500 and idempotent)
            if retryable and attempt + 1 < self.retry.attempts:
                self.retry.sleep(self.retry.delay(attempt, _retry_after(resp)))
                attempt += 1
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                raise error_for(resp, what=what)
            return resp
