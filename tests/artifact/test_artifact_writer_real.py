"""Artifacts gapferry writes pass `mender-artifact validate -k` and install with the real
mender-client 3.4 in standalone mode (notes 1.4, 1.7, 3); gapferry's placement matches the
client's modules, and gapferry's compatibility messages match the client's."""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from gapferry.common.artifact.compat import check_compatible
from gapferry.common.artifact.errors import ArtifactIncompatible
from gapferry.common.artifact.extract import Stager, apply_placement, plan_placement
from gapferry.common.artifact.reader import read_artifact_file
from gapferry.common.artifact.writer import PayloadSource
from gapferry.fixtures.artifacts import (
    KeyPair,
    directory_payload,
    gapferry_write,
    mender_artifact_validate,
)
from gapferry.fixtures.mender_root import MenderRoot, make_root

pytestmark = pytest.mark.real_tools


def _sf(dest: Path, content: bytes = b"hello\n", perms: str = "640") -> list[PayloadSource]:
    return [
        PayloadSource(name="dest_dir", data=f"{dest}\n".encode()),
        PayloadSource(name="filename", data=b"hello.txt\n"),
        PayloadSource(name="permissions", data=f"{perms}\n".encode()),
        PayloadSource(name="hello.txt", data=content),
    ]


@pytest.mark.parametrize("compression", ["none", "gzip", "lzma"])
@pytest.mark.parametrize("keyname", ["rsa_key", "ec_key", "rsa_pkcs8_key", "ec_pkcs8_key"])
def test_artifact_gapferry_written_validates(
    tmp_path: Path, compression: str, keyname: str, request: pytest.FixtureRequest
) -> None:
    key: KeyPair = request.getfixturevalue(keyname)
    art = gapferry_write(
        tmp_path / "a.mender",
        name="gw-1",
        payload_type="single-file",
        files=_sf(Path("/opt/x")),
        compression=compression,
        key=key,
        meta_data={"answer": 42},
        state_scripts=[PayloadSource(name="ArtifactInstall_Enter_00", data=b"#!/bin/sh\ntrue\n")],
    )
    ok, text = mender_artifact_validate(art, key)
    assert ok, text
    assert "validated successfully" in text


@pytest.mark.parametrize("keyname", ["rsa_key", "ec_key"])
def test_artifact_gapferry_directory_and_script_validate(
    tmp_path: Path, keyname: str, request: pytest.FixtureRequest
) -> None:
    key: KeyPair = request.getfixturevalue(keyname)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a")
    d = gapferry_write(
        tmp_path / "d.mender",
        name="gd-1",
        payload_type="directory",
        files=directory_payload(tmp_path / "pl", dest_dir="/srv/www", tree=tree),
        compression="lzma",
        key=key,
    )
    s = gapferry_write(
        tmp_path / "s.mender",
        name="gs-1",
        payload_type="script",
        files=[PayloadSource(name="run.sh", data=b"#!/bin/sh\ntrue\n")],
        compression="none",
        key=key,
    )
    for art in (d, s):
        ok, text = mender_artifact_validate(art, key)
        assert ok, text


def test_artifact_gapferry_unsigned_validates_without_key(tmp_path: Path, rsa_key: KeyPair) -> None:
    (tmp_path / "x").write_text("#!/bin/sh\n")
    art = gapferry_write(
        tmp_path / "u.mender", name="u", payload_type="script", files=[tmp_path / "x"]
    )
    ok, text = mender_artifact_validate(art, None)
    assert ok, text
    ok, text = mender_artifact_validate(art, rsa_key)
    assert not ok
    assert "missing signature" in text


def _tree(root: Path) -> dict[str, tuple[str, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            kind = "d" if stat.S_ISDIR(st.st_mode) else "f"
            out[str(p.relative_to(root))] = (
                f"{kind}{oct(stat.S_IMODE(st.st_mode))}",
                p.read_bytes() if kind == "f" else b"",
            )
    return out


def _place_like_gapferry(art: Path, key: KeyPair, ours: Path, stage: Path) -> None:
    stager = Stager(stage)
    info = read_artifact_file(art, verify_key=key.public_pem(), payload_sink=stager.sink)
    apply_placement(plan_placement(info, stager), ours)


def _ok(p: subprocess.CompletedProcess[str]) -> None:
    assert p.returncode == 0, p.stdout + p.stderr


def test_artifact_gapferry_single_file_installs_with_mender(
    tmp_path: Path, ec_key: KeyPair
) -> None:
    root = make_root(tmp_path, verify_key=ec_key.public)
    dest = root.base / "device" / "opt" / "app"
    art = gapferry_write(
        tmp_path / "sf.mender", name="sf-1", payload_type="single-file", files=_sf(dest), key=ec_key
    )
    p = root.run(["install", str(art)])
    _ok(p)
    assert "authenticated digital signature" in p.stderr
    _ok(root.run(["commit"]))
    assert root.show_artifact() == "sf-1"
    assert root.show_provides() == {
        "artifact_name": "sf-1",
        "rootfs-image.single-file.version": "sf-1",
    }
    ours = tmp_path / "ours"
    ours.mkdir()
    _place_like_gapferry(art, ec_key, ours, tmp_path / "stage")
    mine = ours / dest.relative_to("/")
    assert _tree(mine) == _tree(dest) == {"hello.txt": ("f0o640", b"hello\n")}


def test_artifact_gapferry_directory_installs_and_rolls_back(
    tmp_path: Path, rsa_pkcs8_key: KeyPair
) -> None:
    root = make_root(tmp_path, verify_key=rsa_pkcs8_key.public)
    dest = root.base / "device" / "srv" / "www"
    dest.mkdir(parents=True)
    (dest / "old.txt").write_text("old")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a")
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    (tree / "sub").chmod(0o750)
    files = directory_payload(tmp_path / "pl", dest_dir=str(dest), tree=tree)
    art = gapferry_write(
        tmp_path / "d.mender",
        name="dir-1",
        payload_type="directory",
        files=files,
        compression="lzma",
        key=rsa_pkcs8_key,
    )
    ours = tmp_path / "ours"
    (ours / dest.relative_to("/")).mkdir(parents=True)
    (ours / dest.relative_to("/") / "old.txt").write_text("old")
    _place_like_gapferry(art, rsa_pkcs8_key, ours, tmp_path / "stage")

    _ok(root.run(["install", str(art)]))
    theirs = _tree(dest)
    assert "old.txt" not in theirs
    assert theirs == _tree(ours / dest.relative_to("/"))
    _ok(root.run(["rollback"]))
    assert _tree(dest) == {"old.txt": ("f0o644", b"old")}


def test_artifact_mender_refuses_unsigned_when_key_configured(
    tmp_path: Path, ec_key: KeyPair
) -> None:
    root = make_root(tmp_path, verify_key=ec_key.public)
    art = gapferry_write(
        tmp_path / "u.mender",
        name="u-1",
        payload_type="single-file",
        files=_sf(root.base / "d"),
    )
    p = root.run(["install", str(art)])
    assert p.returncode == 1
    assert "no signature file found" in p.stderr
    assert not (root.base / "d").exists()


def _compat_cases(tmp_path: Path) -> list[tuple[Path, str]]:
    out = []
    other = gapferry_write(
        tmp_path / "other.mender",
        name="o-1",
        payload_type="single-file",
        files=_sf(tmp_path / "o"),
        device_types=["other-device"],
    )
    out.append(
        (
            other,
            "installer: image (device types [other-device]) not compatible with device test-device",
        )
    )
    dep = gapferry_write(
        tmp_path / "dep.mender",
        name="dep-1",
        payload_type="single-file",
        files=_sf(tmp_path / "o"),
        depends_artifact_names=["some-other-release"],
    )
    out.append(
        (
            dep,
            'Artifact dependency "artifact_name" not satisfied by currently installed artifact'
            " ([some-other-release] != factory-image).",
        )
    )
    return out


def test_artifact_compat_matches_mender_client(tmp_path: Path) -> None:
    root: MenderRoot = make_root(tmp_path, artifact_name="factory-image")
    for art, text in _compat_cases(tmp_path):
        p = root.run(["install", str(art)])
        assert p.returncode == 1
        assert text in p.stderr.replace('\\"', '"')
        info = read_artifact_file(art)
        with pytest.raises(ArtifactIncompatible) as e:
            check_compatible(
                info, device_type="test-device", artifact_name="factory-image", provides={}
            )
        assert text in e.value.message
        assert e.value.code == "artifact-incompatible"


def test_artifact_update_tar_layout_from_fixture(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_text("x")
    files = directory_payload(tmp_path / "p", dest_dir="/srv", tree=tree)
    with tarfile.open(files[0]) as t:
        assert sorted(t.getnames()) == [".", "./f"]


def test_artifact_gapferry_script_with_state_scripts_runs(tmp_path: Path, rsa_key: KeyPair) -> None:
    root = make_root(tmp_path, verify_key=rsa_key.public)
    marker = root.base / "ran-payload"
    state_marker = root.base / "ran-state"
    art = gapferry_write(
        tmp_path / "s.mender",
        name="script-1",
        payload_type="script",
        files=[PayloadSource(name="run.sh", data=f"#!/bin/sh\necho ok > {marker}\n".encode())],
        key=rsa_key,
        state_scripts=[
            PayloadSource(
                name="ArtifactInstall_Enter_00",
                data=f"#!/bin/sh\necho ok > {state_marker}\n".encode(),
            )
        ],
    )
    p = root.run(["install", str(art)])
    _ok(p)
    assert marker.read_text() == "ok\n"
    assert state_marker.read_text() == "ok\n"
    assert root.show_artifact() == "script-1"  # no rollback support: committed at once


def test_artifact_compat_provides_and_groups_match_mender_client(tmp_path: Path) -> None:
    """Depends on type-info provides and on artifact_group, met and unmet: gapferry's check and
    the real client agree, with the client's wording (artifact-and-client.md 2, 3.2)."""
    root = make_root(tmp_path, artifact_name="factory-image")

    def script(name: str, **kw: Any) -> Path:
        return gapferry_write(
            tmp_path / f"{name}.mender",
            name=name,
            payload_type="script",
            files=[PayloadSource(name="run.sh", data=b"#!/bin/sh\ntrue\n")],
            **kw,
        )

    _ok(
        root.run(["install", str(script("base-1", provides={"ch": "stable"}, artifact_group="g1"))])
    )
    provides = root.show_provides()
    assert provides == {"artifact_group": "g1", "artifact_name": "base-1", "ch": "stable"}
    unmet = [
        (
            script("beta-1", depends={"ch": "beta"}),
            'Artifact dependency "ch" not satisfied by currently installed artifact'
            " (beta != stable).",
        ),
        (
            script("grp-1", depends_groups=["g2"]),
            'Artifact dependency "artifact_group" not satisfied by currently installed artifact'
            " ([g2] != g1).",
        ),
    ]
    for art, text in unmet:
        p = root.run(["install", str(art)])
        assert p.returncode == 1
        assert text in p.stderr.replace('\\"', '"')
        with pytest.raises(ArtifactIncompatible) as e:
            check_compatible(
                read_artifact_file(art),
                device_type="test-device",
                artifact_name="base-1",
                provides=provides,
            )
        assert text in e.value.message
    met = script(
        "ok-1", depends={"ch": "stable"}, depends_groups=["g1"], depends_artifact_names=["base-1"]
    )
    check_compatible(
        read_artifact_file(met),
        device_type="test-device",
        artifact_name="base-1",
        provides=provides,
    )
    _ok(root.run(["install", str(met)]))
    assert root.show_artifact() == "ok-1"
