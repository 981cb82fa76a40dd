"""`gapferry artifact inspect` and `gapferry artifact write` as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from gapferry.common.cli import main
from gapferry.fixtures.artifacts import KeyPair, mender_artifact_validate


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
