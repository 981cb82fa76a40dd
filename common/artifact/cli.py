"""`gapferry artifact`: inspect and write Mender Artifacts (issue 4). A thin shell over
`reader.read_artifact_file` and `writer.write_module_image`."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any

import click
import msgspec
from gapferry.common.artifact.reader import ArtifactInfo, read_artifact_file
from gapferry.common.artifact.writer import COMPRESSIONS, PayloadSource, write_module_image
from gapferry.common.cliutil import emit_json, handle_errors
from gapferry.common.errors import UsageProblem

__all__ = ["artifact"]


def _signature_status(info: ArtifactInfo) -> str:
    if info.signature_verified:
        return f"signed and verified ({info.signature_key})"
    if info.signed:
        return "signed, NOT verified (no --verify-key given)"
    return "unsigned"


def _read_key(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageProblem(
            f"cannot read the {what} {str(path)!r}: {e.strerror}",
            remedy=f"give the path of a PEM {what}",
            code="no-key-file",
        ) from e


@click.group()
def artifact() -> None:
    """Mender Artifacts: inspect and verify, or write module-image artifacts."""


@artifact.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--verify-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM public key (RSA or ECDSA P-256); the artifact must be signed with it.",
)
@click.option("--require-signature", is_flag=True, help="Fail if the artifact is not signed.")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document.")
@handle_errors
def inspect(
    file: Path, verify_key: Path | None, require_signature: bool, json_output: bool
) -> None:
    """Read FILE completely, check every checksum, and show what it contains.

    \b
    Exit codes: 0 valid (and verified with --verify-key), 1 invalid or bad signature,
    2 usage (missing file or key).
    \b
    Example:
      gapferry artifact inspect update.mender --verify-key artifact-signing.pub.pem
    """
    key = _read_key(verify_key, "public key")
    info = read_artifact_file(file, verify_key=key, require_signature=require_signature)
    if json_output:
        doc: dict[str, Any] = {"ok": True, "signature": _signature_status(info)}
        doc["artifact"] = msgspec.to_builtins(info)
        emit_json(doc)
        return
    click.echo(f"name:         {info.name}")
    click.echo(f"format:       mender artifact v{info.format_version} ({info.compression})")
    click.echo(f"device types: {', '.join(info.device_types)}")
    click.echo(f"signature:    {_signature_status(info)}")
    click.echo(f"size:         {info.size} bytes, sha256 {info.sha256}")
    click.echo("provides:")
    for k, v in sorted(info.provides.items()):
        click.echo(f"  {k} = {v}")
    if info.depends:
        click.echo("depends:")
        for k, dv in sorted(info.depends.items()):
            click.echo(f"  {k} = {dv if isinstance(dv, str) else ', '.join(dv)}")
    if info.clears_provides:
        click.echo(f"clears:       {', '.join(info.clears_provides)}")
    if info.state_scripts:
        click.echo(f"scripts:      {', '.join(info.state_scripts)}")
    for p in info.payloads:
        click.echo(f"payload {p.index}: type {p.type}")
        for f in p.files:
            note = "  (augmented: not signed)" if f.augmented else ""
            click.echo(f"  {f.name}  {f.size} bytes  sha256 {f.sha256}{note}")
    if info.augmented:
        click.echo("note: augmented (manifest-augment / header-augment are not signed)")


def _kv(values: tuple[str, ...], opt: str) -> dict[str, str]:
    out = {}
    for v in values:
        k, sep, val = v.partition(":")
        if not sep or not k:
            raise UsageProblem(
                f"{opt} {v!r} is not KEY:VALUE", remedy=f"write {opt} name:value", code="bad-option"
            )
        out[k] = val
    return out


@artifact.command("write")
@click.option("--type", "payload_type", required=True, help="Payload type (update module name).")
@click.option("--name", "-n", required=True, help="Artifact name.")
@click.option("--device-type", "-t", "device_types", multiple=True, required=True)
@click.option(
    "--file",
    "-f",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--dest-dir",
    help="single-file / directory: write the dest_dir (and filename, permissions) files for you.",
)
@click.option("--permissions", default="644", show_default=True, help="single-file mode (octal).")
@click.option(
    "--tree",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="directory: pack this folder as update.tar.",
)
@click.option(
    "--compression", type=click.Choice(sorted(COMPRESSIONS)), default="gzip", show_default=True
)
@click.option(
    "--key",
    "-k",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM private key to sign with.",
)
@click.option("--provides", "-p", multiple=True, help="type-info provides KEY:VALUE.")
@click.option("--depends", "-d", multiple=True, help="type-info depends KEY:VALUE.")
@click.option(
    "--depends-artifact-name", "-N", multiple=True, help="Required current artifact name."
)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document.")
@handle_errors
def write(
    *,
    payload_type: str,
    name: str,
    device_types: tuple[str, ...],
    files: tuple[Path, ...],
    dest_dir: str | None,
    permissions: str,
    tree: Path | None,
    compression: str,
    key: Path | None,
    provides: tuple[str, ...],
    depends: tuple[str, ...],
    depends_artifact_name: tuple[str, ...],
    output: Path,
    json_output: bool,
) -> None:
    """Write a module-image artifact (format v3) that Mender 3.x clients install.

    \b
    Examples:
      gapferry artifact write --type single-file -n app-1.2 -t plc-x86 \\
          -f app.conf --dest-dir /etc/app --permissions 640 -k signing.pem -o app-1.2.mender
      gapferry artifact write --type directory -n web-7 -t plc-x86 --tree ./www --dest-dir /srv/www -o web-7.mender
    """
    sources = [PayloadSource(name=f.name, path=f) for f in files]
    if payload_type == "single-file" and dest_dir is not None:
        if len(files) != 1:
            raise UsageProblem(
                "--dest-dir with single-file needs exactly one --file",
                remedy="give the one file to place",
                code="bad-option",
            )
        sources = [
            PayloadSource(name="dest_dir", data=f"{dest_dir}\n".encode()),
            PayloadSource(name="filename", data=f"{files[0].name}\n".encode()),
            PayloadSource(name="permissions", data=f"{permissions}\n".encode()),
            *sources,
        ]
    with tempfile.TemporaryDirectory() as tmp:
        if payload_type == "directory" and tree is not None:
            if dest_dir is None:
                raise UsageProblem(
                    "--tree needs --dest-dir", remedy="give --dest-dir", code="bad-option"
                )
            tar_path = Path(tmp) / "update.tar"
            with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as t:
                t.add(tree, arcname=".")
            sources = [
                PayloadSource(name="update.tar", path=tar_path),
                PayloadSource(name="dest_dir", data=f"{dest_dir}\n".encode()),
            ]
        digest = write_module_image(
            output,
            artifact_name=name,
            device_types=device_types,
            payload_type=payload_type,
            files=sources,
            compression=compression,
            signing_key=_read_key(key, "private key"),
            provides=_kv(provides, "--provides") or None,
            depends=_kv(depends, "--depends") or None,
            depends_artifact_names=depends_artifact_name,
        )
    if json_output:
        emit_json({"ok": True, "path": str(output), "sha256": digest})
    else:
        click.echo(f"wrote {output} (sha256 {digest})")
