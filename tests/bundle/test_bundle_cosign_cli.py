"""`gapferry cosign` (issue 2, bundle_spec/SPEC.md section 6.3): verify first, then add one
signature file; never the manifest or the marker; one signature per key; exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from gapferry.common.bundle import namespace_for
from gapferry.common.cli import main
from gapferry.fixtures.selfcheck import BundleKeys
from gapferry.fixtures.sshkeys import (
    certify,
    generate_key,
    make_ca,
    ssh_keygen_verify,
    write_encrypted_key,
)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def verify(bundle: Path, keys: BundleKeys, threshold: int) -> int:
    r = run(
        "verify", str(bundle), "--trust", str(keys.allowed_signers), "--threshold", str(threshold)
    )
    return r.exit_code


def snapshot(bundle: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundle.iterdir()) if p.is_file()}


def sig_files(bundle: Path) -> list[str]:
    return sorted(p.name for p in bundle.iterdir() if p.name.startswith("manifest.json.sig"))


@pytest.mark.real_tools
def test_two_of_two_fails_before_and_passes_after_cosign(transfer: Path, keys: BundleKeys) -> None:
    assert verify(transfer, keys, 2) == 1
    before = snapshot(transfer)
    r = run(
        "cosign", str(transfer), "--sign", str(keys.b.private), "--trust", str(keys.allowed_signers)
    )
    assert r.exit_code == 0, r.output
    assert "wrote manifest.json.sig.2" in r.stdout
    assert "now has 2 distinct trusted signature(s)" in r.stdout
    after = snapshot(transfer)
    # Exactly one file was added; the manifest, the marker and the first signature are unchanged.
    assert set(after) - set(before) == {"manifest.json.sig.2"}
    assert {k: after[k] for k in before} == before
    assert verify(transfer, keys, 2) == 0
    # The new signature is a plain OpenSSH signature: stock ssh-keygen accepts it.
    ok, out = ssh_keygen_verify(
        allowed_signers=keys.allowed_signers,
        principal="bob@plant-a",
        namespace=namespace_for("transfer"),
        message=after["manifest.json"],
        signature=after["manifest.json.sig.2"],
    )
    assert ok, out


def test_the_same_key_twice_is_refused(transfer: Path, keys: BundleKeys) -> None:
    before = snapshot(transfer)
    r = run(
        "cosign",
        str(transfer),
        "--sign",
        str(keys.a.private),
        "--trust",
        str(keys.allowed_signers),
        "--json",
    )
    assert r.exit_code == 2, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False
    assert doc["error"]["code"] == "already-signed"
    assert snapshot(transfer) == before
    # And after a co-signature, neither key can sign again.
    args = ["--trust", str(keys.allowed_signers)]
    assert run("cosign", str(transfer), "--sign", str(keys.b.private), *args).exit_code == 0
    r = run("cosign", str(transfer), "--sign", str(keys.b.private), *args)
    assert r.exit_code == 2
    assert "already signed by" in r.stderr
    assert sig_files(transfer) == ["manifest.json.sig", "manifest.json.sig.2"]


def test_json_report_and_medium_root(transfer: Path, keys: BundleKeys) -> None:
    medium = transfer.parent.parent
    r = run(
        "cosign",
        str(medium),
        "--sign",
        str(keys.b.private),
        "--trust",
        str(keys.allowed_signers),
        "--json",
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is True
    assert doc["bundle"] == str(transfer)
    assert doc["signature_file"] == "manifest.json.sig.2"
    assert doc["namespace"] == namespace_for("transfer")
    assert doc["fingerprint"] == keys.b.signer.public_key.fingerprint
    assert doc["trust"]["distinct_trusted"] == 2


def test_an_altered_bundle_is_not_cosigned(transfer: Path, keys: BundleKeys) -> None:
    victim = next(p for p in transfer.rglob("*") if p.is_file() and p.parent != transfer)
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    r = run(
        "cosign", str(transfer), "--sign", str(keys.b.private), "--trust", str(keys.allowed_signers)
    )
    assert r.exit_code == 1, r.output
    assert sig_files(transfer) == ["manifest.json.sig"]


def test_a_bundle_below_the_required_threshold_is_not_cosigned(
    transfer: Path, keys: BundleKeys
) -> None:
    r = run(
        "cosign",
        str(transfer),
        "--sign",
        str(keys.b.private),
        "--trust",
        str(keys.allowed_signers),
        "--threshold",
        "2",
    )
    assert r.exit_code == 1, r.output
    assert sig_files(transfer) == ["manifest.json.sig"]


def test_an_untrusted_cosigner_is_refused_before_signing(transfer: Path, keys: BundleKeys) -> None:
    """A signature by a key --trust does not list would make every reader refuse the bundle."""
    before = snapshot(transfer)
    r = run(
        "cosign",
        str(transfer),
        "--sign",
        str(keys.other.private),
        "--trust",
        str(keys.allowed_signers),
        "--json",
    )
    assert r.exit_code == 2, r.output
    assert json.loads(r.stdout)["error"]["code"] == "untrusted-cosigner"
    assert snapshot(transfer) == before
    assert verify(transfer, keys, 1) == 0


@pytest.mark.real_tools
def test_certificate_cosigner_through_a_ca_line(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    """A certificate the CA line accepts co-signs; one it does not accept (wrong principal) is
    taken back after signing, leaving the bundle as it was."""
    ca = make_ca(tmp_path, "site-ca")
    trust = tmp_path / "allowed"
    trust.write_text(
        keys.allowed_signers.read_text() + f"*@plant-a cert-authority {ca.public_line()}\n",
        encoding="utf-8",
    )
    eve = generate_key(tmp_path, "eve", "ed25519")
    wrong = certify(ca, eve, key_id="eve", principals=["eve@elsewhere"], validity="-1h:+1h")
    before = snapshot(transfer)
    r = run("cosign", str(transfer), "--sign", str(wrong), "--trust", str(trust))
    assert r.exit_code == 2, r.output
    assert "is not trusted by" in r.stderr
    assert snapshot(transfer) == before
    dave = generate_key(tmp_path, "dave", "ed25519")
    good = certify(ca, dave, key_id="dave", principals=["dave@plant-a"], validity="-1h:+1h")
    r = run("cosign", str(transfer), "--sign", str(good), "--trust", str(trust))
    assert r.exit_code == 0, r.output
    assert run("verify", str(transfer), "--trust", str(trust), "--threshold", "2").exit_code == 0


def test_encrypted_key_passphrase_from_env(
    transfer: Path, keys: BundleKeys, tmp_path: Path
) -> None:
    secret = os.urandom(12).hex()
    kp = write_encrypted_key(tmp_path, "carol", passphrase=secret.encode())
    allowed = tmp_path / "allowed"
    allowed.write_text(
        keys.allowed_signers.read_text() + "carol@plant-a " + kp.public.read_text(),
        encoding="utf-8",
    )
    args = ["cosign", str(transfer), "--sign", str(kp.private), "--trust", str(allowed)]
    r = run(*args, env={"GAPFERRY_SIGN_PASSPHRASE": "wrong"})
    assert r.exit_code == 2, r.output
    assert secret not in r.output
    assert sig_files(transfer) == ["manifest.json.sig"]
    r = run(*args, env={"GAPFERRY_SIGN_PASSPHRASE": secret})
    assert r.exit_code == 0, r.output
    assert secret not in r.output
    assert run("verify", str(transfer), "--trust", str(allowed), "--threshold", "2").exit_code == 0


def test_usage_errors(tmp_path: Path, keys: BundleKeys, transfer: Path) -> None:
    r = run("cosign", str(tmp_path / "empty"), "--sign", "x", "--trust", str(keys.allowed_signers))
    assert r.exit_code == 2
    (tmp_path / "empty").mkdir()
    r = run("cosign", str(tmp_path / "empty"), "--sign", "x", "--trust", str(keys.allowed_signers))
    assert r.exit_code == 2
    assert "no bundle folder found" in r.stderr
    bad_trust = tmp_path / "bad_trust"
    bad_trust.write_text("this is not an allowed_signers line\n", encoding="utf-8")
    r = run("cosign", str(transfer), "--sign", str(keys.b.private), "--trust", str(bad_trust))
    assert r.exit_code == 2, r.output
    assert sig_files(transfer) == ["manifest.json.sig"]


def test_help_has_examples_and_exit_codes() -> None:
    out = run("cosign", "--help").output
    assert "gapferry cosign /media/stick --sign" in out
    assert "Exit codes:" in out
    assert "already signed by this" in out
