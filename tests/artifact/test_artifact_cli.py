"""`gapferry artifact inspect` and `gapferry artifact write` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from gapferry.common.cli import main
from gapferry.fixtures.artifacts import (
    KeyPair,
    Member,
    mender_artifact_validate,
    mender_artifact_write,
    single_file_payload,
    tamper,
)


def _write(tmp: Path, key: KeyPair | None, *extra: str) -> Path:
    f = tmp / "app.conf"
    f.write_text("x=1\n")
    out = tmp / "app.mender"
    args = ["artifact", "write", "--type", "single-file", "-n", "app-1", "-t", "plc"]
    args += ["-f", str(f), "--dest-dir", "/etc/app", "--permissions", "640", "-o", str(out)]
    if key is not None:
        args += ["-k", str(key.private)]
    r = CliRunner().invoke(main, [*args, *extra])
    assert r.exit_code == 0, r.output
    return out


def test_artifact_cli_inspect_verified(tmp_path: Path, ec_key: KeyPair) -> None:
    art = _write(tmp_path, ec_key)
    r = CliRunner().invoke(
        main, ["artifact", "inspect", str(art), "--verify-key", str(ec_key.public)]
    )
    assert r.exit_code == 0, r.output
    assert "name:         app-1" in r.output
    assert "signed and verified (ecdsa-p256)" in r.output
    assert "app.conf" in r.output
    r = CliRunner().invoke(main, ["artifact", "inspect", str(art), "--json"])
    doc = json.loads(r.output)
    assert doc["ok"] is True
    assert doc["signature"].startswith("signed, NOT verified")
    assert doc["artifact"]["device_types"] == ["plc"]
    assert [f["name"] for f in doc["artifact"]["payloads"][0]["files"]] == [
        "dest_dir",
        "filename",
        "permissions",
        "app.conf",
    ]


def test_artifact_cli_inspect_wrong_key_and_unsigned(
    tmp_path: Path, rsa_key: KeyPair, ec_key: KeyPair
) -> None:
    art = _write(tmp_path, ec_key)
    r = CliRunner().invoke(
        main, ["artifact", "inspect", str(art), "--verify-key", str(rsa_key.public), "--json"]
    )
    assert r.exit_code == 1
    assert json.loads(r.output)["error"]["code"] == "artifact-wrong-key-type"
    (tmp_path / "u").mkdir()
    unsigned = _write(tmp_path / "u", None)
    r = CliRunner().invoke(main, ["artifact", "inspect", str(unsigned), "--require-signature"])
    assert r.exit_code == 1
    assert "no signature file found" in r.output


def test_artifact_cli_inspect_missing_file(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["artifact", "inspect", str(tmp_path / "nope.mender")])
    assert r.exit_code == 2


@pytest.mark.real_tools
def test_artifact_cli_write_validates(tmp_path: Path, rsa_key: KeyPair) -> None:
    art = _write(tmp_path, rsa_key, "--compression", "lzma")
    ok, text = mender_artifact_validate(art, rsa_key)
    assert ok, text


def test_artifact_cli_inspect_refuses_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "x.mender"
    os.mkfifo(fifo)
    r = CliRunner().invoke(main, ["artifact", "inspect", str(fifo)])
    assert r.exit_code == 2
    assert "not a regular file" in r.output


@pytest.mark.real_tools
def test_artifact_cli_inspect_as_a_user_runs_it(
    tmp_path: Path, rsa_key: KeyPair, other_rsa_key: KeyPair
) -> None:
    """The installed `gapferry` on an artifact the real mender-artifact signed: verified with
    the right key; a same-type wrong key and a tampered copy exit 1 with their own codes."""
    files = single_file_payload(
        tmp_path / "sf", dest_dir="/etc/app", filename="app.conf", content=b"x=1\n"
    )
    art = mender_artifact_write(
        tmp_path / "app.mender",
        name="app-2",
        payload_type="single-file",
        files=files,
        device_types=["plc", "hmi"],
        compression="none",
        key=rsa_key,
    )
    gapferry = str(Path(sys.executable).parent / "gapferry")

    def inspect(path: Path, key: KeyPair, *extra: str) -> subprocess.CompletedProcess[str]:
        args = [gapferry, "artifact", "inspect", str(path), "--verify-key", str(key.public)]
        return subprocess.run(
            [*args, *extra], capture_output=True, text=True, timeout=60, check=False
        )

    r = inspect(art, rsa_key)
    assert r.returncode == 0, r.stderr
    assert "name:         app-2" in r.stdout
    assert "device types: plc, hmi" in r.stdout
    assert "signature:    signed and verified (rsa-3072)" in r.stdout
    assert "payload 0: type single-file" in r.stdout
    assert "  artifact_name = app-2" in r.stdout
    assert "  device_type = plc, hmi" in r.stdout
    assert "app.conf  4 bytes" in r.stdout

    r = inspect(art, other_rsa_key, "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["code"] == "artifact-bad-signature"

    def flip(ms: list[Member]) -> list[Member]:
        data = next(m for m in ms if m.name == "data/0000.tar")
        data.data = data.data.replace(b"x=1\n", b"x=2\n")
        return ms

    bad = tamper(art, tmp_path / "bad.mender", flip)
    r = inspect(bad, rsa_key, "--json")
    assert r.returncode == 1
    error = json.loads(r.stdout)["error"]
    assert error["code"] == "artifact-checksum"
    assert "data/0000/app.conf" in error["message"]
