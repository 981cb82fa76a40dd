"""``gapferry apply`` with the ``file`` method: payloads placed into a mounted folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from gapferry.fixtures.artifacts import (
    directory_payload,
    escaping_directory_artifact,
    mender_artifact_write,
)
from gapferry.fixtures.device import (
    DevicePlan,
    Keys,
    by_device,
    make_transfer,
    outcome_json,
    read_results,
    result_says_why,
    run_apply,
    single_file_artifact,
    write_devices_file,
)

pytestmark = pytest.mark.real_tools


def _dir_artifact(tmp: Path, name: str, files: dict[str, bytes], keys: Keys) -> Path:
    tree = tmp / f"{name}-tree"
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    payload = directory_payload(tmp / f"{name}-payload", dest_dir="/opt/app", tree=tree)
    return mender_artifact_write(
        tmp / f"{name}.mender",
        name=name,
        payload_type="directory",
        files=payload,
        key=keys.artifact,
    )


def _device_root(tmp: Path) -> Path:
    root = tmp / "mounted-device"
    (root / "opt" / "app").mkdir(parents=True)
    (root / "opt" / "app" / "old.txt").write_bytes(b"old\n")
    return root


def test_directory_payload_placed(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    art = _dir_artifact(tmp_path, "app-2", {"bin/run": b"#!/bin/sh\n", "README": b"v2\n"}, keys)
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="hmi-1", artifact=art, artifact_name="app-2")])
    devices = write_devices_file(
        tmp_path / "devices.toml",
        {"hmi-1": {"method": "file", "path": str(root)}},
        verify_key=keys.artifact.public,
    )
    r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 0, r.output
    d = by_device(outcome_json(r))["hmi-1"]
    assert d["outcome"] == "success"
    assert d["artifact_name_after"] == "app-2"
    app = root / "opt" / "app"
    assert sorted(p.relative_to(app).as_posix() for p in app.rglob("*")) == [
        "README",
        "bin",
        "bin/run",
    ]
    assert (app / "README").read_bytes() == b"v2\n"
    assert not list((root / "opt").glob("*gapferry*"))  # no backup left behind
    [result] = read_results(media, keys)
    assert [s.status for s in result.result.manifest.devices[0].steps] == [
        "installing",
        "success",
    ]


def test_failed_check_restores_the_previous_folder(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    art = _dir_artifact(tmp_path, "app-2", {"README": b"v2\n"}, keys)
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="hmi-1", artifact=art, artifact_name="app-2")])
    devices = write_devices_file(
        tmp_path / "devices.toml",
        {
            "hmi-1": {
                "method": "file",
                "path": str(root),
                # The check sees the new content, then fails: the old folder must come back.
                "check_command": 'test -f "$GAPFERRY_ROOT/opt/app/README" && exit 7',
            }
        },
    )
    r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["hmi-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "failure"
    assert "exit 7" in str(d["reason"])
    assert "restored" in str(d["reason"])
    app = root / "opt" / "app"
    assert [p.name for p in app.iterdir()] == ["old.txt"]
    assert (app / "old.txt").read_bytes() == b"old\n"
    assert not list((root / "opt").glob("*gapferry*"))


def test_hostile_update_tar_refused_before_placing(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    art = escaping_directory_artifact(tmp_path, keys.artifact)
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="hmi-1", artifact=art, artifact_name="evil")])
    devices = write_devices_file(
        tmp_path / "devices.toml", {"hmi-1": {"method": "file", "path": str(root)}}
    )
    r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["hmi-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "failure"
    assert d["code"] == "artifact-unsafe-path"
    assert (root / "opt" / "app" / "old.txt").read_bytes() == b"old\n"
    assert not (tmp_path / "escape.txt").exists()
    assert not (root / "escape.txt").exists()


def test_single_file_payload_placed_with_mode(tmp_path: Path, keys: Keys) -> None:
    root = tmp_path / "mounted-device"
    root.mkdir()
    art = single_file_artifact(
        tmp_path / "cfg.mender",
        name="cfg-2",
        dest_dir=Path("/etc/plant"),
        content=b"speed=3\n",
        key=keys.artifact,
    )
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    devices = write_devices_file(
        tmp_path / "devices.toml", {"plc-1": {"method": "file", "path": str(root)}}
    )
    r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 0, r.output
    placed = root / "etc" / "plant" / "app.conf"
    assert placed.read_bytes() == b"speed=3\n"
    assert placed.stat().st_mode & 0o777 == 0o644


def test_unmounted_path_is_skipped(tmp_path: Path, keys: Keys) -> None:
    art = single_file_artifact(
        tmp_path / "cfg.mender", name="cfg-2", dest_dir=Path("/etc"), content=b"x", key=None
    )
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    devices = write_devices_file(
        tmp_path / "devices.toml",
        {"plc-1": {"method": "file", "path": str(tmp_path / "not-mounted")}},
    )
    r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["plc-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "skipped"
    assert d["code"] == "not-mounted"
    assert not (tmp_path / "not-mounted").exists()
