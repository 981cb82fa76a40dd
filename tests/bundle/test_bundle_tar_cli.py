"""`gapferry tar` (bundle_spec/SPEC.md section 3.8): verify first, then write the single-file form
that `gapferry verify` and `gapferry audit` read on the far side of a data diode; nothing is
written for a bundle that does not verify; exit codes."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from click.testing import CliRunner, Result
from gapferry.common.cli import main
from gapferry.fixtures.selfcheck import BundleKeys


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _outbox(tmp_path: Path) -> Path:
    out = tmp_path / "outbox"
    out.mkdir()
    return out


def test_writes_a_tar_the_far_side_verifies(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    out = _outbox(tmp_path)
    medium = transfer.parent.parent
    res = run("tar", medium, "--to", out, "--trust", keys.allowed_signers, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    target = out / f"{transfer.name}.tar"
    assert doc["tar"] == str(target)
    assert doc["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert doc["size"] == target.stat().st_size
    assert doc["trust"]["satisfied"] is True
    assert sorted(p.name for p in out.iterdir()) == [target.name]
    with tarfile.open(target, "r:") as t:
        names = t.getnames()
    assert names[0] == transfer.name
    assert names[-1] == f"{transfer.name}/COMPLETE"
    far = run("verify", target, "--trust", keys.allowed_signers, "--json")
    assert far.exit_code == 0, far.output
    assert json.loads(far.stdout)["manifest_sha256"] == doc["manifest_sha256"]


def test_text_report_names_the_file_and_its_hash(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    target = tmp_path / "t42.tar"
    res = run("tar", transfer, "--to", target, "--trust", keys.allowed_signers)
    assert res.exit_code == 0, res.output
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    assert f"verified {transfer.name}: 1 distinct trusted key(s), 4 file(s) hashed" in res.stdout
    assert f"wrote {target}: {target.stat().st_size} bytes, sha256 {digest}" in res.stdout


def test_a_bundle_that_does_not_verify_is_not_written(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    out = _outbox(tmp_path)
    artifact = sorted((transfer / "artifacts").iterdir())[-1]
    artifact.write_bytes(b"Z" + artifact.read_bytes()[1:])
    res = run("tar", transfer, "--to", out, "--trust", keys.allowed_signers)
    assert res.exit_code == 1
    assert "expected sha256" in res.stderr
    assert list(out.iterdir()) == []


def test_an_incomplete_bundle_is_not_written(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    out = _outbox(tmp_path)
    (transfer / "COMPLETE").unlink()
    res = run("tar", transfer, "--to", out, "--trust", keys.allowed_signers)
    assert res.exit_code == 3
    assert list(out.iterdir()) == []


def test_below_the_threshold_is_not_written(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    out = _outbox(tmp_path)
    res = run("tar", transfer, "--to", out, "--trust", keys.allowed_signers, "--threshold", "2")
    assert res.exit_code == 1
    assert "expected 2 distinct trusted keys, found 1 of 2" in res.stderr
    assert list(out.iterdir()) == []


def test_an_existing_file_is_never_overwritten(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    out = _outbox(tmp_path)
    existing = out / f"{transfer.name}.tar"
    existing.write_bytes(b"in transit")
    res = run("tar", transfer, "--to", out, "--trust", keys.allowed_signers)
    assert res.exit_code == 2
    assert "already exists" in res.stderr
    assert existing.read_bytes() == b"in transit"


def test_usage_errors(transfer: Path, keys: BundleKeys, tmp_path: Path) -> None:
    trust = keys.allowed_signers
    res = run("tar", transfer, "--to", tmp_path / "bundle.zip", "--trust", trust)
    assert res.exit_code == 2
    assert "neither a folder nor a .tar file name" in res.stderr
    res = run("tar", transfer, "--to", tmp_path / "no-such" / "b.tar", "--trust", trust)
    assert res.exit_code == 2
    assert "does not exist" in res.stderr
    bad = tmp_path / "bad_trust"
    bad.write_text("not an allowed_signers line\n", encoding="utf-8")
    assert run("tar", transfer, "--to", tmp_path / "b.tar", "--trust", bad).exit_code == 2
    empty = tmp_path / "empty-stick"
    empty.mkdir()
    assert run("tar", empty, "--to", tmp_path / "b.tar", "--trust", trust).exit_code == 2
    assert not (tmp_path / "b.tar").exists()


def test_a_file_that_cannot_be_written_is_an_environment_failure(
    transfer: Path, keys: BundleKeys
) -> None:
    res = run("tar", transfer, "--to", "/proc/bundle.tar", "--trust", keys.allowed_signers)
    assert res.exit_code == 4
    assert "cannot write /proc/bundle.tar" in res.stderr
    assert "what to do:" in res.stderr


def test_help_has_examples_and_exit_codes() -> None:
    out = run("tar", "--help").output
    assert "gapferry tar /media/stick --to /srv/diode/outbox --trust allowed_signers" in out
    assert "Exit codes:" in out
    assert "  4  environment" in out


def _tar_of(transfer: Path, keys: BundleKeys, tmp_path: Path) -> Path:
    target = tmp_path / "diode" / f"{transfer.name}.tar"
    target.parent.mkdir()
    res = run("tar", transfer, "--to", target, "--trust", keys.allowed_signers)
    assert res.exit_code == 0, res.output
    return target


def test_untar_puts_the_verified_bundle_where_apply_finds_it(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    target = _tar_of(transfer, keys, tmp_path)
    far = tmp_path / "far-stick"
    res = run("untar", target, "--to", far, "--trust", keys.allowed_signers, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    unpacked = far / "gapferry" / transfer.name
    assert doc["path"] == str(unpacked)
    assert sorted(p.name for p in (far / "gapferry").iterdir()) == [transfer.name]
    for original in transfer.rglob("*"):
        copy = unpacked / original.relative_to(transfer)
        assert copy.is_dir() if original.is_dir() else copy.read_bytes() == original.read_bytes()
    again = run("verify", far, "--trust", keys.allowed_signers, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["manifest_sha256"] == doc["manifest_sha256"]
    twice = run("untar", target, "--to", far, "--trust", keys.allowed_signers)
    assert twice.exit_code == 2
    assert "already exists" in twice.stderr


def test_untar_of_an_untrusted_or_altered_tar_leaves_nothing(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    target = _tar_of(transfer, keys, tmp_path)
    untrusted = tmp_path / "only-other"
    untrusted.write_text(keys.other.allowed_signers_line("x@y") + "\n")
    far = tmp_path / "far-stick"
    res = run("untar", target, "--to", far, "--trust", untrusted)
    assert res.exit_code == 1, res.output
    assert list((far / "gapferry").iterdir()) == []
    data = bytearray(target.read_bytes())
    # The last artifact part's first content byte (tar data follows its 512-byte header).
    with tarfile.open(target, "r:") as t:
        member = next(m for m in t.getmembers() if "/artifacts/" in m.name)
    data[member.offset_data] ^= 0x01
    target.write_bytes(bytes(data))
    res = run("untar", target, "--to", far, "--trust", keys.allowed_signers)
    assert res.exit_code == 1, res.output
    assert "expected sha256" in res.stderr
    assert list((far / "gapferry").iterdir()) == []
