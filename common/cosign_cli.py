"""`gapferry cosign`: add one more signature to a complete bundle, for m-of-n trust (issue 2).

A thin shell (STYLE practice 5) over `gapferry.common.bundle.cosign`, which verifies the bundle
under the trust policy first and then writes the next ``manifest.json.sig.<n>``; the manifest
and the completion marker are never touched (bundle_spec/SPEC.md section 6.3).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import click
from gapferry.common.atomic import fsync_dir
from gapferry.common.bundle import cosign as cosign_bundle
from gapferry.common.bundle import find_bundles, namespace_for, open_bundle
from gapferry.common.bundle.layout import kind_of_dir_name
from gapferry.common.cliutil import (
    emit_json,
    handle_errors,
    json_option,
    load_trust_policy,
    trust_options,
)
from gapferry.common.errors import UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.signers import Signer, load_signer
from gapferry.common.trust import TrustPolicy, evaluate

__all__ = [
    "PASSPHRASE_ENV",
    "cosign",
    "find_one_bundle",
    "refuse_untrusted_signer",
    "signer_passphrase",
]

#: Passphrase of an encrypted signing key, as for `gapferry pack` (never an argument).
PASSPHRASE_ENV = "GAPFERRY_SIGN_PASSPHRASE"  # noqa: S105 - a variable name, not a secret


def signer_passphrase() -> bytes:
    """The signing key's passphrase: from `PASSPHRASE_ENV`, else a hidden prompt on stderr
    (never a command-line argument, TEAM.md security rules)."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value.encode()
    return str(click.prompt("passphrase for the signing key", hide_input=True, err=True)).encode()


def find_one_bundle(path: Path) -> Path:
    """`path` itself when it is a bundle folder, else the one bundle on the medium at `path`.

    Raises:
        UsageProblem: ``no-bundle``, ``several-bundles``.
    """
    if kind_of_dir_name(path.name) is not None:
        return path
    found = find_bundles(path)
    if not found:
        raise UsageProblem(
            f"no bundle folder found in {path} (looked for gapferry/transfer-* and result-*)",
            remedy="pass the bundle folder itself, or the root of a medium holding one bundle",
            code="no-bundle",
        )
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise UsageProblem(
            f"{path} holds {len(found)} bundles: {names}",
            remedy="pass the one to co-sign, e.g. " + str(found[-1]),
            code="several-bundles",
        )
    return found[0]


def _untrusted(fingerprint: str, namespace: str, trust_file: Path) -> UsageProblem:
    return UsageProblem(
        f"your key {fingerprint} is not trusted by {trust_file} for {namespace}",
        remedy="readers refuse a bundle with any untrusted signature (SPEC 6.4), so this one "
        "would spoil the bundle; have your key added to the allowed_signers file, or sign with "
        "a key it lists",
        code="untrusted-cosigner",
    )


def refuse_untrusted_signer(
    signer: Signer, policy: TrustPolicy, *, namespace: str, trust_file: Path
) -> None:
    """Refuse before signing when `signer`'s key is plainly not in `policy` for `namespace`.
    With ``cert-authority`` lines the signature itself must be checked (after signing).

    Raises:
        UsageProblem: ``untrusted-cosigner``.
    """
    if any(line.cert_authority for line in policy.signers):
        return
    key = signer.public_key
    if not any(line.key == key and line.allows_namespace(namespace) for line in policy.signers):
        raise _untrusted(key.fingerprint, namespace, trust_file)


@click.command(name="cosign")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--sign",
    "sign_key",
    required=True,
    help="Your signing key: a private key file, PATH.pub (ssh-keygen/agent) or agent:PATH.pub.",
)
@trust_options(
    trust_help="OpenSSH allowed_signers file the bundle must already satisfy before you sign it.",
    threshold_help="Distinct trusted signatures the bundle must already have before yours.",
    must_exist=True,
)
@json_option
@handle_errors
def cosign(
    bundle: Path, sign_key: str, trust_file: Path, threshold: int, json_output: bool
) -> None:
    """Verify BUNDLE, then add your signature to it (co-signing, m-of-n trust).

    BUNDLE is a bundle folder (gapferry/transfer-... or gapferry/result-...) or the root of a
    medium holding exactly one bundle. The bundle is verified in full against --trust first
    (nobody co-signs what they could not verify); then one signature file, the next free
    manifest.json.sig.N, is added. The manifest and the completion marker are not touched.
    A key that has signed already cannot sign again (it would not count twice), and a key that
    --trust does not list cannot sign (readers refuse a bundle with any untrusted signature).

    The passphrase of an encrypted key comes from GAPFERRY_SIGN_PASSPHRASE or a prompt; never
    pass it as an argument.

    \b
    Examples:
      gapferry cosign /media/stick --sign ~/.ssh/id_ed25519 --trust packers_allowed_signers
      gapferry cosign /media/stick/gapferry/transfer-plant-a-00000042-1a2b3c4d \\
          --sign ~/.ssh/id_ecdsa.pub --trust packers_allowed_signers --json
      gapferry verify /media/stick --trust packers_allowed_signers --threshold 2

    \b
    Exit codes:
      0  signed
      1  invalid: the bundle was rejected (bad or untrusted signature, expired, altered file)
      2  usage: bad options, not a bundle, unusable key or trust file, already signed by this
         key, your key not trusted by --trust
      3  incomplete or unreadable: no completion marker, a file missing or truncated
      4  environment: the signature could not be written (medium full or read-only)
    """
    now = datetime.now(tz=UTC)
    policy = load_trust_policy(trust_file, threshold=threshold)
    path = find_one_bundle(bundle)
    kind = kind_of_dir_name(path.name)
    if kind is None:  # pragma: no cover - find_one_bundle returns bundle folders only
        raise AssertionError(f"not a bundle folder: {path}")
    namespace = namespace_for(kind)
    signer = load_signer(sign_key, passphrase=signer_passphrase)
    fingerprint = signer.public_key.fingerprint
    refuse_untrusted_signer(signer, policy, namespace=namespace, trust_file=trust_file)
    written = cosign_bundle(path, signer, policy=policy, now=now, limits=DEFAULT_LIMITS)
    any_one = TrustPolicy(signers=policy.signers, threshold=1)
    mine = evaluate(
        (path / "manifest.json").read_bytes(),
        [written.read_bytes()],
        policy=any_one,
        namespace=namespace,
        now=now,
        limits=DEFAULT_LIMITS,
    )
    if not mine.satisfied:
        # A certificate the CA lines do not accept: take our own file back (SPEC 6.4).
        written.unlink()
        fsync_dir(path)
        raise _untrusted(fingerprint, namespace, trust_file)
    # Say where the bundle stands now: signatures only, the files were checked just before.
    after = open_bundle(path, policy=any_one, now=now, limits=DEFAULT_LIMITS, check_files=False)
    trust = after.verified.trust
    if json_output:
        emit_json(
            {
                "ok": True,
                "bundle": str(path),
                "signature_file": written.name,
                "namespace": namespace,
                "fingerprint": fingerprint,
                "trust": trust.to_json(),
            }
        )
        return
    click.echo(f"signed {path.name}: wrote {written.name} ({fingerprint})")
    click.echo(f"the bundle now has {trust.distinct_trusted} distinct trusted signature(s)")
