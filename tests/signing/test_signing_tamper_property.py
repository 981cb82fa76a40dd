"""Properties: no single-byte change to a message or signature verifies; parsers of hostile
bytes raise only `InvalidData`."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from gapferry.common import sshsig
from gapferry.common.allowed_signers import parse_allowed_signers
from gapferry.common.errors import InvalidData
from gapferry.common.signers import KeyFileSigner
from gapferry.common.sshkeys import parse_certificate
from gapferry.common.trust import TrustPolicy, evaluate
from gapferry.fixtures import sshkeys as fx
from gapferry.fixtures.sshkeys import Keyring
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.real_tools

NS = "gapferry-transfer@example.org"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
MESSAGE = b'{"format": 1, "site": "plant-7", "sequence": 12, "devices": []}\n'

_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def signed(keyring: Keyring) -> dict[str, tuple[TrustPolicy, bytes]]:
    out = {}
    for key_type in ("ed25519", "ecdsa-p256", "rsa"):
        key = keyring.keys[key_type]
        policy = TrustPolicy.from_text(fx.allowed_signers_line("a@example.org", key.public_line()))
        signature = sshsig.sign(MESSAGE, signer=KeyFileSigner(key.private), namespace=NS)
        assert evaluate(MESSAGE, [signature], policy=policy, namespace=NS, now=NOW).satisfied
        out[key_type] = (policy, signature)
    return out


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p256"])
@_SETTINGS
@given(data=st.data())
def test_signing_any_single_byte_change_to_message_fails(
    signed: dict[str, tuple[TrustPolicy, bytes]], key_type: str, data: st.DataObject
) -> None:
    policy, signature = signed[key_type]
    index = data.draw(st.integers(min_value=0, max_value=len(MESSAGE) - 1))
    value = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != MESSAGE[index]))
    tampered = MESSAGE[:index] + bytes([value]) + MESSAGE[index + 1 :]

    result = evaluate(tampered, [signature], policy=policy, namespace=NS, now=NOW)

    assert not result.satisfied
    assert result.checks[0].reason == "bad-signature"


@pytest.mark.parametrize("key_type", ["ed25519", "rsa"])
@_SETTINGS
@given(data=st.data())
def test_signing_any_single_byte_change_to_signature_fails(
    signed: dict[str, tuple[TrustPolicy, bytes]], key_type: str, data: st.DataObject
) -> None:
    policy, signature = signed[key_type]
    index = data.draw(st.integers(min_value=0, max_value=len(signature) - 1))
    value = data.draw(
        st.integers(min_value=0, max_value=255).filter(lambda b: b != signature[index])
    )
    tampered = signature[:index] + bytes([value]) + signature[index + 1 :]

    result = evaluate(MESSAGE, [tampered], policy=policy, namespace=NS, now=NOW)

    assert not result.satisfied
    assert result.checks[0].reason in (
        "bad-signature-format",
        "bad-signature",
        "wrong-namespace",
        "untrusted-signer",
    )


@pytest.mark.parametrize("key_type", ["ed25519"])
@_SETTINGS
@given(data=st.data())
def test_signing_any_single_byte_change_to_decoded_blob_fails(
    signed: dict[str, tuple[TrustPolicy, bytes]], key_type: str, data: st.DataObject
) -> None:
    policy, signature = signed[key_type]
    raw = sshsig.parse_armored(signature, max_bytes=65536).raw
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    value = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != raw[index]))
    tampered = sshsig.armor(raw[:index] + bytes([value]) + raw[index + 1 :])

    result = evaluate(MESSAGE, [tampered], policy=policy, namespace=NS, now=NOW)

    assert not result.satisfied


@_SETTINGS
@given(blob=st.binary(max_size=600))
def test_signing_parser_raises_only_invalid_data_on_random_blobs(blob: bytes) -> None:
    assert _code_of(b"SSHSIG\0\0\0\1" + blob) in (
        None,
        "bad-signature-format",
        "bad-signature",
        "wrong-namespace",
    )


def _code_of(raw: bytes) -> str | None:
    """Parse and verify an SSHSIG blob; the InvalidData code, or None if it verified."""
    try:
        sig = sshsig.parse_armored(sshsig.armor(raw), max_bytes=65536)
        sshsig.verify_cryptographically(MESSAGE, sig, namespace=NS)
    except InvalidData as e:
        return e.code
    return None


@pytest.mark.parametrize("which", ["signature", "certificate"])
@_SETTINGS
@given(data=st.data())
def test_signing_mutated_real_structures_raise_only_invalid_data(
    keyring: Keyring, which: str, data: st.DataObject
) -> None:
    if which == "signature":
        raw = sshsig.parse_armored(
            fx.ssh_keygen_sign(keyring.cert_key.certificate, MESSAGE, NS), max_bytes=65536
        ).raw
    else:
        raw = base64.b64decode(keyring.cert_key.certificate.read_text(encoding="ascii").split()[1])
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    value = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != raw[index]))
    mutated = raw[:index] + bytes([value]) + raw[index + 1 :]
    if which == "signature":
        assert _code_of(mutated) is not None
    else:
        with pytest.raises(InvalidData):
            parse_certificate(mutated)


@_SETTINGS
@given(text=st.text(max_size=300))
def test_signing_allowed_signers_parser_raises_only_invalid_data(text: str) -> None:
    code = None
    try:
        parse_allowed_signers(text)
    except InvalidData as e:
        code = e.code
    assert code in (None, "bad-allowed-signers")
