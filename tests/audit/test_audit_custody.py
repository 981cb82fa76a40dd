"""`gapferry custody add|show` and the custody checks of `gapferry audit`: one test per attack."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import Result
from gapferry.common.audit.custody import (
    CUSTODY_NAMESPACE,
    CustodyEvent,
    append_custody_event,
    default_custody_actor,
    read_custody_folder,
    verify_custody,
)
from gapferry.common.bundle.tarform import from_tar, to_tar
from gapferry.common.errors import InvalidData
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.trust import TrustPolicy
from gapferry.fixtures.sshkeys import ssh_keygen_verify

Cli = Callable[..., Result]


def _fixed_files(bundle: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in bundle.iterdir()
        if p.is_file()  # manifest, signatures, SHA256SUMS, COMPLETE
    }


def _add(cli: Cli, bundle: Path, key: Path, text: str, actor: str = "guard") -> Result:
    res = cli("custody", "add", bundle, "--event", text, "--sign", key, "--actor", actor)
    assert res.exit_code == 0, res.output
    return res


def _show(cli: Cli, world: Any) -> tuple[int, dict[str, Any]]:
    res = cli("custody", "show", world.transfer, "--trust", world.keys.allowed_signers, "--json")
    return res.exit_code, json.loads(res.stdout)


def test_add_appends_a_chain_without_touching_the_signed_files(world: Any, cli: Cli) -> None:
    before = _fixed_files(world.transfer)
    _add(cli, world.transfer, world.keys.alice.private, "received at gate 3")
    _add(cli, world.transfer, world.keys.bob.private, "handed to technician", actor="bob")
    assert _fixed_files(world.transfer) == before
    custody = world.transfer / "custody"
    assert sorted(p.name for p in custody.iterdir()) == [
        "0001.json",
        "0001.json.sig",
        "0002.json",
        "0002.json.sig",
    ]
    first = msgspec.json.decode((custody / "0001.json").read_bytes(), type=CustodyEvent)
    second = msgspec.json.decode((custody / "0002.json").read_bytes(), type=CustodyEvent)
    manifest_sha = hashlib.sha256(before["manifest.json"]).hexdigest()
    assert first.previous_sha256 == manifest_sha == first.manifest_sha256
    assert (
        second.previous_sha256 == hashlib.sha256((custody / "0001.json").read_bytes()).hexdigest()
    )
    assert (first.actor.name, first.event, second.actor.name) == (
        "guard",
        "received at gate 3",
        "bob",
    )
    code, shown = _show(cli, world)
    assert code == 0
    assert shown["ok"] is True
    assert [e["signer"] for e in shown["events"]] == ["alice@plant-a", "bob@plant-a"]


@pytest.mark.real_tools
def test_event_signature_verifies_with_ssh_keygen(world: Any, cli: Cli) -> None:
    _add(cli, world.transfer, world.keys.alice.private, "received")
    ok, out = ssh_keygen_verify(
        allowed_signers=world.keys.allowed_signers,
        principal="alice@plant-a",
        namespace=CUSTODY_NAMESPACE,
        message=(world.transfer / "custody" / "0001.json").read_bytes(),
        signature=(world.transfer / "custody" / "0001.json.sig").read_bytes(),
    )
    assert ok, out


def _audit_custody(cli: Cli, world: Any) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    res = cli("audit", world.transfer, "--trust", world.keys.allowed_signers, "--json")
    rep = json.loads(res.stdout)
    check = next(c for c in rep["transfer"]["checks"] if c["name"] == "custody")
    return res.exit_code, rep["transfer"]["custody"], check


def _two_events(cli: Cli, world: Any) -> Path:
    _add(cli, world.transfer, world.keys.alice.private, "received at gate 3")
    _add(cli, world.transfer, world.keys.bob.private, "handed to technician")
    return Path(world.transfer) / "custody"


def test_audit_shows_and_verifies_the_chain(world: Any, cli: Cli) -> None:
    _two_events(cli, world)
    code, rows, check = _audit_custody(cli, world)
    assert code == 0
    assert check["status"] == "pass"
    assert [(r["number"], r["event"], r["status"]) for r in rows] == [
        (1, "received at gate 3", "pass"),
        (2, "handed to technician", "pass"),
    ]


def test_removed_first_event_breaks_the_chain(world: Any, cli: Cli) -> None:
    custody = _two_events(cli, world)
    (custody / "0001.json").unlink()
    (custody / "0001.json.sig").unlink()
    code, rows, check = _audit_custody(cli, world)
    assert code == 1
    assert check["status"] == "fail"
    problems = " ".join(rows[0]["problems"])
    assert "gap" in problems
    assert "chain broken" in problems


def test_edited_event_fails_its_signature(world: Any, cli: Cli) -> None:
    custody = _two_events(cli, world)
    raw = (custody / "0001.json").read_bytes()
    (custody / "0001.json").write_bytes(raw.replace(b"gate 3", b"gate 4"))
    code, rows, _ = _audit_custody(cli, world)
    assert code == 1
    assert rows[0]["status"] == "fail"
    assert "bad-signature" in rows[0]["problems"][0]
    assert rows[0]["event"] is None  # not decoded: the signature did not verify


def test_reordered_events_fail(world: Any, cli: Cli) -> None:
    custody = _two_events(cli, world)
    for suffix in (".json", ".json.sig"):
        (custody / f"0001{suffix}").rename(custody / f"tmp{suffix}")
        (custody / f"0002{suffix}").rename(custody / f"0001{suffix}")
        (custody / f"tmp{suffix}").rename(custody / f"0002{suffix}")
    code, rows, _ = _audit_custody(cli, world)
    assert code == 1
    assert all(r["status"] == "fail" for r in rows)


def test_event_by_untrusted_key_fails(world: Any, cli: Cli) -> None:
    _add(cli, world.transfer, world.keys.mallory.private, "I was never here")
    code, rows, _ = _audit_custody(cli, world)
    assert code == 1
    assert "untrusted-signer" in rows[0]["problems"][0]


def test_event_recorded_on_a_copy_of_the_same_bundle_is_valid(
    world: Any, cli: Cli, tmp_path: Path
) -> None:
    other = tmp_path / "copy" / world.transfer.name
    shutil.copytree(world.transfer, other)
    append_custody_event(
        other,
        signer=world.keys.alice.signer,
        event="received",
        actor=default_custody_actor("alice"),
        now=datetime.now(tz=UTC),
    )
    # Custody binds the manifest bytes, not the medium: a byte-identical copy is the same bundle.
    shutil.copytree(other / "custody", world.transfer / "custody")
    code, rows, _ = _audit_custody(cli, world)
    assert code == 0
    assert rows[0]["status"] == "pass"


def test_event_for_a_different_manifest_fails(
    world: Any, cli: Cli, make_result: Callable[..., Path]
) -> None:
    result = make_result(world)
    append_custody_event(
        result,
        signer=world.keys.alice.signer,
        event="received result",
        actor=default_custody_actor("alice"),
        now=datetime.now(tz=UTC),
    )
    shutil.copytree(result / "custody", world.transfer / "custody")
    code, rows, _ = _audit_custody(cli, world)
    assert code == 1
    problems = " ".join(rows[0]["problems"])
    assert "copied from another bundle" in problems
    assert "binds manifest sha256" in problems


def test_orphan_signature_of_an_interrupted_add_is_skipped_and_replaced(
    world: Any, cli: Cli
) -> None:
    _add(cli, world.transfer, world.keys.alice.private, "received")
    (world.transfer / "custody" / "0002.json.sig").write_bytes(b"stale")
    folder = read_custody_folder(world.transfer)
    assert folder.ignored == ("custody/0002.json.sig",)
    _add(cli, world.transfer, world.keys.bob.private, "handed over")
    code, rows, _ = _audit_custody(cli, world)
    assert code == 0
    assert [r["status"] for r in rows] == ["pass", "pass"]


def test_unexpected_and_linked_custody_files_fail(world: Any, cli: Cli) -> None:
    custody = _two_events(cli, world)
    (custody / "notes.txt").write_text("hello")
    (custody / "0003.json").symlink_to(custody / "0001.json")
    code, _, check = _audit_custody(cli, world)
    assert code == 1
    assert "unexpected file custody/notes.txt" in check["summary"]
    assert "custody/0003.json is a symbolic link" in check["summary"]


def test_add_refuses_a_damaged_log_and_an_incomplete_bundle(world: Any, cli: Cli) -> None:
    custody = _two_events(cli, world)
    (custody / "0001.json").unlink()
    res = cli("custody", "add", world.transfer, "--event", "x", "--sign", world.keys.alice.private)
    assert res.exit_code == 1
    assert "not numbered" in res.stderr
    (world.transfer / "COMPLETE").unlink()
    res = cli("custody", "add", world.transfer, "--event", "x", "--sign", world.keys.alice.private)
    assert res.exit_code == 3


def test_oversized_event_is_refused_unread(world: Any, cli: Cli) -> None:
    custody = _two_events(cli, world)
    (custody / "0002.json").write_bytes(b"{" + b" " * 20_000 + b"}")
    code, rows, _ = _audit_custody(cli, world)
    assert code == 1
    assert rows[1]["problems"] == ["larger than 16384 bytes"]


def test_verify_custody_is_pure_and_checks_time_order(world: Any, cli: Cli) -> None:
    _two_events(cli, world)
    folder = read_custody_folder(world.transfer)
    raw = (world.transfer / "manifest.json").read_bytes()
    chain = verify_custody(
        folder,
        bundle_kind="transfer",
        bundle_id=json.loads(raw)["bundle_id"],
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        created=world.created,
        policy=world.keys.policy(),
        # Verified "a year ago": both events lie in the future.
        now=world.created.replace(year=world.created.year - 1),
    )
    assert not chain.ok
    assert all(any("in the future" in p for p in e.problems) for e in chain.events)


def test_custody_link_is_refused(world: Any, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (world.transfer / "custody").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidData) as e:
        read_custody_folder(world.transfer)
    assert e.value.code == "bad-custody"


def test_custody_show_on_a_result_bundle(
    world: Any, cli: Cli, make_result: Callable[..., Path]
) -> None:
    result = make_result(world)
    _add(cli, result, world.keys.bob.private, "result handed to the operator")
    res = cli("custody", "show", result, "--trust", world.keys.allowed_signers)
    assert res.exit_code == 0, res.output
    assert "result handed to the operator (signed by bob@plant-a" in res.stdout


def test_bundle_reader_accepts_a_custody_folder(world: Any, cli: Cli) -> None:
    _add(cli, world.transfer, world.keys.alice.private, "received")
    res = cli("verify", world.transfer, "--trust", world.keys.allowed_signers)
    assert res.exit_code == 0, res.output


def test_custody_show_refuses_a_bundle_that_does_not_verify(world: Any, cli: Cli) -> None:
    _add(cli, world.transfer, world.keys.alice.private, "received")
    (world.transfer / "manifest.json.sig").write_bytes(b"garbage")
    res = cli("custody", "show", world.transfer, "--trust", world.keys.allowed_signers)
    assert res.exit_code == 1
    assert "does not verify" in res.stderr
    (world.transfer / "COMPLETE").unlink()
    (world.transfer / "manifest.json").unlink()
    res = cli("custody", "show", world.transfer, "--trust", world.keys.allowed_signers)
    assert res.exit_code == 3


def test_single_file_form_carries_custody_events(world: Any, cli: Cli, tmp_path: Path) -> None:
    _add(cli, world.transfer, world.keys.alice.private, "received")
    tar = to_tar(world.transfer, tmp_path / "bundle.tar", limits=DEFAULT_LIMITS)
    policy = TrustPolicy.from_file(world.keys.allowed_signers)
    opened = from_tar(
        tar, tmp_path / "out", policy=policy, now=datetime.now(UTC), limits=DEFAULT_LIMITS
    )
    assert (opened.path / "custody" / "0001.json").read_bytes() == (
        world.transfer / "custody" / "0001.json"
    ).read_bytes()


def test_bundle_reader_refuses_unexpected_file_in_custody(world: Any, cli: Cli) -> None:
    _add(cli, world.transfer, world.keys.alice.private, "received")
    (world.transfer / "custody" / "payload.sh").write_bytes(b"#!/bin/sh\n")
    res = cli("verify", world.transfer, "--trust", world.keys.allowed_signers, "--json")
    assert res.exit_code == 1
    assert "unexpected-file" in res.stdout
