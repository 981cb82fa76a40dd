"""Fixtures for the Mender Server stand-in tests (tests/sim).

Every response any `MenderSim` gives in this suite (in-process or over loopback) is validated
against ../shared/mender/openapi.yaml by the autouse `openapi_check` fixture, except the cases in
`SPEC_EXCEPTIONS`, where server-behaviour.md records that the real code differs from the spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from gapferry.fixtures.sim import MenderSim
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters

SPEC = Path(__file__).resolve().parents[3] / "shared" / "mender" / "openapi.yaml"

#: (method, path regex, status regex, why). One list; each entry names the note it rests on.
SPEC_EXCEPTIONS: list[tuple[str, str, str, str]] = [
    (
        "GET",
        r"/api/management/v1/inventory/devices/[^/]+/group$",
        r"200",
        "openapi.yaml 'Get Device Group' says group is null when unassigned; its schema forbids null",
    ),
    (
        "OPTIONS",
        r".*",
        r"200",
        "server-behaviour.md §0 'Unknown route/method': OPTIONS is auto-added by the router",
    ),
    (
        "*",
        r"^/api/devices/v1/inventory/(?!device/attributes$)",
        r".*",
        "server-behaviour.md §0 'Gateway routing': any inventory subpath reaches the attributes handler",
    ),
    (
        "POST",
        r"/api/devices/v1/authentication/auth_requests$",
        r"200",
        "server-behaviour.md §7: token is raw application/jwt, the spec says JSON",
    ),
    (
        "POST",
        r"/api/devices/v1/deployments/device/deployments/next$",
        r".*",
        "server-behaviour.md §7: POST /next exists but is undocumented",
    ),
    (
        "POST",
        r"/api/management/v1/useradm/auth/login$",
        r"200",
        "useradm answers the JWT as application/jwt (mender-cli reads the raw body)",
    ),
    (
        "*",
        r"^/sim/download/",
        r".*",
        "server-behaviour.md §3 'Download link': the sim's stand-in for the S3 presigned URL",
    ),
    (
        "PUT",
        r"/api/management/v1/deployments/deployments/[^/]+/status$",
        r"422",
        "server-behaviour.md §7 / §4 abort: unknown deployment gives 422, not 404",
    ),
    (
        "GET",
        r"/api/management/v1/deployments/artifacts$",
        r"200",
        "server-behaviour.md §4 'Artifact reads': an empty store gives null (nil slice)",
    ),
    (
        "POST",
        r"/api/management/v2/devauth/devices$",
        r"409",
        "server-behaviour.md §2 'POST /devices': the 409 device body has auth_sets null",
    ),
    (
        "PUT",
        r"/api/devices/v1/deployments/device/deployments/[^/]+/status$",
        r"409",
        "server-behaviour.md §3 'Rules, in order': 409 carries an error body; spec has no content",
    ),
    (
        "GET",
        r"/api/management/v2/devauth/limits/(?!max_devices$)",
        r"400",
        "server-behaviour.md §2 'GET /limits/max_devices': other names → 400 (path not in spec)",
    ),
    (
        "*",
        r"^/api/(devices/v1/(deployments|inventory)|management)/",
        r"401",
        "server-behaviour.md §0 'DA token verify'/'Gateway routing': 401s come from the gateway",
    ),
    (
        "*",
        r".*",
        r"404|405",
        "server-behaviour.md §0 'Unknown route/method': router 404/405 are not in the spec",
    ),
    (
        "*",
        r".*",
        r"429|503",
        "fault injection (server-behaviour.md §0 'Rate limits'; outside-world failures)",
    ),
    (
        "*",
        r".*",
        r"413",
        "server-behaviour.md §0 'Body size': 413 comes from middleware, not in the spec",
    ),
    (
        "*",
        r".*",
        r"415",
        "server-behaviour.md §0 'Content-Type': 415 comes from middleware, not in the spec",
    ),
]


@dataclass
class _Req:
    method: str
    path: str
    query: dict[str, Any]
    content_type: str = "application/json"
    host_url: str = "https://hosted.mender.io"
    body: bytes | None = None
    parameters: RequestParameters = field(default_factory=RequestParameters)

    def __post_init__(self) -> None:
        self.parameters = RequestParameters(query=self.query)

    @property
    def full_url_pattern(self) -> str:
        return self.host_url + self.path


@dataclass
class _Resp:
    status_code: int
    headers: dict[str, str]
    content_type: str
    data: bytes | None


_openapi: OpenAPI | None = None


def _spec() -> OpenAPI:
    global _openapi  # noqa: PLW0603 - loading the spec takes seconds; load it once
    if _openapi is None:
        assert SPEC.is_file(), f"{SPEC} missing: CI clones shared/ beside the repository"
        _openapi = OpenAPI.from_file_path(str(SPEC))
    return _openapi


def _excepted(method: str, path: str, status: int) -> bool:
    return any(
        m in ("*", method) and re.search(p, path) and re.fullmatch(s, str(status))
        for m, p, s, _ in SPEC_EXCEPTIONS
    )


def check_response(request: httpx.Request, response: httpx.Response) -> str | None:
    """None when the response matches the spec (or an exception); else the problem."""
    method, path = request.method.upper(), request.url.path
    if _excepted(method, path, response.status_code):
        return None
    try:
        data = response.content
    except httpx.ResponseNotRead:
        return None  # streamed (downloads): not an API body
    req = _Req(method=method.lower(), path=path, query=dict(request.url.params))
    ct = response.headers.get("content-type", "").split(";")[0].strip().lower()
    resp = _Resp(
        status_code=response.status_code,
        headers=dict(response.headers),
        content_type=ct or "application/json",
        data=data or None,
    )
    errors = [
        e
        for e in _spec().iter_response_errors(req, resp)
        # `content: {}` for 201/204 makes openapi-core want a body; an empty one is right.
        if not (type(e).__name__ == "MissingData" and not data)
    ]
    if not errors:
        return None
    detail = "; ".join(f"{e}: {getattr(e, '__cause__', '')}" for e in errors)
    return f"{method} {path} -> {response.status_code} {data[:200]!r}: {detail}"


@pytest.fixture(autouse=True)
def openapi_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Validate every response of every MenderSim in the test; fail the test on a mismatch."""
    problems: list[str] = []
    original = MenderSim.handle

    def handle(self: MenderSim, request: httpx.Request) -> httpx.Response:
        response = original(self, request)
        problem = check_response(request, response)
        if problem is not None:
            problems.append(problem)
        return response

    monkeypatch.setattr(MenderSim, "handle", handle)
    yield problems
    assert problems == [], "responses that do not match openapi.yaml:\n" + "\n".join(problems)


@pytest.fixture
def sim(tmp_path: Path) -> MenderSim:
    return MenderSim(artifact_dir=tmp_path / "artifacts", management_token="test-pat")


@pytest.fixture
def client_for() -> Iterator[Callable[..., httpx.Client]]:
    """`client_for(sim, token=None)`: an in-process client (MockTransport) for any sim."""
    made: list[httpx.Client] = []

    def make(sim: MenderSim, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(
            transport=httpx.MockTransport(sim.handler), base_url="https://sim.test", headers=headers
        )
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def mgmt(sim: MenderSim, client_for: Callable[..., httpx.Client]) -> httpx.Client:
    return client_for(sim, "test-pat")


@pytest.fixture
def anon(sim: MenderSim, client_for: Callable[..., httpx.Client]) -> httpx.Client:
    return client_for(sim)


@pytest.fixture
def openapi_checker() -> Callable[[httpx.Request, httpx.Response], str | None]:
    """The response checker itself, so a test can show it rejects a wrong answer."""
    return check_response
