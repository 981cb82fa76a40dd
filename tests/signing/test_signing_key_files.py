"""Key files: passphrases through a callback, permissions, formats; secrets never in messages."""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from gapferry.common import sshsig
from gapferry.common.errors import UsageProblem
from gapferry.common.signers import KeyFileSigner, Signer, SshKeygenSigner, load_signer
from gapferry.common.sshkeys import parse_public_key, put_string
from gapferry.fixtures import sshkeys as fx
from gapferry.fixtures.sshkeys import Keyring

pytestmark = pytest.mark.real_tools

MESSAGE = b"payload"
NS = "gapferry-transfer@example.org"
PASSPHRASE = b"correct horse battery staple"


def _verifies_with_ssh_keygen(tmp_path: Path, signer: Signer) -> bool:
    signature = sshsig.sign(MESSAGE, signer=signer, namespace=NS)
    trust = fx.write_allowed_signers(
        tmp_path / "allowed_signers",
        [fx.allowed_signers_line("k@example.org", signer.public_key.to_line())],
    )
    ok, _ = fx.ssh_keygen_verify(
        allowed_signers=trust,
        principal="k@example.org",
        namespace=NS,
        message=MESSAGE,
        signature=signature,
    )
    return ok


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p256", "rsa"])
def test_signing_passphrase_protected_key_via_callback(tmp_path: Path, key_type: str) -> None:
    key = fx.write_encrypted_key(tmp_path, "enc", passphrase=PASSPHRASE, key_type=key_type)
    # ssh-keygen itself agrees the file is encrypted: without a passphrase it cannot read it.
    proc = fx.run_ssh_keygen(["-y", "-P", "", "-f", str(key.private)], check=False)
    assert proc.returncode != 0
    asked: list[int] = []

    def ask() -> bytes:
        asked.append(1)
        return PASSPHRASE

    signer = KeyFileSigner(key.private, passphrase=ask)

    assert asked == [1]
    assert signer.public_key == parse_public_key(key.public_line())
    assert _verifies_with_ssh_keygen(tmp_path, signer)


def test_signing_passphrase_not_asked_for_unencrypted_key(keyring: Keyring) -> None:
    def ask() -> bytes:
        raise AssertionError("must not be asked")

    KeyFileSigner(keyring.keys["ed25519"].private, passphrase=ask)


def test_signing_wrong_passphrase(tmp_path: Path) -> None:
    key = fx.write_encrypted_key(tmp_path, "enc", passphrase=PASSPHRASE)
    with pytest.raises(UsageProblem) as excinfo:
        KeyFileSigner(key.private, passphrase=lambda: b"wrong guess 123")
    assert excinfo.value.code == "bad-passphrase"
    assert "wrong guess 123" not in str(excinfo.value)
    assert "wrong guess 123" not in excinfo.value.diagnostics()


def test_signing_passphrase_required_without_callback(tmp_path: Path) -> None:
    key = fx.write_encrypted_key(tmp_path, "enc", passphrase=PASSPHRASE)
    with pytest.raises(UsageProblem) as excinfo:
        load_signer(str(key.private))
    assert excinfo.value.code == "passphrase-required"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_signing_key_file_readable_by_others_refused(
    keyring: Keyring, tmp_path: Path, mode: int
) -> None:
    loose = tmp_path / "loose_key"
    loose.write_bytes(keyring.keys["ed25519"].private.read_bytes())
    loose.chmod(mode)
    with pytest.raises(UsageProblem) as excinfo:
        KeyFileSigner(loose)
    assert excinfo.value.code == "key-file-permissions"
    assert f"{mode:04o}" in excinfo.value.message
    assert "chmod 600" in excinfo.value.remedy
    assert "PRIVATE KEY" not in excinfo.value.diagnostics()


def test_signing_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem) as excinfo:
        load_signer(str(tmp_path / "absent"))
    assert excinfo.value.code == "key-not-found"


def _write_pem(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def test_signing_pem_pkcs8_key_with_passphrase(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE),
    )
    signer = KeyFileSigner(_write_pem(tmp_path / "k.pem", pem), passphrase=lambda: PASSPHRASE)
    assert signer.public_key.key_type == "ecdsa-sha2-nistp384"
    assert _verifies_with_ssh_keygen(tmp_path, signer)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("rsa1024", lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024)),  # noqa: S505 - refused on purpose
        ("dsa", lambda: dsa.generate_private_key(key_size=2048)),
        ("secp224r1", lambda: ec.generate_private_key(ec.SECP224R1())),
    ],
)
def test_signing_weak_or_unsupported_key_types_refused(
    tmp_path: Path, name: str, make: object
) -> None:
    assert callable(make)
    private = make()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(UsageProblem) as excinfo:
        KeyFileSigner(_write_pem(tmp_path / name, pem))
    assert excinfo.value.code == "unsupported-key"


def test_signing_not_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem) as excinfo:
        KeyFileSigner(_write_pem(tmp_path / "junk", b"hello"))
    assert excinfo.value.code == "unsupported-key"


def test_signing_empty_namespace_refused(keyring: Keyring) -> None:
    with pytest.raises(UsageProblem) as excinfo:
        sshsig.sign(MESSAGE, signer=KeyFileSigner(keyring.keys["ed25519"].private), namespace="")
    assert excinfo.value.code == "bad-namespace"


def test_signing_sk_key_handle_routes_to_ssh_keygen(tmp_path: Path) -> None:
    """An sk- private key file (a FIDO handle) is signed by ssh-keygen, never read in-process."""
    # Build an openssh-key-v1 file whose public key is an sk-ssh-ed25519 key (no token needed:
    # only the unencrypted public part is read).
    pk = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    blob = put_string(b"sk-ssh-ed25519@openssh.com") + put_string(pk) + put_string(b"ssh:")
    body = (
        b"openssh-key-v1\0"
        + put_string(b"none")
        + put_string(b"none")
        + put_string(b"")
        + struct.pack(">I", 1)
        + put_string(blob)
        + put_string(b"\0" * 8)
    )
    text = (
        b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + base64.encodebytes(body)
        + b"-----END OPENSSH PRIVATE KEY-----\n"
    )
    path = _write_pem(tmp_path / "id_ed25519_sk", text)
    signer = load_signer(str(path))
    assert isinstance(signer, SshKeygenSigner)
    assert signer.public_key.key_type == "sk-ssh-ed25519@openssh.com"
    with pytest.raises(UsageProblem) as excinfo:
        KeyFileSigner(path)
    assert excinfo.value.code == "unsupported-key"
