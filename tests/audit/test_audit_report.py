"""`gapferry audit`: every check and its outcome, discrepancies, verdicts and exit codes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from gapferry.common.bundle import Receipt
from gapferry.common.bundle.model import ResultDevice
from gapferry.common.signers import load_signer
from gapferry.fixtures.selfcheck import make_sample_transfer
from gapferry.fixtures.sshkeys import (
    allowed_signers_line,
    certify,
    generate_key,
    make_ca,
    write_allowed_signers,
)

ResultMaker = Callable[..., Path]
Cli = Callable[..., Result]

APP_ID = "0d4c7b7e-2f5b-4f8e-9d63-6b1f4a3c2e10"
OS_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def _audit_json(cli: Cli, *args: object) -> tuple[int, dict[str, Any]]:
    res = cli("audit", *args, "--json")
    return res.exit_code, json.loads(res.stdout)


def _names(checks: list[dict[str, Any]], status: str) -> set[str]:
    return {c["name"] for c in checks if c["status"] == status}


def test_good_transfer_and_result_pass(world: Any, make_result: ResultMaker, cli: Cli) -> None:
    result = make_result(world)
    code, rep = _audit_json(cli, world.transfer, result, "--trust", world.keys.allowed_signers)
    assert code == 0, rep["discrepancies"]
    assert rep["verdict"] == "PASS"
    assert rep["format"] == "gapferry-audit-v1"
    assert rep["discrepancies"] == []
    t = rep["transfer"]
    sig = t["signatures"][0]
    assert sig["principal"] == "alice@plant-a"
    assert sig["fingerprint"].startswith("SHA256:")
    assert sig["key_type"] == "ssh-ed25519"
    assert t["threshold"] == 1
    assert t["distinct_trusted"] == 1
    assert {f["status"] for f in t["files"]} == {"pass"}
    assert len(t["files"]) == 4  # one whole artifact and three parts
    assert {"signatures", "manifest", "layout", "marker", "checksums", "files", "expiry"} <= (
        _names(t["checks"], "pass")
    )
    r = rep["results"][0]
    assert r["signatures"][0]["principal"] == "bob@plant-a"
    assert {"receipt", "site-sequence", "applied-within-validity"} <= _names(r["checks"], "pass")
    outcomes = {d["name"]: d["outcome"] for d in rep["devices"]}
    assert outcomes == {"pump-1": "success", "pump-2": "failure", "pump-3": "skipped"}
    pump1 = next(d for d in rep["devices"] if d["name"] == "pump-1")
    whats = [e["what"] for e in pump1["timeline"]]
    assert whats[0].startswith("packed by")
    assert "downloading" in whats
    assert "success" in whats
    assert whats[-1] == "transfer bundle expires"
    assert [x["message"] for x in pump1["log"]] == ["pump-1: success"]
    deployments = {d["id"]: d["devices"] for d in rep["deployments"]}
    assert deployments == {APP_ID: ["pump-1", "pump-2"], OS_ID: ["pump-3"]}


def test_text_output_names_verdict_and_signer(
    world: Any, make_result: ResultMaker, cli: Cli
) -> None:
    res = cli("audit", world.transfer, make_result(world), "--trust", world.keys.allowed_signers)
    assert res.exit_code == 0
    assert res.stdout.startswith("AUDIT PASS")
    assert "alice@plant-a ssh-ed25519 SHA256:" in res.stdout
    assert "pump-2: failure" in res.stdout


def test_transfer_alone_passes_and_devices_have_no_result(world: Any, cli: Cli) -> None:
    code, rep = _audit_json(cli, world.transfer, "--trust", world.keys.allowed_signers)
    assert code == 0
    assert {d["outcome"] for d in rep["devices"]} == {"no result"}
    assert rep["discrepancies"] == []


def test_device_packed_but_missing_from_results(
    world: Any, make_result: ResultMaker, device_plan: Callable[..., Any], cli: Cli
) -> None:
    t0 = world.created + timedelta(hours=1)
    result = make_result(world, devices=[device_plan("pump-1", 1, APP_ID, "success", t0)])
    code, rep = _audit_json(cli, world.transfer, result, "--trust", world.keys.allowed_signers)
    assert code == 1
    assert rep["verdict"] == "FAIL"
    missing = [d for d in rep["discrepancies"] if d["name"] == "device-missing"]
    assert {d["scope"] for d in missing} == {"pump-2", "pump-3"}


def test_result_for_a_deployment_not_carried(
    world: Any, make_result: ResultMaker, device_plan: Callable[..., Any], cli: Cli
) -> None:
    t0 = world.created + timedelta(hours=1)
    result = make_result(
        world,
        devices=[
            device_plan("pump-1", 1, APP_ID, "success", t0),
            device_plan("pump-2", 2, OS_ID, "success", t0),  # pump-2 was packed for APP
            device_plan("pump-3", 3, OS_ID, "success", t0),
            device_plan("pump-9", 9, "deadbeef-0000-4000-8000-000000000000", "success", t0),
        ],
    )
    code, rep = _audit_json(cli, world.transfer, result, "--trust", world.keys.allowed_signers)
    assert code == 1
    not_carried = {d["scope"] for d in rep["discrepancies"] if d["name"] == "not-carried"}
    assert not_carried == {"pump-2", "pump-9"}
    assert next(d for d in rep["devices"] if d["name"] == "pump-9")["outcome"] == "not carried"


def test_result_signed_outside_the_policy(world: Any, make_result: ResultMaker, cli: Cli) -> None:
    result = make_result(world, signers=[world.keys.mallory.signer])
    code, rep = _audit_json(cli, world.transfer, result, "--trust", world.keys.allowed_signers)
    assert code == 1
    names = [d["name"] for d in rep["discrepancies"]]
    assert names == ["result-untrusted", "device-missing", "device-missing", "device-missing"]
    r = rep["results"][0]
    assert r["verified"] is False
    assert r["signatures"][0]["reason"] == "untrusted-signer"
    assert r["signatures"][0]["fingerprint"].startswith("SHA256:")
    # Its content was not read: no device outcome comes from it.
    assert {d["outcome"] for d in rep["devices"]} == {"no result"}


def test_result_answering_another_transfer(world: Any, make_result: ResultMaker, cli: Cli) -> None:
    other = Receipt(
        transfer_bundle_id="11111111-2222-4333-8444-555555555555",
        transfer_manifest_sha256="0" * 64,
    )
    result = make_result(world, receipt=other)
    code, rep = _audit_json(cli, world.transfer, result, "--trust", world.keys.allowed_signers)
    assert code == 1
    assert "receipt" in {d["name"] for d in rep["discrepancies"]}


def test_expired_transfer_applied_in_time_passes_and_late_result_fails(
    world: Any, make_result: ResultMaker, cli: Cli
) -> None:
    # Packed 2 hours ago, valid for 90 minutes: expired now, which an audit expects.
    transfer = make_sample_transfer(
        world.tmp / "stick2",
        world.tmp / "work2",
        signers=[world.keys.alice.signer],
        created=world.created,
        expires=world.created + timedelta(minutes=90),
    )
    short = replace(world, transfer=transfer)
    in_time = make_result(short, media="in-time", started=world.created + timedelta(minutes=30))
    code, rep = _audit_json(cli, transfer, in_time, "--trust", world.keys.allowed_signers)
    assert code == 0, rep["discrepancies"]
    expiry = next(c for c in rep["transfer"]["checks"] if c["name"] == "expiry")
    assert expiry["status"] == "info"
    assert "expired at" in expiry["summary"]
    late = make_result(short, media="late", started=world.created + timedelta(minutes=95))
    code, rep = _audit_json(cli, transfer, late, "--trust", world.keys.allowed_signers)
    assert code == 1
    assert [d["name"] for d in rep["discrepancies"]] == ["applied-after-expiry"]


def test_tampered_artifact_byte_fails_with_its_file(world: Any, cli: Cli) -> None:
    target = sorted((world.transfer / "artifacts").glob("*.mender"))[0]
    data = bytearray(target.read_bytes())
    data[0] ^= 1
    target.write_bytes(bytes(data))
    code, rep = _audit_json(cli, world.transfer, "--trust", world.keys.allowed_signers)
    assert code == 1
    bad = [f for f in rep["transfer"]["files"] if f["status"] == "fail"]
    assert [f["path"] for f in bad] == [f"artifacts/{target.name}"]
    assert bad[0]["found"].startswith("sha256 ")


def test_missing_marker_is_incomplete(world: Any, cli: Cli) -> None:
    (world.transfer / "COMPLETE").unlink()
    code, rep = _audit_json(cli, world.transfer, "--trust", world.keys.allowed_signers)
    assert code == 3
    assert rep["verdict"] == "INCOMPLETE"
    assert "marker" in _names(rep["transfer"]["checks"], "incomplete")


def test_unexpected_file_is_reported(world: Any, cli: Cli) -> None:
    (world.transfer / "evil.sh").write_text("echo hi\n")
    code, rep = _audit_json(cli, world.transfer, "--trust", world.keys.allowed_signers)
    assert code == 1
    layout = next(c for c in rep["transfer"]["checks"] if c["name"] == "layout")
    assert layout["status"] == "fail"
    assert "evil.sh" in layout["summary"]


def test_threshold_not_met_is_reported_per_signature(world: Any, cli: Cli) -> None:
    code, rep = _audit_json(
        cli, world.transfer, "--trust", world.keys.allowed_signers, "--threshold", "2"
    )
    assert code == 1
    t = rep["transfer"]
    assert t["verified"] is False
    assert t["threshold"] == 2
    assert t["distinct_trusted"] == 1
    assert "signatures" in _names(t["checks"], "fail")


def test_usage_errors_exit_2(world: Any, cli: Cli, tmp_path: Path) -> None:
    assert cli("audit", world.transfer).exit_code == 2  # no --trust
    res = cli("audit", tmp_path, "--trust", world.keys.allowed_signers)
    assert res.exit_code == 2
    copy = tmp_path / "result-selfcheck-00000001-abcdef01"
    shutil.copytree(world.transfer, copy)
    assert cli("audit", copy, "--trust", world.keys.allowed_signers).exit_code == 2


def test_result_device_model_unchanged() -> None:
    # The report relies on these result fields; fail loudly if the bundle model renames them.
    assert {"name", "mender_device_id", "deployment_id", "outcome", "steps"} <= set(
        ResultDevice.__struct_fields__
    )


def test_artifact_mender_signatures(world: Any, signed_artifact_transfer: Any, cli: Cli) -> None:
    s = signed_artifact_transfer
    trust = world.keys.allowed_signers
    code, rep = _audit_json(cli, s.transfer, "--trust", trust, "--artifact-key", s.key.public)
    assert code == 0, rep["checks"]
    [art] = rep["artifacts"]
    assert (art["name"], art["status"]) == ("app-v3", "pass")
    assert art["parts"] > 1
    assert art["signature"].startswith("verified (ecdsa-p256)")
    code, rep = _audit_json(cli, s.transfer, "--trust", trust, "--artifact-key", s.other.public)
    assert code == 1
    assert rep["artifacts"][0]["status"] == "fail"
    assert "artifact-signature" in {c["name"] for c in rep["checks"] if c["status"] == "fail"}
    # Without a key the signature is recorded as not checked, which does not fail the audit.
    code, rep = _audit_json(cli, s.transfer, "--trust", trust)
    assert code == 0
    assert rep["artifacts"][0]["status"] == "info"


@pytest.mark.real_tools
def test_certificate_details_are_reported(world: Any, tmp_path: Path, cli: Cli) -> None:
    ca = make_ca(tmp_path, "ca")
    key = generate_key(tmp_path, "carol")
    certify(
        ca, key, key_id="carol-2026", principals=["carol@plant-a"], validity="-1d:+2d", serial=7
    )
    trust = write_allowed_signers(
        tmp_path / "allowed_signers",
        [allowed_signers_line("*@plant-a", ca.public_line(), cert_authority=True)],
    )
    transfer = make_sample_transfer(
        tmp_path / "stick", tmp_path / "work", signers=[load_signer(str(key.certificate))]
    )
    code, rep = _audit_json(cli, transfer, "--trust", trust)
    assert code == 0, rep["checks"]
    sig = rep["transfer"]["signatures"][0]
    assert sig["principal"] == "carol@plant-a"
    cert = sig["certificate"]
    assert (cert["key_id"], cert["serial"], cert["principals"]) == (
        "carol-2026",
        7,
        ["carol@plant-a"],
    )
    assert cert["ca_fingerprint"].startswith("SHA256:")
    assert sig["key_type"].endswith("-cert-v01@openssh.com")
    res = cli("audit", transfer, "--trust", trust)
    assert "certificate carol-2026 serial 7" in res.stdout


def test_trust_line_validity_window_is_reported(world: Any, tmp_path: Path, cli: Cli) -> None:
    trust = tmp_path / "allowed_signers"
    window = 'valid-after="20200101",valid-before="20990101"'
    trust.write_text(world.keys.alice.allowed_signers_line("alice@plant-a", options=window) + "\n")
    code, rep = _audit_json(cli, world.transfer, "--trust", trust)
    assert code == 0, rep["checks"]
    sig = rep["transfer"]["signatures"][0]
    assert (sig["valid_after"], sig["valid_before"], sig["matched_line"]) == (
        "2020-01-01T00:00:00Z",
        "2099-01-01T00:00:00Z",
        f"{trust}:1",
    )
    out = cli("audit", world.transfer, "--trust", trust).stdout
    assert "allowed_signers validity 2020-01-01" in out
    assert f"({trust}:1)" in out


def test_media_roots_are_searched(world: Any, make_result: ResultMaker, cli: Cli) -> None:
    make_result(world, media="back")
    stick = world.transfer.parent.parent
    res = cli("audit", stick, world.tmp / "back", "--trust", world.keys.allowed_signers, "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["transfer"]["folder"] == world.transfer.name
    assert len(rep["results"]) == 1


def test_two_visits_newest_outcome_wins_and_both_are_in_the_timeline(
    world: Any, make_result: ResultMaker, device_plan: Callable[..., Any], cli: Cli
) -> None:
    t1 = world.created + timedelta(minutes=20)
    t2 = world.created + timedelta(minutes=60)
    first = make_result(world, media="visit1", started=t1)  # pump-3 skipped
    second = make_result(
        world, media="visit2", started=t2, devices=[device_plan("pump-3", 3, OS_ID, "success", t2)]
    )
    code, rep = _audit_json(
        cli, world.transfer, first, second, "--trust", world.keys.allowed_signers
    )
    assert code == 0, rep["discrepancies"]
    pump3 = next(d for d in rep["devices"] if d["name"] == "pump-3")
    assert pump3["outcome"] == "success"
    assert pump3["result_folder"] == second.name
    visits = [e["what"] for e in pump3["timeline"] if e["what"].startswith("visit by")]
    assert len(visits) == 2
    assert any(e["what"].startswith("skipped: powered off") for e in pump3["timeline"])


def test_bundle_status_includes_cross_checks(
    world: Any, make_result: ResultMaker, cli: Cli
) -> None:
    result = make_result(world, started=world.created - timedelta(hours=1))
    code, rep = _audit_json(cli, world.transfer, result, "--trust", world.keys.allowed_signers)
    assert code == 1
    assert [d["name"] for d in rep["discrepancies"]] == ["applied-before-packed"]
    assert rep["results"][0]["status"] == "fail"
    assert rep["transfer"]["status"] == "pass"
