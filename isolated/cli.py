"""``gapferry apply``: the technician's command (issue 6). A thin shell over
`gapferry.isolated.apply.apply_bundle` (STYLE practice 5).

Exit codes: 0 every selected device done (success or already installed); 1 some device failed or
was skipped (the result bundle is still written); 2 usage (bad options, devices file, unknown
device or method, MEDIA auto without udev or with several sticks and no terminal); 3 the bundle
was rejected (signature, trust threshold, expiry, clock, site, replay, changed media): nothing
was installed and no result was written; 4 environment (the result could not be written to the
medium, the state database failed, auto found no stick).
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
from datetime import datetime
from pathlib import Path

import click
from gapferry.common.cliutil import (
    EXIT_INCOMPLETE,
    emit_json,
    fail,
    handle_errors,
    trust_options,
)
from gapferry.common.errors import UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.media.cli_support import AutoMedium, MediumPath, resolve_medium, wait_option
from gapferry.common.signers import Signer, load_signer
from gapferry.common.trust import TrustPolicy
from gapferry.isolated.apply import ApplyResult, BundleRejected, apply_bundle
from gapferry.isolated.devices import load_devices_file
from gapferry.isolated.record import AppliedRecord, default_state_path
from gapferry.isolated.report import now_utc

__all__ = ["apply"]


class _Progress:
    """Calm per-device progress on stderr: steps, warnings, and transfer in 10 % steps."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self._lock = threading.Lock()
        self._shown: dict[str, int] = {}

    def __call__(self, device: str, kind: str, text: str) -> None:
        if self.quiet:
            return
        line: str | None = None
        if kind == "progress":
            done, total = (int(x) for x in text.split("/"))
            pct = 100 * done // total if total else 100
            step = pct // 10 * 10
            if step > self._shown.get(device, -1):
                self._shown[device] = step
                bar = "#" * (step // 5) + "." * (20 - step // 5)
                line = f"  [{device}] sending  [{bar}] {pct:3d}%  {done / 1e6:.1f}/{total / 1e6:.1f} MB"
        elif kind in ("error", "warning"):
            line = f"  [{device}] {kind}: {text}"
        elif kind == "step":
            line = f"  [{device}] {text}"
        if line:
            with self._lock:
                click.echo(line, err=True)


def _passphrase() -> bytes:
    if not sys.stdin.isatty():
        raise UsageProblem(
            "the signing key is protected by a passphrase and there is no terminal to ask",
            remedy="load the key into ssh-agent and pass --sign agent:KEY.pub",
            code="passphrase-required",
        )
    return click.prompt("Passphrase for the signing key", hide_input=True).encode()


def _verified(result: ApplyResult) -> str:
    """One line on what the bundle's verification found."""

    def when(t: datetime | None) -> str:
        return t.strftime("%Y-%m-%d %H:%M UTC") if t else "?"

    return (
        f"Verified: {result.trusted_signatures} trusted signature(s) (needed:"
        f" {result.threshold}); packed by {result.packer or '?'} at {when(result.created)};"
        f" valid until {when(result.expires)}."
    )


def _table(result: ApplyResult) -> str:
    rows = [("DEVICE", "METHOD", "TARGET", "ARTIFACT", "OUTCOME", "DETAIL")]
    reports = {r.name: r for r in result.reports}
    for p in result.plan:
        r = reports.get(p.name)
        where = p.target or "-"
        if result.dry_run or r is None:
            rows.append((p.name, p.method or "-", where, p.artifact, f"will {p.action}", p.note))
        else:
            after = f"now runs {r.artifact_name_after}" if r.artifact_name_after else ""
            detail = r.reason if r.outcome in ("failure", "skipped") and r.reason else after
            rows.append((p.name, p.method or "-", where, p.artifact, r.outcome, detail or ""))
    widths = [min(40, max(len(row[i]) for row in rows)) for i in range(5)]
    out = []
    for row in rows:
        detail = row[5] if len(row[5]) <= 100 else row[5][:97] + "..."
        out.append(
            "  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + detail
        )
    return "\n".join(line.rstrip() for line in out)


def _next_steps(result: ApplyResult) -> list[str]:
    if result.dry_run:
        return [
            "Nothing was changed (dry run). Run the same command without --dry-run to install.",
        ]
    lines = []
    retry = [r.name for r in result.reports if r.retry and r.code != "not-selected"]
    failed = [r.name for r in result.reports if r.outcome == "failure" and not r.retry]
    if result.result_path is not None:
        lines.append(f"Result bundle written: {result.result_path}")
        lines.append("Take the medium back to the connected side and run `gapferry ingest` there.")
    if failed:
        lines.append(f"Failed for good (reported as failed deployments): {', '.join(failed)}.")
    if retry:
        lines.append(
            f"Need attention on site: {', '.join(retry)}. Fix what the table says, then run the"
            " same command again: finished devices are not touched twice."
        )
    return lines


@click.command("apply")
@click.argument("media", type=MediumPath(click.Path(path_type=Path, exists=True)))
@wait_option
@trust_options(
    trust_help="OpenSSH allowed_signers file of the people who may pack bundles for this site.",
    threshold_help="Distinct trusted signatures needed.",
    dest="trust_path",
)
@click.option(
    "--devices",
    "devices_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Devices file (TOML): how to reach each device and how to install on it.",
)
@click.option(
    "--sign",
    "sign_ref",
    default=None,
    help="Your SSH key for the result bundle: a private key file, KEY.pub (agent or FIDO via"
    " ssh-keygen), or agent:KEY.pub. Required unless --dry-run.",
)
@click.option("--dry-run", is_flag=True, help="Verify and say what would happen; change nothing.")
@click.option("--only", multiple=True, metavar="NAME", help="Only these devices (repeatable).")
@click.option("--site", default=None, help="The site this laptop serves (else the devices file's).")
@click.option(
    "--state",
    "state_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Applied-bundle record (default: ~/.local/state/gapferry/applier.db).",
)
@click.option("--name", "applier_name", default=None, help="Your name in the result bundle.")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document.")
@handle_errors
def apply(  # noqa: PLR0917 - click passes options as parameters
    media: Path | AutoMedium,
    wait: bool,
    trust_path: Path,
    threshold: int,
    devices_path: Path,
    sign_ref: str | None,
    dry_run: bool,
    only: tuple[str, ...],
    site: str | None,
    state_path: Path | None,
    applier_name: str | None,
    json_output: bool,
) -> None:
    """Verify the transfer bundle on MEDIA, install it on the devices, write the signed result.

    MEDIA is the medium's folder (or the bundle's), or auto: the one mounted removable medium
    (asks which when there are several; needs udev); with --wait, waits for a stick to be
    inserted.

    \b
    Nothing is installed unless the bundle's signatures meet the trust policy, it has not
    expired, this computer's clock is plausible, it is for this site and not older than one
    already applied here. Each artifact's own signature (with the devices file's
    artifact_verify_key) and each device's type are checked before anything is sent.
    Running the same bundle again resumes: finished devices are not touched twice.

    \b
    Examples:
      gapferry apply /media/stick --trust packers_allowed_signers --devices devices.toml \\
          --sign ~/.ssh/id_ed25519 --dry-run
      gapferry apply auto --wait --trust packers_allowed_signers --devices devices.toml \\
          --sign ~/.ssh/id_ed25519

    \b
    Exit codes: 0 all done; 1 some device failed or was skipped (results still written);
    2 usage (e.g. auto without udev, or several sticks and no terminal to ask); 3 bundle
    rejected (nothing installed); 4 environment (e.g. no stick found, medium not writable).
    """
    folder = resolve_medium(media, wait=wait, how="gapferry apply /media/stick ...")
    devices = load_devices_file(devices_path)
    policy = TrustPolicy.from_file(trust_path, threshold=threshold)
    signers: list[Signer] = []
    if not dry_run:
        if not sign_ref:
            raise UsageProblem(
                "--sign is required to write the result bundle",
                remedy="pass --sign with your SSH key (or use --dry-run)",
                code="unsigned",
            )
        signers.append(load_signer(sign_ref, passphrase=_passphrase))
    name = applier_name or os.environ.get("USER") or getpass.getuser() or "technician"
    progress = _Progress(quiet=json_output)
    with AppliedRecord(state_path or default_state_path()) as record:
        try:
            result = apply_bundle(
                folder,
                policy=policy,
                devices=devices,
                record=record,
                signers=signers,
                now=now_utc(),
                limits=DEFAULT_LIMITS,
                applier_name=name,
                site=site,
                only=only,
                dry_run=dry_run,
                on_event=progress,
            )
        except BundleRejected as e:
            if not json_output:
                click.secho("The transfer bundle was rejected; nothing was installed.", err=True)
            fail(e, as_json=json_output, exit_code=EXIT_INCOMPLETE)
    if json_output:
        emit_json(
            {
                "ok": result.exit_code == 0,
                "dry_run": result.dry_run,
                "bundle": str(result.bundle),
                "site": result.site,
                "sequence": result.sequence,
                "bundle_id": result.bundle_id,
                "resumed": result.resumed,
                "packer": result.packer,
                "created": result.created.isoformat() if result.created else None,
                "expires": result.expires.isoformat() if result.expires else None,
                "trusted_signatures": result.trusted_signatures,
                "threshold": result.threshold,
                "state": str(result.state_path),
                "result_bundle": str(result.result_path) if result.result_path else None,
                "plan": [p.__dict__ for p in result.plan],
                "devices": [
                    {
                        "name": r.name,
                        "outcome": r.outcome,
                        "reason": r.reason,
                        "code": r.code,
                        "retry": r.retry,
                        "artifact_name_after": r.artifact_name_after,
                    }
                    for r in result.reports
                ],
            }
        )
    else:
        head = "Plan" if result.dry_run else "Result"
        click.echo(
            f"{head} for transfer bundle {result.bundle.name} (site {result.site}, sequence"
            f" {result.sequence}{', resumed' if result.resumed else ''}):"
        )
        click.echo(_verified(result))
        click.echo(_table(result))
        for line in _next_steps(result):
            click.echo(line)
    sys.exit(result.exit_code)
