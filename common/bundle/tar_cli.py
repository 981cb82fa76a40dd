"""`gapferry tar`: verify a bundle, then write its single-file form (bundle_spec/SPEC.md section
3.8), one uncompressed tar for data diodes and file-transfer appliances.

A thin shell (STYLE practice 5) over `verify_path` (as `gapferry verify`) and `to_tar`. The bundle is verified first
because a data diode has no way back: a bundle that would be refused on the far side is refused
here, where it can still be fixed (docs/adr/0006).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click
from gapferry.common.bundle.layout import MEDIA_ROOT_DIR
from gapferry.common.bundle.tarform import from_tar, to_tar
from gapferry.common.cliutil import (
    emit_json,
    handle_errors,
    json_option,
    load_trust_policy,
    trust_options,
)
from gapferry.common.cosign_cli import find_one_bundle
from gapferry.common.digest import sha256_file
from gapferry.common.errors import EnvironmentFailure, UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.verify_cli import verify_path

__all__ = ["tar", "tar_target", "untar"]


def tar_target(bundle_name: str, to: Path) -> Path:
    """Where the single-file form goes: ``<to>/<bundle folder>.tar`` when `to` is a folder, else
    `to` itself, which must end in ``.tar``, sit in an existing folder and not exist yet.

    Raises:
        UsageProblem: ``bad-target`` (no .tar suffix or no such folder), ``target-exists``.
    """
    target = to / f"{bundle_name}.tar" if to.is_dir() else to
    if target.suffix != ".tar":
        raise UsageProblem(
            f"{to} is neither a folder nor a .tar file name",
            remedy=f"pass --to a folder, or a file name such as {bundle_name}.tar",
            code="bad-target",
        )
    if not target.parent.is_dir():
        raise UsageProblem(
            f"cannot write {target}: the folder {target.parent} does not exist",
            remedy="create the folder first, or pass --to an existing folder",
            code="bad-target",
        )
    if target.exists() or target.is_symlink():
        raise UsageProblem(
            f"{target} already exists",
            remedy="a finished file is never overwritten (it may be on its way through the "
            "diode); remove it yourself or pass --to another name",
            code="target-exists",
        )
    return target


@click.command(name="tar")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write <bundle folder>.tar into, or the .tar file name.",
)
@trust_options(
    trust_help="OpenSSH allowed_signers file the bundle must satisfy before it is written.",
    threshold_help="Distinct trusted keys that must have signed (m of n).",
)
@json_option
@handle_errors
def tar(bundle: Path, to: Path, trust_file: Path, threshold: int, json_output: bool) -> None:
    """Verify BUNDLE, then write it as one uncompressed tar (the single-file form).

    For data diodes and file-transfer appliances that carry files, not folders. BUNDLE is a
    bundle folder (gapferry/transfer-... or gapferry/result-...) or the root of a medium holding
    exactly one bundle. It is verified in full against --trust first: nothing crosses a one-way
    link that the far side would refuse. The tar holds the bundle folder with its custody events,
    the completion marker last; it is written under a temporary name and renamed when complete,
    then read back and hashed. The far side checks it with `gapferry verify FILE.tar` or
    `gapferry audit FILE.tar`.

    \b
    Examples:
      gapferry tar /media/stick --to /srv/diode/outbox --trust allowed_signers
      gapferry tar /media/stick/gapferry/transfer-plant-a-00000042-1a2b3c4d \\
          --to transfer-42.tar --trust allowed_signers --threshold 2 --json
      gapferry verify /srv/diode/inbox/transfer-plant-a-00000042-1a2b3c4d.tar \\
          --trust allowed_signers

    \b
    Exit codes:
      0  written
      1  invalid: the bundle was rejected (bad or untrusted signature, expired, altered file)
      2  usage: bad options, not a bundle, unreadable trust file, the .tar exists already
      3  incomplete or unreadable: no completion marker, a file missing or truncated, a read
         error on the medium
      4  environment: the file could not be written (disk full or read-only)
    """
    policy = load_trust_policy(trust_file, threshold=threshold)
    path = find_one_bundle(bundle)
    target = tar_target(path.name, to)
    opened = verify_path(path, policy=policy, now=datetime.now(tz=UTC))
    try:
        to_tar(path, target, limits=DEFAULT_LIMITS)
        written = sha256_file(target)
    except OSError as e:
        raise EnvironmentFailure(
            f"cannot write {target}: {e.strerror or e}",
            remedy="pass --to a writable folder with enough free space, then run it again",
            code="tar-not-written",
        ) from e
    trust = opened.verified.trust
    if json_output:
        emit_json(
            {
                "ok": True,
                "bundle": path.name,
                "kind": opened.kind,
                "manifest_sha256": opened.verified.manifest_sha256,
                "trust": trust.to_json(),
                "tar": str(target),
                "size": written.size,
                "sha256": written.sha256,
            }
        )
        return
    click.echo(
        f"verified {path.name}: {trust.distinct_trusted} distinct trusted key(s), "
        f"{len(opened.files)} file(s) hashed"
    )
    click.echo(f"wrote {target}: {written.size} bytes, sha256 {written.sha256}")


@click.command(name="untar")
@click.argument("tar_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The medium (or any folder): the bundle goes into its gapferry/ folder.",
)
@trust_options(
    trust_help="OpenSSH allowed_signers file the bundle must satisfy before it is kept.",
    threshold_help="Distinct trusted keys that must have signed (m of n).",
)
@json_option
@handle_errors
def untar(tar_file: Path, to: Path, trust_file: Path, threshold: int, json_output: bool) -> None:
    """Unpack the single-file form of a bundle onto a medium, verified, for apply or ingest.

    The far side of a data diode receives FILE.tar (written by `gapferry tar`); this puts the
    bundle folder back as TO/gapferry/<bundle folder>, where `gapferry apply` and
    `gapferry ingest` find it. The tar is unpacked with the readers' limits and refusals (no
    links, devices, escaping names, surplus files) into a temporary folder beside the target and
    verified in full against --trust; only a verified bundle is renamed into place, so nothing
    half-unpacked or untrusted is ever left on TO.

    \b
    Examples:
      gapferry untar /srv/diode/inbox/transfer-plant-a-00000042-1a2b3c4d.tar \\
          --to /media/stick --trust packers_allowed_signers
      gapferry apply /media/stick --trust packers_allowed_signers --devices devices.toml \\
          --sign ~/.ssh/technician_ed25519

    \b
    Exit codes:
      0  unpacked and verified
      1  invalid: not a bundle tar, an unsafe entry, or the bundle was rejected
      2  usage: bad options, unreadable trust file, the bundle folder exists on TO already
      3  incomplete: the bundle inside has no completion marker or a file is truncated
      4  environment: TO could not be written (disk full or read-only)
    """
    policy = load_trust_policy(trust_file, threshold=threshold)
    try:
        opened = from_tar(
            tar_file,
            to / MEDIA_ROOT_DIR,
            policy=policy,
            now=datetime.now(tz=UTC),
            limits=DEFAULT_LIMITS,
        )
    except OSError as e:
        raise EnvironmentFailure(
            f"cannot unpack onto {to}: {e.strerror or e}",
            remedy="pass --to a writable medium with enough free space, then run it again",
            code="untar-not-written",
        ) from e
    trust = opened.verified.trust
    if json_output:
        emit_json(
            {
                "ok": True,
                "bundle": opened.path.name,
                "kind": opened.kind,
                "manifest_sha256": opened.verified.manifest_sha256,
                "trust": trust.to_json(),
                "path": str(opened.path),
            }
        )
        return
    click.echo(
        f"verified {opened.path.name}: {trust.distinct_trusted} distinct trusted key(s), "
        f"{len(opened.files)} file(s) hashed"
    )
    click.echo(f"unpacked to {opened.path}")
