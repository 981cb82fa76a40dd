"""A hostile or broken Mender Server on the connected side (issue 10, practice 10).

The stand-in's real handler is wrapped (``httpx.MockTransport``) so that one answer turns
hostile; TLS failures use a real loopback HTTPS server with a wrong certificate. Each test asserts
the exact error and that nothing moved: no transfer bundle written, no artifact cached, no
status reported to the server, no bundle in the ledger, and no request to another host.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from gapferry.connected.pack import PackReport, pack
from gapferry.connected.session import Session
from gapferry.fixtures.connected_world import World
from gapferry.fixtures.hostile_server import hostile_tls_server
from gapferry.fixtures.sim import running_server

Handler = Callable[[httpx.Request], httpx.Response]
Hostile = Callable[[httpx.Request, Handler], httpx.Response | None]


class Watched:
    """A world whose transport records hosts and lets one test answer for the server."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.hosts: list[str] = []
        self.dep_id = world.release()
        self.hostile: Hostile | None = None
        inner = world.sim.handler

        def handler(request: httpx.Request) -> httpx.Response:
            self.hosts.append(request.url.host)
            if self.hostile is not None:
                answer = self.hostile(request, inner)
                if answer is not None:
                    return answer
            return inner(request)

        world.handler = handler

    def pack(self, **kw: object) -> PackReport:
        self.hosts.clear()
        return self.world.pack(**kw)

    def statuses(self) -> list[str]:
        return [s for d, _, s in self.world.status_puts() if d == self.dep_id]

    def assert_nothing_moved(self, report: PackReport) -> None:
        assert not report.ok
        assert report.bundle_path is None
        assert not list(self.world.media.glob("gapferry/transfer-*"))
        assert not list((self.world.state / "artifacts").glob("*.mender"))
        assert self.statuses() == []
        db = sqlite3.connect(self.world.state / "ledger.sqlite")
        try:
            assert db.execute("SELECT COUNT(*) FROM bundles").fetchone() == (0,)
        finally:
            db.close()
        assert set(self.hosts) <= {"mender.sim"}, self.hosts


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    w = World(tmp_path)
    yield Watched(w)
    w.close()


def is_next(r: httpx.Request) -> bool:
    return r.url.path.endswith("/deployments/device/deployments/next")


def is_download(r: httpx.Request) -> bool:
    return r.url.path.startswith("/sim/download/")


def only_row(report: PackReport) -> tuple[str, str]:
    [row] = report.rows
    return row.action, row.detail


def message_of(detail: str) -> str:
    """A row's error message without the remedy that may follow it (``; what to do: ...``)."""
    return detail.split("; what to do: ", 1)[0]


def test_attack_server_next_answers_malformed_json(watched: Watched) -> None:
    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_next(r):
            return httpx.Response(200, content=b'{"id": "x", "artifact": {', headers=_JSON)
        return None

    watched.hostile = hostile
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert (
        message_of(detail) == "poll /next for pump-000: unexpected answer: Input data was truncated"
    )
    watched.assert_nothing_moved(report)


def test_attack_server_next_answers_html_with_200(watched: Watched) -> None:
    """A captive portal or a proxy's login page instead of the API."""

    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_next(r):
            return httpx.Response(
                200,
                content=b"<html><body>Please log in</body></html>",
                headers={"Content-Type": "text/html"},
            )
        return None

    watched.hostile = hostile
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert message_of(detail) == (
        "poll /next for pump-000: unexpected answer: JSON is malformed: invalid character (byte 0)"
    )
    watched.assert_nothing_moved(report)


def test_attack_server_next_answers_json_of_the_wrong_shape(watched: Watched) -> None:
    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_next(r):
            return httpx.Response(200, json={"id": 5, "artifact": "fw"})
        return None

    watched.hostile = hostile
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert message_of(detail) == (
        "poll /next for pump-000: unexpected answer: Expected `str`, got `int` - at `$.id`"
    )
    watched.assert_nothing_moved(report)


def test_attack_server_redirects_next_to_another_host(watched: Watched) -> None:
    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_next(r):
            return httpx.Response(
                307, headers={"Location": "https://evil.example/api/devices/v1/next"}
            )
        return None

    watched.hostile = hostile
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert "answered HTTP 307" in detail, detail
    watched.assert_nothing_moved(report)


def test_attack_server_redirects_the_download_to_another_host(watched: Watched) -> None:
    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_download(r):
            return httpx.Response(302, headers={"Location": "https://evil.example/fw.mender"})
        return None

    watched.hostile = hostile
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert "answered HTTP 302" in detail, detail
    watched.assert_nothing_moved(report)


def test_attack_server_download_link_to_another_host_is_refused(watched: Watched) -> None:
    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_next(r):
            answer = inner(r)
            body = answer.read().replace(b"mender.sim", b"storage.example")
            return httpx.Response(answer.status_code, content=body, headers=_JSON)
        return None

    watched.hostile = hostile
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert "download link points to 'storage.example', not the Mender Server 'mender.sim'" in detail
    watched.assert_nothing_moved(report)


def test_download_link_to_an_explicitly_allowed_host_is_followed(watched: Watched) -> None:
    """The same link, allowed with --allow-download-host: downloaded and packed."""

    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_next(r):
            answer = inner(r)
            body = answer.read().replace(b"mender.sim", b"storage.example")
            return httpx.Response(answer.status_code, content=body, headers=_JSON)
        if r.url.host == "storage.example":
            return inner(
                httpx.Request(r.method, str(r.url).replace("storage.example", "mender.sim"))
            )
        return None

    watched.hostile = hostile
    w = watched.world
    with w.session(allowed_download_hosts=frozenset({"storage.example"})) as s:
        report = pack(s, w.site, media=w.media, signer=w.signer)
    assert report.ok, report
    assert report.bundle_path is not None
    assert "storage.example" in watched.hosts


def _length_lie(extra: int, *, announce: int = 0) -> Hostile:
    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_download(r):
            data = inner(r).read()
            body = data + b"\0" * extra if extra >= 0 else data[:extra]
            return httpx.Response(
                200,
                stream=httpx.ByteStream(body),
                headers={"Content-Length": str(len(data) + announce)},
            )
        return None

    return hostile


def test_attack_server_artifact_longer_than_announced(watched: Watched) -> None:
    watched.hostile = _length_lie(4096)
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert "source is longer than the announced" in detail, detail
    watched.assert_nothing_moved(report)


def test_attack_server_artifact_shorter_than_announced(watched: Watched) -> None:
    watched.hostile = _length_lie(-100)
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert "bytes, got" in detail, detail
    watched.assert_nothing_moved(report)


def test_attack_server_download_announces_another_size_than_the_record(watched: Watched) -> None:
    watched.hostile = _length_lie(10, announce=10)
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert "artifact download announces" in detail, detail
    watched.assert_nothing_moved(report)


def test_attack_server_download_swapped_for_other_bytes_of_the_same_length(
    watched: Watched,
) -> None:
    """Storage serves other bytes of the right length: the artifact reader refuses them."""

    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_download(r):
            data = inner(r).read()
            return httpx.Response(200, content=b"\x42" * len(data))
        return None

    watched.hostile = hostile
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    assert message_of(detail) == "artifact: bad number b'BBBBBBBB' in tar header"
    watched.assert_nothing_moved(report)


def test_attack_server_download_answers_a_captive_portal_page(watched: Watched) -> None:
    """The storage link answers 200 with an HTML login page instead of the artifact."""

    def hostile(r: httpx.Request, inner: Handler) -> httpx.Response | None:
        if is_download(r):
            return httpx.Response(
                200,
                content=b"<html><body>Please log in</body></html>",
                headers={"Content-Type": "text/html"},
            )
        return None

    watched.hostile = hostile
    report = watched.pack()
    action, detail = only_row(report)
    assert action == "error"
    size = (watched.world.tmp / "fw-1.1.mender").stat().st_size
    assert message_of(detail) == (
        f"artifact download announces 39 bytes, the server's artifact record says {size}"
    )
    watched.assert_nothing_moved(report)


_JSON = {"Content-Type": "application/json"}


# --- TLS ---------------------------------------------------------------------------------------


def _loopback_pack(world: World, url: str, ca: Path | None) -> PackReport:
    with Session(
        state_dir=world.state,
        server_url=url,
        api_token=world.sim.management_token,
        ca_bundle=ca,
    ) as s:
        return pack(s, world.site, media=world.media, signer=world.signer)


TLS_REFUSED = ": the server's TLS certificate is not trusted ("


def assert_tls_refused(world: World, report: PackReport, why: str) -> None:
    action, detail = only_row(report)
    assert action == "error"
    assert (
        TLS_REFUSED + "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: " + why in detail
    ), detail
    assert report.bundle_path is None
    assert not list(world.media.glob("gapferry/*"))


def test_attack_tls_self_signed_server_without_the_ca_bundle(tmp_path: Path) -> None:
    """The real stand-in over HTTPS with its own certificate, no CA bundle given: refused."""
    world = World(tmp_path)
    try:
        certs = tmp_path / "certs"
        certs.mkdir()
        with running_server(world.sim, cert_dir=certs) as url:
            before = len(world.sim.requests)
            report = _loopback_pack(world, url, None)
            assert len(world.sim.requests) == before
        assert_tls_refused(world, report, "self-signed certificate")
    finally:
        world.close()


def test_attack_tls_certificate_for_another_host_name(tmp_path: Path) -> None:
    """The CA is trusted, but the certificate names wrong-host.example, not 127.0.0.1."""
    world = World(tmp_path)
    try:
        with hostile_tls_server(tmp_path / "tls") as server:
            report = _loopback_pack(world, server.url, server.files.ca)
            assert server.requests == []
        assert_tls_refused(
            world, report, "IP address mismatch, certificate is not valid for '127.0.0.1'"
        )
    finally:
        world.close()


def test_attack_tls_self_signed_certificate_even_with_a_ca_bundle(tmp_path: Path) -> None:
    """A self-signed certificate for the right name; the CA bundle given is another CA."""
    world = World(tmp_path)
    try:
        with hostile_tls_server(tmp_path / "tls", names=["127.0.0.1"], self_signed=True) as server:
            report = _loopback_pack(world, server.url, server.files.ca)
            assert server.requests == []
        assert_tls_refused(world, report, "self-signed certificate")
    finally:
        world.close()
