"""Artifacts written by the real mender-artifact 3.9 are read and verified (notes 1.5, 1.6)."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from pathlib import Path

import pytest
from gapferry.common.artifact.errors import (
    ArtifactBadSignature,
    ArtifactUnsigned,
    ArtifactWrongKeyType,
)
from gapferry.common.artifact.extract import Stager, plan_placement
from gapferry.common.artifact.reader import PayloadFile, read_artifact_file
from gapferry.common.digest import Readable
from gapferry.fixtures.artifacts import (
    KeyPair,
    directory_payload,
    mender_artifact_rootfs,
    mender_artifact_write,
    single_file_payload,
)

pytestmark = pytest.mark.real_tools


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("compression", ["none", "gzip", "lzma"])
@pytest.mark.parametrize("keyname", ["rsa_key", "ec_key"])
def test_artifact_reads_mender_single_file(
    tmp_path: Path, compression: str, keyname: str, request: pytest.FixtureRequest
) -> None:
    key: KeyPair = request.getfixturevalue(keyname)
    files = single_file_payload(
        tmp_path / "sf", dest_dir="/opt/app", filename="hello.txt", content=b"hello\n"
    )
    art = mender_artifact_write(
        tmp_path / "sf.mender",
        name="sf-v1",
        payload_type="single-file",
        files=files,
        device_types=["dev-a", "dev-b"],
        compression=compression,
        key=key,
    )
    seen: dict[str, bytes] = {}

    def sink(index: int, f: PayloadFile, r: Readable) -> None:
        buf = bytearray(f.size)
        view = memoryview(buf)
        got = 0
        while got < f.size:
            n = r.readinto(view[got:])
            assert n
            got += n
        seen[f.name] = bytes(buf)

    info = read_artifact_file(art, verify_key=key.public_pem(), payload_sink=sink)
    assert info.name == "sf-v1"
    assert info.format_version == 3
    assert info.device_types == ("dev-a", "dev-b")
    assert info.signed
    assert info.signature_verified
    assert info.signature_key == key.kind.replace("ecdsa-secp256r1", "ecdsa-p256")
    assert info.compression == compression
    assert info.provides == {
        "artifact_name": "sf-v1",
        "rootfs-image.single-file.version": "sf-v1",
    }
    assert info.clears_provides == ("rootfs-image.single-file.*",)
    assert info.depends == {"device_type": ["dev-a", "dev-b"]}
    (payload,) = info.payloads
    assert payload.type == "single-file"
    assert [f.name for f in payload.files] == ["dest_dir", "filename", "permissions", "hello.txt"]
    assert {f.name: f.sha256 for f in payload.files} == {p.name: _sha(p) for p in files}
    assert seen == {p.name: p.read_bytes() for p in files}
    assert info.size == art.stat().st_size
    assert info.sha256 == _sha(art)
    with tarfile.open(art) as t:
        m = t.extractfile("manifest")
        assert m is not None
        assert info.manifest_sha256 == hashlib.sha256(m.read()).hexdigest()


@pytest.mark.parametrize("keyname", ["rsa_key", "ec_key"])
def test_artifact_reads_mender_directory_and_script(
    tmp_path: Path, keyname: str, request: pytest.FixtureRequest
) -> None:
    key: KeyPair = request.getfixturevalue(keyname)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a")
    files = directory_payload(tmp_path / "dir", dest_dir="/opt/tree", tree=tree)
    d = mender_artifact_write(
        tmp_path / "d.mender", name="dir-v1", payload_type="directory", files=files, key=key
    )
    info = read_artifact_file(d, verify_key=key.public_pem())
    assert info.payloads[0].type == "directory"
    assert [f.name for f in info.payloads[0].files] == ["update.tar", "dest_dir"]
    assert {f.name: f.sha256 for f in info.payloads[0].files} == {p.name: _sha(p) for p in files}
    assert info.signature_verified

    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    state = tmp_path / "ArtifactInstall_Enter_00"
    state.write_text("#!/bin/sh\ntrue\n")
    meta = tmp_path / "meta.json"
    meta.write_text('{"answer": 42, "list": ["a", 1]}')
    s = mender_artifact_write(
        tmp_path / "s.mender",
        name="script-v1",
        payload_type="script",
        files=[script],
        extra_args=[
            "-s",
            str(state),
            "-m",
            str(meta),
            "-p",
            "myapp.version:1.2.3",
            "-d",
            "myapp.channel:stable",
            "-N",
            "base-1",
            "-g",
            "groupA",
        ],
    )
    info = read_artifact_file(s)
    assert not info.signed
    assert not info.signature_verified
    assert info.state_scripts == ("ArtifactInstall_Enter_00",)
    assert info.payloads[0].type == "script"
    assert [(f.name, f.sha256) for f in info.payloads[0].files] == [("run.sh", _sha(script))]
    assert info.payloads[0].meta_data == {"answer": 42, "list": ["a", 1]}
    assert info.provides["myapp.version"] == "1.2.3"
    assert info.provides["artifact_group"] == "groupA"
    assert info.depends["myapp.channel"] == "stable"
    assert info.depends["artifact_name"] == ["base-1"]
    signed = mender_artifact_write(
        tmp_path / "s-signed.mender",
        name="script-v2",
        payload_type="script",
        files=[script],
        key=key,
        extra_args=["-s", str(state)],
    )
    info = read_artifact_file(signed, verify_key=key.public_pem())
    assert info.signature_verified
    assert info.state_scripts == ("ArtifactInstall_Enter_00",)


@pytest.mark.parametrize("compression", ["none", "gzip", "lzma"])
def test_artifact_reads_mender_rootfs_image(
    tmp_path: Path, compression: str, rsa_key: KeyPair
) -> None:
    image = tmp_path / "rootfs.ext4"
    with image.open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    art = mender_artifact_rootfs(
        tmp_path / "r.mender", name="rootfs-v1", image=image, compression=compression, key=rsa_key
    )
    info = read_artifact_file(art, verify_key=rsa_key.public_pem())
    assert info.payloads[0].type == "rootfs-image"
    assert info.payloads[0].files[0].sha256 == _sha(image)
    assert info.provides["rootfs-image.checksum"] == _sha(image)
    assert info.signature_key == "rsa-3072"


def test_artifact_reads_mender_format_v2(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(b"x" * 1000)
    out = tmp_path / "v2.mender"
    subprocess.run(
        [
            "mender-artifact",
            "write",
            "rootfs-image",
            "--no-progress",
            "-v",
            "2",
            "-t",
            "dev",
            "-n",
            "old-v2",
            "-f",
            str(image),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    info = read_artifact_file(out)
    assert info.format_version == 2
    assert info.name == "old-v2"
    assert info.device_types == ("dev",)


def test_artifact_wrong_key_kinds_on_mender_signatures(
    tmp_path: Path, rsa_key: KeyPair, ec_key: KeyPair, other_rsa_key: KeyPair
) -> None:
    files = single_file_payload(tmp_path / "sf", dest_dir="/opt", filename="f", content=b"x")
    by_rsa = mender_artifact_write(
        tmp_path / "r.mender", name="a", payload_type="single-file", files=files, key=rsa_key
    )
    by_ec = mender_artifact_write(
        tmp_path / "e.mender", name="a", payload_type="single-file", files=files, key=ec_key
    )
    with pytest.raises(ArtifactWrongKeyType, match="RSA signature"):
        read_artifact_file(by_rsa, verify_key=ec_key.public_pem())
    with pytest.raises(ArtifactWrongKeyType, match="ECDSA P-256 signature"):
        read_artifact_file(by_ec, verify_key=rsa_key.public_pem())
    with pytest.raises(ArtifactBadSignature) as e:
        read_artifact_file(by_rsa, verify_key=other_rsa_key.public_pem())
    assert e.value.code == "artifact-bad-signature"


def test_artifact_reads_mender_augmented(tmp_path: Path, ec_key: KeyPair) -> None:
    files = single_file_payload(tmp_path / "sf", dest_dir="/opt", filename="f", content=b"x")
    aug = tmp_path / "augf"
    aug.write_text("aug")
    art = mender_artifact_write(
        tmp_path / "aug.mender",
        name="sf-aug",
        payload_type="single-file",
        files=files,
        key=ec_key,
        extra_args=["--augment-type", "single-file", "--augment-file", str(aug)],
    )
    stager = Stager(tmp_path / "stage")
    info = read_artifact_file(art, verify_key=ec_key.public_pem(), payload_sink=stager.sink)
    assert info.augmented
    assert info.signature_verified
    assert {f.name: f.augmented for f in info.payloads[0].files} == {
        "dest_dir": False,
        "filename": False,
        "permissions": False,
        "f": False,
        "augf": True,
    }
    with pytest.raises(ArtifactUnsigned, match="manifest-augment"):
        plan_placement(info, stager)
