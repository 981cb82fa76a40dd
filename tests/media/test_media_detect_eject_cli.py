"""Finding the stick (detect.py), ejecting it (eject.py) and `gapferry media` (cli.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from gapferry.common.errors import EnvironmentFailure, UsageProblem
from gapferry.common.media import detect
from gapferry.common.media.cli import media
from gapferry.common.media.detect import (
    BlockRecord,
    Medium,
    block_records,
    media_from_records,
    pick_medium,
    udev_available,
    wait_for_medium,
)
from gapferry.common.media.eject import eject
from gapferry.common.media.fsinfo import mount_entries
from gapferry.fixtures.media_mounts import mount_ext4_loop, mount_fat32, mount_tmpfs

MOUNTS = mount_entries(
    "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
    "90 27 8:17 / /media/u/STICK rw - vfat /dev/sdb1 rw\n"
    "91 27 8:33 / /media/u/BIG rw - exfat /dev/sdc1 rw\n"
)


def rec(device: str, **kw: object) -> BlockRecord:
    base: dict[str, object] = {
        "device": device,
        "devtype": "partition",
        "major_minor": "0:0",
        "removable_flag": False,
        "bus": None,
        "fs_type": None,
        "label": None,
        "size_bytes": 8 * 1024**3,
    }
    base.update(kw)
    return BlockRecord(**base)  # type: ignore[arg-type]


class FakeStat:
    f_bavail = 1000
    f_frsize = 4096
    f_bsize = 4096


RECORDS = [
    rec("/dev/vda", devtype="disk"),  # the system disk
    rec("/dev/sdb", devtype="disk", removable_flag=True),
    rec("/dev/sdb1", disk="/dev/sdb", removable_flag=True, bus="usb", fs_type="vfat",
        label="STICK", major_minor="8:17"),
    rec("/dev/sdc1", disk="/dev/sdc", bus="usb", fs_type="exfat", label="BIG"),
    rec("/dev/sdd1", disk="/dev/sdd", bus="usb", fs_type="ext4", label="UNMOUNTED"),
    rec("/dev/sde", devtype="disk", removable_flag=True),  # empty card reader
]  # fmt: skip


def test_media_from_records_keeps_removable_and_usb_with_mounts() -> None:
    media = media_from_records(RECORDS, MOUNTS, statvfs=lambda _p: FakeStat())  # type: ignore[arg-type,return-value]
    by_dev = {m.device: m for m in media}
    assert sorted(by_dev) == ["/dev/sdb1", "/dev/sdc1", "/dev/sdd1"]
    stick = by_dev["/dev/sdb1"]
    assert stick.mount_point == Path("/media/u/STICK")
    assert stick.fs_type == "vfat"
    assert stick.max_file_size == 4 * 1024**3 - 1
    assert stick.free_bytes == 1000 * 4096
    assert by_dev["/dev/sdc1"].max_file_size is None
    assert by_dev["/dev/sdd1"].mount_point is None
    assert by_dev["/dev/sdd1"].free_bytes is None


def test_block_records_reads_this_machine_through_pyudev() -> None:
    recs = block_records()  # works from sysfs even without udev
    assert recs, "no block devices at all?"
    assert all(r.device.startswith("/dev/") for r in recs)


def _medium(dev: str, mp: str | None) -> Medium:
    return Medium(device=dev, label=dev[-4:], fs_type="vfat", size_bytes=1, bus="usb",
                  mount_point=Path(mp) if mp else None, free_bytes=1, max_file_size=None,
                  model=None)  # fmt: skip


def test_pick_auto_one_medium() -> None:
    got = pick_medium("auto", udev=True, lister=lambda: [_medium("/dev/sdb1", "/media/a")])
    assert got == Path("/media/a")


def test_pick_auto_several_not_interactive_lists_them() -> None:
    two = [_medium("/dev/sdb1", "/media/a"), _medium("/dev/sdc1", "/media/b")]
    with pytest.raises(UsageProblem) as ei:
        pick_medium("auto", udev=True, interactive=False, lister=lambda: two)
    assert ei.value.code == "several-media"
    assert "/media/a" in ei.value.message
    assert "/media/b" in ei.value.message


def test_pick_auto_several_interactive_asks() -> None:
    two = [_medium("/dev/sdb1", "/media/a"), _medium("/dev/sdc1", "/media/b")]
    runner = CliRunner()
    import click

    @click.command()
    def cmd() -> None:
        click.echo(str(pick_medium("auto", udev=True, interactive=True, lister=lambda: two)))

    res = runner.invoke(cmd, input="2\n")
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("/media/b")


def test_pick_auto_none_mounted() -> None:
    with pytest.raises(EnvironmentFailure) as ei:
        pick_medium("auto", udev=True, lister=lambda: [_medium("/dev/sdb1", None)])
    assert ei.value.code == "no-medium"


def test_pick_auto_with_wait_takes_the_stick_inserted_meanwhile() -> None:
    calls = {"n": 0}

    def lister() -> list[Medium]:
        calls["n"] += 1
        return [] if calls["n"] < 4 else [_medium("/dev/sdb1", "/media/late")]

    assert pick_medium("auto", wait=5, udev=True, lister=lister) == Path("/media/late")


def test_pick_auto_without_udev_says_any_folder_is_a_medium() -> None:
    with pytest.raises(UsageProblem) as ei:
        pick_medium("auto", udev=False)
    assert ei.value.code == "no-udev"
    assert "any folder is a medium" in ei.value.message


def test_pick_folder_given(tmp_path: Path) -> None:
    assert pick_medium(str(tmp_path), udev=False) == tmp_path
    with pytest.raises(UsageProblem) as ei:
        pick_medium(str(tmp_path / "nope"), udev=False)
    assert ei.value.code == "not-a-folder"


def test_wait_for_medium_sees_a_new_stick_and_times_out() -> None:
    calls = {"n": 0}

    def lister() -> list[Medium]:
        calls["n"] += 1
        old = [_medium("/dev/sdb1", "/media/a")]
        return old if calls["n"] < 3 else [*old, _medium("/dev/sdc1", "/media/new")]

    got = wait_for_medium(5, udev=True, lister=lister, interval=0.01)
    assert got.device == "/dev/sdc1"
    with pytest.raises(EnvironmentFailure) as ei:
        wait_for_medium(0.05, udev=True, lister=list, interval=0.01)
    assert ei.value.code == "no-medium"
    with pytest.raises(UsageProblem):
        wait_for_medium(1, udev=False)


def test_cli_list_without_udev_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "UDEV_RUN_DIR", tmp_path / "no-udev-here")
    assert not udev_available()
    res = CliRunner().invoke(media, ["list", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc == {"ok": True, "udev": False, "note": doc["note"], "media": []}
    assert "any folder is a medium" in doc["note"]
    res = CliRunner().invoke(media, ["list"])
    assert res.exit_code == 0
    assert "any folder is a medium" in res.stderr


def test_cli_list_with_udev_enumerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "UDEV_RUN_DIR", tmp_path)  # pretend udev runs
    res = CliRunner().invoke(media, ["list", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["udev"] is True
    assert doc["note"] is None
    # Whatever this machine has, every entry is a removable medium with the documented fields.
    for m in doc["media"]:
        assert set(m) >= {"device", "label", "fs_type", "size_bytes", "free_bytes", "mount_point"}


def test_cli_info_json(tmp_path: Path) -> None:
    res = CliRunner().invoke(media, ["info", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["path"] == str(tmp_path.resolve())
    assert doc["max_file_size"] is None


def test_cli_help_has_examples_and_exit_codes() -> None:
    for args in (["--help"], ["list", "--help"], ["eject", "--help"], ["info", "--help"]):
        res = CliRunner().invoke(media, args)
        assert res.exit_code == 0
        assert "Exit codes:" in res.output
    assert "gapferry media eject /media" in CliRunner().invoke(media, ["eject", "--help"]).output


def test_eject_refuses_the_system_disk(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem) as ei:
        eject(Path("/"))
    assert ei.value.code == "not-removable"
    res = CliRunner().invoke(media, ["eject", "/"])
    assert res.exit_code == 2
    assert "not a stick" in res.stderr


@pytest.mark.root_mounts
def test_eject_unmounts_a_medium(tmp_path: Path) -> None:
    with mount_tmpfs(tmp_path, size="1m") as m:
        (m.path / "x").write_bytes(b"data")
        res = CliRunner().invoke(media, ["eject", str(m.path), "--json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["steps"] == ["umount"]
        assert not any(e.mount_point == m.path for e in mount_entries())


@pytest.mark.root_mounts
def test_eject_fat32_stick_and_non_removable_needs_force(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with mount_fat32(tmp_path / "a") as fat:
        result = eject(fat.path, use_udisks=False)
        assert result.mount_point == fat.path
        assert not any(e.mount_point == fat.path for e in mount_entries())
    (tmp_path / "b").mkdir()
    with mount_ext4_loop(tmp_path / "b") as loop:
        with pytest.raises(UsageProblem) as ei:
            eject(loop.path)
        assert ei.value.code == "not-removable"
        assert "--force" in ei.value.remedy
        eject(loop.path, force=True, use_udisks=False)
        assert not any(e.mount_point == loop.path for e in mount_entries())


@pytest.mark.root_mounts
def test_eject_not_permitted_is_a_clear_message(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run as an unprivileged user")
    exe = Path(sys.executable).parent / "gapferry"
    # A mount point the unprivileged user can reach (pytest's tmp folders are 0700 root).
    base = Path(tempfile.mkdtemp(prefix="gapferry-eject-"))
    base.chmod(0o711)
    try:
        _eject_as_nobody(base, exe)
    finally:
        shutil.rmtree(base)


def _eject_as_nobody(base: Path, exe: Path) -> None:
    with mount_tmpfs(base, size="1m") as m:
        res = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             str(exe), "media", "eject", str(m.path)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert res.returncode == 4, res.stdout + res.stderr
        assert "not permitted to unmount" in res.stderr
        assert "sudo umount" in res.stderr
        assert any(e.mount_point == m.path for e in mount_entries())  # still mounted
