"""Reading back from the medium after writing (common/media/readback.py, write.py)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path

import pytest
from gapferry.common.atomic import temp_name_for
from gapferry.common.digest import copy_hashed
from gapferry.common.errors import EnvironmentFailure, InvalidData
from gapferry.common.media.fsinfo import check_fits
from gapferry.common.media.readback import ReadbackMismatch, verify_file
from gapferry.common.media.write import copy_to_medium, discard_partials, is_verified
from gapferry.fixtures.media_mounts import (
    mount_ext4_loop,
    mount_fat32,
    mount_fat_image,
    mount_tmpfs,
)

DATA = os.urandom(3 * 1024 * 1024 + 17)
DIGEST = hashlib.sha256(DATA).hexdigest()


def test_verify_file_accepts_the_right_bytes_and_reports_progress(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(DATA)
    seen: list[int] = []
    verify_file(f, sha256=DIGEST, size=len(DATA), progress=seen.append)
    assert sum(seen) == len(DATA)


def test_verify_file_flipped_bit_is_readback_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(DATA)
    fd = os.open(f, os.O_RDWR)
    try:
        b = os.pread(fd, 1, 1000)
        os.pwrite(fd, bytes([b[0] ^ 0x01]), 1000)
    finally:
        os.close(fd)
    with pytest.raises(ReadbackMismatch) as ei:
        verify_file(f, sha256=DIGEST, size=len(DATA))
    assert ei.value.code == "readback-mismatch"
    assert isinstance(ei.value, InvalidData)
    assert DIGEST in ei.value.message
    assert "a.bin" in ei.value.message


def test_verify_file_wrong_size_missing_and_symlink(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(DATA[:-1])
    with pytest.raises(ReadbackMismatch, match="expected 3145745 bytes"):
        verify_file(f, sha256=DIGEST, size=len(DATA))
    with pytest.raises(ReadbackMismatch, match="gone"):
        verify_file(tmp_path / "missing", sha256=DIGEST, size=len(DATA))
    real = tmp_path / "real"
    real.write_bytes(DATA)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(EnvironmentFailure) as ei:  # O_NOFOLLOW: ELOOP
        verify_file(tmp_path / "link", sha256=DIGEST, size=len(DATA))
    assert ei.value.code == "readback-failed"


@pytest.mark.root_mounts
def test_bit_flipped_on_the_medium_under_the_page_cache_is_caught(tmp_path: Path) -> None:
    """The flip goes into the medium (the loop device's backing image), not through the mounted
    file: the mounted file's page cache still holds the good bytes, so only a read that really
    bypasses the cache sees it. The control read proves the cache was stale."""
    with mount_ext4_loop(tmp_path, size_mb=16) as m:
        assert m.image is not None
        target = m.path / "artifact.mender"
        copy_to_medium(io.BytesIO(DATA), target, size=len(DATA), sha256=DIGEST)
        # Warm the page cache with the good content.
        assert hashlib.sha256(target.read_bytes()).hexdigest() == DIGEST
        # Find the data on the image and flip one bit there, through another path and fd.
        img = m.image.read_bytes()
        offset = img.find(DATA[:4096])
        assert offset >= 0, "file data not found in the image (not contiguous?)"
        fd = os.open(m.image, os.O_RDWR)
        try:
            pos = offset + 2000
            b = os.pread(fd, 1, pos)
            os.pwrite(fd, bytes([b[0] ^ 0x10]), pos)
            os.fsync(fd)
        finally:
            os.close(fd)
        # Control: an ordinary read is served from the (now stale) page cache.
        assert hashlib.sha256(target.read_bytes()).hexdigest() == DIGEST
        with pytest.raises(ReadbackMismatch) as ei:
            verify_file(target, sha256=DIGEST, size=len(DATA))
        assert ei.value.code == "readback-mismatch"


@pytest.mark.root_mounts
def test_copy_to_fat32_then_verify_and_flip_in_image(tmp_path: Path) -> None:
    with mount_fat32(tmp_path, size_mb=40) as m:
        target = m.path / "ARTIFACT.BIN"
        res = copy_to_medium(io.BytesIO(DATA), target, size=len(DATA), sha256=DIGEST)
        assert res.sha256 == DIGEST
        assert is_verified(target, sha256=DIGEST, size=len(DATA))
    assert m.image is not None
    img = m.image.read_bytes()
    offset = img.find(DATA[8192 : 8192 + 4096])
    assert offset >= 0
    fd = os.open(m.image, os.O_RDWR)
    try:
        os.pwrite(fd, bytes([img[offset + 5] ^ 0x01]), offset + 5)
    finally:
        os.close(fd)
    with mount_fat_image(m.image, tmp_path / "mnt2") as m2:
        assert not is_verified(m2.path / "ARTIFACT.BIN", sha256=DIGEST, size=len(DATA))
        with pytest.raises(ReadbackMismatch):
            verify_file(m2.path / "ARTIFACT.BIN", sha256=DIGEST, size=len(DATA))


@pytest.mark.root_mounts
def test_enospc_mid_write_is_clean_and_leaves_nothing(tmp_path: Path) -> None:
    with mount_tmpfs(tmp_path, size="2m") as m:
        keep = m.path / "already.bin"
        copy_to_medium(io.BytesIO(b"k" * 1000), keep, size=1000)
        big = os.urandom(3 * 1024 * 1024)
        # check_fits would refuse this; simulate a medium that filled up after the check (or one
        # whose size is unknown) by skipping it, as a concurrent writer would.
        with pytest.raises(EnvironmentFailure) as ei:
            check_fits(m.path, len(big))
        assert ei.value.code == "media-full"
        target = m.path / "big.bin"
        with pytest.raises(EnvironmentFailure) as ei:
            copy_to_medium(io.BytesIO(big), target, size=len(big))
        assert ei.value.code == "media-full"
        assert "partial file was removed" in ei.value.message
        assert sorted(p.name for p in m.path.iterdir()) == ["already.bin"]
        assert not temp_name_for(target).exists()
        assert is_verified(keep, sha256=hashlib.sha256(b"k" * 1000).hexdigest(), size=1000)


@pytest.mark.root_mounts
def test_copy_hashed_enospc_plus_check_fits_leaves_nothing(tmp_path: Path) -> None:
    """The shared copy_hashed also cleans up on ENOSPC; check_fits refuses up front."""
    with mount_tmpfs(tmp_path, size="2m") as m:
        big = os.urandom(3 * 1024 * 1024)
        with pytest.raises(OSError, match="No space left") as ei:
            copy_hashed(io.BytesIO(big), m.path / "big.bin")
        assert ei.value.errno == errno.ENOSPC
        assert list(m.path.iterdir()) == []


def test_copy_to_medium_bad_source_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    with pytest.raises(InvalidData) as ei:
        copy_to_medium(io.BytesIO(DATA), target, size=len(DATA), sha256="0" * 64)
    assert ei.value.code == "digest-mismatch"
    assert list(tmp_path.iterdir()) == []


def test_resume_discards_partials_and_keeps_verified(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    copy_hashed(io.BytesIO(DATA), good)
    partial = temp_name_for(tmp_path / "next.bin")
    partial.write_bytes(DATA[:1000])
    truncated = tmp_path / "trunc.bin"
    truncated.write_bytes(DATA[:1000])
    removed = discard_partials(tmp_path)
    assert removed == [partial]
    assert is_verified(good, sha256=DIGEST, size=len(DATA))
    assert not is_verified(truncated, sha256=DIGEST, size=len(DATA))
    assert not is_verified(tmp_path / "next.bin", sha256=DIGEST, size=len(DATA))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.bin", "trunc.bin"]
