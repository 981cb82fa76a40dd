"""`gapferry pack`: the site's deployments into a signed transfer bundle (seeds phases 4-6)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import click
from gapferry.common.cliutil import emit_json, handle_errors
from gapferry.common.media.cli_support import AutoMedium, MediumPath, resolve_medium, wait_option
from gapferry.common.signers import load_signer
from gapferry.connected import pack as ops
from gapferry.connected.cli._common import (
    ENV_HELP,
    json_option,
    open_session,
    print_table,
    state_option,
)
from gapferry.connected.site import load_site

__all__ = ["pack"]


def _signer_passphrase() -> bytes:
    value = os.environ.get("GAPFERRY_SIGN_PASSPHRASE")
    if value:
        return value.encode()
    return str(click.prompt("passphrase for the signing key", hide_input=True, err=True)).encode()


@click.command()
@click.option(
    "--site",
    "site_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The site file.",
)
@click.option(
    "--to",
    "media",
    required=True,
    type=MediumPath(click.Path(exists=True, file_okay=False, path_type=Path)),
    metavar="FOLDER|auto",
    help="The mounted removable medium (its root folder), or auto: the one mounted removable "
    "medium (asks which when there are several; needs udev).",
)
@wait_option
@click.option(
    "--sign",
    "sign_key",
    required=True,
    help="Signing key: a private key file, PATH.pub (ssh-keygen/agent) or agent:PATH.pub.",
)
@click.option(
    "--artifact-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Verify each artifact's signature with this PEM public key.",
)
@click.option("--device", "device_name", default=None, help="Only this device.")
@click.option(
    "--repack",
    is_flag=True,
    help="Pack deployments already travelling in an unreturned bundle again.",
)
@click.option(
    "--jobs",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Devices handled at once (bounded concurrency towards the server).",
)
@click.option(
    "--allow-download-host",
    multiple=True,
    help="Accept artifact links to this storage host (default: the server's host only).",
)
@state_option
@json_option
@handle_errors
def pack(
    *,
    site_file: Path,
    media: Path | AutoMedium,
    wait: bool,
    sign_key: str,
    artifact_key: Path | None,
    device_name: str | None,
    repack: bool,
    jobs: int,
    allow_download_host: tuple[str, ...],
    state_dir: Path | None,
    json_output: bool,
) -> None:
    """Fetch the site's pending deployments and write one signed transfer bundle to the medium.

    Per device: authenticate, report inventory (only when it changed since the server last
    confirmed it), poll for a deployment, download each artifact once; then write the bundle,
    read it back and verify it, and report `installing` (the deployment stays `pending` on the
    server until then). Safe to interrupt and run again: nothing is reported twice.

    \b
    Examples:
      gapferry pack --site plant-north.toml --to /media/stick --sign ~/.ssh/id_ed25519
      gapferry pack --site plant-north.toml --to auto --wait --sign ~/.ssh/id_ed25519
      gapferry pack --site plant-north.toml --to /media/stick --sign ~/.ssh/ops.pub \\
          --artifact-key release-signing.pub.pem --json
    \b
    Exit codes: 0 packed (or nothing to do), 1 some device failed, 2 usage (e.g. --to auto
    without udev, or several sticks and no terminal to ask), 4 server/media problem (e.g. no
    stick found).
    """
    folder = resolve_medium(media, wait=wait, how="--to /media/stick")
    s = load_site(site_file)
    signer = load_signer(sign_key, passphrase=_signer_passphrase)
    key = artifact_key.read_bytes() if artifact_key else None
    with open_session(
        state_dir,
        command="pack",
        concurrency=jobs,
        allowed_download_hosts=allow_download_host,
        needs_server=True,
    ) as session:
        report = ops.pack(
            session,
            s,
            media=folder,
            signer=signer,
            artifact_key=key,
            repack=repack,
            device=device_name,
        )
    rows = [r.to_dict() for r in report.rows]
    if json_output:
        emit_json(
            {
                "ok": report.ok,
                "site": report.site,
                "bundle_id": report.bundle_id,
                "bundle_seq": report.bundle_seq,
                "bundle_path": report.bundle_path,
                "reports_sent": report.reports_sent,
                "reports_failed": report.reports_failed,
                "results": rows,
            }
        )
    else:
        print_table(
            rows,
            ("device", "action", "ok", "deployment_id", "artifact_name", "detail"),
            title=f"pack: site {report.site}",
        )
        if report.bundle_path:
            click.echo(f"bundle #{report.bundle_seq} written and verified: {report.bundle_path}")
        for f in report.reports_failed:
            click.echo(f"report still owed (run pack again): {f}", err=True)
    if not report.ok:
        raise SystemExit(1)


pack.help = inspect.cleandoc(pack.help or "") + "\n\n" + ENV_HELP
