"""`gapferry release`: upload artifacts and deploy them to a site (seeds phase 5)."""

from __future__ import annotations

from pathlib import Path

import click
from gapferry.common.cliutil import handle_errors
from gapferry.connected import release as ops
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

__all__ = ["release"]


@click.group()
def release() -> None:
    """Artifacts and deployments on the Mender Server (management API, MENDER_API_TOKEN)."""


@help_footer(EXIT_HELP, ENV_HELP)
@release.command("upload")
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--description", default="", help="Shown in the Mender UI.")
@click.option(
    "--artifact-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Verify the artifact's signature with this PEM public key before uploading.",
)
@state_option
@json_option
@handle_errors
def upload(
    *,
    artifact: Path,
    description: str,
    artifact_key: Path | None,
    state_dir: Path | None,
    json_output: bool,
) -> None:
    """Upload ARTIFACT (a no-op when the server already has the same artifact).

    \b
    Example:
      gapferry release upload pump-fw-1.1.mender --description "pump firmware 1.1"
    """
    key = artifact_key.read_bytes() if artifact_key else None
    with open_session(state_dir, command="release upload", needs_server=True) as session:
        res = ops.upload(session, artifact, description=description, verify_key=key)
    finish(
        [res.to_dict()],
        ("artifact_name", "device_types", "size", "action", "artifact_id"),
        json_output=json_output,
        title="upload",
    )


@help_footer(EXIT_HELP, ENV_HELP)
@release.command("deploy")
@click.option(
    "--site",
    "site_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The site file.",
)
@click.option("--artifact-name", required=True, help="The artifact name to deploy.")
@click.option("--device", "device_name", default=None, help="Only this device.")
@click.option("--name", default=None, help="Deployment name [default SITE-ARTIFACT].")
@state_option
@json_option
@handle_errors
def deploy(
    *,
    site_file: Path,
    artifact_name: str,
    device_name: str | None,
    name: str | None,
    state_dir: Path | None,
    json_output: bool,
) -> None:
    """Create a deployment of an uploaded artifact to the site's devices.

    \b
    Example:
      gapferry release deploy --site plant-north.toml --artifact-name pump-fw-1.1
    """
    s = load_site(site_file)
    with open_session(state_dir, command="release deploy", needs_server=True) as session:
        res = ops.deploy(session, s, s.select(device_name), artifact_name=artifact_name, name=name)
    finish(
        [res.to_dict()],
        ("deployment", "artifact_name", "action", "deployment_id"),
        json_output=json_output,
        title="deploy",
    )
