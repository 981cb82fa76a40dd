"""``gapferry apply`` with the ``file-sftp`` method: payloads placed over SFTP (ADR 0054), against
the real test device (``sshd`` on loopback, OpenSSH's ``sftp-server``)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest
from gapferry.common.errors import InvalidData
from gapferry.fixtures.artifacts import (
    directory_payload,
    escaping_directory_artifact,
    mender_artifact_write,
    single_file_payload,
)
from gapferry.fixtures.device import (
    DevicePlan,
    Keys,
    TestDevice,
    by_device,
    make_transfer,
    outcome_json,
    read_results,
    result_says_why,
    run_apply,
    running_device,
    write_devices_file,
)
from gapferry.isolated.devices import load_devices_file
from gapferry.isolated.installers.base import get_installer, registered_methods
from gapferry.isolated.installers.file_sftp import _join
from gapferry.isolated.installers.sftp import quote

pytestmark = pytest.mark.real_tools


def _entry(dev: TestDevice, root: Path, **extra: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "method": "file-sftp",
        "host": dev.host,
        "port": dev.port,
        "user": dev.user,
        "identity_file": str(dev.identity_file),
        "known_hosts": str(dev.known_hosts),
        "ssh_config": "/dev/null",
        "root": str(root),
    }
    entry.update(extra)
    return entry


def _single(tmp: Path, keys: Keys, *, name: str, content: bytes, perms: str = "640") -> Path:
    files = single_file_payload(
        tmp / f"{name}-payload",
        dest_dir="/etc/plant",
        filename="app.conf",
        content=content,
        permissions=perms,
    )
    return mender_artifact_write(
        tmp / f"{name}.mender",
        name=name,
        payload_type="single-file",
        files=files,
        key=keys.artifact,
    )


def _dir_artifact(tmp: Path, name: str, files: dict[str, bytes], keys: Keys) -> Path:
    tree = tmp / f"{name}-tree"
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    (tree / "bin").mkdir(exist_ok=True)
    payload = directory_payload(tmp / f"{name}-payload", dest_dir="/opt/app", tree=tree)
    return mender_artifact_write(
        tmp / f"{name}.mender",
        name=name,
        payload_type="directory",
        files=payload,
        key=keys.artifact,
    )


def _device_root(tmp: Path) -> Path:
    """The device's folder for placements (the device sees the test's tmp at the same path)."""
    root = tmp / "device-root"
    (root / "opt" / "app" / "lib" / "deep").mkdir(parents=True)
    (root / "opt" / "app" / "old.txt").write_bytes(b"old\n")
    (root / "opt" / "app" / "lib" / "deep" / "old.so").write_bytes(b"so\n")
    (root / "etc" / "plant").mkdir(parents=True)
    (root / "etc" / "plant" / "app.conf").write_bytes(b"speed=1\n")
    return root


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def _leftovers(root: Path) -> list[str]:
    return [p.as_posix() for p in root.rglob("*gapferry*")]


def _connections(dev: TestDevice) -> int:
    return dev.sshd_log.read_text().count("Accepted publickey")


def test_single_file_placed_with_mode(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    art = _single(tmp_path, keys, name="cfg-2", content=b"speed=3\n")
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    with running_device(tmp_path) as dev:
        devices = write_devices_file(
            tmp_path / "devices.toml",
            {"plc-1": _entry(dev, root)},
            verify_key=keys.artifact.public,
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        # The refusal tests count these: prove that a connection is counted.
        assert _connections(dev) >= 1
    assert r.exit_code == 0, r.output
    d = by_device(outcome_json(r))["plc-1"]
    assert d["outcome"] == "success"
    assert d["artifact_name_after"] == "cfg-2"
    placed = root / "etc" / "plant" / "app.conf"
    assert placed.read_bytes() == b"speed=3\n"
    assert placed.stat().st_mode & 0o777 == 0o640
    assert _leftovers(root) == []  # no temporary file, no backup
    [result] = read_results(media, keys)
    assert [s.status for s in result.result.manifest.devices[0].steps] == [
        "installing",
        "success",
    ]


def test_single_file_into_new_folders(tmp_path: Path, keys: Keys) -> None:
    root = tmp_path / "empty-root"
    root.mkdir()
    art = _single(tmp_path, keys, name="cfg-2", content=b"x\n", perms="600")
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    with running_device(tmp_path) as dev:
        devices = write_devices_file(tmp_path / "devices.toml", {"plc-1": _entry(dev, root)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 0, r.output
    placed = root / "etc" / "plant" / "app.conf"
    assert placed.read_bytes() == b"x\n"
    assert placed.stat().st_mode & 0o777 == 0o600


def test_directory_replaces_the_old_tree(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    # A link in the old tree to a folder outside it: removing the backup must not follow it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"keep\n")
    (root / "opt" / "app" / "lib" / "to-outside").symlink_to(outside)
    art = _dir_artifact(
        tmp_path, "app-2", {"bin/run": b"#!/bin/sh\n", "README": b"v2\n", "a b*c": b"odd\n"}, keys
    )
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="hmi-1", artifact=art, artifact_name="app-2")])
    with running_device(tmp_path) as dev:
        devices = write_devices_file(tmp_path / "devices.toml", {"hmi-1": _entry(dev, root)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 0, r.output
    d = by_device(outcome_json(r))["hmi-1"]
    assert d["outcome"] == "success", d
    app = root / "opt" / "app"
    assert _tree(app) == {
        "README": b"v2\n",
        "a b*c": b"odd\n",
        "bin": None,
        "bin/run": b"#!/bin/sh\n",
    }
    assert _leftovers(root) == []  # the backup (the old tree) was removed
    assert (outside / "keep.txt").read_bytes() == b"keep\n"  # the link was not followed


def test_failed_check_restores_the_previous_folder(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    before = _tree(root / "opt" / "app")
    art = _dir_artifact(tmp_path, "app-2", {"README": b"v2\n"}, keys)
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="hmi-1", artifact=art, artifact_name="app-2")])
    # The check (on the laptop) sees the new content on the device, then fails.
    check = 'test -f "$GAPFERRY_ROOT/opt/app/README" && exit 7'
    with running_device(tmp_path) as dev:
        devices = write_devices_file(
            tmp_path / "devices.toml", {"hmi-1": _entry(dev, root, check_command=check)}
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["hmi-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "failure"
    assert d["code"] == "check-failed"
    assert "exit 7" in str(d["reason"])
    assert "restored" in str(d["reason"])
    assert _tree(root / "opt" / "app") == before
    assert _leftovers(root) == []


def test_failed_check_restores_the_previous_file(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    conf = root / "etc" / "plant" / "app.conf"
    conf.chmod(0o604)
    art = _single(tmp_path, keys, name="cfg-2", content=b"speed=3\n")
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    check = 'grep -q speed=3 "$GAPFERRY_ROOT/etc/plant/app.conf" && exit 3'
    with running_device(tmp_path) as dev:
        devices = write_devices_file(
            tmp_path / "devices.toml", {"plc-1": _entry(dev, root, check_command=check)}
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["plc-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "failure"
    assert "exit 3" in str(d["reason"])
    assert conf.read_bytes() == b"speed=1\n"
    assert conf.stat().st_mode & 0o777 == 0o604
    assert _leftovers(root) == []


def test_upload_failure_leaves_the_old_file(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    # A destination folder the device cannot write to: a read-only bind mount inside the device.
    ro = root / "etc" / "plant"
    art = _single(tmp_path, keys, name="cfg-2", content=b"speed=3\n")
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    with running_device(tmp_path, binds={str(ro): ro}) as dev:
        p = dev.exec(f"mount -o remount,ro,bind '{ro}'")
        assert p.returncode == 0, p.stderr
        devices = write_devices_file(tmp_path / "devices.toml", {"plc-1": _entry(dev, root)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["plc-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "failure"
    assert d["code"] == "install-failed"
    assert (ro / "app.conf").read_bytes() == b"speed=1\n"
    assert _leftovers(root) == []


def test_connection_lost_mid_upload_then_rerun(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    conf = root / "etc" / "plant" / "app.conf"
    big = os.urandom(48 * 1024 * 1024)  # incompressible: the upload takes a while
    art = _single(tmp_path, keys, name="cfg-2", content=big)
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    with running_device(tmp_path) as dev:
        devices = write_devices_file(tmp_path / "devices.toml", {"plc-1": _entry(dev, root)})
        state = tmp_path / "state.db"
        cut = threading.Event()

        def pull_cable() -> None:
            # As soon as the temporary upload has 1 MiB on the device: drop every connection.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for p in conf.parent.glob(".app.conf.gapferry-new-*"):
                    with contextlib.suppress(OSError):
                        if p.stat().st_size > 1024 * 1024:
                            dev.kill_sessions()
                            cut.set()
                            return
                time.sleep(0.002)

        watcher = threading.Thread(target=pull_cable)
        watcher.start()
        r = run_apply(media, keys, devices, state)
        watcher.join()
        assert cut.is_set()
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["plc-1"]
        assert (d["outcome"], d["retry"]) == ("skipped", True), d["reason"]
        assert "nothing was replaced" in str(d["reason"])
        # Untouched: the old file, and the partial upload removed once the device answered again.
        assert conf.read_bytes() == b"speed=1\n"
        assert _leftovers(root) == []
        [first] = read_results(media, keys)
        assert (
            first.result.manifest.devices[0].outcome,
            first.result.manifest.devices[0].reason,
        ) == ("skipped", d["reason"])

        r2 = run_apply(media, keys, devices, state)
        assert r2.exit_code == 0, r2.output
        doc = outcome_json(r2)
        assert doc["resumed"] is True
        assert by_device(doc)["plc-1"]["outcome"] == "success"
        assert conf.read_bytes() == big
        assert _leftovers(root) == []


def test_unknown_host_key_refused_before_upload(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    before = _tree(root)
    art = _single(tmp_path, keys, name="cfg-2", content=b"speed=3\n")
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with running_device(tmp_path) as dev:
        devices = write_devices_file(
            tmp_path / "devices.toml", {"plc-1": _entry(dev, root, known_hosts=str(empty))}
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert _connections(dev) == 0
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["plc-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "skipped"
    assert d["code"] == "host-key"
    assert "known_hosts" in str(d["reason"])
    assert empty.read_text() == ""  # never accepted
    assert _tree(root) == before


def test_hostile_update_tar_refused_before_any_connection(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    before = _tree(root)
    art = escaping_directory_artifact(tmp_path, keys.artifact)
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="hmi-1", artifact=art, artifact_name="evil")])
    with running_device(tmp_path) as dev:
        devices = write_devices_file(tmp_path / "devices.toml", {"hmi-1": _entry(dev, root)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert _connections(dev) == 0
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["hmi-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "failure"
    assert d["code"] == "artifact-unsafe-path"
    assert _tree(root) == before
    assert not (tmp_path / "escape.txt").exists()


def test_symlinked_destination_refused_on_the_device(tmp_path: Path, keys: Keys) -> None:
    root = _device_root(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "etc" / "plant" / "app.conf").unlink()
    (root / "etc" / "plant").rmdir()
    (root / "etc" / "plant").symlink_to(elsewhere)
    art = _single(tmp_path, keys, name="cfg-2", content=b"speed=3\n")
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    with running_device(tmp_path) as dev:
        devices = write_devices_file(tmp_path / "devices.toml", {"plc-1": _entry(dev, root)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["plc-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "failure"
    assert d["code"] == "unsafe-path"
    assert "symbolic link" in str(d["reason"])
    assert list(elsewhere.iterdir()) == []


def test_missing_root_is_skipped(tmp_path: Path, keys: Keys) -> None:
    art = _single(tmp_path, keys, name="cfg-2", content=b"speed=3\n")
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="plc-1", artifact=art, artifact_name="cfg-2")])
    with running_device(tmp_path) as dev:
        devices = write_devices_file(
            tmp_path / "devices.toml", {"plc-1": _entry(dev, tmp_path / "no-such-root")}
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["plc-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "skipped"
    assert d["code"] == "bad-root"
    assert not (tmp_path / "no-such-root").exists()


def test_file_sftp_is_registered_and_checked_in_the_devices_file(tmp_path: Path) -> None:
    assert "file-sftp" in registered_methods()
    assert get_installer("file-sftp").method == "file-sftp"
    bad = tmp_path / "devices.toml"
    bad.write_text('[devices.a]\nmethod = "file-sftp"\nroot = "/srv"\n')
    with pytest.raises(InvalidData) as e:
        load_devices_file(bad)
    assert e.value.code == "bad-devices-file"
    bad.write_text('[devices.a]\nmethod = "file-sftp"\nhost = "h"\nroot = "srv"\n')
    with pytest.raises(InvalidData):
        load_devices_file(bad)
    good = tmp_path / "good.toml"
    good.write_text('[devices.a]\nmethod = "file-sftp"\nhost = "h"\n')
    assert load_devices_file(good).devices["a"].root == "/"


def test_sftp_quoting() -> None:
    assert quote('/a b/"q"\\*') == '"/a b/\\"q\\"\\\\*"'
    with pytest.raises(ValueError, match="control character"):
        quote("/a\nrm /")


def test_dest_dir_stays_under_root() -> None:
    # An absolute dest_dir is placed below root, never at the device's own path.
    assert _join("/srv/dev", "/etc/plant", "app.conf") == "/srv/dev/etc/plant/app.conf"
    assert _join("/", "/opt/app") == "/opt/app"
