"""Artifacts, deployments and the device deployments API (server-behaviour.md §3, §4)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from gapferry.common.artifact.writer import PayloadSource, write_module_image
from gapferry.fixtures.sim import MenderSim
from gapferry.fixtures.sim.devicekit import authenticate, new_key, preauthorize

DEPM = "/api/management/v1/deployments"
DEPD = "/api/devices/v1/deployments/device/deployments"


def make_artifact(
    tmp: Path, name: str, device_types: tuple[str, ...] = ("dev-a",), payload: bytes = b"hi"
) -> Path:
    types = "_".join(device_types) if len(device_types) <= 3 else f"{len(device_types)}types"
    out = tmp / f"{name}-{types}-{len(payload)}.mender"
    write_module_image(
        out,
        artifact_name=name,
        device_types=list(device_types),
        payload_type="single-file",
        files=[
            PayloadSource(name="dest_dir", data=b"/tmp/x\n"),
            PayloadSource(name="filename", data=b"f.txt\n"),
            PayloadSource(name="f.txt", data=payload),
        ],
    )
    return out


def upload(mgmt: httpx.Client, path: Path, **extra: str) -> httpx.Response:
    data = {"size": str(path.stat().st_size), **extra}
    with path.open("rb") as f:
        return mgmt.post(DEPM + "/artifacts", data=data, files={"artifact": (path.name, f)})


class Device:
    def __init__(self, sim: MenderSim, mgmt: httpx.Client, anon: httpx.Client, n: str) -> None:
        self.key = new_key("ec256")
        self.ident = {"sn": n}
        assert preauthorize(mgmt, self.key, self.ident).status_code == 201
        r = authenticate(anon, self.key, self.ident)
        assert r.status_code == 200
        self.token = r.text
        self.c = anon
        self.id = next(d["id"] for d in sim.devices() if d["identity_data"] == self.ident)

    @property
    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def next(
        self, artifact_name: str = "old", device_type: str = "dev-a", **kw: Any
    ) -> httpx.Response:
        if kw.get("post"):
            body = {"artifact_name": artifact_name, "device_type": device_type}
            if "provides" in kw:
                body["artifact_provides"] = kw["provides"]
            return self.c.post(DEPD + "/next", json=body, headers=self.h)
        return self.c.get(
            DEPD + "/next",
            params={"artifact_name": artifact_name, "device_type": device_type},
            headers=self.h,
        )

    def status(self, dep_id: str, status: str | None, **extra: Any) -> httpx.Response:
        body: dict[str, Any] = dict(extra)
        if status is not None:
            body["status"] = status
        return self.c.put(DEPD + f"/{dep_id}/status", json=body, headers=self.h)


def deploy(
    mgmt: httpx.Client, name: str, artifact: str, devices: list[str] | None = None, **kw: Any
) -> httpx.Response:
    body: dict[str, Any] = {"name": name, "artifact_name": artifact, **kw}
    if devices is not None:
        body["devices"] = devices
    return mgmt.post(DEPM + "/deployments", json=body)


def dep_id(r: httpx.Response) -> str:
    assert r.status_code == 201, r.text
    return r.headers["location"].rsplit("/", 1)[1]


def test_upload_list_get(tmp_path: Path, sim: MenderSim, mgmt: httpx.Client) -> None:
    assert mgmt.get(DEPM + "/artifacts").json() is None  # §4: empty store → null
    art = make_artifact(tmp_path, "rel-1", ("dev-a", "dev-b"))
    r = upload(mgmt, art, description="first")
    # §4 "Success": 201, empty body, Location = request path + id
    assert r.status_code == 201
    assert r.content == b""
    assert r.headers["location"].startswith(DEPM + "/artifacts/")
    [a] = mgmt.get(DEPM + "/artifacts").json()
    assert a["name"] == "rel-1"
    assert a["device_types_compatible"] == ["dev-a", "dev-b"]
    assert a["description"] == "first"
    assert a["info"] == {"format": "mender", "version": 3}
    assert a["signed"] is False
    assert a["size"] == art.stat().st_size
    assert a["artifact_depends"]["device_type"] == ["dev-a", "dev-b"]
    assert a["artifact_provides"]["artifact_name"] == "rel-1"
    assert a["updates"][0]["type_info"]["type"] == "single-file"
    assert {f["name"] for f in a["updates"][0]["files"]} == {"dest_dir", "filename", "f.txt"}
    assert mgmt.get(DEPM + f"/artifacts/{a['id']}").json()["id"] == a["id"]
    r = mgmt.get(DEPM + "/artifacts/not-a-uuid")
    assert (r.status_code, r.json()["error"]) == (400, "ID is not a valid UUID")
    r = mgmt.get(DEPM + "/artifacts/00000000-0000-4000-8000-000000000000")
    assert (r.status_code, r.json()["error"]) == (404, "Resource not found")
    assert sim.artifact_path(a["id"]).read_bytes() == art.read_bytes()
    r = mgmt.get(DEPM + f"/artifacts/{a['id']}/download")
    link = r.json()
    assert link["method"] == "GET"
    assert mgmt.get(link["uri"]).content == art.read_bytes()
    # filters: case-insensitive substring
    assert len(mgmt.get(DEPM + "/artifacts", params={"name": "REL"}).json()) == 1
    assert mgmt.get(DEPM + "/artifacts", params={"device_type": "zzz"}).json() is None


def test_upload_conflict_same_name_overlapping_device_type(
    tmp_path: Path, mgmt: httpx.Client
) -> None:
    assert upload(mgmt, make_artifact(tmp_path, "r", ("a", "b"))).status_code == 201
    r = upload(mgmt, make_artifact(tmp_path, "r", ("b", "c")))
    # §4 "Uniqueness" / top fact 14
    assert r.status_code == 409
    body = r.json()
    assert body["error"] == "an artifact with the same name and depends already exists"
    assert body["metadata"]["conflict"] == {"device_type": "b"}
    assert body["request_id"] == r.headers["x-men-requestid"]
    assert upload(mgmt, make_artifact(tmp_path, "r", ("c",))).status_code == 201


def test_upload_v1_refused(tmp_path: Path, mgmt: httpx.Client) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        data = json.dumps({"format": "mender", "version": 1}).encode()
        ti = tarfile.TarInfo("version")
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    p = tmp_path / "v1.mender"
    p.write_bytes(buf.getvalue())
    r = upload(mgmt, p)
    assert r.status_code == 400
    assert "version 1 is no longer supported" in r.json()["error"]


def test_upload_part_order_stops_at_artifact(
    tmp_path: Path, sim: MenderSim, mgmt: httpx.Client
) -> None:
    art = make_artifact(tmp_path, "late")
    boundary = "XyZ"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; filename="a"\r\n\r\n'.encode()
        + art.read_bytes()
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="description"\r\n\r\nlate desc\r\n--{boundary}--\r\n'.encode()
    )
    r = mgmt.post(
        DEPM + "/artifacts",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 201
    assert sim.artifacts()[0]["description"] == ""  # parts after `artifact` are not read


@pytest.mark.parametrize(
    ("ctype", "status"),
    [("application/json", 415), ("multipart/form-data", 400)],
)
def test_upload_content_type(ctype: str, status: int, mgmt: httpx.Client) -> None:
    r = mgmt.post(DEPM + "/artifacts", content=b"x", headers={"Content-Type": ctype})
    assert r.status_code == status


def test_upload_missing_artifact_and_bad_size(tmp_path: Path, mgmt: httpx.Client) -> None:
    r = mgmt.post(DEPM + "/artifacts", data={"description": "x"}, files={"other": ("o", b"1")})
    assert (r.status_code, r.json()["error"]) == (400, "request does not contain the artifact file")
    art = make_artifact(tmp_path, "s")
    # §4 "Parts": `size` over 10 GiB → 400; given, the artifact must be exactly that long
    r = upload(mgmt, art, size=str(20 * 1024**3))
    assert (r.status_code, r.json()["error"]) == (400, "Artifact file too large")
    r = upload(mgmt, art, size=str(art.stat().st_size - 1))
    assert r.status_code == 400
    assert mgmt.get(DEPM + "/artifacts").json() is None
    r = mgmt.post(
        DEPM + "/artifacts",
        data={"artifact_id": "nope"},
        files={"artifact": ("a", art.read_bytes())},
    )
    assert (r.status_code, r.json()["error"]) == (400, "artifact_id is not a valid UUID")
    r = mgmt.post(DEPM + "/artifacts", files={"artifact": ("a", b"garbage")})
    assert r.status_code == 400


@pytest.fixture
def world(tmp_path: Path, sim: MenderSim, mgmt: httpx.Client, anon: httpx.Client) -> dict[str, Any]:
    assert upload(mgmt, make_artifact(tmp_path, "rel-2")).status_code == 201
    d1 = Device(sim, mgmt, anon, "1")
    d2 = Device(sim, mgmt, anon, "2")
    return {"d1": d1, "d2": d2}


def test_full_deployment_flow(world: dict[str, Any], sim: MenderSim, mgmt: httpx.Client) -> None:
    d1, d2 = world["d1"], world["d2"]
    did = dep_id(deploy(mgmt, "dep", "rel-2", [d1.id, d2.id]))
    dep = mgmt.get(DEPM + f"/deployments/{did}").json()
    assert dep["status"] == "pending"
    assert dep["max_devices"] == 2
    assert dep["device_count"] == 0
    assert dep["statistics"]["status"]["pending"] == 2
    assert "devices" not in dep
    # §4: per-device records only when the device polls
    assert mgmt.get(DEPM + f"/deployments/{did}/devices").json() == []
    r = d1.next()
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == did
    assert body["artifact"]["artifact_name"] == "rel-2"
    assert body["artifact"]["device_types_compatible"] == ["dev-a"]
    assert body["artifact"]["source"]["method"] == "GET"
    # sticky, fresh link
    assert d1.next().json()["id"] == did
    for s in ("downloading", "installing", "success"):
        assert d1.status(did, s).status_code == 204
    dep = mgmt.get(DEPM + f"/deployments/{did}").json()
    assert dep["status"] == "inprogress"
    assert dep["device_count"] == 1
    assert dep["statistics"]["status"]["success"] == 1
    assert d2.next(post=True).status_code == 200
    assert d2.status(did, "failure").status_code == 204
    log = {"messages": [{"timestamp": "2026-01-01T10:00:00Z", "level": "error", "message": "boom"}]}
    assert d2.c.put(DEPD + f"/{did}/log", json=log, headers=d2.h).status_code == 204
    dep = mgmt.get(DEPM + f"/deployments/{did}").json()
    assert dep["status"] == "finished"
    assert "finished" in dep
    r = mgmt.get(DEPM + f"/deployments/{did}/devices/{d2.id}/log")
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "2026-01-01 10:00:00 +0000 UTC error: boom\n"
    assert mgmt.get(DEPM + f"/deployments/{did}/statistics").json()["failure"] == 1
    devs = mgmt.get(DEPM + f"/deployments/{did}/devices").json()
    assert {d["id"]: d["status"] for d in devs} == {d1.id: "success", d2.id: "failure"}
    assert mgmt.get(DEPM + f"/deployments/{did}/device_list").json() == [d1.id, d2.id]
    r = mgmt.get(DEPM + f"/deployments/{did}/devices/list", params={"per_page": 1})
    assert r.headers["x-total-count"] == "2"
    assert len(r.json()) == 1
    # no more deployments: 204
    assert d1.next("rel-2").status_code == 204
    r = mgmt.get(DEPM + "/deployments")
    assert r.headers["x-total-count"] == "1"
    r = mgmt.post(DEPM + "/deployments/statistics/list", json={"deployment_ids": [did]})
    assert r.json()[0]["id"] == did


def test_create_deployment_errors(world: dict[str, Any], mgmt: httpx.Client) -> None:
    d1 = world["d1"]
    pfx = "Validating request body: "
    cases = [
        (
            {"name": "n", "artifact_name": "rel-2"},
            400,
            pfx + "Invalid deployments definition: provide list of devices or set all_devices flag",
        ),
        (
            {"name": "n", "artifact_name": "rel-2", "devices": [d1.id], "all_devices": True},
            400,
            pfx
            + "Invalid deployments definition: list of devices provided togheter with all_devices flag",
        ),
        (
            {"name": "", "artifact_name": "rel-2", "devices": [d1.id]},
            400,
            pfx + "name: cannot be blank.",
        ),
        (
            {"name": "n", "artifact_name": "nope", "devices": [d1.id]},
            422,
            "No artifact for the deployment",
        ),
    ]
    for body, status, msg in cases:
        r = mgmt.post(DEPM + "/deployments", json=body)
        assert (r.status_code, r.json()["error"]) == (status, msg), body
    assert deploy(mgmt, "n", "rel-2", [d1.id]).status_code == 201
    r = deploy(mgmt, "n", "rel-2", [d1.id])
    assert r.status_code == 409
    assert (
        r.json()["error"]
        == "Invalid deployment definition: there is already an active deployment with the same parameters"
    )


def test_all_devices_frozen_at_creation(
    tmp_path: Path, world: dict[str, Any], sim: MenderSim, mgmt: httpx.Client, anon: httpx.Client
) -> None:
    did = dep_id(deploy(mgmt, "all", "rel-2", all_devices=True))
    assert sorted(mgmt.get(DEPM + f"/deployments/{did}/device_list").json()) == sorted(
        [world["d1"].id, world["d2"].id]
    )
    late = Device(sim, mgmt, anon, "late")
    assert late.next().status_code == 204  # §4 top fact 8


def test_all_devices_none_accepted(tmp_path: Path, mgmt: httpx.Client) -> None:
    upload(mgmt, make_artifact(tmp_path, "x"))
    r = deploy(mgmt, "n", "x", all_devices=True)
    assert (r.status_code, r.json()["error"]) == (400, "No devices for the deployment")


def test_next_selection_oldest_first_and_skip_older(
    tmp_path: Path, world: dict[str, Any], mgmt: httpx.Client
) -> None:
    d1 = world["d1"]
    upload(mgmt, make_artifact(tmp_path, "rel-3"))
    a = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    b = dep_id(deploy(mgmt, "b", "rel-3", [d1.id]))
    assert d1.next().json()["id"] == a
    assert d1.status(a, "success").status_code == 204
    assert d1.next("rel-2").json()["id"] == b


def test_next_noartifact_and_already_installed(
    world: dict[str, Any], sim: MenderSim, mgmt: httpx.Client
) -> None:
    d1, d2 = world["d1"], world["d2"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id, d2.id]))
    # §3 "Artifact choice": exact device type match or noartifact
    assert d1.next(device_type="DEV-A").status_code == 204
    assert d2.next("rel-2").status_code == 204
    recs = {r["device_id"]: r["status"] for r in sim.deployment_records(deployment_id=did)}
    assert recs == {d1.id: "noartifact", d2.id: "already-installed"}
    dep = mgmt.get(DEPM + f"/deployments/{did}").json()
    assert dep["status"] == "finished"


def test_force_installation_skips_already_installed(
    world: dict[str, Any], mgmt: httpx.Client
) -> None:
    d1 = world["d1"]
    dep_id(deploy(mgmt, "a", "rel-2", [d1.id], force_installation=True))
    assert d1.next("rel-2").status_code == 200


def test_next_conflicting_request_data_409(
    world: dict[str, Any], sim: MenderSim, mgmt: httpx.Client
) -> None:
    d1 = world["d1"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    assert d1.next().status_code == 200
    r = d1.next("other-name")
    # §3 "Request recording" / top fact 10
    assert (r.status_code, r.json()["error"]) == (409, "Device provided conflicting request data")
    assert sim.deployment_records(deployment_id=did)[0]["status"] == "failure"
    # GET then POST without provides: the same request (provides nil) → fine; with provides → 409
    did2 = dep_id(deploy(mgmt, "b", "rel-2", [world["d2"].id]))
    d2 = world["d2"]
    assert d2.next().status_code == 200
    assert d2.next(post=True).status_code == 200
    assert d2.next(post=True, provides={"k": "v"}).status_code == 409
    assert did2


def test_next_post_v2_style_body_400(world: dict[str, Any]) -> None:
    d1 = world["d1"]
    r = d1.c.post(
        DEPD + "/next",
        json={"device_provides": {"artifact_name": "a", "device_type": "t"}},
        headers=d1.h,
    )
    assert (r.status_code, r.json()["error"]) == (
        400,
        "artifact_name: cannot be blank; device_type: cannot be blank.",
    )
    r = d1.c.post(
        DEPD + "/next", content=b"{", headers={**d1.h, "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"].startswith("invalid schema: ")
    r = d1.c.get(DEPD + "/next", headers=d1.h)
    assert r.status_code == 400


def test_status_rules(world: dict[str, Any], mgmt: httpx.Client, sim: MenderSim) -> None:
    d1 = world["d1"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    r = d1.status(did, "success")
    assert (r.status_code, r.json()["error"]) == (404, "Resource not found")  # never polled
    d1.next()
    for s in ("pending", "aborted", "noartifact", "decommissioned"):
        r = d1.status(did, s)
        assert (r.status_code, r.json()["error"]) == (400, "status: must be a valid value.")
    r = d1.status(did, "weird")
    assert (r.status_code, r.json()["error"]) == (400, "invalid status for device 'weird'")
    r = d1.status(did, None)
    assert (r.status_code, r.json()["error"]) == (500, "internal error")
    # §3 "Consequences": no transition checks
    assert d1.status(did, "success").status_code == 204
    assert d1.status(did, "success").status_code == 204
    assert d1.status(did, "failure").status_code == 204
    stats = mgmt.get(DEPM + f"/deployments/{did}/statistics").json()
    assert (stats["success"], stats["failure"]) == (0, 1)
    assert d1.status(did, "downloading").status_code == 204
    assert d1.next().json()["id"] == did  # re-activated
    assert mgmt.get(DEPM + f"/deployments/{did}").json()["status"] == "finished"


def test_strict_mode_flags_out_of_order_and_repeats(
    world: dict[str, Any], mgmt: httpx.Client, sim: MenderSim
) -> None:
    sim.strict = True
    d1 = world["d1"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    d1.next()
    d1.status(did, "downloading")
    d1.status(did, "installing")
    assert sim.strict_violations == []
    d1.status(did, "installing")
    d1.status(did, "downloading")
    d1.status(did, "success")
    d1.status(did, "failure")
    assert len(sim.strict_violations) == 3
    assert "repeated" in sim.strict_violations[0]


def test_abort_quirks(world: dict[str, Any], mgmt: httpx.Client, sim: MenderSim) -> None:
    d1, d2 = world["d1"], world["d2"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id, d2.id]))
    d1.next()
    r = mgmt.put(DEPM + f"/deployments/{did}/status", json={"status": "bogus"})
    # §4 / top fact 13: 400, yet the abort runs
    assert (r.status_code, r.json()["error"]) == (400, "Unexpected deployment status")
    assert mgmt.get(DEPM + f"/deployments/{did}").json()["status"] == "finished"
    r = d1.status(did, "downloading")
    assert (r.status_code, r.json()["error"]) == (409, "Deployment aborted")
    log = {"messages": [{"timestamp": "2026-01-01T10:00:00Z", "level": "info", "message": "m"}]}
    assert d1.c.put(DEPD + f"/{did}/log", json=log, headers=d1.h).status_code == 204
    assert d2.next().status_code == 204  # never polled: never sees it
    r = mgmt.put(DEPM + f"/deployments/{did}/status", json={"status": "aborted"})
    assert (r.status_code, r.json()["error"]) == (422, "Deployment already finished")
    r = mgmt.put(
        DEPM + "/deployments/00000000-0000-4000-8000-000000000000/status",
        json={"status": "aborted"},
    )
    assert r.status_code == 422


def test_log_rules(world: dict[str, Any], mgmt: httpx.Client, sim: MenderSim) -> None:
    d1 = world["d1"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    msg = {"timestamp": "2026-01-01T10:00:00Z", "level": "info", "message": "one"}
    r = d1.c.put(DEPD + f"/{did}/log", json={"messages": [msg]}, headers=d1.h)
    assert (r.status_code, r.json()["error"]) == (404, "Deployment not found")
    d1.next()
    r = d1.c.put(DEPD + f"/{did}/log", json={"messages": []}, headers=d1.h)
    assert (r.status_code, r.json()["error"]) == (400, "no messages: invalid deployment log")
    r = d1.c.put(DEPD + "/not-uuid/log", json={"messages": [msg]}, headers=d1.h)
    assert r.status_code == 500
    d1.c.put(DEPD + f"/{did}/log", json={"messages": [msg]}, headers=d1.h)
    d1.c.put(DEPD + f"/{did}/log", json={"messages": [{**msg, "message": "two"}]}, headers=d1.h)
    assert [m["message"] for m in sim.logs(did, d1.id) or []] == ["two"]  # replaced
    assert sim.deployment_records(deployment_id=did)[0]["status"] == "pending"


def test_download_link_expires(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    sim = MenderSim(
        artifact_dir=tmp_path / "a",
        management_token="t",
        clock=lambda: now[0],
        device_link_seconds=60,
    )
    with httpx.Client(transport=httpx.MockTransport(sim.handler), base_url="http://s") as c:
        c.headers["Authorization"] = "Bearer t"
        upload(c, make_artifact(tmp_path, "r"))
        d = Device(sim, c, c, "1")
        did = dep_id(deploy(c, "a", "r", [d.id]))
        src = d.next().json()["artifact"]["source"]
        assert src["expire"] == "2026-01-01T00:01:00Z"
        assert c.get(src["uri"]).status_code == 200
        assert c.get(src["uri"].replace("sig=", "sig=0")).status_code == 403
        now[0] += timedelta(seconds=61)
        assert c.get(src["uri"]).status_code == 403
        assert did


def test_new_artifact_attached_to_active_deployment(
    tmp_path: Path, world: dict[str, Any], mgmt: httpx.Client
) -> None:
    d1 = world["d1"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    upload(mgmt, make_artifact(tmp_path, "rel-2", ("dev-z",)))
    assert len(mgmt.get(DEPM + f"/deployments/{did}").json()["artifacts"]) == 2
    assert d1.next(device_type="dev-z").status_code == 200


def test_smallest_artifact_wins(tmp_path: Path, world: dict[str, Any], mgmt: httpx.Client) -> None:
    upload(mgmt, make_artifact(tmp_path, "multi", ("dev-a", "dev-x"), payload=b"x" * 50000))
    upload(mgmt, make_artifact(tmp_path, "multi", ("dev-a2", "dev-y")))
    d1 = world["d1"]
    dep_id(deploy(mgmt, "a", "multi", [d1.id]))
    art = d1.next().json()["artifact"]
    assert art["device_types_compatible"] == ["dev-a", "dev-x"]


def test_abort_device_deployments(
    world: dict[str, Any], mgmt: httpx.Client, sim: MenderSim
) -> None:
    d1 = world["d1"]
    a = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    d1.next()
    assert mgmt.delete(DEPM + f"/deployments/devices/{d1.id}").status_code == 204
    assert sim.deployment_records(deployment_id=a)[0]["status"] == "aborted"


def test_decommission_marks_records(
    tmp_path: Path, world: dict[str, Any], mgmt: httpx.Client, sim: MenderSim
) -> None:
    d1 = world["d1"]
    a = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    d1.next()
    assert mgmt.delete(f"/api/management/v2/devauth/devices/{d1.id}").status_code == 204
    assert sim.deployment_records(deployment_id=a)[0]["status"] == "decommissioned"


def test_group_deployment(world: dict[str, Any], mgmt: httpx.Client) -> None:
    d1, d2 = world["d1"], world["d2"]
    inv = "/api/management/v1/inventory/devices"
    assert mgmt.put(f"{inv}/{d1.id}/group", json={"group": "g1"}).status_code == 204
    assert mgmt.get(f"{inv}/{d1.id}/group").json() == {"group": "g1"}
    assert mgmt.get(f"{inv}/{d2.id}/group").json() == {"group": None}
    r = mgmt.post(
        DEPM + "/deployments/group/g1",
        json={"name": "g", "artifact_name": "rel-2", "devices": [d2.id]},
    )
    assert r.status_code == 400
    did = dep_id(
        mgmt.post(DEPM + "/deployments/group/g1", json={"name": "g", "artifact_name": "rel-2"})
    )
    assert mgmt.get(DEPM + f"/deployments/{did}/device_list").json() == [d1.id]
    assert mgmt.get(DEPM + f"/deployments/{did}").json()["groups"] == ["g1"]
    r = mgmt.post(DEPM + "/deployments/group/empty", json={"name": "g", "artifact_name": "rel-2"})
    assert (r.status_code, r.json()["error"]) == (400, "No devices for the deployment")
    assert d2.next().status_code == 204
    r = mgmt.get(inv, params={"group": "g1"})
    assert r.headers["x-total-count"] == "1"
    # §4: a single-device deployment records the device's group
    one = dep_id(deploy(mgmt, "one", "rel-2", [d1.id]))
    assert mgmt.get(DEPM + f"/deployments/{one}").json()["groups"] == ["g1"]


def test_unknown_device_ids_keep_deployment_open(world: dict[str, Any], mgmt: httpx.Client) -> None:
    # §4 "Targets": listed IDs are not checked; they count toward max_devices; duplicates too.
    d1 = world["d1"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id, "no-such-device", d1.id]))
    assert mgmt.get(DEPM + f"/deployments/{did}").json()["max_devices"] == 3
    d1.next()
    d1.status(did, "success")
    dep = mgmt.get(DEPM + f"/deployments/{did}").json()
    assert dep["status"] == "inprogress"  # §3 "No timeouts": never finishes


def test_deployment_list_filters(world: dict[str, Any], mgmt: httpx.Client) -> None:
    d1 = world["d1"]
    a = dep_id(deploy(mgmt, "alpha", "rel-2", [d1.id]))
    mgmt.put(DEPM + f"/deployments/{a}/status", json={"status": "aborted"})
    dep_id(deploy(mgmt, "beta", "rel-2", [d1.id]))
    assert [
        d["name"] for d in mgmt.get(DEPM + "/deployments", params={"status": "aborted"}).json()
    ] == ["alpha"]
    assert [
        d["name"] for d in mgmt.get(DEPM + "/deployments", params={"status": "pending"}).json()
    ] == ["beta"]
    assert [
        d["name"] for d in mgmt.get(DEPM + "/deployments", params={"search": "bet"}).json()
    ] == ["beta"]
    names = [d["name"] for d in mgmt.get(DEPM + "/deployments", params={"sort": "asc"}).json()]
    assert names == ["alpha", "beta"]
    assert mgmt.get(DEPM + "/deployments", params={"created_before": "0"}).json() == []
    assert mgmt.get(DEPM + "/deployments", params={"status": "weird"}).status_code == 400


def test_substate_and_length_limits(world: dict[str, Any], mgmt: httpx.Client) -> None:
    d1 = world["d1"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    r = d1.next("x" * 4097)
    assert (r.status_code, r.json()["error"]) == (
        400,
        "artifact_name: the length must be between 1 and 4096.",
    )
    d1.next()
    assert d1.status(did, "installing", substate="step 2").status_code == 204
    [rec] = mgmt.get(DEPM + f"/deployments/{did}/devices").json()
    assert rec["substate"] == "step 2"
    assert rec["image"]["name"] == "rel-2"
    assert "started" in rec
    assert d1.status(did, "installing", substate="s" * 201).status_code == 400


def test_description_too_long_is_500(tmp_path: Path, mgmt: httpx.Client) -> None:
    # §4 "Parts": the model allows 4096 chars; longer fails at store time
    r = upload(mgmt, make_artifact(tmp_path, "d"), description="x" * 4097)
    assert (r.status_code, r.json()["error"]) == (500, "internal error")


def test_delete_artifact(
    tmp_path: Path, world: dict[str, Any], sim: MenderSim, mgmt: httpx.Client
) -> None:
    d1 = world["d1"]
    [a] = mgmt.get(DEPM + "/artifacts").json()
    dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    assert mgmt.delete(DEPM + f"/artifacts/{a['id']}").status_code == 409
    upload(mgmt, make_artifact(tmp_path, "free"))
    free = next(x for x in mgmt.get(DEPM + "/artifacts").json() if x["name"] == "free")
    path = sim.artifact_path(free["id"])
    assert mgmt.delete(DEPM + f"/artifacts/{free['id']}").status_code == 204
    assert not path.exists()


def test_next_post_flat_provides_ignored(world: dict[str, Any], mgmt: httpx.Client) -> None:
    # §3: a mender-client 3.x body (provides as top-level keys, update_control_map) binds to
    # artifact_name/device_type; the rest is ignored.
    d1 = world["d1"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    body = {
        "artifact_name": "old",
        "device_type": "dev-a",
        "rootfs-image.checksum": "abc",
        "update_control_map": True,
    }
    r = d1.c.post(DEPD + "/next", json=body, headers=d1.h)
    assert r.status_code == 200
    assert r.json()["id"] == did
    # the same poll by GET is the same request (provides nil): still fine
    assert d1.next().status_code == 200


def test_deployments_list_paging_headers(world: dict[str, Any], mgmt: httpx.Client) -> None:
    d1 = world["d1"]
    for i in range(3):
        dep_id(deploy(mgmt, f"d{i}", "rel-2", [d1.id]))
    r = mgmt.get(DEPM + "/deployments", params={"per_page": "2"})
    assert r.headers["x-total-count"] == "3"
    rels = [v.rsplit("rel=", 1)[1] for v in r.headers.get_list("link")]
    assert rels == ['"first"', '"next"', '"last"']


def test_upload_metadata_invalid(tmp_path: Path, mgmt: httpx.Client) -> None:
    # §4 "Failures": 0 or more than 200 device types → 400 Metadata invalid
    many = tuple(f"t{i}" for i in range(201))
    r = upload(mgmt, make_artifact(tmp_path, "many", many))
    assert (r.status_code, r.json()["error"]) == (400, "Metadata invalid")
    assert upload(mgmt, make_artifact(tmp_path, "enough", many[:200])).status_code == 201


def test_total_size_counts_first_assignment(world: dict[str, Any], mgmt: httpx.Client) -> None:
    # §3 "200 body": the first assignment adds the artifact size to statistics.total_size
    d1, d2 = world["d1"], world["d2"]
    [art] = mgmt.get(DEPM + "/artifacts").json()
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id, d2.id]))

    def total() -> int:
        size: int = mgmt.get(DEPM + f"/deployments/{did}").json()["statistics"]["total_size"]
        return size

    assert total() == 0
    assert d1.next().status_code == 200
    assert total() == art["size"]
    assert d1.next().status_code == 200  # a repeat poll is not a new assignment
    assert total() == art["size"]
    assert d2.next().status_code == 200
    assert total() == 2 * art["size"]


def test_link_lifetimes_and_fresh_link_on_repeat_poll(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    # §3 "Download link": 24 h for devices; §4 "Artifact reads": 900 s for management;
    # §3 "200 body": while the record stays active, a repeat poll gets a fresh link.
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    sim = MenderSim(artifact_dir=tmp_path / "a", management_token="t", clock=lambda: now[0])
    with httpx.Client(transport=httpx.MockTransport(sim.handler), base_url="http://s") as c:
        c.headers["Authorization"] = "Bearer t"
        upload(c, make_artifact(tmp_path, "r"))
        [art] = c.get(DEPM + "/artifacts").json()
        link = c.get(DEPM + f"/artifacts/{art['id']}/download").json()
        assert link["expire"] == "2026-01-01T00:15:00Z"
        d = Device(sim, c, c, "1")
        dep_id(deploy(c, "a", "r", [d.id]))
        first = d.next().json()["artifact"]["source"]
        assert first["expire"] == "2026-01-02T00:00:00Z"
        now[0] += timedelta(hours=25)
        assert c.get(first["uri"]).status_code == 403  # expired
        again = d.next().json()["artifact"]["source"]
        assert again["expire"] == "2026-01-03T01:00:00Z"
        assert again["uri"] != first["uri"]
        assert c.get(again["uri"]).status_code == 200


def test_abort_device_deployments_marks_next_newer(
    world: dict[str, Any], mgmt: httpx.Client, sim: MenderSim
) -> None:
    # §3 "Devices that never report, and aborts": the oldest active record is aborted and an
    # aborted record is created for the next newer deployment listing the device.
    d1 = world["d1"]
    a = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    b = dep_id(deploy(mgmt, "b", "rel-2", [d1.id, world["d2"].id]))
    assert d1.next().json()["id"] == a
    assert mgmt.delete(DEPM + f"/deployments/devices/{d1.id}").status_code == 204
    recs = {r["deployment_id"]: r["status"] for r in sim.deployment_records(device_id=d1.id)}
    assert recs == {a: "aborted", b: "aborted"}
    assert d1.next().status_code == 204
    # always 204, even for a device with nothing active
    assert mgmt.delete(DEPM + "/deployments/devices/no-such-device").status_code == 204


def test_deployment_reads_errors(world: dict[str, Any], mgmt: httpx.Client) -> None:
    # §4 "Reads": non-UUID → 400, unknown → 404 "Resource not found"; the devices of an unknown
    # deployment → 404 "Deployment not found"; a device log that was never sent → 404.
    unknown = "00000000-0000-4000-8000-000000000000"
    assert mgmt.get(DEPM + "/deployments/not-a-uuid").status_code == 400
    r = mgmt.get(DEPM + f"/deployments/{unknown}")
    assert (r.status_code, r.json()["error"]) == (404, "Resource not found")
    r = mgmt.get(DEPM + f"/deployments/{unknown}/devices")
    assert (r.status_code, r.json()["error"]) == (404, "Deployment not found")
    d1 = world["d1"]
    did = dep_id(deploy(mgmt, "a", "rel-2", [d1.id]))
    d1.next()
    r = mgmt.get(DEPM + f"/deployments/{did}/devices/{d1.id}/log")
    assert (r.status_code, r.json()["error"]) == (404, "Resource not found")
    # statistics/list: 1 to 100 deployment IDs
    r = mgmt.post(DEPM + "/deployments/statistics/list", json={"deployment_ids": []})
    assert r.status_code == 400
    r = mgmt.post(DEPM + "/deployments/statistics/list", json={"deployment_ids": [did, unknown]})
    assert [x["id"] for x in r.json()] == [did]
