"""Payload placement (single-file, directory) under a root folder: module semantics, backup and
restore, and one named test per hostile update.tar or device tree (nothing placed, nothing moved)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from gapferry.common.artifact.errors import (
    ArtifactChecksumError,
    ArtifactStructureError,
    ArtifactUnsafePath,
)
from gapferry.common.artifact.extract import (
    Stager,
    apply_placement,
    commit,
    plan_placement,
    restore,
)
from gapferry.common.artifact.reader import ArtifactInfo, PayloadInfo, read_artifact_file
from gapferry.common.artifact.writer import PayloadSource, write_module_image
from gapferry.common.errors import InvalidData
from gapferry.fixtures.artifacts import Member, tamper
from hypothesis import given, settings
from hypothesis import strategies as st


def _read(tmp: Path, ptype: str, files: list[PayloadSource]) -> tuple[ArtifactInfo, Stager]:
    art = tmp / f"{ptype}.mender"
    write_module_image(
        art, artifact_name="a-1", device_types=["d"], payload_type=ptype, files=files
    )
    stager = Stager(tmp / "stage")
    info = read_artifact_file(art, payload_sink=stager.sink)
    return info, stager


def _sf(dest: str, content: bytes, perms: str | None = "640") -> list[PayloadSource]:
    out = [
        PayloadSource(name="dest_dir", data=f"{dest}\n".encode()),
        PayloadSource(name="filename", data=b"app.conf\n"),
        PayloadSource(name="app.conf", data=content),
    ]
    if perms is not None:
        out.append(PayloadSource(name="permissions", data=f"{perms}\n".encode()))
    return out


def _update_tar(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for ti in entries:
            body = (data or {}).get(ti.name)
            if body is not None:
                ti.size = len(body)
            t.addfile(ti, io.BytesIO(body) if body is not None else None)
    return buf.getvalue()


def _ti(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.linkname = link
    return ti


def _dir_payload(dest: str, tar: bytes) -> list[PayloadSource]:
    return [
        PayloadSource(name="update.tar", data=tar),
        PayloadSource(name="dest_dir", data=f"{dest}\n".encode()),
    ]


def _snapshot(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = (
                p.read_bytes() if p.is_file() and not p.is_symlink() else b"<d>"
            )
    return out


def test_artifact_single_file_place_backup_restore_commit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "app").mkdir(parents=True)
    (root / "etc" / "app" / "app.conf").write_text("old")
    info, stager = _read(tmp_path, "single-file", _sf("/etc/app", b"new"))
    plan = plan_placement(info, stager)
    assert (plan.dest_dir, plan.filename, plan.mode) == ("/etc/app", "app.conf", 0o640)

    backup = apply_placement(plan, root)
    target = root / "etc" / "app" / "app.conf"
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    restore(backup)
    assert target.read_text() == "old"
    assert sorted(p.name for p in (root / "etc" / "app").iterdir()) == ["app.conf"]

    backup = apply_placement(plan, root)
    commit(backup)
    assert target.read_text() == "new"
    assert sorted(p.name for p in (root / "etc" / "app").iterdir()) == ["app.conf"]


def test_artifact_single_file_new_dir_and_default_mode(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    info, stager = _read(tmp_path, "single-file", _sf("/opt/new/deep", b"x", perms=None))
    backup = apply_placement(plan_placement(info, stager), root)
    target = root / "opt" / "new" / "deep" / "app.conf"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # the client writes payload files 0600
    restore(backup)
    assert not target.exists()


def test_artifact_directory_replaces_and_restores(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "srv" / "www").mkdir(parents=True)
    (root / "srv" / "www" / "old.html").write_text("old")
    tar = _update_tar(
        [
            _ti(".", tarfile.DIRTYPE, 0o755),
            _ti("./sub", tarfile.DIRTYPE, 0o750),
            _ti("./sub/i.html"),
        ],
        {"./sub/i.html": b"new"},
    )
    info, stager = _read(tmp_path, "directory", _dir_payload("/srv/www", tar))
    plan = plan_placement(info, stager)
    assert plan.entries == 3
    backup = apply_placement(plan, root)
    assert _snapshot(root / "srv" / "www") == {"sub": b"<d>", "sub/i.html": b"new"}
    assert stat.S_IMODE((root / "srv" / "www" / "sub").stat().st_mode) == 0o750
    restore(backup)
    assert _snapshot(root / "srv") == {"www": b"<d>", "www/old.html": b"old"}
    backup = apply_placement(plan, root)
    commit(backup)
    assert _snapshot(root / "srv") == {"www": b"<d>", "www/sub": b"<d>", "www/sub/i.html": b"new"}


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (_ti("../evil"), "escapes"),
        (_ti("./a/../../evil"), "escapes"),
        (_ti("/etc/passwd"), "absolute"),
        (_ti("./link", tarfile.SYMTYPE, link="/etc"), "link"),
        (_ti("./hard", tarfile.LNKTYPE, link="/etc/shadow"), "link"),
        (_ti("./dev", tarfile.CHRTYPE), "char"),
        (_ti("./blk", tarfile.BLKTYPE), "block"),
        (_ti("./fifo", tarfile.FIFOTYPE), "fifo"),
    ],
    ids=[
        "dotdot",
        "dotdot-nested",
        "absolute",
        "symlink",
        "hardlink",
        "chardev",
        "blockdev",
        "fifo",
    ],
)
def test_artifact_update_tar_hostile_entry_refused(
    tmp_path: Path, entry: tarfile.TarInfo, why: str
) -> None:
    root = tmp_path / "root"
    (root / "srv" / "www").mkdir(parents=True)
    (root / "srv" / "www" / "keep").write_text("keep")
    before = _snapshot(tmp_path / "root")
    tar = _update_tar([_ti("./ok"), entry], {"./ok": b"ok"})
    info, stager = _read(tmp_path, "directory", _dir_payload("/srv/www", tar))
    with pytest.raises(ArtifactUnsafePath, match=why) as e:
        plan_placement(info, stager)
    assert e.value.code == "artifact-unsafe-path"
    assert _snapshot(tmp_path / "root") == before


def test_artifact_directory_dest_root_refused(tmp_path: Path) -> None:
    info, stager = _read(
        tmp_path, "directory", _dir_payload("/", _update_tar([_ti("./f")], {"./f": b"1"}))
    )
    with pytest.raises(ArtifactUnsafePath, match="destination dir is '/'"):
        plan_placement(info, stager)


@pytest.mark.parametrize("dest", ["relative/dir", "/opt/../etc", "/srv/my www"])
def test_artifact_bad_dest_dir_refused(tmp_path: Path, dest: str) -> None:
    info, stager = _read(
        tmp_path, "directory", _dir_payload(dest, _update_tar([_ti("./f")], {"./f": b"1"}))
    )
    with pytest.raises(ArtifactUnsafePath):
        plan_placement(info, stager)


def test_artifact_symlink_in_device_tree_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to(outside)
    info, stager = _read(tmp_path, "single-file", _sf("/etc/app", b"new"))
    with pytest.raises(ArtifactUnsafePath, match="symbolic link"):
        apply_placement(plan_placement(info, stager), root)
    assert list(outside.iterdir()) == []


def test_artifact_single_file_target_symlink_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "app").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("victim")
    (root / "etc" / "app" / "app.conf").symlink_to(victim)
    info, stager = _read(tmp_path, "single-file", _sf("/etc/app", b"new"))
    with pytest.raises(ArtifactUnsafePath, match="not a regular file"):
        apply_placement(plan_placement(info, stager), root)
    assert victim.read_text() == "victim"


def test_artifact_failed_directory_apply_restores(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "srv" / "www").mkdir(parents=True)
    (root / "srv" / "www" / "old").write_text("old")
    before = _snapshot(root)
    tar = _update_tar([_ti("./f"), _ti("./f")], {"./f": b"1"})  # second copy fails mid-way
    info, stager = _read(tmp_path, "directory", _dir_payload("/srv/www", tar))
    with pytest.raises(ArtifactUnsafePath, match="twice"):
        apply_placement(plan_placement(info, stager), root)
    assert _snapshot(root) == before


def test_artifact_script_payload_not_placeable(tmp_path: Path) -> None:
    info, stager = _read(tmp_path, "script", [PayloadSource(name="run.sh", data=b"#!/bin/sh\n")])
    with pytest.raises(ArtifactStructureError, match="cannot be placed"):
        plan_placement(info, stager)


def test_artifact_stager_discarded_on_bad_payload(tmp_path: Path) -> None:
    art = tmp_path / "a.mender"
    write_module_image(
        art,
        artifact_name="a",
        device_types=["d"],
        payload_type="single-file",
        files=_sf("/x", b"payload"),
        compression="none",
    )

    def edit(ms: list[Member]) -> list[Member]:
        d = next(m for m in ms if m.name == "data/0000.tar")
        b = bytearray(d.data)
        b[512] ^= 1
        d.data = bytes(b)
        return ms

    bad = tamper(art, tmp_path / "bad.mender", edit)
    stager = Stager(tmp_path / "stage")
    with pytest.raises(ArtifactChecksumError):
        read_artifact_file(bad, payload_sink=stager.sink)
    stager.discard()
    assert not (tmp_path / "stage").exists()


def _dir_info() -> ArtifactInfo:
    return ArtifactInfo(
        name="fuzz",
        format_version=3,
        device_types=("d",),
        provides={},
        depends={},
        clears_provides=(),
        payloads=(
            PayloadInfo(
                index=0,
                type="directory",
                files=(),
                meta_data=None,
                provides={},
                depends={},
                clears_provides=(),
                compression="none",
            ),
        ),
        state_scripts=(),
        signed=False,
        signature_verified=False,
        signature_key=None,
        compression="none",
        augmented=False,
        manifest_sha256="",
        size=0,
        sha256="",
    )


_SEED_TAR = _update_tar(
    [_ti(".", tarfile.DIRTYPE, 0o755), _ti("./d", tarfile.DIRTYPE), _ti("./d/f"), _ti("./g")],
    {"./d/f": b"abc" * 40, "./g": b"g"},
)


@settings(max_examples=150, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), min_size=1, max_size=6)
)
def test_artifact_fuzz_update_tar(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_SEED_TAR)
    for pos, x in flips:
        data[pos % len(data)] ^= x
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "update.tar").write_bytes(bytes(data))
        (base / "dest_dir").write_text("/srv/www\n")
        root = base / "root"
        root.mkdir()
        staged = {"update.tar": base / "update.tar", "dest_dir": base / "dest_dir"}
        try:
            backup = apply_placement(plan_placement(_dir_info(), staged), root)
        except InvalidData:
            assert sorted(p.name for p in base.iterdir()) == ["dest_dir", "root", "update.tar"]
            return
        assert sorted(p.name for p in base.iterdir()) == ["dest_dir", "root", "update.tar"]
        restore(backup)
        assert _snapshot(root) == {"srv": b"<d>"}
