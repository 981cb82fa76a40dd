"""`gapferry audit`: one report of every check on a transfer bundle and its results.

A thin shell (STYLE practice 5) over `gapferry.common.audit.audit.run_audit`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from gapferry.common.atomic import atomic_write_bytes
from gapferry.common.audit.audit import run_audit
from gapferry.common.audit.render_html import render_html
from gapferry.common.audit.render_text import render_json, render_text
from gapferry.common.cliutil import handle_errors, load_trust_policy, trust_options
from gapferry.common.errors import EnvironmentFailure, UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS

__all__ = ["audit"]

_ARTIFACT_KEY_MAX = 64 * 1024


def _read_artifact_key(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_ARTIFACT_KEY_MAX + 1)
    except OSError as e:
        raise UsageProblem(
            f"cannot read the artifact key {path}: {e.strerror}",
            remedy="pass the PEM public key that signs your Mender Artifacts",
            code="artifact-key-missing",
        ) from e
    if len(data) > _ARTIFACT_KEY_MAX or b"PUBLIC KEY-----" not in data:
        raise UsageProblem(
            f"{path} is not a PEM public key",
            remedy="pass the PEM public key (BEGIN PUBLIC KEY) that signs your Mender Artifacts",
            code="bad-artifact-key",
        )
    return data


def _check_report_folder(path: Path) -> None:
    """Refuse an --html path whose folder does not exist before the audit runs, not after."""
    folder = path.parent
    if not folder.is_dir():
        raise UsageProblem(
            f"cannot write the HTML report {path}: the folder {folder} does not exist",
            remedy="create the folder first, or pass --html a path in an existing folder",
            code="report-folder-missing",
        )


def _write_report(path: Path, page: str) -> None:
    try:
        atomic_write_bytes(path, page.encode("utf-8"))
    except OSError as e:
        raise EnvironmentFailure(
            f"cannot write the HTML report {path}: {e.strerror or e}",
            remedy="pass --html a path on a writable file system with free space",
            code="report-not-written",
        ) from e


@click.command()
@click.argument("transfer", type=click.Path(path_type=Path))
@click.argument("results", nargs=-1, type=click.Path(path_type=Path))
@trust_options(
    trust_help="OpenSSH allowed_signers file of the signers you trust.",
    threshold_help="Distinct trusted keys required.",
    dest="trust",
)
@click.option(
    "--artifact-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="PEM public key: verify each artifact's own Mender signature with it.",
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a self-contained HTML report here.",
)
@click.option("--json", "json_output", is_flag=True, help="Print the report as JSON.")
@handle_errors
def audit(  # noqa: PLR0917 - click passes one argument per option
    transfer: Path,
    results: tuple[Path, ...],
    trust: Path,
    threshold: int,
    artifact_key: Path | None,
    html_out: Path | None,
    json_output: bool,
) -> None:
    """Audit TRANSFER and the RESULT bundles that answer it; report every check.

    Checks each signature (signer, key fingerprint, certificate), the threshold, validity and
    expiry, every file's sha256, each artifact's Mender signature (with --artifact-key), the
    custody chains, each device's outcome and timeline, and the discrepancies between the
    bundles. RESULT may also be a medium holding result bundles. TRANSFER and RESULT may be
    single-file bundles (.tar): each is extracted into a temporary folder and audited there.

    \b
    Examples:
      gapferry audit /media/stick/gapferry/transfer-plant-a-00000042-1a2b3c4d \\
          /media/stick/gapferry/result-plant-a-00000042-9f8e7d6c --trust allowed_signers
      gapferry audit transfer.tar /media/returned-stick --trust allowed_signers \\
          --artifact-key artifact-signing.pub.pem --html audit-plant-a-42.html
      gapferry audit transfer.tar result.tar --trust allowed_signers --json | jq .verdict

    \b
    Exit codes:
      0  every check passed
      1  a check failed or a discrepancy was found
      2  usage: bad options, TRANSFER is not a transfer bundle, unreadable trust or key file
      3  evidence incomplete or unreadable (no completion marker, a file missing or truncated)
      4  environment: the HTML report could not be written
    """
    policy = load_trust_policy(trust, threshold=threshold)
    if html_out is not None:
        _check_report_folder(html_out)
    key = _read_artifact_key(artifact_key) if artifact_key is not None else None
    report = run_audit(
        transfer,
        results,
        policy=policy,
        now=datetime.now(tz=UTC),
        limits=DEFAULT_LIMITS,
        trust_source=str(trust),
        artifact_key=key,
    )
    if html_out is not None:
        _write_report(html_out, render_html(report))
    if json_output:
        sys.stdout.buffer.write(render_json(report))
        sys.stdout.flush()
    else:
        click.echo(render_text(report), nl=False)
        if html_out is not None:
            click.echo(f"HTML report: {html_out}")
    sys.exit(report.exit_code)
