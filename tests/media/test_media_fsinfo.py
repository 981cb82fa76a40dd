"""What medium a folder is on, and refusing to write what does not fit (common/media/fsinfo.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from gapferry.common.errors import EnvironmentFailure, UsageProblem
from gapferry.common.media.fsinfo import (
    FAT_MAX_FILE_SIZE,
    check_file_size,
    check_fits,
    describe,
    max_file_size_for,
    mount_entries,
)
from gapferry.fixtures.media_mounts import mount_ext4_loop, mount_fat32, mount_tmpfs

MOUNTINFO = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "90 27 8:17 / /media/user/MY\\040STICK rw,nosuid - vfat /dev/sdb1 rw,fmask=0022\n"
    "91 90 0:50 / /media/user/MY\\040STICK/inner rw - exfat /dev/sdc1 rw\n"
    "garbage line\n"
)


def test_mountinfo_parser_unescapes_spaces_and_skips_garbage() -> None:
    entries = mount_entries(MOUNTINFO)
    assert [e.mount_point for e in entries] == [
        Path("/proc"),
        Path("/"),
        Path("/media/user/MY STICK"),
        Path("/media/user/MY STICK/inner"),
    ]
    assert entries[2].fs_type == "vfat"
    assert entries[2].source == "/dev/sdb1"
    assert entries[2].major_minor == "8:17"


def test_fat_types_have_the_4gib_limit_others_none() -> None:
    for fs in ("vfat", "msdos", "fuse.fusefat", "VFAT"):
        assert max_file_size_for(fs) == 4 * 1024**3 - 1
    for fs in ("exfat", "ntfs3", "fuseblk", "ext4", "tmpfs", "btrfs"):
        assert max_file_size_for(fs) is None


def test_describe_plain_folder_and_not_yet_created_target(tmp_path: Path) -> None:
    info = describe(tmp_path)
    assert info.path == tmp_path.resolve()
    assert info.total_bytes > 0
    assert 0 <= info.free_bytes <= info.total_bytes
    later = describe(tmp_path / "gapferry" / "transfer-1")
    assert later.path == tmp_path.resolve()
    assert later.mount_point == info.mount_point


def test_describe_a_file_is_a_usage_problem(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(UsageProblem) as ei:
        describe(f)
    assert ei.value.code == "not-a-folder"


@pytest.mark.root_mounts
def test_describe_real_fat32_reports_limit_label_and_space(tmp_path: Path) -> None:
    with mount_fat32(tmp_path, size_mb=40, label="GAPSTICK") as m:
        info = describe(m.path / "sub" / "not-yet")
        assert info.mount_point == m.path
        assert info.fs_type in ("vfat", "fuse.fusefat"), info.fs_type
        assert info.max_file_size == FAT_MAX_FILE_SIZE
        if m.method == "fusefat":
            # fusefat reports no block counts through statvfs: describe says so honestly.
            assert info.space_known is False
            assert info.free_bytes == 0
        else:
            assert info.space_known is True
            assert 30 * 1024**2 < info.total_bytes <= 40 * 1024**2
            assert 0 < info.free_bytes <= info.total_bytes
        # A file written through the mount is really on a FAT32 image (mtools reads it unmounted).
        (m.path / "HELLO.TXT").write_bytes(b"hi")
    assert m.image is not None
    out = subprocess.run(
        ["mdir", "-i", str(m.image), "-b", "::"], capture_output=True, text=True, check=True
    ).stdout
    assert "HELLO.TXT" in out.upper()
    minfo = subprocess.run(
        ["minfo", "-i", str(m.image), "::"], capture_output=True, text=True, check=True
    ).stdout
    assert "GAPSTICK" in minfo
    assert "FAT32" in minfo


@pytest.mark.root_mounts
def test_describe_loop_device_names_device_and_has_no_size_limit(tmp_path: Path) -> None:
    with mount_ext4_loop(tmp_path) as m:
        info = describe(m.path)
        assert info.fs_type == "ext4"
        assert info.device is not None
        assert info.device.startswith("/dev/loop")
        assert info.max_file_size is None
        assert info.removable is False  # a loop device is not removable media


def test_check_fits_refuses_before_writing_and_says_needed_and_free(tmp_path: Path) -> None:
    free = describe(tmp_path).free_bytes
    target = tmp_path / "bundle"
    with pytest.raises(EnvironmentFailure) as ei:
        check_fits(target, free + 10 * 1024**3)
    err = ei.value
    assert err.code == "media-full"
    assert "need" in err.message
    assert "free" in err.message
    assert str(free + 10 * 1024**3) in err.message
    assert "larger medium" in err.remedy
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_check_fits_counts_cluster_slack_per_file(tmp_path: Path) -> None:
    info = describe(tmp_path)
    check_fits(tmp_path, 1024)
    files = info.free_bytes // info.block_size + 10
    with pytest.raises(EnvironmentFailure) as ei:
        check_fits(tmp_path, 1024, files=files)
    assert ei.value.code == "media-full"


@pytest.mark.root_mounts
def test_check_fits_on_small_tmpfs_refuses_and_writes_nothing(tmp_path: Path) -> None:
    with mount_tmpfs(tmp_path, size="2m") as m:
        info = check_fits(m.path, 1024 * 1024)
        assert info.fs_type == "tmpfs"
        with pytest.raises(EnvironmentFailure) as ei:
            check_fits(m.path / "gapferry", 3 * 1024**2)
        assert ei.value.code == "media-full"
        assert list(m.path.iterdir()) == []


@pytest.mark.root_mounts
def test_fat32_refuses_a_file_over_4gib_minus_1(tmp_path: Path) -> None:
    with mount_fat32(tmp_path, size_mb=40) as m:
        info = describe(m.path)
        check_file_size(info, name="part-0001", size=FAT_MAX_FILE_SIZE)
        with pytest.raises(EnvironmentFailure) as ei:
            check_file_size(info, name="update.mender", size=FAT_MAX_FILE_SIZE + 1)
        assert ei.value.code == "file-too-large-for-fs"
        assert "update.mender" in ei.value.message
        # fusefat lists the volume label entry as a file; nothing else may be there.
        assert [p.name for p in m.path.iterdir() if p.name != "GAPSTICK"] == []


def test_check_file_size_no_limit_on_ext4_like(tmp_path: Path) -> None:
    info = describe(tmp_path)
    assert info.max_file_size is None
    check_file_size(info, name="big", size=100 * 1024**3)
