"""Trust policy: thresholds of distinct keys, and the exact error `require` raises for each attack."""

from __future__ import annotations

import importlib.metadata
import re
from datetime import UTC, datetime

import pytest
from gapferry.common import sshsig
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.signers import KeyFileSigner
from gapferry.common.trust import TrustFailure, TrustPolicy, TrustResult, evaluate, require
from gapferry.fixtures import sshkeys as fx
from gapferry.fixtures.sshkeys import Keyring

pytestmark = pytest.mark.real_tools  # the keys come from ssh-keygen

MESSAGE = b"manifest v1\n"
NS = "gapferry-transfer@example.org"
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _sign(keyring: Keyring, key_type: str, *, message: bytes = MESSAGE, ns: str = NS) -> bytes:
    return sshsig.sign(message, signer=KeyFileSigner(keyring.keys[key_type].private), namespace=ns)


def _policy(keyring: Keyring, *key_types: str, threshold: int = 1) -> TrustPolicy:
    lines = [
        fx.allowed_signers_line(f"{kt}@example.org", keyring.keys[kt].public_line())
        for kt in key_types
    ]
    return TrustPolicy.from_text("\n".join(lines), threshold=threshold)


def _failure(result: TrustResult) -> TrustFailure:
    with pytest.raises(TrustFailure) as excinfo:
        require(result)
    return excinfo.value


def test_signing_two_of_three_distinct_keys_satisfied(keyring: Keyring) -> None:
    policy = _policy(keyring, "ed25519", "ecdsa-p256", "rsa", threshold=2)
    sigs = [_sign(keyring, "ed25519"), _sign(keyring, "rsa")]

    result = evaluate(MESSAGE, sigs, policy=policy, namespace=NS, now=NOW)

    require(result)
    assert result.distinct_trusted == 2
    assert [c.principal for c in result.checks] == ["ed25519@example.org", "rsa@example.org"]


def test_signing_same_key_twice_counts_once(keyring: Keyring) -> None:
    policy = _policy(keyring, "ed25519", "ecdsa-p256", threshold=2)
    # Two different signatures (ssh-keygen's and ours) by the same key.
    sigs = [
        _sign(keyring, "ed25519"),
        fx.ssh_keygen_sign(keyring.keys["ed25519"].private, MESSAGE, NS),
    ]

    result = evaluate(MESSAGE, sigs, policy=policy, namespace=NS, now=NOW)

    assert [c.ok for c in result.checks] == [True, True]
    assert result.checks[1].duplicate_of == 0
    assert not result.checks[1].counted
    assert result.distinct_trusted == 1
    error = _failure(result)
    assert error.code == "below-threshold"
    assert "found 1 of 2" in error.message
    assert "same key as #0" in error.message


def test_signing_below_threshold_lists_why_each_failed(keyring: Keyring) -> None:
    policy = _policy(keyring, "ed25519", "ecdsa-p256", "ecdsa-p384", threshold=3)
    sigs = [
        _sign(keyring, "ed25519"),
        _sign(keyring, "ecdsa-p256", ns="other"),
        sshsig.sign(MESSAGE, signer=KeyFileSigner(keyring.other.private), namespace=NS),
    ]

    result = evaluate(MESSAGE, sigs, policy=policy, namespace=NS, now=NOW)

    assert [c.reason for c in result.checks] == [None, "wrong-namespace", "untrusted-signer"]
    error = _failure(result)
    assert error.code == "below-threshold"
    assert "found 1 of 3" in error.message
    assert "#1 wrong-namespace" in error.message
    assert "#2 untrusted-signer" in error.message
    assert error.result is result


def test_signing_unsigned(keyring: Keyring) -> None:
    result = evaluate(MESSAGE, [], policy=_policy(keyring, "ed25519"), namespace=NS, now=NOW)
    assert _failure(result).code == "unsigned"


def _commands_named(remedy: str) -> set[str]:
    return set(re.findall(r"\bgapferry ([a-z]+)\b", remedy))


def test_signing_remedies_name_commands_that_exist(keyring: Keyring) -> None:
    """The remedy for a missing or short signature names the commands that fix it."""
    registered = {ep.name for ep in importlib.metadata.entry_points(group="gapferry.commands")}
    policy = _policy(keyring, "ed25519", "rsa", threshold=2)
    unsigned = _failure(evaluate(MESSAGE, [], policy=policy, namespace=NS, now=NOW))
    short = _failure(
        evaluate(MESSAGE, [_sign(keyring, "ed25519")], policy=policy, namespace=NS, now=NOW)
    )
    assert short.code == "below-threshold"
    assert "gapferry cosign" in short.remedy
    for err in (unsigned, short):
        assert _commands_named(err.remedy), err.remedy
        assert _commands_named(err.remedy) <= registered, err.remedy


def test_signing_untrusted_signer(keyring: Keyring) -> None:
    result = evaluate(
        MESSAGE, [_sign(keyring, "rsa")], policy=_policy(keyring, "ed25519"), namespace=NS, now=NOW
    )
    assert _failure(result).code == "untrusted-signer"


def test_signing_wrong_namespace(keyring: Keyring) -> None:
    sig = _sign(keyring, "ed25519", ns="gapferry-result@example.org")
    result = evaluate(MESSAGE, [sig], policy=_policy(keyring, "ed25519"), namespace=NS, now=NOW)
    assert _failure(result).code == "wrong-namespace"


def test_signing_flipped_message_byte_is_bad_signature(keyring: Keyring) -> None:
    sig = _sign(keyring, "ecdsa-p384")
    tampered = b"M" + MESSAGE[1:]
    result = evaluate(tampered, [sig], policy=_policy(keyring, "ecdsa-p384"), namespace=NS, now=NOW)
    assert result.checks[0].reason == "bad-signature"
    assert _failure(result).code == "bad-signature"


def test_signing_garbage_signature_file_is_bad_signature(keyring: Keyring) -> None:
    result = evaluate(
        MESSAGE, [b"not a signature"], policy=_policy(keyring, "ed25519"), namespace=NS, now=NOW
    )
    assert result.checks[0].reason == "bad-signature-format"
    assert _failure(result).code == "bad-signature"


def test_signing_outside_validity_of_line(keyring: Keyring) -> None:
    line = fx.allowed_signers_line(
        "a@example.org", keyring.keys["ed25519"].public_line(), valid_before="20250101Z"
    )
    result = evaluate(
        MESSAGE,
        [_sign(keyring, "ed25519")],
        policy=TrustPolicy.from_text(line),
        namespace=NS,
        now=NOW,
    )
    assert _failure(result).code == "outside-validity"


def test_signing_worst_reason_wins_when_nothing_trusted(keyring: Keyring) -> None:
    sigs = [
        _sign(keyring, "rsa"),  # untrusted
        _sign(keyring, "ed25519", message=b"other"),  # bad signature
    ]
    result = evaluate(MESSAGE, sigs, policy=_policy(keyring, "ed25519"), namespace=NS, now=NOW)
    assert _failure(result).code == "bad-signature"


def test_signing_one_bad_signature_does_not_spoil_a_good_one(keyring: Keyring) -> None:
    sigs = [b"garbage", _sign(keyring, "ed25519")]
    result = evaluate(MESSAGE, sigs, policy=_policy(keyring, "ed25519"), namespace=NS, now=NOW)
    require(result)
    assert [c.ok for c in result.checks] == [False, True]


def test_signing_too_many_signatures(keyring: Keyring) -> None:
    sig = _sign(keyring, "ed25519")
    with pytest.raises(InvalidData) as excinfo:
        evaluate(
            MESSAGE,
            [sig] * 3,
            policy=_policy(keyring, "ed25519"),
            namespace=NS,
            now=NOW,
            limits=Limits(signatures=2),
        )
    assert excinfo.value.code == "too-many-signatures"


def test_signing_oversized_signature_is_refused(keyring: Keyring) -> None:
    sig = _sign(keyring, "rsa")
    result = evaluate(
        MESSAGE,
        [sig],
        policy=_policy(keyring, "rsa"),
        namespace=NS,
        now=NOW,
        limits=Limits(signature_bytes=len(sig) - 1),
    )
    assert result.checks[0].reason == "bad-signature-format"


def test_signing_naive_time_refused(keyring: Keyring) -> None:
    with pytest.raises(UsageProblem) as excinfo:
        evaluate(
            MESSAGE,
            [],
            policy=_policy(keyring, "ed25519"),
            namespace=NS,
            now=datetime(2025, 1, 1),
        )
    assert excinfo.value.code == "naive-time"


def test_signing_policy_needs_signers_and_positive_threshold(keyring: Keyring) -> None:
    with pytest.raises(UsageProblem) as excinfo:
        TrustPolicy.from_text("# nobody\n")
    assert excinfo.value.code == "empty-trust"
    with pytest.raises(UsageProblem) as excinfo:
        _policy(keyring, "ed25519", threshold=0)
    assert excinfo.value.code == "bad-threshold"


def test_signing_result_json_names_what_was_checked(keyring: Keyring) -> None:
    result = evaluate(
        MESSAGE,
        [_sign(keyring, "ed25519")],
        policy=_policy(keyring, "ed25519"),
        namespace=NS,
        now=NOW,
    )
    data = result.to_json()
    assert data["satisfied"] is True
    assert data["threshold"] == 1
    signatures = data["signatures"]
    assert isinstance(signatures, list)
    assert signatures[0]["principal"] == "ed25519@example.org"
    assert signatures[0]["matched_line"] == "allowed_signers:1"
    assert str(signatures[0]["fingerprint"]).startswith("SHA256:")
