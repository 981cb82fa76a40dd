"""Crash-safe writes and streaming digests (common/atomic.py, common/digest.py)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
from gapferry.common.atomic import atomic_open, atomic_write_bytes, temp_name_for
from gapferry.common.digest import copy_hashed, sha256_file, sha256_stream
from gapferry.common.errors import InvalidData


def test_atomic_write_creates_file_with_exact_mode(tmp_path: Path) -> None:
    target = tmp_path / "key"
    old = os.umask(0o022)
    try:
        atomic_write_bytes(target, b"secret-ish", mode=0o600)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"secret-ish"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not temp_name_for(target).exists()


def test_atomic_open_leaves_old_content_on_error(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")

    class Boom(Exception):
        pass

    def write_then_fail() -> None:
        with atomic_open(target) as f:
            f.write(b"half-written new content")
            raise Boom

    with pytest.raises(Boom):
        write_then_fail()
    assert target.read_bytes() == b"old"
    assert not temp_name_for(target).exists()


def test_atomic_open_refuses_symlinked_temp_name(tmp_path: Path) -> None:
    target = tmp_path / "out"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    temp_name_for(target).symlink_to(victim)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        atomic_write_bytes(target, b"x")
    assert victim.read_bytes() == b"keep"


def test_sha256_stream_matches_hashlib_and_counts() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    seen: list[int] = []
    res = sha256_stream(io.BytesIO(data), progress=seen.append)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.size == len(data) == sum(seen)


def test_sha256_stream_enforces_limit() -> None:
    with pytest.raises(InvalidData) as e:
        sha256_stream(io.BytesIO(b"x" * 100), max_bytes=99)
    assert e.value.code == "too-large"


def test_sha256_file_refuses_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"abc")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert sha256_file(real).sha256 == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        sha256_file(link)


def test_copy_hashed_copies_and_hashes_in_one_pass(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    dst = tmp_path / "a.mender"
    res = copy_hashed(io.BytesIO(data), dst, expected_size=len(data))
    assert dst.read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("payload", "size", "digest", "code"),
    [
        (b"abcd", 3, None, "size-mismatch"),
        (b"ab", 3, None, "size-mismatch"),
        (b"abc", 3, "0" * 64, "digest-mismatch"),
    ],
)
def test_copy_hashed_leaves_nothing_on_mismatch(
    tmp_path: Path, payload: bytes, size: int, digest: str | None, code: str
) -> None:
    dst = tmp_path / "a.mender"
    with pytest.raises(InvalidData) as e:
        copy_hashed(io.BytesIO(payload), dst, expected_size=size, expected_sha256=digest)
    assert e.value.code == code
    assert not dst.exists()
    assert not temp_name_for(dst).exists()


def test_copy_hashed_bounds_an_unannounced_source(tmp_path: Path) -> None:
    dst = tmp_path / "a.mender"
    with pytest.raises(InvalidData) as e:
        copy_hashed(io.BytesIO(b"x" * 101), dst, max_bytes=100)
    assert e.value.code == "too-large"
    assert not dst.exists()
    assert not temp_name_for(dst).exists()
