"""`gapferry custody add|show`: record and show the chain of custody of a bundle.

A thin shell (STYLE practice 5) over `gapferry.common.audit.custody`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import msgspec
from gapferry.common.audit.audit import software_version
from gapferry.common.audit.core import build_report, bundle_section
from gapferry.common.audit.custody import append_custody_event, default_custody_actor
from gapferry.common.audit.gather import gather_bundle
from gapferry.common.audit.render_text import custody_event_text, safe_text
from gapferry.common.cliutil import emit_json, handle_errors, load_trust_policy
from gapferry.common.cosign_cli import find_one_bundle, signer_passphrase
from gapferry.common.errors import IncompleteBundle, InvalidData
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.signers import load_signer

__all__ = ["custody"]


@click.group()
def custody() -> None:
    """Record and show who handled a bundle (signed events beside the signed manifest)."""


@custody.command("add")
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--event", "event", required=True, help="What happened, e.g. 'received at gate 3'.")
@click.option(
    "--sign",
    "sign",
    required=True,
    help="Your key: an OpenSSH private key file, PATH.pub (ssh-keygen/agent), agent:PATH.pub, "
    "or a FIDO key handle.",
)
@click.option("--actor", default=None, help="Your name as the site knows you (default: login).")
@click.option("--json", "json_output", is_flag=True, help="Print the event file as JSON.")
@handle_errors
def add(bundle: Path, event: str, sign: str, actor: str | None, json_output: bool) -> None:
    """Append a signed custody event to BUNDLE (the signed manifest is not touched).

    BUNDLE is a bundle folder (gapferry/transfer-... or gapferry/result-...) or the root of a
    medium holding exactly one bundle. The event (who, when, what) is signed with --sign in the
    namespace gapferry-custody-v1@gapferry and chained to the previous event; `gapferry audit`
    and `gapferry custody show` verify the chain. The passphrase of an encrypted key comes from
    GAPFERRY_SIGN_PASSPHRASE or a prompt; never pass it as an argument.

    \b
    Examples:
      gapferry custody add /media/stick --event "received at gate 3" --sign ~/.ssh/id_ed25519
      gapferry custody add /media/stick/gapferry/transfer-plant-a-00000042-1a2b3c4d \\
          --event "handed to the technician" --sign agent:$HOME/.ssh/id_ecdsa.pub --actor carol
      gapferry custody show /media/stick --trust custody_allowed_signers

    \b
    Exit codes:
      0  recorded
      1  the custody log is damaged (gaps, unexpected or linked files)
      2  usage: bad options, not a bundle, unusable key
      3  the bundle is incomplete (no valid completion marker)
      4  environment: the event could not be written (medium full or read-only)
    """
    signer = load_signer(sign, passphrase=signer_passphrase)
    path = append_custody_event(
        find_one_bundle(bundle),
        signer=signer,
        event=event,
        actor=default_custody_actor(actor),
        now=datetime.now(tz=UTC),
        limits=DEFAULT_LIMITS,
    )
    if json_output:
        emit_json({"ok": True, "event": msgspec.json.decode(path.read_bytes())})
    else:
        click.echo(f"recorded {path} (signed by {signer.public_key.fingerprint})")


@custody.command("show")
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--trust",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="OpenSSH allowed_signers file of the signers you trust.",
)
@click.option("--json", "json_output", is_flag=True, help="Print the chain as JSON.")
@handle_errors
def show(bundle: Path, trust: Path, json_output: bool) -> None:
    """Verify BUNDLE and show its chain of custody, event by event.

    BUNDLE is a bundle folder or the root of a medium holding exactly one bundle. The bundle
    itself must verify against --trust; then each event's signature (by a key --trust lists, in
    the namespace gapferry-custody-v1@gapferry), its place in the hash chain and its time.

    \b
    Examples:
      gapferry custody show /media/stick --trust allowed_signers
      gapferry custody show /media/stick/gapferry/result-plant-a-00000042-9f8e7d6c \\
          --trust allowed_signers --json | jq '.events[] | [.number, .actor, .event]'

    \b
    Exit codes:
      0  the bundle and every event verify
      1  the bundle or an event does not verify
      2  usage: bad options, not a bundle, unreadable trust file
      3  the bundle is incomplete (no valid completion marker)
    """
    policy = load_trust_policy(trust)
    now = datetime.now(tz=UTC)
    path = find_one_bundle(bundle)
    b = gather_bundle(path, policy=policy, now=now, limits=DEFAULT_LIMITS)
    if b.kind == "transfer":
        report = build_report(
            b,
            [],
            policy=policy,
            now=now,
            limits=DEFAULT_LIMITS,
            trust_source=str(trust),
            software=software_version(),
        )
        section = report.transfer
    else:
        section = bundle_section(b, policy, now, DEFAULT_LIMITS)
    if not section.verified:
        failed = [c for c in section.checks if c.status in ("fail", "incomplete")]
        family = IncompleteBundle if all(c.status == "incomplete" for c in failed) else InvalidData
        raise family(
            f"{path.name} does not verify: " + "; ".join(f"{c.name}: {c.summary}" for c in failed),
            remedy="custody of a bundle that does not verify means nothing; run gapferry audit",
            code="bundle-invalid",
        )
    custody_checks = [c for c in section.checks if c.name == "custody"]
    ok = all(e.status == "pass" for e in section.custody) and all(
        c.status != "fail" for c in custody_checks
    )
    if json_output:
        emit_json(
            {
                "ok": ok,
                "bundle": section.folder,
                "manifest_sha256": section.manifest_sha256,
                "events": msgspec.to_builtins(section.custody),
                "checks": msgspec.to_builtins(custody_checks),
            }
        )
    else:
        click.echo(
            f"{section.role} bundle {section.folder}: manifest sha256 {section.manifest_sha256}"
        )
        if not section.custody:
            click.echo("  no custody events")
        for e in section.custody:
            mark = "ok  " if e.status == "pass" else "FAIL"
            click.echo(f"  [{mark}] {e.number:4d} {custody_event_text(e)}")
            for p in e.problems:
                click.echo(f"         {safe_text(p)}")
        for c in custody_checks:
            if c.status == "fail":
                click.echo(f"  [FAIL] {safe_text(c.summary)}")
    sys.exit(0 if ok else 1)
