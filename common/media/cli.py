"""``gapferry media``: list removable media, and eject one (issue 8). Thin: parse, call, print."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from gapferry.common.cliutil import emit_json, exit_code_for, handle_errors
from gapferry.common.errors import GapferryError, IncompleteBundle, UsageProblem
from gapferry.common.media.detect import NO_UDEV_NOTE, list_media, udev_available
from gapferry.common.media.eject import eject
from gapferry.common.media.fsinfo import describe
from gapferry.common.media.progress import Progress, format_bytes

__all__ = ["media"]

_EXIT_CODES = """
\b
Exit codes:
  0  done
  2  usage: bad arguments, not a removable medium (without --force)
  4  environment: cannot list devices, unmount not permitted, medium busy
"""


@click.group(epilog=_EXIT_CODES)
def media() -> None:
    """Removable media: list the sticks, check a folder, eject safely.

    \b
    Examples:
      gapferry media list
      gapferry media list --json
      gapferry media info /media/$USER/STICK
      gapferry media eject /media/$USER/STICK
      gapferry media span-write BUNDLE --to /media/$USER/A --to /media/$USER/B --sign KEY
      gapferry media span-check /media/$USER/A /media/$USER/B --trust allowed_signers
    """


@media.command("list", epilog=_EXIT_CODES)
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def list_cmd(json_output: bool) -> None:
    """List removable block devices and their mounted file systems.

    Shows device, label, file system, size, free space, mount point and the file size limit
    (FAT32: 4 GiB - 1; gapferry splits larger files into parts). Without udev (containers,
    CI) nothing can be detected: any folder is a medium, and the command says so.

    \b
    Examples:
      gapferry media list
      gapferry media list --json | jq '.media[].mount_point'
    """
    udev = udev_available()
    found = list_media()
    if json_output:
        emit_json(
            {
                "ok": True,
                "udev": udev,
                "note": None if udev else NO_UDEV_NOTE,
                "media": [
                    {
                        "device": m.device,
                        "label": m.label,
                        "fs_type": m.fs_type,
                        "size_bytes": m.size_bytes,
                        "free_bytes": m.free_bytes,
                        "mount_point": str(m.mount_point) if m.mount_point else None,
                        "max_file_size": m.max_file_size,
                        "bus": m.bus,
                        "model": m.model,
                    }
                    for m in found
                ],
            }
        )
        return
    if not udev:
        click.echo(f"note: {NO_UDEV_NOTE}", err=True)
    if not found:
        click.echo("no removable media found" if udev else "no removable media detected")
        return
    for m in found:
        free = format_bytes(m.free_bytes) if m.free_bytes is not None else "-"
        limit = " (files <= 4 GiB - 1)" if m.max_file_size else ""
        click.echo(
            f"{m.device}  {m.label or '(no label)'}  {m.fs_type or '?'}{limit}  "
            f"size {format_bytes(m.size_bytes)}  free {free}  "
            f"{m.mount_point if m.mount_point else 'not mounted'}"
            + (f"  [{m.model}]" if m.model else "")
        )


@media.command("info", epilog=_EXIT_CODES)
@click.argument("path", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def info_cmd(path: Path, json_output: bool) -> None:
    """Show the file system a folder is on: type, space, file size limit, device.

    Works for any folder, with or without udev.
    """
    info = describe(path)
    if json_output:
        emit_json(
            {
                "ok": True,
                "path": str(info.path),
                "mount_point": str(info.mount_point),
                "fs_type": info.fs_type,
                "label": info.label,
                "device": info.device,
                "removable": info.removable,
                "total_bytes": info.total_bytes if info.space_known else None,
                "free_bytes": info.free_bytes if info.space_known else None,
                "max_file_size": info.max_file_size,
                "read_only": info.read_only,
            }
        )
        return
    space = (
        f"{format_bytes(info.free_bytes)} free of {format_bytes(info.total_bytes)}"
        if info.space_known
        else "size not reported by this file system"
    )
    limit = f"{info.max_file_size} bytes per file" if info.max_file_size else "no file size limit"
    click.echo(
        f"{info.path}: {info.fs_type} on {info.device or '-'} mounted at {info.mount_point}; "
        f"{space}; {limit}" + ("; read-only" if info.read_only else "")
    )


@media.command("eject", epilog=_EXIT_CODES)
@click.argument("path", type=click.Path(path_type=Path, file_okay=False), required=False)
@click.option("--force", is_flag=True, help="Also unmount a device that is not removable.")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def eject_cmd(path: Path | None, force: bool, json_output: bool) -> None:
    """Sync and unmount the medium holding PATH, so the stick can be pulled out safely.

    Uses udisks (`udisksctl unmount` and `power-off`) where available, else `umount`.
    Without PATH, ejects the one mounted removable medium (as --to auto would pick it).

    \b
    Examples:
      gapferry media eject /media/$USER/STICK
      gapferry media eject
    """
    if path is None:
        from gapferry.common.media.detect import pick_medium  # noqa: PLC0415

        path = pick_medium("auto")
    res = eject(path, force=force)
    if json_output:
        emit_json(
            {
                "ok": True,
                "mount_point": str(res.mount_point),
                "device": res.device,
                "steps": res.steps,
                "powered_off": res.powered_off,
            }
        )
        return
    tail = " and powered off" if res.powered_off else ""
    click.echo(f"{res.mount_point} synced and unmounted{tail}: the stick can be removed now")


_SPAN_EXIT_CODES = """
\b
Exit codes:
  0  every stick present and intact (span-check) / all sticks written (span-write)
  1  invalid: a corrupt or foreign stick, an untrusted or bad index signature
  2  usage: bad arguments, no span found, several spans and no --span
  3  incomplete: a stick is missing or unfinished (named in the message)
  4  environment: a stick is full, read-only, or failed while writing
"""


def _passphrase() -> bytes:
    if not sys.stdin.isatty():
        raise UsageProblem(
            "the signing key is encrypted and there is no terminal to ask for its passphrase",
            remedy="load the key into ssh-agent and pass agent:KEY.pub, or run in a terminal",
            code="passphrase-needed",
        )
    return str(click.prompt("Passphrase for the signing key", hide_input=True, err=True)).encode()


@media.command("span-write", epilog=_SPAN_EXIT_CODES)
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--to",
    "targets",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="A mounted stick (repeat once per stick, in order).",
)
@click.option(
    "--sign", "sign_ref", required=True, help="Signing key (path, KEY.pub, agent:KEY.pub)."
)
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def span_write_cmd(
    bundle: Path, targets: tuple[Path, ...], sign_ref: str, json_output: bool
) -> None:
    """Spread the finished bundle folder BUNDLE over several sticks, with a signed index.

    Every stick gets its share of the files, the signed span-index.json, and a stick.json
    written last. Space and the file size limit (FAT32) of each stick are checked first;
    every file is read back after writing; running again resumes an interrupted write.

    \b
    Examples:
      gapferry media span-write staging/transfer-plant-a-00000042-9c1e7a2b \\
          --to /media/$USER/GAPF-1 --to /media/$USER/GAPF-2 --sign ~/.ssh/packer_ed25519
    """
    from gapferry.common.media.span import (  # noqa: PLC0415 - only this command needs it
        SPAN_NAMESPACE,
        SourceFile,
        StickSpace,
        build_index,
        encode_index,
        plan_span,
        write_stick,
    )
    from gapferry.common.signers import load_signer  # noqa: PLC0415

    files = []
    for p in sorted(bundle.rglob("*")):
        if p.is_symlink() or (not p.is_file() and not p.is_dir()):
            raise UsageProblem(
                f"{p} is a link or special file; a bundle folder holds regular files only",
                remedy="point at the bundle folder the packer wrote",
                code="bad-bundle-folder",
            )
        if p.is_file():
            files.append(SourceFile(path=p.relative_to(bundle).as_posix(), size=p.stat().st_size))
    spaces = []
    for t in targets:
        info = describe(t)
        spaces.append(
            StickSpace(
                free_bytes=info.free_bytes if info.space_known else 1 << 62,
                max_file_size=info.max_file_size,
                block_size=info.block_size,
                label=info.label or t.name,
            )
        )
    plan = plan_span(files, spaces)
    index = build_index(
        plan,
        source_root=bundle,
        bundle=bundle.name,
        created=datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    raw = encode_index(index)
    signer = load_signer(sign_ref, passphrase=_passphrase)
    sig = signer.sign_sshsig(raw, SPAN_NAMESPACE)
    for n, t in enumerate(targets, start=1):
        with Progress(f"stick {n}/{len(targets)}", plan.stick_bytes(n)) as bar:
            write_stick(
                index=index,
                raw_index=raw,
                signatures=[sig],
                number=n,
                source_root=bundle,
                stick_root=t,
                progress=bar.advance,
            )
    if json_output:
        emit_json(
            {
                "ok": True,
                "span_id": index.span_id,
                "bundle": index.bundle,
                "sticks": [
                    {"number": s.number, "label": s.label, "bytes": s.bytes, "path": str(t)}
                    for s, t in zip(index.sticks, targets, strict=True)
                ],
            }
        )
        return
    for s, t in zip(index.sticks, targets, strict=True):
        click.echo(f"stick {s.number} of {len(targets)} ({t}): {format_bytes(s.bytes)} written")
    click.echo(f"span {index.span_id} of {index.bundle}: label the sticks 1..{len(targets)}")


@media.command("span-check", epilog=_SPAN_EXIT_CODES)
@click.argument(
    "roots", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False, exists=True)
)
@click.option(
    "--trust",
    "trust_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="OpenSSH allowed_signers file of the packers.",
)
@click.option("--threshold", default=1, show_default=True, help="Distinct trusted signers needed.")
@click.option("--span", "span_id", help="Span id, when the sticks hold several spans.")
@click.option("--quick", is_flag=True, help="Check sizes only, do not read every byte.")
@click.option(
    "--assemble",
    "dest",
    type=click.Path(path_type=Path, file_okay=False),
    help="When all sticks are fine, join the bundle into this local folder.",
)
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document on stdout.")
@handle_errors
def span_check_cmd(
    *,
    roots: tuple[Path, ...],
    trust_file: Path,
    threshold: int,
    span_id: str | None,
    quick: bool,
    dest: Path | None,
    json_output: bool,
) -> None:
    """Check the sticks of a spanned bundle (ROOTS: the mounted sticks) before using it.

    Verifies the signed span index, then names every stick that is missing, unfinished,
    foreign or corrupt. With --assemble, joins the bundle into a local folder afterwards.

    \b
    Examples:
      gapferry media span-check /media/$USER/GAPF-1 /media/$USER/GAPF-2 --trust allowed_signers
      gapferry media span-check /media/$USER/* --trust allowed_signers --assemble ~/incoming
    """
    from gapferry.common.media.span import (  # noqa: PLC0415
        assemble,
        check_span,
        find_span_dirs,
        read_index,
        trust_verifier,
    )
    from gapferry.common.trust import TrustPolicy  # noqa: PLC0415

    dirs = [d for r in roots for d in find_span_dirs(r)]
    if span_id is not None:
        dirs = [d for d in dirs if d.name.endswith(f"-{span_id}")]
    ids = sorted({d.name for d in dirs})
    if not dirs:
        raise UsageProblem(
            "no gapferry-span-* folder on the given media",
            remedy="pass the folders where the sticks are mounted",
            code="no-span",
        )
    if len(ids) > 1:
        raise UsageProblem(
            f"the media hold several spans: {', '.join(ids)}",
            remedy="choose one with --span ID",
            code="several-spans",
        )
    policy = TrustPolicy.from_file(trust_file, threshold=threshold)
    verify = trust_verifier(policy, now=datetime.now(tz=UTC))
    index = None
    for d in dirs:  # any stick's index will do; an unfinished stick may lack one
        try:
            index, _ = read_index(d, verify=verify)
            break
        except IncompleteBundle:
            if d == dirs[-1]:
                raise
    if index is None:  # pragma: no cover - the loop either breaks or raises
        raise AssertionError("no index read")
    report = check_span(index, roots, deep=not quick)
    out_dir = None
    if report.ok and dest is not None:
        total = sum(f.size for f in index.files)
        with Progress(f"joining {index.bundle}", total) as bar:
            out_dir = assemble(index, report, dest, progress=bar.advance)
    if json_output:
        emit_json(
            {
                "ok": report.ok,
                "span_id": report.span_id,
                "bundle": report.bundle,
                "assembled": str(out_dir) if out_dir else None,
                "sticks": [
                    {
                        "number": s.number,
                        "of": s.of,
                        "label": s.label,
                        "state": s.state,
                        "path": str(s.root) if s.root else None,
                        "problems": s.problems,
                    }
                    for s in report.sticks
                ],
            }
        )
        if not report.ok:
            try:
                report.require()
            except GapferryError as e:
                sys.exit(exit_code_for(e))
        return
    for s in report.sticks:
        where = f" at {s.root}" if s.root else ""
        click.echo(f"{s.describe()}: {s.state}{where}")
    report.require()
    if out_dir is not None:
        click.echo(f"bundle joined into {out_dir}; verify it with gapferry verify")
    else:
        click.echo(f"all {len(report.sticks)} sticks of {report.bundle} are present and intact")
