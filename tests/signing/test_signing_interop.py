"""Interop with real OpenSSH 9.2, both ways: gapferry signs -> ssh-keygen verifies, and back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from gapferry.common import sshsig
from gapferry.common.errors import EnvironmentFailure, UsageProblem
from gapferry.common.signers import KeyFileSigner, SshKeygenSigner, load_signer
from gapferry.common.sshkeys import parse_certificate, parse_public_key
from gapferry.common.trust import TrustPolicy, evaluate, require
from gapferry.fixtures import sshkeys as fx
from gapferry.fixtures.sshkeys import Keyring

pytestmark = pytest.mark.real_tools

MESSAGE = b'{"bundle": "transfer", "sequence": 7}\n'
NS = "gapferry-transfer@example.org"
IN_2025 = datetime(2025, 6, 1, tzinfo=UTC)


def _trust(tmp_path: Path, lines: list[str]) -> Path:
    return fx.write_allowed_signers(tmp_path / "allowed_signers", lines)


@pytest.mark.parametrize("key_type", fx.KEY_TYPES)
def test_signing_gapferry_signature_verifies_with_ssh_keygen(
    keyring: Keyring, tmp_path: Path, key_type: str
) -> None:
    key = keyring.keys[key_type]
    signature = sshsig.sign(MESSAGE, signer=KeyFileSigner(key.private), namespace=NS)
    trust = _trust(tmp_path, [fx.allowed_signers_line("signer@example.org", key.public_line())])

    ok, out = fx.ssh_keygen_verify(
        allowed_signers=trust,
        principal="signer@example.org",
        namespace=NS,
        message=MESSAGE,
        signature=signature,
    )
    assert ok, out
    assert "Good" in out
    assert fx.ssh_keygen_find_principals(allowed_signers=trust, signature=signature) == [
        "signer@example.org"
    ]
    # And the other namespace is refused by OpenSSH too.
    ok, _ = fx.ssh_keygen_verify(
        allowed_signers=trust,
        principal="signer@example.org",
        namespace="other",
        message=MESSAGE,
        signature=signature,
    )
    assert not ok


@pytest.mark.parametrize("key_type", ["ed25519", "rsa"])
def test_signing_deterministic_signatures_are_byte_identical_to_ssh_keygen(
    keyring: Keyring, key_type: str
) -> None:
    key = keyring.keys[key_type]
    ours = sshsig.sign(MESSAGE, signer=KeyFileSigner(key.private), namespace=NS)
    theirs = fx.ssh_keygen_sign(key.private, MESSAGE, NS)
    assert ours == theirs


@pytest.mark.parametrize("key_type", fx.KEY_TYPES)
def test_signing_ssh_keygen_signature_verifies_in_gapferry(keyring: Keyring, key_type: str) -> None:
    key = keyring.keys[key_type]
    signature = fx.ssh_keygen_sign(key.private, MESSAGE, NS)
    policy = TrustPolicy.from_text(fx.allowed_signers_line("signer@example.org", key.public_line()))

    result = evaluate(MESSAGE, [signature], policy=policy, namespace=NS, now=IN_2025)

    require(result)
    (check,) = result.checks
    assert check.ok
    assert check.principal == "signer@example.org"
    assert check.key_type == parse_public_key(key.public_line()).key_type
    assert check.fingerprint == fx.run_ssh_keygen(["-l", "-f", str(key.public)]).stdout.split()[
        1
    ].decode("ascii")
    assert check.hash_alg == "sha512"
    if key_type == "rsa":
        assert check.signature_algorithm == "rsa-sha2-512"


def test_signing_certificate_signature_from_ssh_keygen_verifies_in_gapferry(
    keyring: Keyring, tmp_path: Path
) -> None:
    signature = fx.ssh_keygen_sign(keyring.cert_key.certificate, MESSAGE, NS)
    line = fx.allowed_signers_line("*@example.org", keyring.ca.public_line(), cert_authority=True)
    trust = _trust(tmp_path, [line])
    ok, out = fx.ssh_keygen_verify(
        allowed_signers=trust,
        principal="alice@example.org",
        namespace=NS,
        message=MESSAGE,
        signature=signature,
        verify_time="20250601Z",
    )
    assert ok, out

    result = evaluate(
        MESSAGE, [signature], policy=TrustPolicy.from_file(trust), namespace=NS, now=IN_2025
    )

    require(result)
    (check,) = result.checks
    assert check.principal == "alice@example.org,ops@example.org"
    assert check.key_type == "ssh-ed25519-cert-v01@openssh.com"
    assert check.certificate is not None
    assert check.certificate["key_id"] == "alice-2025"
    assert check.certificate["serial"] == 42
    assert check.certificate["principals"] == ["alice@example.org", "ops@example.org"]
    assert check.certificate["valid_after"] == "2025-01-01T00:00:00+00:00"
    assert check.certificate["valid_before"] == "2026-01-01T00:00:00+00:00"
    assert (
        check.certificate["ca_fingerprint"]
        == parse_public_key(keyring.ca.public_line()).fingerprint
    )


def test_signing_certificate_parses_like_ssh_keygen_shows_it(keyring: Keyring) -> None:
    text = keyring.cert_key.certificate.read_text(encoding="ascii")
    cert = parse_certificate(text)
    shown = fx.run_ssh_keygen(["-L", "-f", str(keyring.cert_key.certificate)]).stdout.decode()
    assert f"Serial: {cert.serial}" in shown
    assert f'Key ID: "{cert.key_id}"' in shown
    assert cert.user_certificate
    assert "user certificate" in shown
    assert cert.fingerprint in shown
    assert cert.signature_key.fingerprint in shown
    assert [name for name, _ in cert.extensions] == [
        "permit-X11-forwarding",
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-pty",
        "permit-user-rc",
    ]
    assert cert.to_line() == text.strip()


def test_signing_certificate_through_ssh_keygen_signer_verifies_with_ssh_keygen(
    keyring: Keyring, tmp_path: Path
) -> None:
    signer = SshKeygenSigner(keyring.cert_key.certificate)
    signature = sshsig.sign(MESSAGE, signer=signer, namespace=NS)
    parsed = sshsig.parse_armored(signature, max_bytes=65536)
    assert parsed.certificate is not None
    trust = _trust(
        tmp_path,
        [
            fx.allowed_signers_line(
                "alice@example.org", keyring.ca.public_line(), cert_authority=True
            )
        ],
    )
    ok, out = fx.ssh_keygen_verify(
        allowed_signers=trust,
        principal="alice@example.org",
        namespace=NS,
        message=MESSAGE,
        signature=signature,
        verify_time="20250601Z",
    )
    assert ok, out


def test_signing_through_ssh_agent(keyring: Keyring, tmp_path: Path) -> None:
    key = keyring.keys["ecdsa-p384"]
    with fx.ssh_agent() as env:
        fx.ssh_add(key.private, env=env)
        # Only the public key is handed over: the private key is in the agent.
        public_only = tmp_path / "agent-key.pub"
        public_only.write_text(key.public_line() + "\n", encoding="ascii")
        signer = SshKeygenSigner(public_only, require_agent=True, env=env)
        signature = sshsig.sign(MESSAGE, signer=signer, namespace=NS)
        not_loaded = SshKeygenSigner(keyring.other.public, require_agent=True, env=env)
        with pytest.raises(EnvironmentFailure) as excinfo:
            not_loaded.sign_sshsig(MESSAGE, NS)
        assert excinfo.value.code == "ssh-keygen-failed"

    trust = _trust(tmp_path, [fx.allowed_signers_line("ops@example.org", key.public_line())])
    ok, out = fx.ssh_keygen_verify(
        allowed_signers=trust,
        principal="ops@example.org",
        namespace=NS,
        message=MESSAGE,
        signature=signature,
    )
    assert ok, out
    require(
        evaluate(
            MESSAGE, [signature], policy=TrustPolicy.from_file(trust), namespace=NS, now=IN_2025
        )
    )


def test_signing_load_signer_routes_references(keyring: Keyring) -> None:
    key = keyring.keys["ed25519"]
    assert isinstance(load_signer(str(key.private)), KeyFileSigner)
    assert isinstance(load_signer(str(key.public)), SshKeygenSigner)
    agent = load_signer(f"agent:{key.public}")
    assert isinstance(agent, SshKeygenSigner)
    assert agent.public_key == parse_public_key(key.public_line())


def test_signing_ssh_keygen_signer_without_agent_uses_key_file_next_to_pub(
    keyring: Keyring,
) -> None:
    key = keyring.keys["ed25519"]
    signature = sshsig.sign(MESSAGE, signer=SshKeygenSigner(key.public), namespace=NS)
    assert signature == sshsig.sign(MESSAGE, signer=KeyFileSigner(key.private), namespace=NS)


def test_signing_ssh_keygen_signer_missing_public_key(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem) as excinfo:
        SshKeygenSigner(tmp_path / "absent.pub")
    assert excinfo.value.code == "key-not-found"


def test_signing_ssh_keygen_signer_argv_holds_no_message_or_secret(
    keyring: Keyring, tmp_path: Path
) -> None:
    """The message goes through stdin; argv is exactly the key path and the namespace."""
    record = tmp_path / "argv.txt"
    wrapper = tmp_path / "ssh-keygen-wrapper"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\nexec ssh-keygen "$@"\n',
        encoding="ascii",
    )
    wrapper.chmod(0o700)
    key = keyring.keys["ed25519"]
    signer = SshKeygenSigner(key.public, ssh_keygen=str(wrapper))

    signature = sshsig.sign(MESSAGE, signer=signer, namespace=NS)

    assert record.read_text(encoding="ascii").splitlines() == [
        "-q",
        "-Y",
        "sign",
        "-f",
        str(key.public),
        "-n",
        NS,
    ]
    assert signature == fx.ssh_keygen_sign(key.private, MESSAGE, NS)


def test_signing_ecdsa_p521_both_ways(tmp_path: Path) -> None:
    """SPEC 6.2 also allows ECDSA P-521: gapferry's signature verifies in ssh-keygen and
    ssh-keygen's in gapferry."""
    key = fx.generate_key(tmp_path, "p521", "ecdsa-p521")
    line = fx.allowed_signers_line("signer@example.org", key.public_line())
    trust = _trust(tmp_path, [line])
    ours = sshsig.sign(MESSAGE, signer=KeyFileSigner(key.private), namespace=NS)
    ok, out = fx.ssh_keygen_verify(
        allowed_signers=trust,
        principal="signer@example.org",
        namespace=NS,
        message=MESSAGE,
        signature=ours,
    )
    assert ok, out
    theirs = fx.ssh_keygen_sign(key.private, MESSAGE, NS)
    result = evaluate(
        MESSAGE, [theirs], policy=TrustPolicy.from_text(line), namespace=NS, now=IN_2025
    )
    require(result)
    assert result.checks[0].key_type == "ecdsa-sha2-nistp521"
