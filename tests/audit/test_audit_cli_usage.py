"""`gapferry audit` and `gapferry custody add|show` as a user meets them: a medium's root as
BUNDLE, the signing passphrase from the environment, usage errors exit 2 (a broken trust file
included), and --help with examples and exit codes."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from gapferry.common.cli import main
from gapferry.fixtures.sshkeys import write_encrypted_key


def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def _events(bundle: Path) -> list[str]:
    custody = bundle / "custody"
    return sorted(p.name for p in custody.iterdir()) if custody.is_dir() else []


def test_custody_add_and_show_accept_the_medium_root(world: Any) -> None:
    medium = world.transfer.parent.parent
    res = run("custody", "add", medium, "--event", "received", "--sign", world.keys.alice.private)
    assert res.exit_code == 0, res.output
    assert f"recorded {world.transfer / 'custody' / '0001.json'}" in res.stdout
    res = run("custody", "show", medium, "--trust", world.keys.allowed_signers, "--json")
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["bundle"] == world.transfer.name
    assert [(e["event"], e["signer"]) for e in shown["events"]] == [("received", "alice@plant-a")]


def test_custody_add_on_a_medium_with_no_bundle_is_usage(world: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty-stick"
    empty.mkdir()
    res = run("custody", "add", empty, "--event", "x", "--sign", world.keys.alice.private)
    assert res.exit_code == 2
    assert "no bundle folder found" in res.stderr


def test_custody_add_takes_the_passphrase_from_the_environment(world: Any, tmp_path: Path) -> None:
    secret = os.urandom(12).hex()
    kp = write_encrypted_key(tmp_path, "carol", passphrase=secret.encode())
    args = ("custody", "add", world.transfer, "--event", "received", "--sign", kp.private)
    res = run(*args, env={"GAPFERRY_SIGN_PASSPHRASE": "wrong"})
    assert res.exit_code == 2, res.output
    assert secret not in res.output
    assert _events(world.transfer) == []
    res = run(*args, env={"GAPFERRY_SIGN_PASSPHRASE": secret})
    assert res.exit_code == 0, res.output
    assert secret not in res.output
    assert _events(world.transfer) == ["0001.json", "0001.json.sig"]


@pytest.mark.parametrize("command", ["audit", "custody show"])
def test_a_malformed_trust_file_is_a_usage_error(world: Any, tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad_allowed_signers"
    bad.write_text("this is not an allowed_signers line\n", encoding="utf-8")
    res = run(*command.split(), world.transfer, "--trust", bad)
    assert res.exit_code == 2, res.output
    assert f"{bad}:1:" in res.stderr
    assert "what to do:" in res.stderr


def test_audit_threshold_below_one_is_a_usage_error(world: Any) -> None:
    res = run("audit", world.transfer, "--trust", world.keys.allowed_signers, "--threshold", "0")
    assert res.exit_code == 2
    assert "--threshold" in res.output


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ("audit", "gapferry audit transfer.tar /media/returned-stick --trust allowed_signers"),
        ("custody add", 'gapferry custody add /media/stick --event "received at gate 3" --sign'),
        ("custody show", "gapferry custody show /media/stick --trust allowed_signers"),
    ],
)
def test_help_has_examples_and_exit_codes(command: str, example: str) -> None:
    out = run(*command.split(), "--help").output
    assert "Examples:" in out
    assert example in out
    assert "Exit codes:" in out
    assert "  2  usage" in out


def test_html_into_a_missing_folder_is_refused_before_the_audit(world: Any) -> None:
    out = world.tmp / "no-such-folder" / "report.html"
    res = run("audit", world.transfer, "--trust", world.keys.allowed_signers, "--html", out)
    assert res.exit_code == 2
    assert res.stdout == ""
    assert "the folder" in res.stderr
    assert "does not exist" in res.stderr


def test_html_that_cannot_be_written_is_an_environment_failure(world: Any) -> None:
    res = run("audit", world.transfer, "--trust", world.keys.allowed_signers, "--html", "/proc/r")
    assert res.exit_code == 4
    assert "cannot write the HTML report /proc/r" in res.stderr
    assert "what to do:" in res.stderr


def test_custody_event_that_cannot_be_written_is_an_environment_failure(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gapferry.common.audit import custody

    def full(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(custody, "atomic_write_bytes", full)
    args = ("custody", "add", world.transfer, "--event", "x", "--sign", world.keys.alice.private)
    res = run(*args)
    assert res.exit_code == 4, res.output
    assert "cannot write custody event 1" in res.stderr
    assert "No space left on device" in res.stderr
    monkeypatch.undo()
    assert run(*args).exit_code == 0
    assert _events(world.transfer) == ["0001.json", "0001.json.sig"]


def test_an_event_that_does_not_verify_says_so_instead_of_blanks(world: Any) -> None:
    key = world.keys.mallory
    args = ("custody", "add", world.transfer, "--event", "swapped the stick", "--sign", key.private)
    assert run(*args).exit_code == 0
    res = run("custody", "show", world.transfer, "--trust", world.keys.allowed_signers)
    assert res.exit_code == 1
    fingerprint = key.signer.public_key.fingerprint
    assert f"(content not shown: the event did not verify) (key {fingerprint})" in res.stdout
    assert "signature: untrusted-signer" in res.stdout
    assert "swapped the stick" not in res.stdout
    audit = run("audit", world.transfer, "--trust", world.keys.allowed_signers)
    assert audit.exit_code == 1
    assert "custody custody/0001.json (content not shown: the event did not verify)" in audit.stdout
