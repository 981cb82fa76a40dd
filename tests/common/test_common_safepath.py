"""Untrusted names and opening what they point at (common/safepath.py)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from gapferry.common.errors import InvalidData
from gapferry.common.limits import Limits
from gapferry.common.safepath import checked_relpath, open_regular


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a//b",
        "a/./b",
        "a\\b",
        "CON",
        "aux.txt",
        "trailing.",
        "trailing ",
        "colon:name",
        "nul\x00byte",
        "a/b/c/d/e",
    ],
)
def test_checked_relpath_refuses(name: str) -> None:
    with pytest.raises(InvalidData) as e:
        checked_relpath(name)
    assert e.value.code == "bad-path"


def test_checked_relpath_accepts_portable_names() -> None:
    assert checked_relpath("artifacts/ab12.mender") == PurePosixPath("artifacts", "ab12.mender")


def test_checked_relpath_component_length_limit() -> None:
    with pytest.raises(InvalidData):
        checked_relpath("a" * 11, limits=Limits(name_length=10))


def test_open_regular_reads_a_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"ok")
    fd = open_regular(tmp_path, PurePosixPath("d/f"))
    try:
        assert os.read(fd, 10) == b"ok"
    finally:
        os.close(fd)


def test_open_regular_refuses_final_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(InvalidData, match="symbolic link"):
        open_regular(tmp_path, PurePosixPath("link"))


def test_open_regular_refuses_symlinked_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "d").symlink_to(outside)
    with pytest.raises(InvalidData, match="symbolic link"):
        open_regular(root, PurePosixPath("d/f"))


def test_open_regular_refuses_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InvalidData, match="not a regular file"):
        open_regular(tmp_path, PurePosixPath("fifo"))


def test_open_regular_refuses_device_node(tmp_path: Path) -> None:
    (tmp_path / "dev").symlink_to("/dev/null")
    with pytest.raises(InvalidData):
        open_regular(tmp_path, PurePosixPath("dev"))
    # A real device node, where the sandbox lets root make one.
    try:
        os.mknod(tmp_path / "null", 0o600 | 0o020000, os.makedev(1, 3))
    except PermissionError:
        return
    with pytest.raises(InvalidData, match="not a regular file"):
        open_regular(tmp_path, PurePosixPath("null"))
