"""Unit tests of the applier's parts: devices file, state record, probe and inventory parsing,
the installer registry, and the SSH stream's hold-back (against a real sshd)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.fixtures.device import (
    DevicePlan,
    Keys,
    by_device,
    make_transfer,
    outcome_json,
    read_results,
    run_apply,
    running_device,
    single_file_artifact,
    ssh_entry,
    write_devices_file,
)
from gapferry.isolated.devices import load_devices_file
from gapferry.isolated.installers.base import get_installer, register_installer
from gapferry.isolated.installers.bounded import run_bounded
from gapferry.isolated.installers.mender_ssh import parse_inventory, parse_probe
from gapferry.isolated.installers.ssh import HOLD_BACK, SshSession
from gapferry.isolated.record import AppliedRecord, default_state_path
from gapferry.isolated.report import DeviceLog, DeviceReport


def test_devices_file_resolves_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "devices.toml"
    f.write_text(
        'site = "plant-a"\nartifact_verify_key = "keys/a.pem"\n'
        '[devices.pump-1]\nmethod = "mender-ssh"\nhost = "10.0.0.1"\nknown_hosts = "kh"\n'
        '[devices.hmi-2]\nmethod = "file"\npath = "mnt/hmi"\nartifact_verify_key = "/k.pem"\n'
    )
    d = load_devices_file(f)
    assert d.site == "plant-a"
    assert d.devices["pump-1"].known_hosts == str(tmp_path / "kh")
    assert d.devices["hmi-2"].path == str(tmp_path / "mnt/hmi")
    assert d.verify_key_for("pump-1") == tmp_path / "keys/a.pem"
    assert d.verify_key_for("hmi-2") == Path("/k.pem")


@pytest.mark.parametrize(
    "body",
    [
        '[devices.a]\nmethod = "mender-ssh"\nhots = "typo"\n',
        '[devices.a]\nmethod = "mender-ssh"\n',
        '[devices.a]\nmethod = "file"\n',
        "not toml = = =",
        'parallel = 0\n[devices.a]\nmethod = "file"\npath = "/x"\n',
    ],
)
def test_devices_file_refuses_mistakes(tmp_path: Path, body: str) -> None:
    f = tmp_path / "devices.toml"
    f.write_text(body)
    with pytest.raises(InvalidData) as e:
        load_devices_file(f)
    assert e.value.code == "bad-devices-file"


def test_devices_file_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem) as e:
        load_devices_file(tmp_path / "nope.toml")
    assert e.value.code == "devices-file-missing"


def test_default_state_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_path() == tmp_path / "gapferry" / "applier.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_path() == Path.home() / ".local/state/gapferry/applier.db"


def test_record_file_is_private_and_keeps_reports(tmp_path: Path) -> None:
    path = tmp_path / "state" / "applier.db"
    with AppliedRecord(path) as rec:
        report = DeviceReport(
            name="d", mender_device_id="i", deployment_id="x", outcome="success", retry=False
        )
        rec.mark_started("b", "d")
        assert rec.was_started("b", "d")
        assert rec.final_report("b", "d") is None
        rec.save("b", report)
        assert rec.final_report("b", "d") == report
        rec.save(
            "b",
            DeviceReport(
                name="d",
                mender_device_id="i",
                deployment_id="x",
                outcome="skipped",
                reason="r",
                retry=True,
            ),
        )
        assert rec.final_report("b", "d") is None  # a retry is not final
        rec.save(
            "b",
            DeviceReport(
                name="e",
                mender_device_id="j",
                deployment_id="y",
                outcome="skipped",
                reason="busy",
                retry=True,
            ),
        )
        assert not rec.was_started("b", "e")  # refused before any change
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_probe_parsing_finds_pending_and_keys() -> None:
    text = "\n".join(
        [
            "@@gapferry:artifact",
            "app-v1",
            "@@gapferry:artifact_rc 0",
            "@@gapferry:provides",
            "artifact_name=app-v1",
            "rootfs-image.single-file.version=app-v1",
            "@@gapferry:device_type",
            "device_type=test-device",
            "@@gapferry:conf",
            '{"ArtifactVerifyKey": "/etc/mender/k.pem"}',
            "@@gapferry:fallback_conf",
            "@@gapferry:pending",
            "app-v2",
            "@@gapferry:boot_id",
            "abc",
            "@@gapferry:end",
        ]
    )
    s = parse_probe(text)
    assert s.artifact_name == "app-v1"
    assert s.provides["rootfs-image.single-file.version"] == "app-v1"
    assert s.device_type == "test-device"
    assert s.verify_keys == ("/etc/mender/k.pem",)
    assert s.pending == ("app-v2",)
    assert s.boot_id == "abc"
    broken = parse_probe("@@gapferry:artifact\n@@gapferry:artifact_rc 1\n@@gapferry:conf\n{bad")
    assert broken.artifact_name is None
    assert broken.verify_keys == ()


def test_inventory_parsing_is_bounded_and_merges_lists() -> None:
    lines = ["@@gapferry:scripts", "ipv4=10.0.0.1", "ipv4=10.0.0.2", "mac=aa"]
    lines += [f"k{i}=v" for i in range(200)]
    lines += ["@@gapferry:os_release", 'PRETTY_NAME="Debian 12"', "@@gapferry:kernel", "6.1.0"]
    lines += ["@@gapferry:artifact", "app-v2", "@@gapferry:end"]
    attrs = parse_inventory("\n".join(lines), max_attributes=10, max_value=100)
    values = {a.name: a.value for a in attrs}
    assert values["ipv4"] == ["10.0.0.1", "10.0.0.2"]
    assert len(attrs) <= 10
    assert values["artifact_name"] == "app-v2"


def test_installer_registry_open_for_vendors() -> None:
    class Vendor:
        method = "vendor-x"

        def install(self, job: object) -> DeviceReport:
            raise NotImplementedError

    register_installer("vendor-x", Vendor)
    assert get_installer("vendor-x").method == "vendor-x"
    assert get_installer("mender-ssh").method == "mender-ssh"
    with pytest.raises(UsageProblem) as e:
        get_installer("nope")
    assert e.value.code == "unknown-method"


def test_device_log_is_bounded() -> None:
    from gapferry.common.limits import Limits

    log = DeviceLog(name="d", limits=Limits(log_lines=5, log_line_bytes=300))
    for i in range(20):
        log.log("info", f"line {i} " + "x" * 1000)
    r = log.finish(mender_device_id="i", deployment_id="x", outcome="success")
    assert len(r.log) == 6  # 5 kept + the "dropped" note
    assert "15 earlier lines dropped" in r.log[0].message
    assert all(len(ln.message.encode()) < 300 for ln in r.log)


class _Source:
    """Yields `size` bytes, then fails at the end like a stream whose sha256 does not match."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readinto(self, buffer: memoryview, /) -> int:
        if self.left == 0:
            raise InvalidData("changed on the medium", remedy="-", code="digest-mismatch")
        n = min(len(buffer), self.left, 256 * 1024)
        buffer[:n] = b"\x00" * n
        self.left -= n
        return n


@pytest.mark.real_tools
def test_stream_holds_back_the_end_until_verified(tmp_path: Path) -> None:
    with running_device(tmp_path) as dev:
        target = ssh_entry(dev)
        import msgspec
        from gapferry.isolated.devices import DeviceTarget

        t = msgspec.convert(target, DeviceTarget)
        control = Path(tempfile.mkdtemp(prefix="gf-"))  # sun_path is short
        s = SshSession(t, control_dir=control, name="dev-1")
        out = tmp_path / "received"
        size = 5 * 1024 * 1024
        try:
            with pytest.raises(InvalidData):
                s.stream(f"cat > {out}", _Source(size), total=size, timeout=60)
        finally:
            s.close()
            shutil.rmtree(control)
        assert out.stat().st_size <= size - HOLD_BACK
        assert not dev.session_pids()


#: Device-side ``tee`` replacements (first on the device's PATH) for the tempfile transfer.
_BAD_TEE = {
    # The device stores other bytes than it was sent (a byte lost on the way to the disk).
    "corrupting": '#!/bin/sh\ntail -c +2 | /usr/bin/tee "$@"\n',
    # The write to the device's disk failed (disk full), though every byte was read.
    "failing": '#!/bin/sh\n/usr/bin/tee "$@"\nexit 1\n',
}


@pytest.mark.real_tools
@pytest.mark.parametrize("device_tee", [None, *_BAD_TEE])
def test_tempfile_transfer_checks_sha256_on_the_device(
    tmp_path: Path, keys: Keys, device_tee: str | None
) -> None:
    dest = tmp_path / "dev-files"
    art = single_file_artifact(
        tmp_path / "app.mender", name="app-v2", dest_dir=dest, content=b"v2\n", key=keys.artifact
    )
    media = tmp_path / "media"
    spool = tmp_path / "spool"
    spool.mkdir()
    with running_device(tmp_path) as dev:
        if device_tee:
            tee = dev.base / "bin" / "tee"
            tee.write_text(_BAD_TEE[device_tee])
            tee.chmod(0o755)
        make_transfer(media, keys, [DevicePlan(name="dev-1", artifact=art, artifact_name="app-v2")])
        devices = write_devices_file(
            tmp_path / "devices.toml",
            {"dev-1": ssh_entry(dev, transfer="tempfile", tempdir=str(spool))},
        )
        r = run_apply(media, keys, devices, tmp_path / "state.db")
        d = by_device(outcome_json(r))["dev-1"]
        assert list(spool.iterdir()) == []  # the private copy folder is removed in every case
        if device_tee is None:
            assert r.exit_code == 0, r.output
            assert d["outcome"] == "success"
            assert (dest / "app.conf").read_bytes() == b"v2\n"
            assert list((dev.root.data / "modules/v3/payloads/0000").iterdir()) == []
            return
        assert r.exit_code == 1, r.output
        if device_tee == "corrupting":
            assert (d["outcome"], d["code"]) == ("failure", "transfer-mismatch")
        else:
            assert (d["outcome"], d["code"], d["retry"]) == ("skipped", "copy-failed", True)
        # Nothing was installed, and the result bundle says why.
        assert dev.show_artifact() == "factory-image"
        assert not dev.pending_update()
        assert not dest.exists()
        [result] = read_results(media, keys)
        [rd] = result.result.manifest.devices
        assert rd.outcome == d["outcome"]
        assert rd.reason == d["reason"]


def test_run_bounded_keeps_only_the_tail_of_a_flood() -> None:
    """A chatty or hostile program's output is read as a stream and capped (issue 10, "endless
    data"): 8 MiB on stdout and on stderr, of which only the last `limit` bytes are kept."""
    flood = (
        "import sys; sys.stdin.read();"
        "[sys.stdout.write('x' * 1023 + '\\n') for _ in range(8192)];"
        "sys.stdout.write('END-OUT');"
        "[sys.stderr.write('y' * 1023 + '\\n') for _ in range(8192)];"
        "sys.stderr.write('END-ERR'); sys.exit(3)"
    )
    done = run_bounded([sys.executable, "-c", flood], timeout=60, input_bytes=b"in", limit=4096)
    assert done.returncode == 3
    assert len(done.stdout) == 4096
    assert done.stdout.endswith(b"END-OUT")
    assert len(done.stderr) == 4096
    assert done.stderr.endswith(b"END-ERR")


def test_run_bounded_kills_a_program_past_its_timeout() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_bounded(["sleep", "30"], timeout=0.5)
