"""The HTTP core: which answers are retried, Retry-After, the journal, errors quoting the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gapferry.common.errors import InvalidData
from gapferry.connected.ledger import Ledger
from gapferry.connected.mender.errors import MenderError, MenderUnavailable
from gapferry.connected.mender.http import MenderHttp, RetryPolicy


class Script:
    """Answers requests from a list, recording what was asked."""

    def __init__(self, answers: list[httpx.Response | Exception]) -> None:
        self.answers = answers
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(f"{request.method} {request.url.path}")
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


def _http(script: Script, sleeps: list[float], tmp_path: Path) -> tuple[MenderHttp, Ledger]:
    led = Ledger(tmp_path / "l.sqlite", command="t")
    http = MenderHttp(
        "https://mender.example",
        transport=httpx.MockTransport(script),
        retry=RetryPolicy(attempts=4, backoff=0.01, sleep=sleeps.append),
        journal=led.journal,
    )
    return http, led


def test_429_honours_retry_after_even_for_post(tmp_path: Path) -> None:
    script = Script(
        [
            httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "too many requests"}),
            httpx.Response(201),
        ]
    )
    sleeps: list[float] = []
    http, led = _http(script, sleeps, tmp_path)
    resp = http.request("POST", "/x", idempotent=False, json_body={}, what="t")
    assert resp.status_code == 201
    assert sleeps == [7.0]
    assert [r["status"] for r in led.journal_rows()] == [429, 201]


def test_5xx_and_drops_are_retried_only_when_safe(tmp_path: Path) -> None:
    script = Script(
        [httpx.Response(503, json={"error": "service unavailable", "request_id": "rid-1"})]
    )
    http, _ = _http(script, [], tmp_path)
    with pytest.raises(MenderUnavailable) as e:
        http.request("POST", "/artifacts", idempotent=False, what="upload")
    assert "service unavailable" in e.value.message
    assert "rid-1" in e.value.message
    assert e.value.request_id == "rid-1"
    script = Script(
        [httpx.RemoteProtocolError("dropped"), httpx.Response(500), httpx.Response(200)]
    )
    sleeps: list[float] = []
    http, led = _http(script, sleeps, tmp_path)
    assert http.request("GET", "/y", idempotent=True, what="t").status_code == 200
    assert len(sleeps) == 2
    assert [r["status"] for r in led.journal_rows()][-3:] == [0, 500, 200]
    script = Script([httpx.ConnectError("refused")])
    http, _ = _http(script, [], tmp_path)
    with pytest.raises(MenderUnavailable):
        http.request("POST", "/z", idempotent=False, what="t")
    assert len(script.seen) == 1


def test_gives_up_after_the_attempts(tmp_path: Path) -> None:
    script = Script([httpx.Response(502)] * 4)
    http, _ = _http(script, [], tmp_path)
    with pytest.raises(MenderUnavailable):
        http.request("GET", "/y", idempotent=True, what="t")
    assert len(script.seen) == 4


def test_server_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(MenderError) as e:
        MenderHttp("ftp://x")
    assert e.value.code == "bad-server-url"


def test_journal_never_holds_the_token(tmp_path: Path) -> None:
    script = Script([httpx.Response(200, json={})])
    http, led = _http(script, [], tmp_path)
    http.request(
        "GET",
        "/q?token=abc",
        idempotent=True,
        headers={"Authorization": "Bearer SECRETTOKEN"},
        what="t",
    )
    assert "SECRETTOKEN" not in json.dumps(led.journal_rows())
    assert "abc" not in json.dumps(led.journal_rows())


def test_an_endless_answer_is_refused(tmp_path: Path) -> None:
    script = Script([httpx.Response(200, content=b"[" + b"1," * 600 + b"1]")])
    led = Ledger(tmp_path / "l.sqlite")
    http = MenderHttp(
        "https://mender.example",
        transport=httpx.MockTransport(script),
        max_response_bytes=1000,
        journal=led.journal,
    )
    with pytest.raises(InvalidData) as e:
        http.request("GET", "/big", idempotent=True, what="list")
    assert e.value.code == "answer-too-large"
    led.close()


def test_a_download_of_unannounced_size_is_bounded(tmp_path: Path) -> None:
    """A storage answer with no Content-Length, when the server's record gives no size either,
    still cannot fill the disk: the download stops at `max_bytes` and leaves nothing behind."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from gapferry.connected.keystore import DeviceKey
    from gapferry.connected.mender.device import ArtifactSource, DeviceApi
    from gapferry.connected.mender.errors import ArtifactMismatch

    def endless() -> Iterator[bytes]:
        for _ in range(1000):
            yield b"\0" * 4096

    def storage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(b"".join(endless())))

    http = MenderHttp("https://mender.example", transport=httpx.MockTransport(storage))
    api = DeviceApi(
        http,
        identity={"mac": "00:11"},
        key=DeviceKey(name="d", key=ed25519.Ed25519PrivateKey.generate()),
    )
    dest = tmp_path / "a.mender"
    with pytest.raises(ArtifactMismatch, match="longer than the limit of 100000 bytes"):
        api.download(
            ArtifactSource(uri="https://mender.example/storage/a"), dest, max_bytes=100_000
        )
    assert list(tmp_path.iterdir()) == []
