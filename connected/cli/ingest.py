"""`gapferry ingest`: result bundles back to the Mender Server."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import click
from gapferry.common.cliutil import emit_json, handle_errors
from gapferry.common.media.cli_support import AutoMedium, MediumPath, resolve_medium, wait_option
from gapferry.common.trust import TrustPolicy
from gapferry.connected import ingest as ops
from gapferry.connected.cli._common import (
    ENV_HELP,
    json_option,
    open_session,
    print_table,
    state_option,
)

__all__ = ["ingest"]


@click.command()
@click.argument("media", type=MediumPath(click.Path(exists=True, file_okay=False, path_type=Path)))
@wait_option
@click.option(
    "--trust",
    "trust_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="allowed_signers file with the appliers' keys.",
)
@click.option(
    "--threshold",
    default=1,
    show_default=True,
    type=click.IntRange(1, 16),
    help="Distinct trusted signatures a result bundle needs.",
)
@click.option(
    "--jobs",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Devices reported at once (bounded concurrency towards the server; each device's "
    "reports stay in order).",
)
@state_option
@json_option
@handle_errors
def ingest(
    *,
    media: Path | AutoMedium,
    wait: bool,
    trust_file: Path,
    threshold: int,
    jobs: int,
    state_dir: Path | None,
    json_output: bool,
) -> None:
    """Verify each result bundle on MEDIA and report its outcomes to the Mender Server.

    MEDIA is the medium's folder, or auto: the one mounted removable medium (asks which when
    there are several; needs udev); with --wait, waits for a stick to be inserted.

    Per device: the log on failure, the final status only, inventory; the ledger records the
    device's new artifact. A bundle ingested before is not reported again. A deployment aborted
    on the server meanwhile is recorded and shown, not fatal.

    \b
    Examples:
      gapferry ingest /media/stick --trust ~/.config/gapferry/appliers_allowed_signers
      gapferry ingest auto --wait --trust ~/.config/gapferry/appliers_allowed_signers
    \b
    Exit codes: 0 all reported, 1 a bundle was rejected or reports are still owed, 2 usage
    (e.g. auto without udev, or several sticks and no terminal to ask), 4 environment (e.g. no
    stick found, server unreachable).
    """
    folder = resolve_medium(media, wait=wait, how="gapferry ingest /media/stick")
    policy = TrustPolicy.from_file(trust_file, threshold=threshold)
    with open_session(state_dir, command="ingest", concurrency=jobs, needs_server=True) as session:
        report = ops.ingest(session, folder, trust=policy, now=time.time())
    rows = [r.to_dict() for r in report.rows]
    if json_output:
        emit_json(
            {
                "ok": report.ok,
                "reports_sent": report.reports_sent,
                "reports_failed": report.reports_failed,
                "results": rows,
            }
        )
    else:
        print_table(rows, ("bundle", "device", "result", "action", "ok", "detail"), title="ingest")
        for f in report.reports_failed:
            click.echo(f"report still owed (run ingest again): {f}", err=True)
    if not report.ok:
        raise SystemExit(1)


ingest.help = inspect.cleandoc(ingest.help or "") + "\n\n" + ENV_HELP
