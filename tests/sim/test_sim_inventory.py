"""Inventory: device attributes PUT/PATCH, management get and v2 search (server-behaviour.md §5)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from gapferry.fixtures.sim import MenderSim
from gapferry.fixtures.sim.devicekit import authenticate, new_key, preauthorize

ATTRS = "/api/devices/v1/inventory/device/attributes"
INV = "/api/management/v1/inventory/devices"
SEARCH = "/api/management/v2/inventory/filters/search"


@pytest.fixture
def device(sim: MenderSim, mgmt: httpx.Client, anon: httpx.Client) -> tuple[str, dict[str, str]]:
    key = new_key("ec256")
    preauthorize(mgmt, key, {"sn": "1"})
    tok = authenticate(anon, key, {"sn": "1"}).text
    return sim.devices()[0]["id"], {"Authorization": f"Bearer {tok}"}


def test_put_patch_semantics(
    sim: MenderSim, anon: httpx.Client, mgmt: httpx.Client, device: tuple[str, dict[str, str]]
) -> None:
    did, h = device
    r = anon.patch(ATTRS, json=[{"name": "a", "value": "1"}, {"name": "b", "value": 2}], headers=h)
    # §5 / top fact 15: 200, empty body
    assert (r.status_code, r.content) == (200, b"")
    anon.patch(ATTRS, json=[{"name": "c", "value": ["x", "y"], "scope": "system"}], headers=h)
    inv = sim.inventory(did)
    assert inv is not None
    assert inv["inventory/a"] == "1"
    assert inv["inventory/b"] == 2.0
    assert inv["inventory/c"] == ["x", "y"]  # scope forced to inventory
    # PUT deletes the other inventory attributes, identity stays
    assert anon.put(ATTRS, json=[{"name": "a", "value": "new"}], headers=h).status_code == 200
    inv = sim.inventory(did)
    assert inv is not None
    assert {k for k in inv if k.startswith("inventory/")} == {"inventory/a"}
    assert inv["identity/sn"] == "1"
    assert anon.put(ATTRS, json=[], headers=h).status_code == 200
    inv = sim.inventory(did)
    assert inv is not None
    assert not [k for k in inv if k.startswith("inventory/")]
    # §0 "Gateway routing": any subpath of /api/devices/v1/inventory/ reaches the handler
    assert (
        anon.patch(
            "/api/devices/v1/inventory/whatever", json=[{"name": "z", "value": 1}], headers=h
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "value: supported types are string, float64, and arrays thereof."),
        (None, "value: supported types are string, float64, and arrays thereof."),
        ({"k": 1}, "value: supported types are string, float64, and arrays thereof."),
        (["a", 1], "array values must be of consistent type: string or float64"),
        ([["a"]], "value: supported types are string, float64, and arrays thereof."),
    ],
)
def test_value_rules(
    value: Any, message: str, anon: httpx.Client, device: tuple[str, dict[str, str]]
) -> None:
    r = anon.patch(ATTRS, json=[{"name": "a", "value": value}], headers=device[1])
    assert r.status_code == 400
    assert r.json()["error"].endswith(message)


def test_empty_array_ok_and_body_must_be_array(
    anon: httpx.Client, device: tuple[str, dict[str, str]]
) -> None:
    assert (
        anon.patch(ATTRS, json=[{"name": "a", "value": []}], headers=device[1]).status_code == 200
    )
    r = anon.patch(ATTRS, json={"name": "a", "value": "x"}, headers=device[1])
    assert r.status_code == 400
    assert r.json()["error"].startswith("failed to decode request body: ")


def test_attribute_limit(anon: httpx.Client, device: tuple[str, dict[str, str]]) -> None:
    h = device[1]
    many = [{"name": f"a{i}", "value": i} for i in range(100)]
    assert anon.put(ATTRS, json=many, headers=h).status_code == 200
    r = anon.patch(ATTRS, json=[{"name": "one-more", "value": 1}], headers=h)
    assert (r.status_code, r.json()["error"]) == (
        400,
        "the number of attributes in the scope is above the limit",
    )
    # PUT counts only the body
    assert anon.put(ATTRS, json=[{"name": "one-more", "value": 1}], headers=h).status_code == 200
    r = anon.put(ATTRS, json=[*many, {"name": "x", "value": 1}], headers=h)
    assert r.status_code == 400


def test_body_limit_413(anon: httpx.Client, device: tuple[str, dict[str, str]]) -> None:
    big = [{"name": "a", "value": "x" * (1024 * 1024)}]
    r = anon.put(ATTRS, json=big, headers=device[1])
    # §0 "Body size": Content-Length over 1 MiB
    assert (r.status_code, r.json()["error"]) == (413, "http: request body too large")


def test_unchanged_same_day_keeps_updated_ts(
    tmp_path: Path, client_for: Callable[..., httpx.Client]
) -> None:
    now = [datetime(2026, 3, 1, 8, tzinfo=UTC)]
    sim = MenderSim(artifact_dir=tmp_path, management_token="t", clock=lambda: now[0])
    mgmt, anon = client_for(sim, "t"), client_for(sim)
    key = new_key("ec256")
    preauthorize(mgmt, key, {"sn": "1"})
    h = {"Authorization": "Bearer " + authenticate(anon, key, {"sn": "1"}).text}
    did = sim.devices()[0]["id"]
    anon.patch(ATTRS, json=[{"name": "a", "value": "1"}], headers=h)
    first = mgmt.get(f"{INV}/{did}").json()["updated_ts"]
    now[0] += timedelta(hours=1)
    anon.patch(ATTRS, json=[{"name": "a", "value": "1"}], headers=h)
    assert mgmt.get(f"{INV}/{did}").json()["updated_ts"] == first
    now[0] += timedelta(days=1)
    anon.patch(ATTRS, json=[{"name": "a", "value": "1"}], headers=h)
    assert mgmt.get(f"{INV}/{did}").json()["updated_ts"] != first


def test_management_get(
    mgmt: httpx.Client, anon: httpx.Client, device: tuple[str, dict[str, str]]
) -> None:
    did, h = device
    anon.patch(ATTRS, json=[{"name": "fw", "value": "1.0", "description": "firmware"}], headers=h)
    body = mgmt.get(f"{INV}/{did}").json()
    assert body["id"] == did
    by = {(a["scope"], a["name"]): a for a in body["attributes"]}
    assert by[("inventory", "fw")]["value"] == "1.0"
    assert by[("inventory", "fw")]["description"] == "firmware"
    assert by[("identity", "sn")]["value"] == "1"
    assert by[("identity", "status")]["value"] == "accepted"
    assert ("system", "created_ts") in by
    r = mgmt.get(f"{INV}/unknown")
    assert (r.status_code, r.json()["error"]) == (404, "Device not found")


def test_v2_search(sim: MenderSim, mgmt: httpx.Client, anon: httpx.Client) -> None:
    for n in ("1", "2", "3"):
        key = new_key("ec256")
        preauthorize(mgmt, key, {"sn": n})
        tok = authenticate(anon, key, {"sn": n}).text
        anon.put(
            ATTRS,
            json=[{"name": "rev", "value": float(n)}],
            headers={"Authorization": f"Bearer {tok}"},
        )
    authenticate(anon, new_key("ec256"), {"sn": "pending"})
    body: dict[str, Any] = {
        "filters": [
            {"scope": "identity", "attribute": "status", "type": "$eq", "value": "accepted"}
        ]
    }
    r = mgmt.post(SEARCH, json=body)
    # §5: X-Total-Count, no Link
    assert r.headers["x-total-count"] == "3"
    assert "link" not in r.headers
    body = {
        "filters": [{"scope": "inventory", "attribute": "rev", "type": "$gte", "value": 2}],
        "sort": [{"scope": "inventory", "attribute": "rev", "order": "desc"}],
        "per_page": 1,
    }
    r = mgmt.post(SEARCH, json=body)
    assert r.headers["x-total-count"] == "2"
    [dev] = r.json()
    assert any(a["name"] == "rev" and a["value"] == 3 for a in dev["attributes"])
    r = mgmt.post(
        SEARCH, json={"filters": [{"scope": "bogus", "attribute": "a", "type": "$eq", "value": 1}]}
    )
    assert r.status_code == 400
    r = mgmt.post(
        SEARCH,
        json={"filters": [{"scope": "inventory", "attribute": "a", "type": "$eq", "value": None}]},
    )
    assert r.status_code == 400
    r = mgmt.post(SEARCH, json={"per_page": 501})
    assert r.status_code == 400
    ids = [d["id"] for d in sim.devices()][:1]
    assert len(mgmt.post(SEARCH, json={"device_ids": ids}).json()) == 1


def test_device_token_required(anon: httpx.Client) -> None:
    r = anon.patch(ATTRS, json=[])
    assert r.status_code == 401
