"""One named test per attack on an artifact (notes 1.1-1.4): each is refused with its own code,
and the real mender-artifact refuses the same bytes."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from gapferry.common.artifact.errors import (
    ArtifactBadSignature,
    ArtifactChecksumError,
    ArtifactError,
    ArtifactStructureError,
    ArtifactTooLarge,
    ArtifactUnsigned,
    ArtifactVersionError,
    ArtifactWrongKeyType,
    ArtifactZstd,
)
from gapferry.common.artifact.reader import read_artifact, read_artifact_file
from gapferry.common.artifact.signature import sign_manifest
from gapferry.common.artifact.writer import PayloadSource
from gapferry.common.limits import Limits
from gapferry.fixtures.artifacts import (
    KeyPair,
    Member,
    gapferry_write,
    mender_artifact_validate,
    tamper,
)

pytestmark = pytest.mark.real_tools  # most cases also ask mender-artifact to refuse the same bytes

FILES = [
    PayloadSource(name="dest_dir", data=b"/opt/app\n"),
    PayloadSource(name="filename", data=b"hello.txt\n"),
    PayloadSource(name="permissions", data=b"640\n"),
    PayloadSource(name="hello.txt", data=b"hello world\n" * 100),
]


def _art(tmp: Path, key: KeyPair | None, compression: str = "gzip") -> Path:
    return gapferry_write(
        tmp / f"good-{compression}.mender",
        name="sf-v1",
        payload_type="single-file",
        files=FILES,
        compression=compression,
        key=key,
    )


def _get(members: list[Member], name: str) -> Member:
    return next(m for m in members if m.name == name)


def _resign(members: list[Member], key: KeyPair) -> list[Member]:
    sig = sign_manifest(_get(members, "manifest").data, key.private_pem())
    return [Member(name=m.name, data=sig) if m.name == "manifest.sig" else m for m in members]


def _refused_by_mender(path: Path, key: KeyPair | None) -> str:
    ok, text = mender_artifact_validate(path, key)
    assert not ok, text
    return text


Edit = Callable[[list[Member]], list[Member]]


def _flip_first_payload_byte(ms: list[Member]) -> list[Member]:
    data = bytearray(_get(ms, "data/0000.tar").data)
    # the first file's content starts right after its 512-byte tar header
    data[512] ^= 0x01
    _get(ms, "data/0000.tar").data = bytes(data)
    return ms


def test_artifact_tampered_payload_byte(tmp_path: Path, rsa_key: KeyPair) -> None:
    good = _art(tmp_path, rsa_key, "none")
    bad = tamper(good, tmp_path / "bad.mender", _flip_first_payload_byte)
    with pytest.raises(ArtifactChecksumError, match="invalid checksum") as e:
        read_artifact_file(bad, verify_key=rsa_key.public_pem())
    assert e.value.code == "artifact-checksum"
    assert "data/0000/dest_dir" in e.value.message
    assert "invalid checksum" in _refused_by_mender(bad, rsa_key)


def test_artifact_tampered_header_bytes(tmp_path: Path, rsa_key: KeyPair) -> None:
    good = _art(tmp_path, rsa_key)

    def edit(ms: list[Member]) -> list[Member]:
        h = _get(ms, "header.tar.gz")
        # same content, different gzip bytes: the manifest covers the stored (compressed) bytes
        h.data = gzip.compress(gzip.decompress(h.data), compresslevel=1, mtime=12345)
        return ms

    bad = tamper(good, tmp_path / "bad.mender", edit)
    with pytest.raises(ArtifactChecksumError, match=r"header\.tar\.gz: invalid checksum"):
        read_artifact_file(bad, verify_key=rsa_key.public_pem())
    assert "invalid checksum" in _refused_by_mender(bad, rsa_key)

    # the attack that matters: a different device type in header-info, same length, unsigned
    plain = _art(tmp_path, rsa_key, "none")

    def retarget(ms: list[Member]) -> list[Member]:
        h = _get(ms, "header.tar")
        assert h.data.count(b"test-device") == 1
        h.data = h.data.replace(b"test-device", b"evil-device")
        return ms

    bad = tamper(plain, tmp_path / "retargeted.mender", retarget)
    with pytest.raises(ArtifactChecksumError, match=r"header\.tar: invalid checksum"):
        read_artifact_file(bad, verify_key=rsa_key.public_pem())
    assert "invalid checksum" in _refused_by_mender(bad, rsa_key)


def test_artifact_manifest_without_final_newline(tmp_path: Path, rsa_key: KeyPair) -> None:
    good = _art(tmp_path, rsa_key)

    def edit(ms: list[Member]) -> list[Member]:
        m = _get(ms, "manifest")
        m.data = m.data.rstrip(b"\n")
        return _resign(ms, rsa_key)  # a valid signature over the bad manifest

    bad = tamper(good, tmp_path / "bad.mender", edit)
    with pytest.raises(ArtifactChecksumError, match="does not end in a newline"):
        read_artifact_file(bad, verify_key=rsa_key.public_pem())
    assert "checksum missing" in _refused_by_mender(bad, rsa_key)


def test_artifact_reordered_members(tmp_path: Path) -> None:
    good = _art(tmp_path, None)

    def edit(ms: list[Member]) -> list[Member]:
        return [ms[0], _get(ms, "header.tar.gz"), _get(ms, "manifest"), ms[-1]]

    bad = tamper(good, tmp_path / "bad.mender", edit)
    with pytest.raises(ArtifactStructureError, match=r"wrong element: header\.tar\.gz") as e:
        read_artifact_file(bad)
    assert e.value.code == "artifact-structure"
    assert "wrong element" in _refused_by_mender(bad, None)


def test_artifact_der_ecdsa_signature(tmp_path: Path, ec_key: KeyPair) -> None:
    good = _art(tmp_path, ec_key)

    def edit(ms: list[Member]) -> list[Member]:
        key = serialization.load_pem_private_key(ec_key.private_pem(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.sign(_get(ms, "manifest").data, ec.ECDSA(hashes.SHA256()))
        _get(ms, "manifest.sig").data = base64.b64encode(der)
        return ms

    bad = tamper(good, tmp_path / "bad.mender", edit)
    with pytest.raises(ArtifactBadSignature, match="DER") as e:
        read_artifact_file(bad, verify_key=ec_key.public_pem())
    assert e.value.code == "artifact-bad-signature"
    assert "invalid ecdsa key size" in _refused_by_mender(bad, ec_key)


def test_artifact_rsa_pss_signature(tmp_path: Path, rsa_key: KeyPair) -> None:
    good = _art(tmp_path, rsa_key)

    def edit(ms: list[Member]) -> list[Member]:
        key = serialization.load_pem_private_key(rsa_key.private_pem(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        pss = key.sign(
            _get(ms, "manifest").data,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )
        _get(ms, "manifest.sig").data = base64.b64encode(pss)
        return ms

    bad = tamper(good, tmp_path / "bad.mender", edit)
    with pytest.raises(ArtifactBadSignature, match="PKCS1-v1_5"):
        read_artifact_file(bad, verify_key=rsa_key.public_pem())
    assert "verification error" in _refused_by_mender(bad, rsa_key)


def test_artifact_unsigned_but_key_given(tmp_path: Path, rsa_key: KeyPair) -> None:
    unsigned = _art(tmp_path, None)
    with pytest.raises(ArtifactUnsigned, match="no signature file found") as e:
        read_artifact_file(unsigned, verify_key=rsa_key.public_pem())
    assert e.value.code == "artifact-unsigned"
    with pytest.raises(ArtifactUnsigned):
        read_artifact_file(unsigned, require_signature=True)
    assert "missing signature" in _refused_by_mender(unsigned, rsa_key)


def test_artifact_signed_read_without_key_is_not_verified(tmp_path: Path, rsa_key: KeyPair) -> None:
    info = read_artifact_file(_art(tmp_path, rsa_key), require_signature=True)
    assert info.signed
    assert not info.signature_verified


def test_artifact_unsupported_verify_keys(tmp_path: Path, rsa_key: KeyPair) -> None:
    art = _art(tmp_path, rsa_key)
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    for pub in (ed, p384):
        pem = pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(ArtifactWrongKeyType) as e:
            read_artifact_file(art, verify_key=pem)
        assert e.value.code == "artifact-wrong-key-type"
    with pytest.raises(ArtifactWrongKeyType, match="not a PEM public key"):
        read_artifact_file(art, verify_key=rsa_key.private_pem())


def test_artifact_tampered_manifest_breaks_signature(tmp_path: Path, ec_key: KeyPair) -> None:
    good = _art(tmp_path, ec_key)

    def edit(ms: list[Member]) -> list[Member]:
        m = _get(ms, "manifest")
        m.data = m.data.replace(b"data/0000/hello.txt", b"data/0000/hellO.txt")
        return ms

    bad = tamper(good, tmp_path / "bad.mender", edit)
    with pytest.raises(ArtifactBadSignature):
        read_artifact_file(bad, verify_key=ec_key.public_pem())


def test_artifact_zstd_header_refused(tmp_path: Path) -> None:
    good = _art(tmp_path, None, "none")

    def edit(ms: list[Member]) -> list[Member]:
        h = _get(ms, "header.tar")
        z = zstandard.ZstdCompressor().compress(h.data)
        ms = [Member(name="header.tar.zst", data=z) if m is h else m for m in ms]
        m = _get(ms, "manifest")
        m.data = m.data.replace(
            f"{hashlib.sha256(h.data).hexdigest()}  header.tar\n".encode(),
            f"{hashlib.sha256(z).hexdigest()}  header.tar.zst\n".encode(),
        )
        return ms

    bad = tamper(good, tmp_path / "bad.mender", edit)
    with pytest.raises(ArtifactZstd, match=r"Mender 3\.x clients") as e:
        read_artifact_file(bad)
    assert e.value.code == "artifact-zstd"
    assert "wrong element" in _refused_by_mender(bad, None)


def test_artifact_version_1_refused(tmp_path: Path) -> None:
    good = _art(tmp_path, None)

    def edit(ms: list[Member]) -> list[Member]:
        _get(ms, "version").data = b'{"format":"mender","version":1}'
        return ms

    with pytest.raises(ArtifactVersionError, match="version 1 is no longer supported") as e:
        read_artifact_file(tamper(good, tmp_path / "v1.mender", edit))
    assert e.value.code == "artifact-version"


def test_artifact_file_listed_but_absent(tmp_path: Path) -> None:
    good = _art(tmp_path, None)

    def edit(ms: list[Member]) -> list[Member]:
        _get(ms, "manifest").data += b"0" * 64 + b"  data/0000/ghost\n"
        return ms

    with pytest.raises(ArtifactChecksumError, match="not part of artifact: data/0000/ghost"):
        read_artifact_file(tamper(good, tmp_path / "bad.mender", edit))


def test_artifact_file_without_manifest_line(tmp_path: Path) -> None:
    good = _art(tmp_path, None)

    def edit(ms: list[Member]) -> list[Member]:
        m = _get(ms, "manifest")
        m.data = b"".join(
            line for line in m.data.splitlines(keepends=True) if b"hello.txt" not in line
        )
        return ms

    with pytest.raises(
        ArtifactChecksumError, match=r"checksum missing for file: 'data/0000/hello\.txt'"
    ):
        read_artifact_file(tamper(good, tmp_path / "bad.mender", edit))


def test_artifact_manifest_uppercase_hex(tmp_path: Path) -> None:
    good = _art(tmp_path, None)

    def edit(ms: list[Member]) -> list[Member]:
        m = _get(ms, "manifest")
        m.data = m.data[:64].upper() + m.data[64:]
        return ms

    with pytest.raises(ArtifactChecksumError, match="lowercase hex"):
        read_artifact_file(tamper(good, tmp_path / "bad.mender", edit))


def test_artifact_header_json_broken(tmp_path: Path) -> None:
    good = _art(tmp_path, None, "none")

    def edit(ms: list[Member]) -> list[Member]:
        h = _get(ms, "header.tar")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            body = json.dumps({"payloads": [{"type": "x"}]}).encode()
            ti = tarfile.TarInfo("header-info")
            ti.size = len(body)
            t.addfile(ti, io.BytesIO(body))
        new = buf.getvalue()
        m = _get(ms, "manifest")
        m.data = m.data.replace(
            hashlib.sha256(h.data).hexdigest().encode(), hashlib.sha256(new).hexdigest().encode()
        )
        h.data = new
        return ms

    with pytest.raises(ArtifactError) as e:
        read_artifact_file(tamper(good, tmp_path / "bad.mender", edit))
    assert e.value.code == "artifact-header"


def test_artifact_truncated(tmp_path: Path) -> None:
    art = _art(tmp_path, None, "none")
    raw = art.read_bytes()
    with tarfile.open(art) as t:
        ends = [m.offset_data + m.size for m in t.getmembers()]
    # inside a header, inside version, inside the header member, inside the last payload
    for cut in (100, 520, ends[3] - 10, ends[-1] - 5):
        with pytest.raises(ArtifactError):
            read_artifact(io.BytesIO(raw[:cut]))


def test_artifact_limits(tmp_path: Path) -> None:
    art = _art(tmp_path, None)
    for limits in (
        Limits(artifact_members=3),
        Limits(artifact_header_bytes=100),
        Limits(artifact_decompressed_bytes=1000),
        Limits(payload_decompressed_bytes=100),
        Limits(artifact_bytes=2000),
    ):
        with pytest.raises(ArtifactTooLarge) as e:
            read_artifact_file(art, limits=limits)
        assert e.value.code == "artifact-too-large"


def test_artifact_sink_sees_claimed_digest_then_failure(tmp_path: Path) -> None:
    """A sink gets the bytes before the check; the reader then raises, so staging must be dropped."""
    good = _art(tmp_path, None, "none")

    def edit(ms: list[Member]) -> list[Member]:
        data = bytearray(_get(ms, "data/0000.tar").data)
        data[512] ^= 0x01
        _get(ms, "data/0000.tar").data = bytes(data)
        return ms

    bad = tamper(good, tmp_path / "bad.mender", edit)
    calls: list[str] = []
    with pytest.raises(ArtifactChecksumError):
        read_artifact_file(bad, payload_sink=lambda i, f, r: calls.append(f.name))
    assert calls == ["dest_dir"]


def test_artifact_known_sha256_skips_only_the_whole_file_hash(
    tmp_path: Path, rsa_key: KeyPair
) -> None:
    """`known_sha256` (the caller's stream checks the whole file, as the applier's bundle stream
    does) becomes the result's sha256; payload checksums and the signature are still checked."""
    good = _art(tmp_path, rsa_key, "none")
    data = good.read_bytes()
    whole = hashlib.sha256(data).hexdigest()
    plain = read_artifact(io.BytesIO(data), verify_key=rsa_key.public_pem())
    assert plain.sha256 == whole
    vouched = read_artifact(
        io.BytesIO(data), verify_key=rsa_key.public_pem(), known_sha256="ab" * 32
    )
    assert vouched.sha256 == "ab" * 32
    assert vouched.signature_verified
    assert vouched.name == plain.name

    bad = tamper(good, tmp_path / "bad.mender", _flip_first_payload_byte).read_bytes()
    with pytest.raises(ArtifactChecksumError):
        read_artifact(io.BytesIO(bad), verify_key=rsa_key.public_pem(), known_sha256=whole)
