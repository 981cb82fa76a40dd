"""`gapferry verify`: check a transfer or result bundle offline and say what was checked.

A thin shell (STYLE practice 5) over `gapferry.common.bundle.open_bundle` / `from_tar`
(bundle_spec/SPEC.md section 8).
"""

from __future__ import annotations

import errno
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec
from gapferry.common.bundle import (
    OpenedBundle,
    ResultManifest,
    TransferManifest,
    find_bundles,
    from_tar,
    namespace_for,
    open_bundle,
)
from gapferry.common.bundle.layout import kind_of_dir_name
from gapferry.common.bundle.read import VERIFIED_ATTR
from gapferry.common.bundle.verify import VerifiedResult, VerifiedTransfer, trust_before_failure
from gapferry.common.cliutil import (
    EXIT_OK,
    emit_json,
    exit_code_for,
    fail,
    json_option,
    load_trust_policy,
    trust_options,
)
from gapferry.common.errors import (
    EnvironmentFailure,
    GapferryError,
    IncompleteBundle,
    UsageProblem,
)
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.media.progress import Progress
from gapferry.common.trust import SignatureCheck, TrustFailure, TrustPolicy, TrustResult

__all__ = ["verify", "verify_path"]


def verify_path(path: Path, *, policy: TrustPolicy, now: datetime) -> OpenedBundle:
    """Resolve PATH (bundle folder, single-file tar, or a medium holding exactly one bundle)
    and verify it. A tar is extracted into a temporary folder that is removed afterwards, so
    the returned bundle's files are gone (the manifest and checks remain).

    Raises:
        UsageProblem: ``not-a-bundle``, ``no-bundle``, ``several-bundles``.
        InvalidData, IncompleteBundle: whatever verification finds; ``unreadable``
            (IncompleteBundle) when the medium fails to read (SPEC 8: exit 3).
        EnvironmentFailure: ``no-space`` to unpack a single-file bundle.
    """
    try:
        return _verify_path(Path(path), policy=policy, now=now)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise EnvironmentFailure(
                f"no space to unpack {path} for checking: {e.strerror}",
                remedy="free space in the temporary folder (or point TMPDIR elsewhere), or verify "
                "the bundle folder instead of the single-file form",
                code="no-space",
            ) from e
        raise IncompleteBundle(
            f"cannot read {e.filename or path}: {e.strerror or e}",
            remedy="the medium may be failing or was removed; copy the bundle again onto a good "
            "medium and verify that copy",
            code="unreadable",
        ) from e


def _verify_path(p: Path, *, policy: TrustPolicy, now: datetime) -> OpenedBundle:
    if p.is_file():
        with tempfile.TemporaryDirectory(prefix="gapferry-verify-") as tmp:
            return from_tar(p, Path(tmp), policy=policy, now=now, limits=DEFAULT_LIMITS)
    if not p.exists():
        raise UsageProblem(f"{p} does not exist", remedy="check the path", code="not-a-bundle")
    if kind_of_dir_name(p.name) is None:
        found = find_bundles(p)
        if not found:
            raise UsageProblem(
                f"no bundle folder found in {p} (looked for gapferry/transfer-* and result-*)",
                remedy="pass the bundle folder itself, a single-file bundle, or the medium's root",
                code="no-bundle",
            )
        if len(found) > 1:
            names = ", ".join(f.name for f in found)
            raise UsageProblem(
                f"{p} holds {len(found)} bundles: {names}",
                remedy="pass the one to verify, e.g. " + str(found[-1]),
                code="several-bundles",
            )
        p = found[0]
    # Signatures and manifest first (fast), so that hashing the files can show progress against
    # a known total; the bar appears only on a terminal (gapferry.common.media.progress).
    first = open_bundle(p, policy=policy, now=now, limits=DEFAULT_LIMITS, check_files=False)
    total = sum(f.size for f in first.files)
    with Progress(f"checking {p.name}", total) as bar:
        return open_bundle(p, policy=policy, now=now, limits=DEFAULT_LIMITS, progress=bar.advance)


def _when(dt: datetime | None) -> str:
    return dt.isoformat() if dt is not None else "-"


def _check_lines(check: SignatureCheck, name: str | None) -> list[str]:
    label = f"{name}: " if name else ""
    lines = [f"  {label}{check.describe()}"]
    if check.valid_after or check.valid_before:
        lines.append(
            f"      allowed_signers validity: {_when(check.valid_after)} .. {_when(check.valid_before)}"
        )
    if check.certificate:
        c = check.certificate
        lines.append(
            "      certificate: key id {key_id!r}, serial {serial}, principals {principals}, "
            "valid {valid_after} .. {valid_before}, CA {ca_key_type} {ca_fingerprint}".format(
                **{
                    k: c.get(k, "-")
                    for k in (
                        "key_id",
                        "serial",
                        "principals",
                        "valid_after",
                        "valid_before",
                        "ca_key_type",
                        "ca_fingerprint",
                    )
                }
            )
        )
    return lines


def _trust_lines(
    result: TrustResult, names: tuple[str, ...] | None, namespace: str | None
) -> list[str]:
    ns = f" in namespace {namespace}" if namespace else ""
    out = [
        f"signatures{ns}: {result.distinct_trusted} distinct trusted key(s), "
        f"threshold {result.threshold} -> {'met' if result.satisfied else 'NOT met'}"
    ]
    for c in result.checks:
        name = names[c.index] if names and c.index < len(names) else None
        out += _check_lines(c, name)
    return out


def _manifest_lines(m: TransferManifest | ResultManifest, now: datetime) -> list[str]:
    if isinstance(m, TransferManifest):
        left = m.expires - now
        return [
            f"transfer bundle {m.bundle_id}: site {m.site}, sequence {m.sequence}",
            f"  packed by {m.packer.name} on {m.packer.host} ({m.packer.software})",
            f"  created {m.created.isoformat()}, expires {m.expires.isoformat()} "
            f"(in {left.days} days)",
            f"  {len(m.devices)} device(s), {len(m.artifacts)} artifact(s)",
        ] + [
            f"    {d.name} ({d.device_type}, {d.mender_device_id}): "
            f"{d.current_artifact_name} -> {d.artifact.name}, deployment {d.deployment.name}"
            for d in m.devices
        ]
    return [
        f"result bundle {m.result_id}: site {m.site}, sequence {m.sequence}",
        f"  receipt for transfer {m.receipt.transfer_bundle_id} "
        f"(manifest sha256 {m.receipt.transfer_manifest_sha256})",
        f"  applied by {m.applier.name} on {m.applier.host} ({m.applier.software}), "
        f"{m.started.isoformat()} .. {m.finished.isoformat()}",
    ] + [f"    {d.name}: {d.outcome}" + (f" ({d.reason})" if d.reason else "") for d in m.devices]


def _report(b: OpenedBundle, now: datetime) -> list[str]:
    v = b.verified
    lines = [
        f"bundle: {b.path.name} ({b.kind}, format version {v.manifest.format_version})",
        f"manifest.json: {len(v.raw)} bytes, sha256 {v.manifest_sha256} "
        "(completion marker matches)",
    ]
    lines += _trust_lines(v.trust, b.signature_files, namespace_for(b.kind))
    lines += _manifest_lines(v.manifest, now)
    lines.append(f"files: {len(b.files)} listed, all present, sizes and sha256 checked")
    lines += [f"  ok  {f.sha256}  {f.size:>12}  {f.path}" for f in b.files]
    if b.ignored:
        lines.append("skipped (operating-system litter): " + ", ".join(b.ignored))
    return lines


def _json(b: OpenedBundle) -> dict[str, Any]:
    v = b.verified
    return {
        "ok": True,
        "verdict": "valid",
        "kind": b.kind,
        "bundle": b.path.name,
        "format_version": v.manifest.format_version,
        "manifest_sha256": v.manifest_sha256,
        "namespace": namespace_for(b.kind),
        "trust": v.trust.to_json(),
        "signature_files": list(b.signature_files),
        "manifest": msgspec.to_builtins(v.manifest),
        "files": [f.to_json() for f in b.files],
        "ignored": list(b.ignored),
    }


@click.command(name="verify")
@click.argument("path", type=click.Path(path_type=Path))
@trust_options(
    trust_help="OpenSSH allowed_signers file naming who may sign bundles.",
    threshold_help="Distinct trusted keys that must have signed (m of n).",
)
@json_option
def verify(path: Path, trust_file: Path, threshold: int, json_output: bool) -> None:
    """Verify a transfer or result bundle offline and print what was checked.

    PATH is a bundle folder (gapferry/transfer-... or gapferry/result-...), a single-file
    bundle (.tar), or the root of a medium that holds exactly one bundle.

    \b
    Checks, in order: the completion marker; each signature (signer principal, key type,
    fingerprint, certificate, validity) against --trust; the threshold of distinct trusted
    keys; the manifest (format version, consistency, creation time, expiry); every file's
    size and sha256; logs within their limits.

    \b
    Exit codes:
      0  valid
      1  invalid: rejected (bad or untrusted signature, expired, altered file, ...)
      2  usage: bad options, PATH is not a bundle, the trust file is unreadable or malformed
      3  incomplete or unreadable: no completion marker, a file missing or truncated, a read
         error on the medium
      4  environment: no space to unpack a single-file bundle for checking

    \b
    Examples:
      gapferry verify /media/stick --trust ~/allowed_signers
      gapferry verify /media/stick/gapferry/transfer-plant-a-00000042-1a2b3c4d \\
          --trust allowed_signers --threshold 2
      gapferry verify bundle.tar --trust allowed_signers --json | jq .verdict
    """
    now = datetime.now(tz=UTC)
    try:
        policy = load_trust_policy(trust_file, threshold=threshold)
    except GapferryError as err:
        _fail(err, json_output=json_output)
    try:
        opened = verify_path(path, policy=policy, now=now)
    except GapferryError as err:
        _fail(err, json_output=json_output)
    if json_output:
        emit_json(_json(opened))
    else:
        for line in _report(opened, now):
            click.echo(line)
        click.secho("verdict: VALID", fg="green", bold=True)
    raise SystemExit(EXIT_OK)


def _fail(err: GapferryError, *, json_output: bool) -> NoReturn:
    if isinstance(err, IncompleteBundle):
        verdict = "incomplete"
    elif isinstance(err, UsageProblem):
        verdict = "usage"
    elif isinstance(err, EnvironmentFailure):
        verdict = "environment"  # nothing was decided about the bundle
    else:
        verdict = "invalid"
    # What was verified before the failure: the signatures' verdict (a trust failure, or a
    # manifest refused after its signatures were accepted), or the whole manifest.
    result = err.result if isinstance(err, TrustFailure) else trust_before_failure(err)
    before = getattr(err, VERIFIED_ATTR, None)
    if json_output:
        doc: dict[str, Any] = {"ok": False, "verdict": verdict, "error": err.to_json()}
        if result is not None:
            doc["trust"] = result.to_json()
        elif isinstance(before, VerifiedTransfer | VerifiedResult):
            doc["trust"] = before.trust.to_json()
            doc["manifest_sha256"] = before.manifest_sha256
        emit_json(doc)
        raise SystemExit(exit_code_for(err))
    if result is not None:
        for line in _trust_lines(result, None, None):
            click.echo(line)
        if not isinstance(err, TrustFailure):
            click.echo("manifest: refused after its signatures were accepted")
    elif isinstance(before, VerifiedTransfer | VerifiedResult):
        click.echo(f"manifest.json: sha256 {before.manifest_sha256}")
        for line in _trust_lines(before.trust, None, None):
            click.echo(line)
        click.echo("manifest: format, consistency and times checked")
    click.secho(f"verdict: {verdict.upper()} ({err.code})", fg="red", bold=True)
    fail(err)
