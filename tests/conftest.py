"""Suite-wide fixtures.

Every response any `MenderSim` gives anywhere in this suite (in-process through
`httpx.MockTransport`, or over loopback from a server thread of the test process) is validated
against ../shared/mender/openapi.yaml by the autouse `openapi_check` fixture (issue 3, "Fidelity
tests"), except the cases in `SPEC_EXCEPTIONS`, where server-behaviour.md records that the real
code differs from the spec, and answers the tests themselves injected as faults.
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
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters

SPEC = Path(__file__).resolve().parents[2] / "shared" / "mender" / "openapi.yaml"


@dataclass(frozen=True, kw_only=True)
class SpecException:
    """A response the spec does not describe, because the real code differs (the note says so).

    `body`, when given, must also match the start of the response body, so that an exception
    for a router-level answer (e.g. the router's 404) does not hide a handler's answer with
    the same status."""

    method: str  # "*" = any
    path: str  # regex, re.search
    status: str  # regex, re.fullmatch
    why: str  # the note section it rests on
    body: bytes | None = None  # regex, re.match


#: The one list of exceptions; each names the note section that records the difference.
SPEC_EXCEPTIONS: list[SpecException] = [
    SpecException(
        method="GET",
        path=r"/api/management/v1/inventory/devices/[^/]+/group$",
        status=r"200",
        why="openapi.yaml 'Get Device Group' itself: says group is null when unassigned, yet "
        "its schema forbids null (server-behaviour.md §5 does not cover groups)",
    ),
    SpecException(
        method="OPTIONS",
        path=r".*",
        status=r"200",
        why="server-behaviour.md §0 'Unknown route/method': OPTIONS is auto-added by the router",
    ),
    SpecException(
        method="*",
        path=r"^/api/devices/v1/inventory/(?!device/attributes$)",
        status=r".*",
        why="server-behaviour.md §0 'Gateway routing': any inventory subpath reaches the "
        "attributes handler",
    ),
    SpecException(
        method="POST",
        path=r"/api/devices/v1/authentication/auth_requests$",
        status=r"200",
        why="server-behaviour.md §7 and top fact 3: the token is raw application/jwt, the spec "
        "says JSON",
    ),
    SpecException(
        method="POST",
        path=r"/api/devices/v1/deployments/device/deployments/next$",
        status=r".*",
        why="server-behaviour.md §7 and §3 'GET|POST .../next': POST /next exists but is "
        "undocumented",
    ),
    SpecException(
        method="*",
        path=r"^/sim/download/",
        status=r".*",
        why="server-behaviour.md §3 'Download link': the sim's stand-in for the S3 presigned URL",
    ),
    SpecException(
        method="PUT",
        path=r"/api/management/v1/deployments/deployments/[^/]+/status$",
        status=r"422",
        why="server-behaviour.md §7 and §4 'PUT .../status (abort)': an unknown deployment "
        "gives 422, not 404",
    ),
    SpecException(
        method="GET",
        path=r"/api/management/v1/deployments/artifacts$",
        status=r"200",
        why="server-behaviour.md §4 'Artifact reads': an empty store gives null (nil slice)",
        body=rb"null$",
    ),
    SpecException(
        method="POST",
        path=r"/api/management/v2/devauth/devices$",
        status=r"409",
        why="server-behaviour.md §2 'POST /devices': the 409 device body has auth_sets null",
    ),
    SpecException(
        method="PUT",
        path=r"/api/devices/v1/deployments/device/deployments/[^/]+/status$",
        status=r"409",
        why="server-behaviour.md §3 'Rules, in order': 409 carries an error body; the spec "
        "has no content",
    ),
    SpecException(
        method="GET",
        path=r"^/api/management/v1/deployments/deployments/[^/]+$",
        status=r"400",
        why="server-behaviour.md §4 'Reads': GET /deployments/{id} with a non-UUID ID gives "
        "400; the spec lists no 400",
    ),
    SpecException(
        method="GET",
        path=r"/api/management/v2/devauth/limits/(?!max_devices$)",
        status=r"400",
        why="server-behaviour.md §2 'GET /limits/max_devices': other names give 400 (path not "
        "in the spec)",
    ),
    SpecException(
        method="*",
        path=r"^/api/(devices/v1/deployments/device/deployments|management/v2/devauth)/",
        status=r"401",
        why="server-behaviour.md §0 'DA token verify' and 'Gateway routing': the gateway's "
        "forwardAuth answers 401 for these APIs; their spec lists no 401",
    ),
    SpecException(
        method="*",
        path=r".*",
        status=r"404",
        why="server-behaviour.md §0 'Unknown route/method': the router's 404 is not in the spec",
        body=rb'\{"error":"not found"',
    ),
    SpecException(
        method="*",
        path=r".*",
        status=r"405",
        why="server-behaviour.md §0 'Unknown route/method': the router's 405 is not in the spec",
        body=rb'\{"error":"method not allowed"',
    ),
    SpecException(
        method="*",
        path=r".*",
        status=r"[45]\d\d",
        why="fault injection by a test (fixtures/sim/_faults.py `kind=status`): not the real "
        "server's answer, so nothing to check against the spec",
        body=rb'\{"error":"injected fault ',
    ),
    SpecException(
        method="*",
        path=r".*",
        status=r"429|503",
        why="fault injection: server-behaviour.md §0 'Rate limits' (429 + Retry-After) and "
        "§0 'Error body' (503 'service unavailable'); not in the spec for every path",
    ),
    SpecException(
        method="*",
        path=r".*",
        status=r"413",
        why="server-behaviour.md §0 'Body size': 413 comes from middleware, not in the spec",
    ),
    SpecException(
        method="*",
        path=r".*",
        status=r"415",
        why="server-behaviour.md §0 'Content-Type': 415 comes from middleware, not in the spec",
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


def _jwt_text(value: bytes, **_: str) -> str:
    return value.decode("ascii")


def _spec() -> OpenAPI:
    global _openapi  # noqa: PLW0603 - loading the spec takes seconds; load it once
    if _openapi is None:
        assert SPEC.is_file(), f"{SPEC} missing: CI clones shared/ beside the repository"
        # application/jwt (auth login) is a bare token: a string, as the spec's schema says.
        config = Config(extra_media_type_deserializers={"application/jwt": _jwt_text})
        _openapi = OpenAPI.from_file_path(str(SPEC), config=config)
    return _openapi


def _excepted(method: str, path: str, status: int, body: bytes | None) -> bool:
    return any(
        e.method in ("*", method)
        and re.search(e.path, path)
        and re.fullmatch(e.status, str(status))
        and (e.body is None or (body is not None and re.match(e.body, body)))
        for e in SPEC_EXCEPTIONS
    )


def check_response(request: httpx.Request, response: httpx.Response) -> str | None:
    """None when the response matches the spec (or an exception); else the problem."""
    method, path = request.method.upper(), request.url.path
    try:
        data = response.content
    except httpx.ResponseNotRead:
        data = None  # streamed (downloads): not an API body
    if _excepted(method, path, response.status_code, data):
        return None
    if data is None:
        return f"{method} {path} -> {response.status_code}: a streamed answer outside /sim/download"
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
def openapi_checker() -> Callable[[httpx.Request, httpx.Response], str | None]:
    """The response checker itself, so a test can show it rejects a wrong answer."""
    return check_response
