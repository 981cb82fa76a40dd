"""`gapferry site`: site files (issue 5)."""

from __future__ import annotations

from pathlib import Path

import click
from gapferry.common.cliutil import emit_json, handle_errors
from gapferry.connected.cli._common import help_footer, json_option
from gapferry.connected.site import load_site, write_example

__all__ = ["site"]

_SITE_EXIT = (
    "Exit codes: 0 done; 2 the site file is missing or invalid (the message says where and what "
    "to fix) or exists already (--force); 4 it cannot be written."
)


@click.group()
def site() -> None:
    """Site files: the devices of one air-gapped site, as the connected side knows them."""


@help_footer(_SITE_EXIT)
@site.command("init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@json_option
@handle_errors
def init(path: Path, force: bool, json_output: bool) -> None:
    """Write a commented example site file to PATH.

    \b
    Example:
      gapferry site init plant-north.toml
      $EDITOR plant-north.toml
      gapferry site check plant-north.toml
    """
    write_example(path, force=force)
    if json_output:
        emit_json({"ok": True, "path": str(path)})
    else:
        click.echo(f"wrote {path}; edit it, then run `gapferry site check {path}`")


@help_footer(_SITE_EXIT)
@site.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@handle_errors
def check(path: Path, json_output: bool) -> None:
    """Check a site file and list its devices.

    \b
    Example:
      gapferry site check plant-north.toml --json
    """
    s = load_site(path)
    rows = [
        {
            "device": d.name,
            "device_type": d.device_type,
            "artifact_name": d.artifact_name,
            "identity": d.identity,
        }
        for d in s.devices
    ]
    if json_output:
        emit_json({"ok": True, "site": s.name, "mode": str(s.mode), "devices": rows})
        return
    click.echo(f"site {s.name} ({s.mode}), {len(rows)} device(s)")
    for r in rows:
        click.echo(f"  {r['device']}  {r['device_type']}  {r['artifact_name']}")
