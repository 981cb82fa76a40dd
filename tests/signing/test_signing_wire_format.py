"""Hostile and unusual SSHSIG / key encodings: exact error codes, and OpenSSH agreeing where it can."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from gapferry.common import sshsig
from gapferry.common.errors import InvalidData
from gapferry.common.signers import KeyFileSigner
from gapferry.common.sshkeys import (
    parse_certificate,
    parse_key_blob,
    parse_public_key,
    put_mpint,
    put_string,
)
from gapferry.fixtures import sshkeys as fx
from gapferry.fixtures.sshkeys import Keyring

pytestmark = pytest.mark.real_tools

MESSAGE = b"wire format\n"
NS = "gapferry-result@example.org"


def _parse(data: bytes) -> sshsig.SshSig:
    return sshsig.parse_armored(data, max_bytes=65536)


def _code(action: Callable[[], object]) -> str:
    with pytest.raises(InvalidData) as excinfo:
        action()
    return excinfo.value.code


def _good(keyring: Keyring) -> tuple[sshsig.SshSig, bytes]:
    armored = sshsig.sign(
        MESSAGE, signer=KeyFileSigner(keyring.keys["ed25519"].private), namespace=NS
    )
    return _parse(armored), armored


def _reencode(sig: sshsig.SshSig, **changes: bytes | str) -> bytes:
    key_blob = changes.get("key", sig.certificate.blob if sig.certificate else sig.public_key.blob)
    signature = changes.get("signature", sig.signature)
    hash_alg = changes.get("hash_alg", sig.hash_alg)
    assert isinstance(key_blob, bytes)
    assert isinstance(signature, bytes)
    assert isinstance(hash_alg, str)
    return sshsig.encode_sshsig(
        public_key_blob=key_blob, namespace=sig.namespace, hash_alg=hash_alg, signature=signature
    )


def test_signing_armor_is_byte_identical_and_round_trips(keyring: Keyring) -> None:
    sig, armored = _good(keyring)
    assert sshsig.armor(sig.raw) == armored
    lines = armored.decode().splitlines()
    assert lines[0] == "-----BEGIN SSH SIGNATURE-----"
    assert lines[-1] == "-----END SSH SIGNATURE-----"
    assert all(len(line) == 70 for line in lines[1:-2])


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("trailing byte after blob", lambda raw: raw + b"\0"),
        ("wrong magic", lambda raw: b"SSHSIH" + raw[6:]),
        ("version 2", lambda raw: raw[:6] + struct.pack(">I", 2) + raw[10:]),
        ("length runs past the end", lambda raw: raw[:10] + struct.pack(">I", 1 << 19) + raw[14:]),
        ("truncated", lambda raw: raw[:-1]),
        ("empty", lambda raw: b""),
    ],
)
def test_signing_malformed_sshsig_blob(
    keyring: Keyring, name: str, mutate: Callable[[bytes], bytes]
) -> None:
    sig, _ = _good(keyring)
    assert _code(lambda: _parse(sshsig.armor(mutate(sig.raw)))) == "bad-signature-format"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("not armored", b"hello"),
        ("no end line", b"-----BEGIN SSH SIGNATURE-----\nAAAA\n"),
        ("bad base64", b"-----BEGIN SSH SIGNATURE-----\nA*AA\n-----END SSH SIGNATURE-----\n"),
        ("non-ascii", "-----BEGIN SSH SIGNATURE-----\né\n-----END SSH SIGNATURE-----\n".encode()),
    ],
)
def test_signing_malformed_armor(name: str, text: bytes) -> None:
    assert _code(lambda: _parse(text)) == "bad-signature-format"


def test_signing_non_canonical_base64_refused(keyring: Keyring) -> None:
    _, armored = _good(keyring)
    lines = armored.decode().splitlines()
    body = "".join(lines[1:-1])
    # Flip the unused low bits of the last base64 digit before the padding.
    stripped = body.rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(stripped[-1])
    variant = stripped[:-1] + alphabet[last ^ 1] + body[len(stripped) :]
    assert base64.b64decode(variant) == base64.b64decode(body)
    text = f"-----BEGIN SSH SIGNATURE-----\n{variant}\n-----END SSH SIGNATURE-----\n".encode()
    assert _code(lambda: _parse(text)) == "bad-signature-format"


def test_signing_oversized_armor_refused(keyring: Keyring) -> None:
    _, armored = _good(keyring)
    assert (
        _code(lambda: sshsig.parse_armored(armored, max_bytes=len(armored) - 1))
        == "bad-signature-format"
    )


def test_signing_trailing_bytes_inside_signature(keyring: Keyring) -> None:
    sig, _ = _good(keyring)
    armored = sshsig.armor(_reencode(sig, signature=sig.signature + b"\0"))
    parsed = _parse(armored)
    assert (
        _code(lambda: sshsig.verify_cryptographically(MESSAGE, parsed, namespace=NS))
        == "bad-signature"
    )
    assert not fx.ssh_keygen_check_novalidate(namespace=NS, message=MESSAGE, signature=armored)


def test_signing_algorithm_not_matching_key(keyring: Keyring) -> None:
    sig, _ = _good(keyring)
    other = sshsig.parse_armored(
        sshsig.sign(
            MESSAGE, signer=KeyFileSigner(keyring.keys["ecdsa-p256"].private), namespace=NS
        ),
        max_bytes=65536,
    )
    mixed = _parse(sshsig.armor(_reencode(sig, key=other.public_key.blob)))
    assert (
        _code(lambda: sshsig.verify_cryptographically(MESSAGE, mixed, namespace=NS))
        == "bad-signature"
    )


def _private(keyring: Keyring, key_type: str) -> object:
    return serialization.load_ssh_private_key(
        keyring.keys[key_type].private.read_bytes(), password=None
    )


@pytest.mark.parametrize(
    ("sig_alg", "hash_cls", "accepted"),
    [
        ("rsa-sha2-512", hashes.SHA512, True),
        ("rsa-sha2-256", hashes.SHA256, True),
        ("ssh-rsa", hashes.SHA1, False),
    ],
)
def test_signing_rsa_signature_algorithms(
    keyring: Keyring, sig_alg: str, hash_cls: type[hashes.HashAlgorithm], accepted: bool
) -> None:
    private = _private(keyring, "rsa")
    assert isinstance(private, rsa.RSAPrivateKey)
    public = parse_public_key(keyring.keys["rsa"].public_line())
    tbs = sshsig.signed_data(MESSAGE, namespace=NS, hash_alg="sha512")
    raw = private.sign(tbs, padding.PKCS1v15(), hash_cls())
    armored = sshsig.armor(
        sshsig.encode_sshsig(
            public_key_blob=public.blob,
            namespace=NS,
            hash_alg="sha512",
            signature=put_string(sig_alg.encode()) + put_string(raw),
        )
    )
    assert fx.ssh_keygen_check_novalidate(namespace=NS, message=MESSAGE, signature=armored) == (
        accepted
    )
    parsed = _parse(armored)
    if accepted:
        sshsig.verify_cryptographically(MESSAGE, parsed, namespace=NS)
    else:
        assert (
            _code(lambda: sshsig.verify_cryptographically(MESSAGE, parsed, namespace=NS))
            == "bad-signature"
        )


@pytest.mark.parametrize(
    ("hash_alg", "accepted"), [("sha256", True), ("sha512", True), ("sha1", False)]
)
def test_signing_hash_algorithms(keyring: Keyring, hash_alg: str, accepted: bool) -> None:
    private = _private(keyring, "ed25519")
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    public = parse_public_key(keyring.keys["ed25519"].public_line())
    digest = hashlib.new(hash_alg, MESSAGE).digest()
    tbs = (
        b"SSHSIG"
        + put_string(NS.encode())
        + put_string(b"")
        + put_string(hash_alg.encode())
        + put_string(digest)
    )
    armored = sshsig.armor(
        sshsig.encode_sshsig(
            public_key_blob=public.blob,
            namespace=NS,
            hash_alg=hash_alg,
            signature=put_string(b"ssh-ed25519") + put_string(private.sign(tbs)),
        )
    )
    assert (
        fx.ssh_keygen_check_novalidate(namespace=NS, message=MESSAGE, signature=armored) == accepted
    )
    parsed = _parse(armored)
    if accepted:
        sshsig.verify_cryptographically(MESSAGE, parsed, namespace=NS)
    else:
        assert (
            _code(lambda: sshsig.verify_cryptographically(MESSAGE, parsed, namespace=NS))
            == "bad-signature"
        )


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(
    "kind", ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"]
)
def test_signing_security_key_signatures_verify_like_openssh(kind: str, flip: bool) -> None:
    """A FIDO token's signature (simulated with the same math) verifies in both tools."""
    app, flags, counter = b"ssh:", 0x01, 7
    tbs = sshsig.signed_data(MESSAGE, namespace=NS, hash_alg="sha512")
    to_sign = (
        hashlib.sha256(app).digest()
        + bytes([flags])
        + struct.pack(">I", counter)
        + hashlib.sha256(tbs).digest()
    )
    if kind.startswith("sk-ssh-ed25519"):
        ed = ed25519.Ed25519PrivateKey.generate()
        key_blob = (
            put_string(kind.encode())
            + put_string(ed.public_key().public_bytes_raw())
            + put_string(app)
        )
        inner = put_string(ed.sign(to_sign))
    else:
        ecc = ec.generate_private_key(ec.SECP256R1())
        point = ecc.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        key_blob = (
            put_string(kind.encode())
            + put_string(b"nistp256")
            + put_string(point)
            + put_string(app)
        )
        r, s = decode_dss_signature(ecc.sign(to_sign, ec.ECDSA(hashes.SHA256())))
        inner = put_string(put_mpint(r) + put_mpint(s))
    signature = (
        put_string(kind.encode()) + inner + bytes([flags]) + struct.pack(">I", counter + flip)
    )
    armored = sshsig.armor(
        sshsig.encode_sshsig(
            public_key_blob=key_blob, namespace=NS, hash_alg="sha512", signature=signature
        )
    )
    assert fx.ssh_keygen_check_novalidate(namespace=NS, message=MESSAGE, signature=armored) == (
        not flip
    )
    parsed = _parse(armored)
    assert parsed.public_key.is_security_key
    if flip:
        assert (
            _code(lambda: sshsig.verify_cryptographically(MESSAGE, parsed, namespace=NS))
            == "bad-signature"
        )
    else:
        sshsig.verify_cryptographically(MESSAGE, parsed, namespace=NS)


def test_signing_public_key_line_parsing(keyring: Keyring) -> None:
    line = keyring.keys["ecdsa-p384"].public_line()
    key = parse_public_key(line)
    assert key.to_line() == line
    assert key.comment == "ecdsa-p384@example.org"
    b64 = line.split()[1]
    assert _code(lambda: parse_public_key(f"ssh-ed25519 {b64}")) == "bad-key"
    blob = base64.b64decode(b64)
    assert _code(lambda: parse_key_blob(blob + b"\0")) == "bad-key"
    assert _code(lambda: parse_key_blob(blob[:-1])) == "bad-key"
    # A point that is not on the curve.
    assert _code(lambda: parse_key_blob(blob[:-1] + bytes([blob[-1] ^ 1]))) == "bad-key"
    assert _code(lambda: parse_public_key("ssh-ed25519 not-base64")) == "bad-key"
    dss = put_string(b"ssh-dss") + put_string(b"\1") * 4
    assert _code(lambda: parse_key_blob(dss)) == "unsupported-key"


def test_signing_certificate_with_broken_ca_signature(keyring: Keyring) -> None:
    text = keyring.cert_key.certificate.read_text(encoding="ascii")
    b64 = text.split()[1]
    blob = bytearray(base64.b64decode(b64))
    blob[-5] ^= 0x01  # inside the CA's signature
    broken = bytes(blob)
    assert _code(lambda: parse_certificate(broken)) == "bad-certificate"
    # A signature carrying that certificate is refused as malformed, by ssh-keygen as well.
    sig = _parse(fx.ssh_keygen_sign(keyring.cert_key.certificate, MESSAGE, NS))
    armored = sshsig.armor(_reencode(sig, key=broken))
    assert _code(lambda: _parse(armored)) == "bad-signature-format"
    assert not fx.ssh_keygen_check_novalidate(namespace=NS, message=MESSAGE, signature=armored)
