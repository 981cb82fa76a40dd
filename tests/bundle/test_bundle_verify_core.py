"""The pure verification core (SPEC 4.3, 4.4, 5.5, 6.4, 8): bytes in, verified manifest or an
exact error out; signatures are checked before anything is decoded."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from gapferry.common.bundle import (
    TransferManifest,
    VerifiedResult,
    check_not_replayed,
    encode,
    namespace_for,
    trust_before_failure,
    verify_result_manifest,
    verify_transfer_manifest,
)
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS, Limits
from gapferry.fixtures.selfcheck import BundleKeys

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SHA = "a" * 64
SHA2 = "b" * 64


def transfer_doc(**over: Any) -> dict[str, Any]:
    art = {"name": "app-v2", "size": 10, "sha256": SHA, "path": f"artifacts/{SHA}.mender"}
    doc: dict[str, Any] = {
        "format_version": 1,
        "kind": "transfer",
        "bundle_id": "7e0c1a55-0b1e-4c2a-9f00-000000000001",
        "site": "plant-a",
        "sequence": 3,
        "created": "2026-05-01T00:00:00Z",
        "expires": "2026-07-01T00:00:00Z",
        "packer": {"name": "alice", "host": "ws", "software": "gapferry 0"},
        "devices": [
            {
                "name": "pump-1",
                "mender_device_id": "d1",
                "identity": {"mac": "00:11"},
                "device_type": "lab",
                "current_artifact_name": "factory",
                "deployment": {"id": "dep1", "name": "rollout"},
                "artifact": art,
            }
        ],
        "artifacts": [{**art, "parts": []}],
        "files": [{"path": art["path"], "size": 10, "sha256": SHA}],
        "checksums_sha256": SHA2,
    }
    doc.update(over)
    return doc


def raw_of(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def verify(
    keys: BundleKeys,
    doc: dict[str, Any],
    *,
    now: datetime = NOW,
    limits: Limits = DEFAULT_LIMITS,
    threshold: int = 1,
) -> TransferManifest:
    raw = raw_of(doc)
    sig = keys.a.signer.sign_sshsig(raw, namespace_for("transfer"))
    return verify_transfer_manifest(
        raw, [sig], policy=keys.policy(threshold), now=now, limits=limits
    ).manifest


def code_of(keys: BundleKeys, doc: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(InvalidData) as e:
        verify(keys, doc, **kw)
    return e.value.code


def test_valid_manifest_verifies(keys: BundleKeys) -> None:
    m = verify(keys, transfer_doc())
    assert m.site == "plant-a"
    assert m.devices[0].artifact.sha256 == SHA


def test_writer_encoding_is_canonical(keys: BundleKeys) -> None:
    m = verify(keys, transfer_doc())
    assert encode(m) == raw_of(transfer_doc())


def test_unsigned(keys: BundleKeys) -> None:
    with pytest.raises(InvalidData) as e:
        verify_transfer_manifest(
            raw_of(transfer_doc()), [], policy=keys.policy(), now=NOW, limits=DEFAULT_LIMITS
        )
    assert e.value.code == "unsigned"


def test_signature_checked_before_decoding(keys: BundleKeys) -> None:
    """Garbage bytes signed by an untrusted key fail on trust, never reach the JSON decoder."""
    raw = b"\xff not json"
    sig = keys.other.signer.sign_sshsig(raw, namespace_for("transfer"))
    with pytest.raises(InvalidData) as e:
        verify_transfer_manifest(raw, [sig], policy=keys.policy(), now=NOW, limits=DEFAULT_LIMITS)
    assert e.value.code == "untrusted-signer"


def test_one_bad_signature_among_good_ones_is_refused(keys: BundleKeys) -> None:
    raw = raw_of(transfer_doc())
    good = keys.a.signer.sign_sshsig(raw, namespace_for("transfer"))
    other = keys.other.signer.sign_sshsig(raw, namespace_for("transfer"))
    with pytest.raises(InvalidData) as e:
        verify_transfer_manifest(
            raw, [good, other], policy=keys.policy(), now=NOW, limits=DEFAULT_LIMITS
        )
    assert e.value.code == "untrusted-signer"


def test_result_namespace_signature_is_refused_for_transfer(keys: BundleKeys) -> None:
    raw = raw_of(transfer_doc())
    sig = keys.a.signer.sign_sshsig(raw, namespace_for("result"))
    with pytest.raises(InvalidData) as e:
        verify_transfer_manifest(raw, [sig], policy=keys.policy(), now=NOW, limits=DEFAULT_LIMITS)
    assert e.value.code == "wrong-namespace"


def test_transfer_bytes_are_not_a_result(keys: BundleKeys) -> None:
    raw = raw_of(transfer_doc())
    sig = keys.a.signer.sign_sshsig(raw, namespace_for("result"))
    with pytest.raises(InvalidData) as e:
        verify_result_manifest(raw, [sig], policy=keys.policy(), now=NOW, limits=DEFAULT_LIMITS)
    assert e.value.code == "wrong-kind"


def test_manifest_too_large(keys: BundleKeys) -> None:
    assert code_of(keys, transfer_doc(), limits=Limits(manifest_bytes=100)) == "manifest-too-large"


def test_naive_now_is_a_usage_problem(keys: BundleKeys) -> None:
    with pytest.raises(UsageProblem):
        verify(keys, transfer_doc(), now=datetime(2026, 6, 1))


def test_expired(keys: BundleKeys) -> None:
    assert code_of(keys, transfer_doc(), now=datetime(2026, 7, 1, tzinfo=UTC)) == "expired"


def test_error_after_good_signatures_carries_their_verdict(keys: BundleKeys) -> None:
    with pytest.raises(InvalidData) as expired:
        verify(keys, transfer_doc(), now=datetime(2026, 7, 1, tzinfo=UTC))
    trust = trust_before_failure(expired.value)
    assert trust is not None
    assert trust.satisfied
    assert [c.principal for c in trust.checks] == ["alice@plant-a"]
    with pytest.raises(InvalidData) as below:
        verify(keys, transfer_doc(), threshold=2)
    assert below.value.code == "below-threshold"
    assert trust_before_failure(below.value) is None


def test_clock_behind_created_says_clock_is_wrong(keys: BundleKeys) -> None:
    with pytest.raises(InvalidData) as e:
        verify(keys, transfer_doc(), now=datetime(2026, 4, 30, tzinfo=UTC))
    assert e.value.code == "clock-wrong"
    assert "clock is probably wrong" in e.value.message


def test_small_clock_skew_is_tolerated(keys: BundleKeys) -> None:
    verify(keys, transfer_doc(), now=datetime(2026, 5, 1, tzinfo=UTC) - timedelta(minutes=5))


def test_unknown_field_refused(keys: BundleKeys) -> None:
    assert code_of(keys, transfer_doc(extra=1)) == "malformed-manifest"


def test_secret_looking_field_has_no_place(keys: BundleKeys) -> None:
    doc = transfer_doc()
    doc["devices"][0]["device_key"] = "pretend-device-private-key"
    assert code_of(keys, doc) == "malformed-manifest"


def test_future_version_refused(keys: BundleKeys) -> None:
    with pytest.raises(InvalidData) as e:
        verify(keys, transfer_doc(format_version=2))
    assert e.value.code == "unsupported-version"
    assert "newer" in e.value.remedy


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: d["devices"].append(dict(d["devices"][0])), "appears more than once"),
        (lambda d: d["devices"][0]["artifact"].update(size=11), "differs from the entry"),
        (lambda d: d["devices"][0]["artifact"].update(sha256=SHA2), "not listed"),
        (lambda d: d["artifacts"][0].update(path="artifacts/other.mender"), "has path"),
        (
            lambda d: d["files"].append({"path": "artifacts/zz.mender", "size": 1, "sha256": SHA}),
            "not used",
        ),
        (lambda d: d.update(expires=d["created"]), "expires is not after created"),
        (lambda d: d.update(devices=[]), "no devices"),
        (lambda d: d["files"][0].update(sha256=SHA2), "differs from the artifact"),
    ],
)
def test_inconsistent_manifests(keys: BundleKeys, mutate: Any, why: str) -> None:
    doc = transfer_doc()
    mutate(doc)
    with pytest.raises(InvalidData) as e:
        verify(keys, doc)
    assert e.value.code == "inconsistent-manifest"
    assert why in e.value.message


def test_escaping_file_path(keys: BundleKeys) -> None:
    doc = transfer_doc()
    doc["files"].insert(0, {"path": "../x", "size": 1, "sha256": SHA})
    assert code_of(keys, doc) == "bad-path"


def test_replay_check() -> None:
    m = msgspec.json.decode(raw_of(transfer_doc()), type=TransferManifest)
    check_not_replayed(m, last_sequence=None)
    check_not_replayed(m, last_sequence=2)
    for last in (3, 4):
        with pytest.raises(InvalidData) as e:
            check_not_replayed(m, last_sequence=last)
        assert e.value.code == "replayed"


def result_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format_version": 1,
        "kind": "result",
        "result_id": "7e0c1a55-0b1e-4c2a-9f00-000000000002",
        "site": "plant-a",
        "sequence": 3,
        "receipt": {
            "transfer_bundle_id": "7e0c1a55-0b1e-4c2a-9f00-000000000001",
            "transfer_manifest_sha256": SHA,
        },
        "applier": {"name": "bob", "host": "laptop", "software": "gapferry 0"},
        "started": "2026-05-02T00:00:00Z",
        "finished": "2026-05-02T01:00:00Z",
        "created": "2026-05-02T01:00:00Z",
        "devices": [
            {
                "name": "pump-1",
                "mender_device_id": "d1",
                "deployment_id": "dep1",
                "outcome": "success",
                "reason": None,
                "steps": [
                    {"status": "installing", "at": "2026-05-02T00:10:00Z", "substate": None},
                    {"status": "success", "at": "2026-05-02T00:20:00Z", "substate": None},
                ],
                "log": None,
                "inventory": [{"name": "ips", "value": ["a", "b"]}],
                "artifact_name_after": "app-v2",
            }
        ],
        "files": [],
        "checksums_sha256": SHA2,
    }
    doc.update(over)
    return doc


def verify_result(
    keys: BundleKeys, doc: dict[str, Any], *, limits: Limits = DEFAULT_LIMITS
) -> VerifiedResult:
    raw = raw_of(doc)
    sig = keys.a.signer.sign_sshsig(raw, namespace_for("result"))
    return verify_result_manifest(raw, [sig], policy=keys.policy(), now=NOW, limits=limits)


def test_valid_result_verifies(keys: BundleKeys) -> None:
    doc = result_doc()
    verified = verify_result(keys, doc)
    assert verified.raw == raw_of(doc)
    assert verified.manifest_sha256 == hashlib.sha256(raw_of(doc)).hexdigest()
    assert verified.manifest.receipt.transfer_bundle_id == doc["receipt"]["transfer_bundle_id"]
    assert [d.outcome for d in verified.manifest.devices] == [d["outcome"] for d in doc["devices"]]
    assert [c.principal for c in verified.trust.checks] == ["alice@plant-a"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("x", True),
        (1, True),
        (1.5, True),
        ([1, 2.5], True),
        (["a"], True),
        ([], True),
        (["a", 1], False),
        (True, False),
        (None, False),
        ({"a": 1}, False),
    ],
)
def test_inventory_value_rules(keys: BundleKeys, value: Any, ok: bool) -> None:
    doc = result_doc()
    doc["devices"][0]["inventory"] = [{"name": "v", "value": value}]
    if ok:
        verify_result(keys, doc)
    else:
        with pytest.raises(InvalidData) as e:
            verify_result(keys, doc)
        assert e.value.code in {"inconsistent-manifest", "malformed-manifest"}


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: d["devices"][0].update(outcome="failure"), "last step"),
        (lambda d: d["devices"][0].update(outcome="skipped"), "without a reason"),
        (lambda d: d["devices"][0]["steps"].reverse(), "time order"),
        (lambda d: d.update(finished="2026-05-01T00:00:00Z"), "started <= finished"),
    ],
)
def test_inconsistent_results(keys: BundleKeys, mutate: Any, why: str) -> None:
    doc = result_doc()
    mutate(doc)
    with pytest.raises(InvalidData) as e:
        verify_result(keys, doc)
    assert e.value.code == "inconsistent-manifest"
    assert why in e.value.message


def test_duplicate_key_refused(keys: BundleKeys) -> None:
    raw = raw_of(transfer_doc()).replace(b'"site":"plant-a"', b'"site":"plant-b","site":"plant-a"')
    sig = keys.a.signer.sign_sshsig(raw, namespace_for("transfer"))
    with pytest.raises(InvalidData) as e:
        verify_transfer_manifest(raw, [sig], policy=keys.policy(), now=NOW, limits=DEFAULT_LIMITS)
    assert e.value.code == "malformed-manifest"
    assert "'site' more than once" in e.value.message


def test_deep_nesting_refused(keys: BundleKeys) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    sig = keys.a.signer.sign_sshsig(raw, namespace_for("transfer"))
    with pytest.raises(InvalidData) as e:
        verify_transfer_manifest(raw, [sig], policy=keys.policy(), now=NOW, limits=DEFAULT_LIMITS)
    assert e.value.code == "malformed-manifest"


def _second_device(d: dict[str, Any]) -> None:
    d["devices"].append({**d["devices"][0], "name": "pump-2", "mender_device_id": "d2"})


@pytest.mark.parametrize(
    ("limits", "mutate", "code", "why"),
    [
        (Limits(devices=1), _second_device, "inconsistent-manifest", "2 devices, more than"),
        (Limits(artifacts=0), None, "inconsistent-manifest", "1 artifacts, more than 0"),
        (Limits(files=0), None, "inconsistent-manifest", "1 files listed, more than"),
        (Limits(path_depth=1), None, "bad-path", "artifacts/"),
        (Limits(artifact_bytes=9), None, "inconsistent-manifest", "larger than 9"),
        (Limits(inventory_attributes=0), None, "inconsistent-manifest", "identity attributes"),
    ],
)
def test_transfer_limits_are_enforced(
    keys: BundleKeys, limits: Limits, mutate: Any, code: str, why: str
) -> None:
    """SPEC 10: each limit a reader enforces on a transfer manifest, at its boundary."""
    doc = transfer_doc()
    if mutate is not None:
        mutate(doc)
    verify(keys, doc)  # within the default limits
    with pytest.raises(InvalidData) as e:
        verify(keys, doc, limits=limits)
    assert (e.value.code, why in e.value.message) == (code, True), e.value.message


def _with_log(d: dict[str, Any]) -> None:
    path = f"logs/{SHA}.log.zst"
    d["devices"][0]["log"] = {
        "path": path,
        "size": 10,
        "sha256": SHA,
        "decompressed_size": 100,
        "lines": 5,
    }
    d["files"] = [{"path": path, "size": 10, "sha256": SHA}]


@pytest.mark.parametrize(
    ("limits", "code", "why"),
    [
        (Limits(log_bytes=99), "log-too-large", "log declares 100 bytes"),
        (Limits(log_lines=4), "log-too-large", "log has 5 lines"),
        (Limits(status_steps=1), "inconsistent-manifest", "more than 1 steps"),
        (Limits(inventory_attributes=0), "inconsistent-manifest", "reports more than 0"),
        (Limits(inventory_value_bytes=1), "inconsistent-manifest", "'ips' is too large"),
        (Limits(devices=0), "inconsistent-manifest", "1 devices, more than"),
    ],
)
def test_result_limits_are_enforced(keys: BundleKeys, limits: Limits, code: str, why: str) -> None:
    """SPEC 10: log bytes and lines, steps, inventory and device count in a result manifest."""
    doc = result_doc()
    _with_log(doc)
    verify_result(keys, doc)  # within the default limits
    with pytest.raises(InvalidData) as e:
        verify_result(keys, doc, limits=limits)
    assert (e.value.code, why in e.value.message) == (code, True), e.value.message
