"""`gapferry status`: deployments in flight, per site and device, beside the server's view."""

from __future__ import annotations

from pathlib import Path

import click
from gapferry.common.cliutil import handle_errors
from gapferry.connected.cli._common import (
    ENV_HELP,
    EXIT_HELP,
    finish,
    help_footer,
    json_option,
    open_session,
    state_option,
)
from gapferry.connected.site import load_site
from gapferry.connected.status import in_flight

__all__ = ["status"]


@help_footer(EXIT_HELP, ENV_HELP)
@click.command()
@click.option(
    "--site",
    "site_name",
    default=None,
    help="Only this site: its name, or its site file (as for pack).",
)
@click.option("--all", "everything", is_flag=True, help="Also finished deployments.")
@click.option("--offline", is_flag=True, help="Do not ask the server.")
@state_option
@json_option
@handle_errors
def status(
    *,
    site_name: str | None,
    everything: bool,
    offline: bool,
    state_dir: Path | None,
    json_output: bool,
) -> None:
    """Show deployments in flight from the ledger, beside what the server says.

    \b
    Examples:
      gapferry status
      gapferry status --site plant-north --all --json
      gapferry status --site plant-north.toml
    """
    if site_name is not None and site_name.endswith(".toml"):
        # The same --site as every other connected command (a site file) works here too.
        site_name = load_site(Path(site_name)).name
    with open_session(state_dir, command="status") as session:
        rows = in_flight(session, site=site_name, everything=everything, ask_server=not offline)
    finish(
        [r.to_dict() for r in rows],
        (
            "site",
            "device",
            "deployment_id",
            "artifact_name",
            "state",
            "bundle",
            "server",
            "reports_owed",
            "outcome",
        ),
        json_output=json_output,
        title="in flight" if not everything else "deployments",
    )
