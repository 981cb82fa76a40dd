"""``gapferry apply`` against real devices: an sshd on loopback whose sessions run the real
mender 3.4 client in a throwaway root (`gapferry.fixtures.device`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gapferry.fixtures.device import (
    FAILING_MODULE,
    REBOOT_MODULE,
    DevicePlan,
    Keys,
    by_device,
    make_transfer,
    module_artifact,
    outcome_json,
    read_results,
    result_says_why,
    run_apply,
    running_device,
    single_file_artifact,
    ssh_entry,
    write_devices_file,
)
from gapferry.isolated.report import DeviceLog

pytestmark = pytest.mark.real_tools


def test_success_installs_commits_and_reports(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app-v2.mender", name="app-v2", dest_dir=dest, content=b"v2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    geo_ran = tmp_path / "geo-ran"
    scripts = {
        "mender-inventory-rack": "#!/bin/sh\necho rack=R7\necho ipv4=10.0.0.1\necho ipv4=10.0.0.2\n",
        # Calls the Internet on a real device: the applier must not run it.
        "mender-inventory-geo": f"#!/bin/sh\ntouch {geo_ran}\necho geo-city=x\n",
    }
    with running_device(
        tmp_path, verify_key=keys.artifact.public, inventory_scripts=scripts
    ) as dev:
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        devices = write_devices_file(
            tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)}, verify_key=keys.artifact.public
        )
        state = tmp_path / "state.db"
        r = run_apply(media, keys, devices, state)
        assert r.exit_code == 0, r.output
        doc = outcome_json(r)
        d = by_device(doc)["dev-1"]
        assert d["outcome"] == "success"
        assert d["artifact_name_after"] == "app-v2"
        assert (dest / "app.conf").read_bytes() == b"v2\n"
        assert dev.show_artifact() == "app-v2"
        assert not dev.pending_update()
        # The result bundle on the medium is signed by the technician and carries the receipt.
        [result] = read_results(media, keys)
        m = result.result.manifest
        assert m.receipt.transfer_bundle_id == doc["bundle_id"]
        [rd] = m.devices
        assert rd.outcome == "success"
        assert [s.status for s in rd.steps] == ["downloading", "installing", "success"]
        inv = {a.name: a.value for a in rd.inventory}
        assert inv["artifact_name"] == "app-v2"
        assert inv["rootfs-image.single-file.version"] == "app-v2"
        assert "kernel" in inv
        assert inv["device_type"] == "test-device"
        assert inv["os"]  # PRETTY_NAME from the device's /etc/os-release
        assert inv["rack"] == "R7"
        assert inv["ipv4"] == ["10.0.0.1", "10.0.0.2"]
        assert "geo-city" not in inv
        assert not geo_ran.exists()
        assert any("mender install" in ln.message for ln in result.read_log("dev-1"))

        # The same bundle again: nothing is installed twice, the stored report is reused.
        (dest / "app.conf").write_bytes(b"changed by hand\n")
        r2 = run_apply(media, keys, devices, state)
        assert r2.exit_code == 0, r2.output
        assert outcome_json(r2)["resumed"] is True
        assert by_device(outcome_json(r2))["dev-1"]["outcome"] == "success"
        assert (dest / "app.conf").read_bytes() == b"changed by hand\n"


def test_device_type_mismatch_is_refused_before_transfer(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender",
        name="app-other",
        dest_dir=dest,
        content=b"x",
        key=keys.artifact,
        device_types=["other-device"],
    )
    media = tmp_path / "media"
    with running_device(tmp_path) as dev:
        # The manifest claims test-device; the artifact says other-device.
        make_transfer(
            media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-other")]
        )
        devices = write_devices_file(tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        result_says_why(media, keys, d)
        assert d["outcome"] == "failure"
        assert d["code"] == "incompatible"
        assert "other-device" in str(d["reason"])
        # Nothing reached the device: no SSH session was even opened.
        assert "Starting session" not in dev.sshd_log.read_text()
        assert dev.show_artifact() == "factory-image"
        assert not dest.exists()
        [result] = read_results(media, keys)
        assert result.result.manifest.devices[0].outcome == "failure"


def test_device_reports_other_type_than_the_manifest(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-v2", dest_dir=dest, content=b"x", key=keys.artifact
    )
    media = tmp_path / "media"
    with running_device(tmp_path, device_type="real-type") as dev:
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        devices = write_devices_file(tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        result_says_why(media, keys, d)
        assert d["outcome"] == "failure"
        assert d["code"] == "incompatible"
        assert "real-type" in str(d["reason"])
        assert dev.show_artifact() == "factory-image"
        assert not dest.exists()


def test_artifact_depends_not_met_is_refused_before_transfer(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    # Only installs over "release-7"; the device runs factory-image (the manifest agrees).
    art = single_file_artifact(
        tmp_path / "app.mender",
        name="app-v2",
        dest_dir=dest,
        content=b"v2\n",
        key=keys.artifact,
        extra_args=["--artifact-name-depends", "release-7"],
    )
    media = tmp_path / "media"
    with running_device(tmp_path, verify_key=keys.artifact.public) as dev:
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        devices = write_devices_file(
            tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)}, verify_key=keys.artifact.public
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        rd = result_says_why(media, keys, d)
        assert (d["outcome"], d["code"]) == ("failure", "incompatible")
        assert "release-7" in str(d["reason"])
        assert "refused before sending anything" in str(d["reason"])
        assert [s.status for s in rd.steps] == ["failure"]  # never "downloading"
        [result] = read_results(media, keys)
        assert not any("mender install" in ln.message for ln in result.read_log("dev-1"))
        assert dev.show_artifact() == "factory-image"
        assert not dev.pending_update()
        assert not dest.exists()


def test_openssh_config_alias_and_agent_are_honoured(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gapferry.fixtures.sshkeys import ssh_add, ssh_agent

    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-v2", dest_dir=dest, content=b"v2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    with running_device(tmp_path) as dev, ssh_agent() as env:
        # The devices file names only a Host alias; the technician's OpenSSH config says where it
        # is, and the device key is in the agent (no identity_file anywhere).
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host pump-alias\n  HostName {dev.host}\n  Port {dev.port}\n  User {dev.user}\n"
            f"  UserKnownHostsFile {dev.known_hosts}\n"
        )
        ssh_add(dev.identity_file, env=env)
        monkeypatch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        devices = write_devices_file(
            tmp_path / "devices.toml",
            {"dev-1": {"method": "mender-ssh", "host": "pump-alias", "ssh_config": str(config)}},
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 0, r.output
        assert by_device(outcome_json(r))["dev-1"]["outcome"] == "success"
        assert dev.show_artifact() == "app-v2"


def test_unsigned_artifact_refused_when_a_key_is_configured(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-unsigned", dest_dir=dest, content=b"x", key=None
    )
    media = tmp_path / "media"
    with running_device(tmp_path) as dev:
        make_transfer(
            media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-unsigned")]
        )
        devices = write_devices_file(
            tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)}, verify_key=keys.artifact.public
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        result_says_why(media, keys, d)
        assert d["outcome"] == "failure"
        assert d["code"] == "artifact-unsigned"
        assert "Starting session" not in dev.sshd_log.read_text()
        assert dev.show_artifact() == "factory-image"
        assert not dest.exists()
        [result] = read_results(media, keys)
        rd = result.result.manifest.devices[0]
        assert rd.outcome == "failure"
        assert rd.reason is not None
        assert "signature" in rd.reason


def test_artifact_signed_by_another_key_refused(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-x", dest_dir=dest, content=b"x", key=keys.other_artifact
    )
    media = tmp_path / "media"
    make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-x")])
    devices = write_devices_file(
        tmp_path / "devices.toml",
        {"dev-1": {"method": "mender-ssh", "host": "127.0.0.1", "port": 9}},
        verify_key=keys.artifact.public,
    )
    r = run_apply(media, keys, devices, tmp_path / "state.db")
    assert r.exit_code == 1, r.output
    d = by_device(outcome_json(r))["dev-1"]
    result_says_why(media, keys, d)
    assert d["outcome"] == "failure"
    assert d["code"] == "artifact-bad-signature"


def test_failed_install_is_rolled_back_by_the_client(tmp_path: Path, keys: Keys) -> None:
    target = tmp_path / "dev-files" / "state.txt"
    target.parent.mkdir()
    target.write_bytes(b"old\n")
    art = module_artifact(
        tmp_path / "fail.mender",
        name="fail-v1",
        module="failing-module",
        files={"dest": str(target).encode(), "content": b"new\n"},
        key=keys.artifact,
    )
    media = tmp_path / "media"
    with running_device(
        tmp_path, verify_key=keys.artifact.public, extra_modules={"failing-module": FAILING_MODULE}
    ) as dev:
        make_transfer(
            media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="fail-v1")]
        )
        devices = write_devices_file(tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        result_says_why(media, keys, d)
        assert d["outcome"] == "failure"
        assert d["code"] == "install-failed"
        assert "simulated failure" in str(d["reason"]) or "mender install failed" in str(
            d["reason"]
        )
        assert target.read_bytes() == b"old\n"
        assert dev.show_artifact() == "factory-image"
        assert not dev.pending_update()


def test_failed_check_rolls_back_with_mender_rollback(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    dest.mkdir()
    (dest / "app.conf").write_bytes(b"v1\n")
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-v2", dest_dir=dest, content=b"v2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    with running_device(tmp_path, verify_key=keys.artifact.public) as dev:
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        devices = write_devices_file(
            tmp_path / "devices.toml",
            {"dev-1": ssh_entry(dev, check_command="echo health check failed >&2; exit 3")},
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        result_says_why(media, keys, d)
        assert d["outcome"] == "failure"
        assert "check command failed (exit 3)" in str(d["reason"])
        assert "rolled back" in str(d["reason"])
        assert (dest / "app.conf").read_bytes() == b"v1\n"
        assert dev.show_artifact() == "factory-image"
        assert not dev.pending_update()
        [result] = read_results(media, keys)
        log = [ln.message for ln in result.read_log("dev-1")]
        assert any("mender rollback -> exit 0" in m for m in log)


def test_uncommitted_update_is_reported_not_overwritten(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    other = single_file_artifact(
        tmp_path / "other.mender",
        name="hand-installed",
        dest_dir=dest,
        content=b"by hand\n",
        key=None,
    )
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-v2", dest_dir=dest, content=b"v2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    with running_device(tmp_path) as dev:
        # Someone installed an update by hand and did not commit it.
        assert dev.mender("install", str(other)).returncode == 0
        assert dev.pending_update()
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        devices = write_devices_file(tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        result_says_why(media, keys, d)
        assert d["outcome"] == "skipped"
        assert d["code"] == "busy"
        assert "hand-installed" in str(d["reason"])
        assert d["retry"] is True
        # Untouched: still pending, the hand-installed file still in place.
        assert dev.pending_update()
        assert (dest / "app.conf").read_bytes() == b"by hand\n"
        [result] = read_results(media, keys)
        assert result.result.manifest.devices[0].outcome == "skipped"


def test_payload_that_needs_a_reboot(tmp_path: Path, keys: Keys) -> None:
    target = tmp_path / "dev-files" / "kernel.txt"
    target.parent.mkdir()
    target.write_bytes(b"kernel 1\n")
    art = module_artifact(
        tmp_path / "reboot.mender",
        name="kernel-2",
        module="reboot-module",
        files={"dest": str(target).encode(), "content": b"kernel 2\n"},
        key=keys.artifact,
    )
    media = tmp_path / "media"
    with running_device(
        tmp_path, verify_key=keys.artifact.public, extra_modules={"reboot-module": REBOOT_MODULE}
    ) as dev:
        boot_before = dev.boot_id()
        make_transfer(
            media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="kernel-2")]
        )
        devices = write_devices_file(tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 0, r.output
        d = by_device(outcome_json(r))["dev-1"]
        assert d["outcome"] == "success"
        assert dev.reboots() == 1
        assert dev.boot_id() != boot_before
        assert target.read_bytes() == b"kernel 2\n"
        assert dev.show_artifact() == "kernel-2"
        [result] = read_results(media, keys)
        steps = [s.status for s in result.result.manifest.devices[0].steps]
        assert steps == ["downloading", "installing", "rebooting", "success"]


def test_unknown_host_key_is_refused(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-v2", dest_dir=dest, content=b"v2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    with running_device(tmp_path) as dev:
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        devices = write_devices_file(
            tmp_path / "devices.toml", {"dev-1": ssh_entry(dev, known_hosts=str(empty))}
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        result_says_why(media, keys, d)
        assert d["outcome"] == "skipped"
        assert d["code"] == "host-key"
        assert "known_hosts" in str(d["reason"])
        assert empty.read_text() == ""  # never accepted
        assert dev.show_artifact() == "factory-image"
        assert not dest.exists()


def test_connection_lost_mid_transfer_then_rerun(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dev-files"
    big = os.urandom(12 * 1024 * 1024)  # incompressible: the transfer takes a while
    art = single_file_artifact(
        tmp_path / "big.mender", name="big-v1", dest_dir=dest, content=big, key=keys.artifact
    )
    media = tmp_path / "media"
    with running_device(tmp_path, verify_key=keys.artifact.public) as dev:
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="big-v1")])
        devices = write_devices_file(tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)})
        state = tmp_path / "state.db"

        original = DeviceLog.progress
        cut = {"done": False}

        def pull_cable(self: DeviceLog, done: int, total: int) -> None:
            if not cut["done"] and done >= 2 * 1024 * 1024:
                cut["done"] = True
                dev.kill_sessions()
            original(self, done, total)

        monkeypatch.setattr(DeviceLog, "progress", pull_cable)
        r = run_apply(media, keys, devices, state)
        assert cut["done"]
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        assert d["outcome"] == "skipped", d
        assert d["retry"] is True
        result_says_why(media, keys, d)
        assert dev.show_artifact() == "factory-image"
        # Nothing pending for the client (its work folder may be left from the cut download).
        assert dev.mender("rollback").returncode == 2
        assert not (dest / "app.conf").exists()

        monkeypatch.setattr(DeviceLog, "progress", original)
        r2 = run_apply(media, keys, devices, state)
        assert r2.exit_code == 0, r2.output
        doc = outcome_json(r2)
        assert doc["resumed"] is True
        assert by_device(doc)["dev-1"]["outcome"] == "success"
        assert (dest / "app.conf").read_bytes() == big
        assert dev.show_artifact() == "big-v1"
        assert len(read_results(media, keys)) == 2


def test_missing_device_verify_key_is_refused(tmp_path: Path, keys: Keys) -> None:
    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-v2", dest_dir=dest, content=b"v2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    with running_device(tmp_path, verify_key=keys.artifact.public) as dev:
        # mender.conf names the key, but the file is gone: the client would skip verification.
        (dev.root.etc / "artifact-verify-key.pem").unlink()
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        devices = write_devices_file(tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)})
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        result_says_why(media, keys, d)
        assert d["outcome"] == "skipped"
        assert d["code"] == "device-verify-key-missing"
        assert "/etc/mender/artifact-verify-key.pem" in str(d["reason"])
        assert dev.show_artifact() == "factory-image"
        assert not dest.exists()


def test_two_devices_in_parallel_with_mixed_outcomes(tmp_path: Path, keys: Keys) -> None:
    dest1, dest2 = tmp_path / "files-1", tmp_path / "files-2"
    art1 = single_file_artifact(
        tmp_path / "a1.mender", name="app-v2", dest_dir=dest1, content=b"1\n", key=keys.artifact
    )
    art2 = single_file_artifact(
        tmp_path / "a2.mender", name="app-v2b", dest_dir=dest2, content=b"2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    with (
        running_device(tmp_path, name="d1", verify_key=keys.artifact.public) as d1,
        running_device(tmp_path, name="d2", verify_key=keys.artifact.public) as d2,
    ):
        make_transfer(
            media,
            keys,
            [
                DevicePlan(name="pump-1", artifact=art1, artifact_name="app-v2"),
                DevicePlan(name="pump-2", artifact=art2, artifact_name="app-v2b", current="x"),
            ],
        )
        devices = write_devices_file(
            tmp_path / "devices.toml",
            {"pump-1": ssh_entry(d1), "pump-2": ssh_entry(d2)},
            verify_key=keys.artifact.public,
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 0, r.output
        doc = by_device(outcome_json(r))
        assert doc["pump-1"]["outcome"] == doc["pump-2"]["outcome"] == "success"
        assert d1.show_artifact() == "app-v2"
        assert d2.show_artifact() == "app-v2b"
        [result] = read_results(media, keys)
        for dev in result.result.manifest.devices:
            log = [ln.message for ln in result.read_log(dev.name)]
            assert not any("has no ArtifactVerifyKey" in m for m in log), log


def test_device_that_does_not_come_back_is_rolled_back(tmp_path: Path, keys: Keys) -> None:
    target = tmp_path / "dev-files" / "kernel.txt"
    target.parent.mkdir()
    target.write_bytes(b"kernel 1\n")
    art = module_artifact(
        tmp_path / "reboot.mender",
        name="kernel-2",
        module="reboot-module",
        files={"dest": str(target).encode(), "content": b"kernel 2\n"},
        key=keys.artifact,
    )
    media = tmp_path / "media"
    with running_device(tmp_path, extra_modules={"reboot-module": REBOOT_MODULE}) as dev:
        make_transfer(
            media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="kernel-2")]
        )
        # The "reboot" does nothing: the boot id never changes.
        devices = write_devices_file(
            tmp_path / "devices.toml",
            {"dev-1": ssh_entry(dev, reboot_command="true", reboot_timeout=1.5)},
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        result_says_why(media, keys, d)
        assert d["outcome"] == "failure"
        assert "did not come back" in str(d["reason"])
        assert "rolled back" in str(d["reason"])
        assert target.read_bytes() == b"kernel 1\n"
        assert dev.show_artifact() == "factory-image"
        assert not dev.pending_update()


def test_crash_between_install_and_commit_is_resumed_safely(tmp_path: Path, keys: Keys) -> None:
    from datetime import timedelta

    from gapferry.common.bundle import open_bundle, utc_now
    from gapferry.common.limits import DEFAULT_LIMITS
    from gapferry.common.trust import TrustPolicy
    from gapferry.isolated.record import AppliedRecord

    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-v2", dest_dir=dest, content=b"v2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    state = tmp_path / "state.db"
    with running_device(tmp_path) as dev:
        bundle = make_transfer(
            media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")]
        )
        # An earlier run admitted the bundle, started dev-1, installed, and died before commit.
        opened = open_bundle(
            bundle,
            policy=TrustPolicy.from_file(keys.trust),
            now=utc_now() + timedelta(seconds=1),
            limits=DEFAULT_LIMITS,
        )
        with AppliedRecord(state) as rec:
            rec.admit(opened.transfer)
            rec.mark_started(opened.transfer.manifest.bundle_id, "dev-1")
        assert dev.mender("install", str(art)).returncode == 0
        assert dev.pending_update()
        devices = write_devices_file(tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)})
        r = run_apply(media, keys, devices, state)
        assert r.exit_code == 0, r.output
        doc = outcome_json(r)
        assert doc["resumed"] is True
        assert by_device(doc)["dev-1"]["outcome"] == "success"
        assert dev.show_artifact() == "app-v2"
        assert not dev.pending_update()
        [result] = read_results(media, keys)
        log = [ln.message for ln in result.read_log("dev-1")]
        assert any("interrupted earlier run" in m for m in log)
        assert any("mender rollback -> exit 0" in m for m in log)


def test_result_signed_with_an_agent_key(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gapferry.fixtures.sshkeys import ssh_add, ssh_agent

    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-v2", dest_dir=dest, content=b"v2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    with running_device(tmp_path) as dev, ssh_agent() as env:
        ssh_add(keys.technician.private, env=env)
        monkeypatch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        devices = write_devices_file(tmp_path / "devices.toml", {"dev-1": ssh_entry(dev)})
        r = run_apply(
            media, keys, devices, tmp_path / "state.db", sign=f"agent:{keys.technician.public}"
        )
        assert r.exit_code == 0, r.output
        [result] = read_results(media, keys)
        assert result.result.manifest.devices[0].outcome == "success"


@pytest.mark.parametrize("transfer", ["stdin", "tempfile"])
def test_artifact_changed_on_medium_while_sending_never_installs(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch, transfer: str
) -> None:
    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "big.mender",
        name="big-v1",
        dest_dir=dest,
        content=os.urandom(6 * 1024 * 1024),
        key=None,
    )
    media = tmp_path / "media"
    with running_device(tmp_path) as dev:
        bundle = make_transfer(
            media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="big-v1")]
        )
        [stored] = list((bundle / "artifacts").iterdir())
        spool = tmp_path / "spool"
        spool.mkdir()
        devices = write_devices_file(
            tmp_path / "devices.toml",
            {"dev-1": ssh_entry(dev, transfer=transfer, tempdir=str(spool))},
        )
        original = DeviceLog.progress
        changed = {"done": False}

        def swap_bytes(self: DeviceLog, done: int, total: int) -> None:
            # After the laptop's check, while sending: a byte near the end changes on the medium.
            if not changed["done"]:
                changed["done"] = True
                with stored.open("r+b") as f:
                    f.seek(-600, os.SEEK_END)
                    b = f.read(1)
                    f.seek(-600, os.SEEK_END)
                    f.write(bytes([b[0] ^ 0xFF]))
            original(self, done, total)

        monkeypatch.setattr(DeviceLog, "progress", swap_bytes)
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        assert changed["done"]
        assert r.exit_code == 1, r.output
        d = by_device(outcome_json(r))["dev-1"]
        assert d["outcome"] == "skipped"
        assert d["code"] == "digest-mismatch"
        assert dev.show_artifact() == "factory-image"
        assert not dev.pending_update()
        assert not dest.exists()
        assert list(spool.iterdir()) == []  # no partial copy left on the device
        [result] = read_results(media, keys)
        [rd] = result.result.manifest.devices
        assert (rd.outcome, rd.reason) == ("skipped", d["reason"])
