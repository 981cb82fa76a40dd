"""The `gapferry` command: a root group whose subcommands are plugins.

Subcommands are registered as entry points in the ``gapferry.commands`` group (pyproject.toml) and
imported only when run or when help lists them. So this module imports no side of the air gap, and
`gapferry apply` on an isolated laptop never loads connected-side code or an HTTP client (ADR 0001).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import click

__all__ = ["SUMMARIES", "main"]

_GROUP = "gapferry.commands"


#: One-line summaries for `gapferry --help`, so that listing the commands imports none of them
#: (start-up time; issue 11). A test checks each equals its command's own short help.
SUMMARIES: dict[str, str] = {
    "apply": "Verify the transfer bundle on MEDIA, install it on the devices, write the signed result.",
    "artifact": "Mender Artifacts: inspect and verify, or write module-image artifacts.",
    "audit": "Audit TRANSFER and the RESULT bundles that answer it; report every check.",
    "cosign": "Verify BUNDLE, then add your signature to it (co-signing, m-of-n trust).",
    "custody": "Record and show who handled a bundle (signed events beside the signed manifest).",
    "demo": "Run the whole round trip on this machine with no server: the embedded Mender "
    "stand-in, a demo site, pack, apply across an isolated network namespace, ingest.",
    "device": "Device identities: keys, preauthorization, authentication, status, cleanup.",
    "ingest": "Verify each result bundle on MEDIA and report its outcomes to the Mender Server.",
    "media": "Removable media: list the sticks, check a folder, eject safely.",
    "pack": "Fetch the site's pending deployments and write one signed transfer bundle to the medium.",
    "release": "Artifacts and deployments on the Mender Server (management API, MENDER_API_TOKEN).",
    "selfcheck": "Pack, verify and read back a small signed bundle in a temporary folder.",
    "sim": "A local Mender Server stand-in for tests, demos and training (never for production).",
    "site": "Site files: the devices of one air-gapped site, as the connected side knows them.",
    "status": "Show deployments in flight from the ledger, beside what the server says.",
    "tar": "Verify BUNDLE, then write it as one uncompressed tar (the single-file form).",
    "untar": "Unpack the single-file form of a bundle onto a medium, verified, for apply or ingest.",
    "verify": "Verify a transfer or result bundle offline and print what was checked.",
}


def _shorten(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, marked with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 1)].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    try:
        eps = importlib.metadata.distribution("gapferry").entry_points
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return {}
    return {ep.name: ep for ep in eps if ep.group == _GROUP}


class _PluginGroup(click.Group):
    """A group that loads each subcommand from its entry point on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_entry_points()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        ep = _entry_points().get(cmd_name)
        if ep is None:
            return None
        try:
            loaded: Any = ep.load()
        except (ImportError, AttributeError) as e:
            # A command whose module is missing is a packaging bug; say so instead of a traceback.
            raise click.ClickException(
                f"command {cmd_name!r} is registered but cannot be loaded ({e}); reinstall gapferry"
            ) from e
        if not isinstance(loaded, click.Command):
            raise click.ClickException(f"entry point {ep.value!r} is not a click command")
        return loaded

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        for name in names:
            if name in SUMMARIES:
                rows.append((name, _shorten(SUMMARIES[name], limit)))
                continue
            try:
                cmd = self.get_command(ctx, name)
            except click.ClickException as e:
                rows.append((name, f"(unavailable: {e.message})"))
                continue
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _version() -> str:
    try:
        return importlib.metadata.version("gapferry")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "unknown"


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="gapferry")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks and debug detail on errors.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Carry Mender updates across an air gap on removable media, and the results back.

    \b
    Connected side (operator workstation, talks to the Mender Server):
      gapferry device keygen|preauth|auth|status|cleanup   device identities
      gapferry release upload|deploy                        artifacts and deployments
      gapferry pack --site site.toml --to /media/stick --sign ~/.ssh/id_ed25519
      gapferry ingest /media/stick --trust allowed_signers
    Isolated side (technician laptop, no Mender credentials):
      gapferry apply /media/stick --trust allowed_signers --devices devices.toml --sign KEY
    Anyone, offline:
      gapferry verify /media/stick/gapferry/transfer-... --trust allowed_signers
      gapferry cosign /media/stick --sign ~/.ssh/id_ed25519 --trust allowed_signers
      gapferry tar /media/stick --to /srv/diode/outbox --trust allowed_signers
      gapferry custody add /media/stick --event "received at gate 3" --sign ~/.ssh/id_ed25519
      gapferry audit TRANSFER [RESULT...] --trust allowed_signers --html report.html
      gapferry artifact inspect update.mender

    \b
    Exit codes: 0 ok, 1 invalid or failed, 2 usage, 3 incomplete, 4 environment
    (each command's --help says what they mean for it).

    \b
    Shell completion (bash; zsh_source and fish_source for zsh and fish):
      eval "$(_GAPFERRY_COMPLETE=bash_source gapferry)"
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
