"""Common behaviour, management auth, fault injection, request log (server-behaviour.md §0)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from gapferry.fixtures.sim import DEFAULT_PASSWORD, DEFAULT_USER, Fault, MenderSim
from gapferry.fixtures.sim.devicekit import authenticate, new_key, preauthorize

DA = "/api/management/v2/devauth"
DEPM = "/api/management/v1/deployments"
LOGIN = "/api/management/v1/useradm/auth/login"


def test_error_body_and_request_id(mgmt: httpx.Client) -> None:
    r = mgmt.get(DA + "/devices/nope")
    body = r.json()
    # §0 "Error body" and "Request ID"
    assert set(body) == {"error", "request_id"}
    assert body["request_id"] == r.headers["x-men-requestid"]
    uuid.UUID(body["request_id"])
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    r = mgmt.get(DA + "/devices/nope", headers={"X-MEN-RequestID": "my-id"})
    assert r.headers["x-men-requestid"] == "my-id"
    assert r.json()["request_id"] == "my-id"


def test_unknown_route_and_method(mgmt: httpx.Client) -> None:
    r = mgmt.get("/api/management/v2/devauth/nothing/here")
    assert (r.status_code, r.json()["error"]) == (404, "not found")
    r = mgmt.get(DEPM + "/nothing/here/at/all")
    # DEP's minimal router: no request_id
    assert r.status_code == 404
    assert r.json() == {"error": "not found"}
    r = mgmt.patch(DA + "/devices")
    assert (r.status_code, r.json()["error"]) == (405, "method not allowed")
    r = mgmt.options(DA + "/devices")
    assert r.status_code == 200
    assert r.headers["allow"] == "GET, POST"


def test_content_type_rules(mgmt: httpx.Client) -> None:
    # §0 "Content-Type": only when Content-Length > 0
    r = mgmt.post(DA + "/devices", content=b"{}", headers={"Content-Type": "text/plain"})
    assert (r.status_code, r.json()["error"]) == (
        415,
        "Bad Content-Type, expected 'application/json'",
    )
    r = mgmt.post(DA + "/devices", content=b"{}", headers={"Content-Type": "bad type"})
    assert r.status_code == 400
    assert r.json()["error"].startswith("Invalid value for Content-Type header")
    r = mgmt.post(DA + "/devices/search", content=b"", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400  # empty body: no type check, EOF instead


def test_json_body_limit_413(mgmt: httpx.Client) -> None:
    r = mgmt.post(
        DA + "/devices", json={"identity_data": {"x": "y" * (1024 * 1024)}, "pubkey": "p"}
    )
    assert (r.status_code, r.json()) == (413, {"error": "http: request body too large"})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"per_page": "501"}, 'parameter "per_page" above limit (max: 500)'),
        ({"per_page": "0"}, "invalid per_page query: value must be a non-zero positive integer"),
        ({"page": "0"}, "invalid page query: value must be a non-zero positive integer"),
    ],
)
def test_paging_errors(params: dict[str, str], message: str, mgmt: httpx.Client) -> None:
    r = mgmt.get(DA + "/devices", params=params)
    assert (r.status_code, r.json()["error"]) == (400, message)


def test_paging_links_keep_query_sorted(
    sim: MenderSim, mgmt: httpx.Client, anon: httpx.Client
) -> None:
    for i in range(5):
        authenticate(anon, new_key("ec256"), {"n": str(i)})
    r = mgmt.get(DA + "/devices", params={"status": "pending", "per_page": "2", "page": "2"})
    links = r.headers.get_list("link")
    assert links == [
        '</api/management/v2/devauth/devices?page=1&per_page=2&status=pending>; rel="first"',
        '</api/management/v2/devauth/devices?page=1&per_page=2&status=pending>; rel="prev"',
        '</api/management/v2/devauth/devices?page=3&per_page=2&status=pending>; rel="next"',
    ]


def test_artifacts_list_per_page_fallback(mgmt: httpx.Client) -> None:
    r = mgmt.get(DEPM + "/artifacts/list", params={"per_page": "900"})
    assert r.status_code == 200
    assert r.headers["x-total-count"] == "0"
    assert any("per_page=20" in v and 'rel="last"' in v for v in r.headers.get_list("link"))


def test_management_auth(anon: httpx.Client, mgmt: httpx.Client) -> None:
    r = anon.get(DA + "/devices")
    assert (r.status_code, r.json()["error"]) == (401, "Authorization not present in header")
    r = anon.get(DA + "/devices", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="ManagementJWT"'
    assert mgmt.get(DA + "/devices").status_code == 200


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_login_gives_usable_jwt(anon: httpx.Client) -> None:
    r = anon.post(LOGIN, headers=_basic(DEFAULT_USER, DEFAULT_PASSWORD))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/jwt"
    assert (
        anon.get(DA + "/devices", headers={"Authorization": f"Bearer {r.text}"}).status_code == 200
    )
    assert anon.post(LOGIN, headers=_basic(DEFAULT_USER, "wrong")).status_code == 401
    assert anon.post(LOGIN).status_code == 401


def test_device_token_is_not_a_management_token(mgmt: httpx.Client, anon: httpx.Client) -> None:
    key = new_key("ec256")
    preauthorize(mgmt, key, {"n": "1"})
    tok = authenticate(anon, key, {"n": "1"}).text
    assert anon.get(DA + "/devices", headers={"Authorization": f"Bearer {tok}"}).status_code == 401


def test_fault_status_and_count(sim: MenderSim, mgmt: httpx.Client) -> None:
    sim.faults.add(Fault(r"/devauth/devices$", "GET", kind="status", status=503, count=2))
    assert mgmt.get(DA + "/devices").json()["error"] == "service unavailable"
    assert mgmt.get(DA + "/devices").status_code == 503
    assert mgmt.get(DA + "/devices").status_code == 200
    sim.faults.add(Fault(r"/devauth/devices$", "POST", status=500))
    assert mgmt.get(DA + "/devices").status_code == 200  # method must match
    r = mgmt.post(DA + "/devices", json={})
    assert (r.status_code, r.json()["error"]) == (500, "internal error")


def test_fault_retry_after(sim: MenderSim, mgmt: httpx.Client) -> None:
    sim.faults.add(Fault(r".*", kind="retry_after", retry_after=7))
    r = mgmt.get(DA + "/devices")
    assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (
        429,
        "too many requests",
        "7",
    )
    assert mgmt.get(DA + "/devices").status_code == 200


def test_fault_slow(sim: MenderSim, mgmt: httpx.Client) -> None:
    sim.faults.add(Fault(r".*", kind="slow", delay=0.3))
    t = time.monotonic()
    assert mgmt.get(DA + "/devices").status_code == 200
    assert time.monotonic() - t >= 0.3


def test_fault_drop_in_process(sim: MenderSim, mgmt: httpx.Client) -> None:
    sim.faults.add(Fault(r".*", kind="drop", count=-1))
    with pytest.raises(httpx.RemoteProtocolError):
        mgmt.get(DA + "/devices")
    with pytest.raises(httpx.RemoteProtocolError):
        mgmt.get(DA + "/devices")
    sim.faults.clear()
    assert mgmt.get(DA + "/devices").status_code == 200


def test_request_log(sim: MenderSim, mgmt: httpx.Client, anon: httpx.Client) -> None:
    key = new_key("ec256")
    preauthorize(mgmt, key, {"n": "1"})
    authenticate(anon, key, {"n": "1"})
    did = sim.devices()[0]["id"]
    pre, auth = sim.requests
    assert (pre.method, pre.path, pre.status, pre.device_id) == ("POST", DA + "/devices", 201, did)
    assert pre.json["identity_data"] == {"n": "1"}
    assert (auth.status, auth.device_id) == (200, did)
    assert "tenant_token" not in auth.json
    assert auth.request_id


def test_openapi_checker_rejects_wrong_body(
    openapi_checker: Callable[[httpx.Request, httpx.Response], str | None],
) -> None:
    req = httpx.Request("GET", "https://x/api/management/v2/devauth/limits/max_devices")
    good = httpx.Response(200, json={"limit": 3})
    bad = httpx.Response(200, json={"limit": "three"})
    assert openapi_checker(req, good) is None
    assert openapi_checker(req, bad) is not None
    # The router-404 exception (§0 "Unknown route/method") does not hide a handler's 404.
    art = httpx.Request(
        "GET", "https://x" + DEPM + "/artifacts/00000000-0000-4000-8000-000000000000"
    )
    assert openapi_checker(art, httpx.Response(404, json={"error": "Resource not found"})) is None
    assert openapi_checker(art, httpx.Response(404, json={"error": 404})) is not None
    nowhere = httpx.Request("GET", "https://x" + DA + "/nothing/here")
    assert openapi_checker(nowhere, httpx.Response(404, json={"error": "not found"})) is None
    assert openapi_checker(nowhere, httpx.Response(404, json={"error": "gone"})) is not None
    # login answers a bare JWT (application/jwt, a string in the spec), not JSON
    login = httpx.Request("POST", "https://x" + LOGIN)
    jwt = httpx.Response(200, headers={"Content-Type": "application/jwt"}, content=b"a.b.c")
    assert openapi_checker(login, jwt) is None
    assert openapi_checker(login, httpx.Response(200, json={"token": "a.b.c"})) is not None


def test_bearer_needs_exactly_one_space(
    sim: MenderSim, mgmt: httpx.Client, anon: httpx.Client
) -> None:
    # §0 "Bearer parsing": scheme case-insensitive, exactly one space
    key = new_key("ec256")
    preauthorize(mgmt, key, {"n": "1"})
    tok = authenticate(anon, key, {"n": "1"}).text
    path = "/api/devices/v1/deployments/device/deployments/next?artifact_name=a&device_type=t"
    assert anon.get(path, headers={"Authorization": f"bearer {tok}"}).status_code == 204
    r = anon.get(path, headers={"Authorization": f"Bearer  {tok}"})
    assert (r.status_code, r.content) == (401, b"")


def test_devices_id_filter(sim: MenderSim, mgmt: httpx.Client, anon: httpx.Client) -> None:
    for n in ("1", "2"):
        authenticate(anon, new_key("ec256"), {"n": n})
    ids = [d["id"] for d in sim.devices()]
    r = mgmt.get(DA + "/devices", params={"id": ids[0]})
    assert [d["id"] for d in r.json()] == [ids[0]]
    r = mgmt.post(DA + "/devices/search", json={"id": ids})
    assert sorted(d["id"] for d in r.json()) == sorted(ids)
