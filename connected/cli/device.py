"""`gapferry device`: device identities for a site (seeds phases 1, 2, 3 and 7)."""

from __future__ import annotations

from pathlib import Path

import click
from gapferry.common.cliutil import emit_json, handle_errors
from gapferry.connected import devices as ops
from gapferry.connected.cli._common import (
    ENV_HELP,
    EXIT_HELP,
    finish,
    help_footer,
    json_option,
    open_session,
    state_option,
)
from gapferry.connected.keystore import KeyAlgorithm
from gapferry.connected.site import load_site

__all__ = ["device"]

_COLUMNS = ("device", "action", "ok", "device_id", "detail")


def _site_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--device", "device_name", default=None, help="Only this device.")(f)
    f = click.option(
        "--site",
        "site_file",
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="The site file (see `gapferry site init`).",
    )(f)
    return state_option(json_option(f))


@click.group()
def device() -> None:
    """Device identities: keys, preauthorization, authentication, status, cleanup.

    \b
    A static site does keygen and preauth once; a rotating site does them per visit and ends
    the visit with cleanup. `gapferry pack` performs whatever is still missing by itself.
    """


@help_footer(EXIT_HELP, ENV_HELP)
@device.command("keygen")
@_site_options
@click.option(
    "--algorithm",
    type=click.Choice([a.value for a in KeyAlgorithm]),
    default=KeyAlgorithm.RSA3072.value,
    show_default=True,
    help="Key type (RSA 3072 is what the Mender client uses).",
)
@click.option(
    "--encrypt",
    is_flag=True,
    help="Encrypt keys with the passphrase in GAPFERRY_KEY_PASSPHRASE, or prompt for one.",
)
@handle_errors
def keygen(
    *,
    site_file: Path,
    device_name: str | None,
    state_dir: Path | None,
    json_output: bool,
    algorithm: str,
    encrypt: bool,
) -> None:
    """Create a key pair per device (existing keys are kept). Private keys are 0600.

    \b
    Examples:
      gapferry device keygen --site plant-north.toml
      gapferry device keygen --site plant-north.toml --device pump-01 --algorithm ed25519
      GAPFERRY_KEY_PASSPHRASE=... gapferry device keygen --site plant-north.toml --encrypt
    """
    s = load_site(site_file)
    passphrase: bytes | None = None
    if encrypt:
        from gapferry.connected.session import passphrase_from_env  # noqa: PLC0415

        passphrase = (
            passphrase_from_env("")
            or click.prompt(
                "passphrase for the device keys", hide_input=True, confirmation_prompt=True
            ).encode()
        )
    with open_session(state_dir, command="device keygen") as session:
        rows = ops.keygen(
            session,
            s,
            s.select(device_name),
            algorithm=KeyAlgorithm(algorithm),
            passphrase=passphrase,
        )
    finish([r.to_dict() for r in rows], _COLUMNS, json_output=json_output, title="keygen")


@help_footer(EXIT_HELP, ENV_HELP)
@device.command("preauth")
@_site_options
@handle_errors
def preauth(
    site_file: Path, device_name: str | None, state_dir: Path | None, json_output: bool
) -> None:
    """Preauthorize each device's identity and public key (force: true; safe to repeat).

    \b
    Example:
      gapferry device preauth --site plant-north.toml
    """
    s = load_site(site_file)
    with open_session(state_dir, command="device preauth", needs_server=True) as session:
        rows = ops.preauthorize(session, s, s.select(device_name))
    finish([r.to_dict() for r in rows], _COLUMNS, json_output=json_output, title="preauth")


@help_footer(EXIT_HELP, ENV_HELP)
@device.command("auth")
@_site_options
@handle_errors
def auth(
    site_file: Path, device_name: str | None, state_dir: Path | None, json_output: bool
) -> None:
    """Authenticate as each device (signed auth request); the token is never shown.

    Beside an unencrypted device key the token is kept (mode 0600, in the state folder's key
    store) for later commands of the same server, identity and key, until shortly before it
    expires; it is never written to the ledger, logs or output.

    \b
    Example:
      gapferry device auth --site plant-north.toml --device pump-01
    """
    s = load_site(site_file)
    with open_session(state_dir, command="device auth", needs_server=True) as session:
        rows = ops.authenticate(session, s, s.select(device_name))
    finish([r.to_dict() for r in rows], _COLUMNS, json_output=json_output, title="auth")


@help_footer(EXIT_HELP, ENV_HELP)
@device.command("status")
@_site_options
@handle_errors
def status(
    site_file: Path, device_name: str | None, state_dir: Path | None, json_output: bool
) -> None:
    """Show each device's state in the ledger beside the server's view.

    \b
    Example:
      gapferry device status --site plant-north.toml --json
    """
    s = load_site(site_file)
    with open_session(state_dir, command="device status") as session:
        rows = ops.device_status(session, s, s.select(device_name))
    finish([r.to_dict() for r in rows], _COLUMNS, json_output=json_output, title="status")


@help_footer(EXIT_HELP, ENV_HELP)
@device.command("cleanup")
@_site_options
@click.option(
    "--decommission", is_flag=True, help="Remove the device record entirely (device retired)."
)
@click.option("--force", is_flag=True, help="Even if a deployment is still travelling.")
@handle_errors
def cleanup(
    *,
    site_file: Path,
    device_name: str | None,
    state_dir: Path | None,
    json_output: bool,
    decommission: bool,
    force: bool,
) -> None:
    """Remove gapferry's auth set per device; in rotating mode also delete the local keys.

    \b
    Examples:
      gapferry device cleanup --site plant-north.toml
      gapferry device cleanup --site plant-north.toml --device pump-07 --decommission
    """
    s = load_site(site_file)
    with open_session(state_dir, command="device cleanup", needs_server=True) as session:
        rows = ops.cleanup(
            session, s, s.select(device_name), decommission=decommission, force=force
        )
    finish([r.to_dict() for r in rows], _COLUMNS, json_output=json_output, title="cleanup")


@help_footer(EXIT_HELP, ENV_HELP)
@device.command("pubkey")
@_site_options
@handle_errors
def pubkey(
    site_file: Path, device_name: str | None, state_dir: Path | None, json_output: bool
) -> None:
    """Print each device's public key (PEM), e.g. to preauthorize it in the Mender UI.

    \b
    Example:
      gapferry device pubkey --site plant-north.toml --device pump-01
    """
    s = load_site(site_file)
    with open_session(state_dir, command="device pubkey") as session:
        ks = session.keystore(s.name)
        keys = {d.name: ks.public_pem(d.name) for d in s.select(device_name)}
    if json_output:
        emit_json({"ok": True, "public_keys": keys})
        return
    for name, pem in keys.items():
        click.echo(f"# {name}")
        click.echo(pem, nl=False)
