"""`gapferry verify`: path forms, report, --json, exit codes (0 valid, 1 invalid, 2 usage,
3 incomplete); and `gapferry selfcheck`."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from gapferry.common.bundle import to_tar
from gapferry.common.cli import main
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.fixtures.selfcheck import BundleKeys, make_sample_transfer
from gapferry.fixtures.sshkeys import ssh_keygen_verify


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


def test_valid_folder_report(transfer: Path, keys: BundleKeys) -> None:
    code, out = run("verify", str(transfer), "--trust", str(keys.allowed_signers))
    assert code == 0, out
    fp = keys.a.signer.public_key.fingerprint
    assert f"trusted: alice@plant-a (ssh-ed25519 {fp})" in out
    assert "threshold 1 -> met" in out
    assert "expires" in out
    assert out.count("  ok  ") == 4
    assert out.rstrip().endswith("verdict: VALID")


def test_media_root_with_one_bundle(transfer: Path, keys: BundleKeys) -> None:
    code, _ = run("verify", str(transfer.parent.parent), "--trust", str(keys.allowed_signers))
    assert code == 0


def test_media_root_with_two_bundles_is_a_usage_error(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    make_sample_transfer(tmp_path / "stick", tmp_path / "w2", signers=[keys.a.signer], sequence=2)
    code, out = run("verify", str(tmp_path / "stick"), "--trust", str(keys.allowed_signers))
    assert code == 2
    assert "holds 2 bundles" in out


def test_empty_folder_is_a_usage_error(tmp_path: Path, keys: BundleKeys) -> None:
    code, _ = run("verify", str(tmp_path), "--trust", str(keys.allowed_signers))
    assert code == 2


def test_single_file_tar(transfer: Path, keys: BundleKeys, tmp_path: Path) -> None:
    tar = to_tar(transfer, tmp_path / "b.tar", limits=DEFAULT_LIMITS)
    code, out = run("verify", str(tar), "--trust", str(keys.allowed_signers), "--json")
    assert code == 0, out
    assert json.loads(out)["verdict"] == "valid"


def test_not_a_tar_is_invalid(tmp_path: Path, keys: BundleKeys) -> None:
    (tmp_path / "x.tar").write_bytes(b"\x28\xb5\x2f\xfd compressed, not a tar")
    code, out = run(
        "verify", str(tmp_path / "x.tar"), "--trust", str(keys.allowed_signers), "--json"
    )
    assert code == 1
    assert json.loads(out)["error"]["code"] == "not-a-tar"


def test_untrusted_shows_signature_and_exits_1(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    other = tmp_path / "other_signers"
    other.write_text(keys.other.allowed_signers_line("mallory") + "\n")
    code, out = run("verify", str(transfer), "--trust", str(other))
    assert code == 1
    assert keys.a.signer.public_key.fingerprint in out
    assert "verdict: INVALID (untrusted-signer)" in out


def test_incomplete_exits_3(transfer: Path, keys: BundleKeys) -> None:
    (transfer / "COMPLETE").unlink()
    code, out = run("verify", str(transfer), "--trust", str(keys.allowed_signers), "--json")
    assert code == 3
    assert json.loads(out)["verdict"] == "incomplete"


def test_bad_threshold_is_usage(transfer: Path, keys: BundleKeys) -> None:
    code, _ = run("verify", str(transfer), "--trust", str(keys.allowed_signers), "--threshold", "0")
    assert code == 2


def test_missing_trust_file_is_usage(transfer: Path, tmp_path: Path) -> None:
    code, _ = run("verify", str(transfer), "--trust", str(tmp_path / "nope"))
    assert code == 2


def test_help_documents_exit_codes_and_examples() -> None:
    code, out = run("verify", "--help")
    assert code == 0
    for text in (
        "0  valid",
        "1  invalid",
        "2  usage",
        "3  incomplete",
        "gapferry verify /media/stick",
    ):
        assert text in out


def test_json_has_trust_details(transfer: Path, keys: BundleKeys) -> None:
    code, out = run("verify", str(transfer), "--trust", str(keys.allowed_signers), "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["manifest"]["site"] == "selfcheck"
    assert doc["trust"]["signatures"][0]["key_type"] == "ssh-ed25519"
    assert doc["namespace"] == "gapferry-transfer-v1@gapferry"


def test_selfcheck_command() -> None:
    code, out = run("selfcheck")
    assert code == 0, out
    assert "selfcheck passed" in out


@pytest.mark.real_tools
def test_bundle_signature_verifies_with_ssh_keygen(transfer: Path, keys: BundleKeys) -> None:
    assert shutil.which("ssh-keygen"), "install openssh-client (tests/run.sh does)"
    ok, out = ssh_keygen_verify(
        allowed_signers=keys.allowed_signers,
        principal="alice@plant-a",
        namespace="gapferry-transfer-v1@gapferry",
        message=(transfer / "manifest.json").read_bytes(),
        signature=(transfer / "manifest.json.sig").read_bytes(),
    )
    assert ok, out
    bad, _ = ssh_keygen_verify(
        allowed_signers=keys.allowed_signers,
        principal="alice@plant-a",
        namespace="gapferry-result-v1@gapferry",
        message=(transfer / "manifest.json").read_bytes(),
        signature=(transfer / "manifest.json.sig").read_bytes(),
    )
    assert not bad


def test_malformed_trust_file_is_usage(transfer: Path, tmp_path: Path) -> None:
    bad = tmp_path / "allowed"
    bad.write_text("alice@x not-a-key-type AAAA\n")
    code, out = run("verify", str(transfer), "--trust", str(bad), "--json")
    assert code == 2
    assert json.loads(out)["verdict"] == "usage"


@pytest.mark.real_tools
def test_certificate_cosigner_details_are_reported(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    """A co-signature made by `ssh-keygen -Y sign` with a CA-issued certificate verifies through a
    cert-authority line, and the report shows the certificate."""
    from datetime import UTC, datetime

    from gapferry.common.bundle import cosign
    from gapferry.common.signers import load_signer
    from gapferry.common.trust import TrustPolicy
    from gapferry.fixtures.sshkeys import certify, generate_key, make_ca

    ca = make_ca(tmp_path, "site-ca")
    dave = generate_key(tmp_path, "dave", "ed25519")
    cert = certify(
        ca, dave, key_id="dave-2026", principals=["dave@plant-a"], validity="-1h:+1h", serial=7
    )
    trust = tmp_path / "allowed"
    trust.write_text(
        keys.allowed_signers.read_text() + f"*@plant-a cert-authority {ca.public_line()}\n",
        encoding="utf-8",
    )
    now = datetime.now(tz=UTC)
    cosign(transfer, load_signer(str(cert)), policy=TrustPolicy.from_file(trust), now=now)
    code, out = run("verify", str(transfer), "--trust", str(trust), "--threshold", "2")
    assert code == 0, out
    assert "certificate: key id 'dave-2026', serial 7, principals ['dave@plant-a']" in out
    assert "manifest.json.sig.2: #1 trusted: dave@plant-a" in out


def test_failure_after_signatures_still_reports_them(transfer: Path, keys: BundleKeys) -> None:
    a = sorted((transfer / "artifacts").iterdir())[-1]
    a.write_bytes(b"Z" + a.read_bytes()[1:])
    code, out = run("verify", str(transfer), "--trust", str(keys.allowed_signers), "--json")
    doc = json.loads(out)
    assert code == 1
    assert doc["error"]["code"] == "digest-mismatch"
    assert doc["trust"]["satisfied"] is True
    code, out = run("verify", str(transfer), "--trust", str(keys.allowed_signers))
    assert "#0 trusted: alice@plant-a" in out
    assert "verdict: INVALID (digest-mismatch)" in out


def test_trust_line_validity_window_is_reported(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    """The allowed_signers line's valid-after/valid-before, and which line matched, are part of
    what `verify` says it checked (text and --json)."""
    trust = tmp_path / "allowed_signers"
    window = 'valid-after="20200101",valid-before="20990101"'
    trust.write_text(keys.a.allowed_signers_line("alice@plant-a", options=window) + "\n")
    code, out = run("verify", str(transfer), "--trust", str(trust))
    assert code == 0, out
    assert "allowed_signers validity: 2020-01-01T00:00:00+00:00 .. 2099-01-01T00:00:00+00:00" in out
    code, out = run("verify", str(transfer), "--trust", str(trust), "--json")
    sig = json.loads(out)["trust"]["signatures"][0]
    assert (sig["valid_after"], sig["valid_before"]) == (
        "2020-01-01T00:00:00+00:00",
        "2099-01-01T00:00:00+00:00",
    )
    assert sig["matched_line"] == f"{trust}:1"


@pytest.mark.parametrize(
    "case",
    [
        (errno.EIO, "unreadable", "incomplete", 3),
        (errno.ENOSPC, "no-space", "environment", 4),
    ],
)
def test_os_errors_become_a_documented_verdict(
    transfer: Path,
    keys: BundleKeys,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[int, str, str, int],
) -> None:
    """A medium that fails to read (or no room to unpack a .tar) is a verdict with a remedy and
    a documented exit code, never a traceback."""
    from gapferry.common import verify_cli

    err, code, verdict, exit_code = case

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(err, os.strerror(err), str(transfer / "manifest.json"))

    monkeypatch.setattr(verify_cli, "open_bundle", failing)
    status, out = run("verify", str(transfer), "--trust", str(keys.allowed_signers), "--json")
    doc = json.loads(out)
    assert (status, doc["verdict"], doc["error"]["code"]) == (exit_code, verdict, code)
    assert os.strerror(err) in doc["error"]["message"]
    assert doc["error"]["remedy"]
