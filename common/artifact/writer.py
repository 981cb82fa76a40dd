"""Write Mender Artifact v3 module-image artifacts that mender-artifact 3.9 and mender-client 3.4 accept.

Layout (`../shared/mender/artifact-and-client.md` 1.1-1.3, 1.7 and 2): an outer USTAR tar with
``version``, ``manifest``, [``manifest.sig``], ``header.tar{,.gz,.xz}`` and one
``data/0000.tar{,.gz,.xz}``; mtime 0, mode 0600, uid/gid 0. The manifest lists the payload files
(sha256 of the uncompressed bytes), the header (sha256 as stored) and ``version``, one
``<hex>  <name>\\n`` line each. The header holds ``header-info``, ``scripts/<name>``,
``headers/0000/type-info`` and optionally ``headers/0000/meta-data``, all compact JSON. The
signature is `signature.sign_manifest` over the manifest bytes.

Payload files are streamed twice (hash, then compress into a temporary file next to the output,
because a tar member's size must be known before its bytes), so memory stays constant.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, cast

import msgspec
from gapferry.common.artifact.signature import sign_manifest
from gapferry.common.atomic import atomic_open
from gapferry.common.digest import sha256_file
from gapferry.common.errors import UsageProblem

__all__ = ["COMPRESSIONS", "PayloadSource", "write_module_image"]

_COPY = 1024 * 1024

#: Compression names as mender-artifact 3.9 spells them, and the member suffix each gives.
COMPRESSIONS = {"none": ".tar", "gzip": ".tar.gz", "lzma": ".tar.xz"}


class PayloadSource(msgspec.Struct, frozen=True, kw_only=True):
    """One payload file: stored as ``data/0000/<name>``; content from ``path`` or ``data``."""

    name: str
    path: Path | None = None
    data: bytes | None = None


def _compressor(raw: IO[bytes], compression: str) -> IO[bytes]:
    if compression == "none":
        return cast(IO[bytes], _Unclosed(raw))
    if compression == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6))
    return cast(IO[bytes], lzma.LZMAFile(raw, mode="wb", format=lzma.FORMAT_XZ))


class _Unclosed(io.RawIOBase):
    """Writes through to a file that the caller keeps open (for compression ``none``)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._f.write(b)
        return len(b)


class _Tee(io.RawIOBase):
    """Writes to `f` and hashes what is written."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.hash.update(b)
        self._f.write(b)
        return len(b)


def _tarinfo(name: str, size: int, mode: int = 0o600) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = mode
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def _json(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def _open_source(src: PayloadSource) -> IO[bytes]:
    if src.data is not None:
        return io.BytesIO(src.data)
    if src.path is None:
        raise UsageProblem(
            f"payload file {src.name!r} has neither a path nor data",
            remedy="give path= or data=",
            code="bad-payload",
        )
    return src.path.open("rb")


def _source_digest(src: PayloadSource) -> tuple[str, int]:
    if src.data is not None:
        return hashlib.sha256(src.data).hexdigest(), len(src.data)
    if src.path is None:
        _open_source(src)  # raises
    assert src.path is not None  # noqa: S101 - narrowed by the raise above
    r = sha256_file(src.path)
    return r.sha256, r.size


def write_module_image(
    out: Path,
    *,
    artifact_name: str,
    device_types: Sequence[str],
    payload_type: str,
    files: Sequence[PayloadSource],
    compression: str = "gzip",
    signing_key: bytes | None = None,
    provides: Mapping[str, str] | None = None,
    depends: Mapping[str, str | Sequence[str]] | None = None,
    clears_provides: Sequence[str] | None = None,
    artifact_group: str | None = None,
    depends_artifact_names: Sequence[str] = (),
    depends_groups: Sequence[str] = (),
    meta_data: Mapping[str, Any] | None = None,
    state_scripts: Sequence[PayloadSource] = (),
) -> str:
    """Write a one-payload module-image artifact to `out` (crash-safely); return its sha256.

    `provides`, `depends` and `clears_provides` go to type-info; when `provides` and
    `clears_provides` are None they default as in mender-artifact 3.9:
    ``rootfs-image.<type>.version = <name>`` and ``rootfs-image.<type>.*``.
    `depends_artifact_names` / `depends_groups` become header-info ``artifact_depends``
    (``-N`` / ``-G``), `artifact_group` the provided group (``-g``). `signing_key` is a PEM private key
    (RSA or ECDSA P-256, any PEM form).

    Raises:
        UsageProblem: unknown compression, bad names, no device type, unusable signing key.
    """
    if compression not in COMPRESSIONS:
        raise UsageProblem(
            f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}",
            remedy="Mender 3.x reads none, gzip and lzma only (no zstd)",
            code="bad-compression",
        )
    if not device_types or not artifact_name or not payload_type:
        raise UsageProblem(
            "an artifact needs a name, a payload type and at least one device type",
            remedy="give --name, --type and --device-type",
            code="bad-artifact-spec",
        )
    names = [f.name for f in files]
    for n in [*names, *(s.name for s in state_scripts)]:
        if not n or "/" in n or n in (".", "..") or "\0" in n:
            raise UsageProblem(
                f"payload file name {n!r} is not a plain file name",
                remedy="payload files are stored by basename",
                code="bad-payload",
            )
    if len(set(names)) != len(names):
        raise UsageProblem(
            "two payload files have the same name", remedy="rename one", code="bad-payload"
        )
    suffix = COMPRESSIONS[compression]

    # header-info and type-info (section 2)
    hdr_depends: dict[str, list[str]] = {}
    if depends_artifact_names:
        hdr_depends["artifact_name"] = list(depends_artifact_names)
    hdr_depends["device_type"] = list(device_types)
    if depends_groups:
        hdr_depends["artifact_group"] = list(depends_groups)
    hdr_provides: dict[str, str] = {"artifact_name": artifact_name}
    if artifact_group:
        hdr_provides["artifact_group"] = artifact_group
    header_info = {
        "payloads": [{"type": payload_type}],
        "artifact_provides": hdr_provides,
        "artifact_depends": hdr_depends,
    }
    type_info: dict[str, Any] = {"type": payload_type}
    if depends:
        type_info["artifact_depends"] = {
            k: v if isinstance(v, str) else list(v) for k, v in depends.items()
        }
    type_info["artifact_provides"] = (
        dict(provides)
        if provides is not None
        else {f"rootfs-image.{payload_type}.version": artifact_name}
    )
    type_info["clears_artifact_provides"] = (
        list(clears_provides) if clears_provides is not None else [f"rootfs-image.{payload_type}.*"]
    )

    header_raw = io.BytesIO()
    with (
        _compressor(header_raw, compression) as hz,
        tarfile.open(fileobj=hz, mode="w|", format=tarfile.PAX_FORMAT) as ht,
    ):
        for name, content in [("header-info", _json(header_info))]:
            ht.addfile(_tarinfo(name, len(content), 0o644), io.BytesIO(content))
        for script in state_scripts:
            with _open_source(script) as sf:
                body = sf.read()
            ht.addfile(_tarinfo(f"scripts/{script.name}", len(body), 0o755), io.BytesIO(body))
        ti_raw = _json(type_info)
        ht.addfile(_tarinfo("headers/0000/type-info", len(ti_raw), 0o644), io.BytesIO(ti_raw))
        if meta_data is not None:
            md_raw = _json(dict(meta_data))
            ht.addfile(_tarinfo("headers/0000/meta-data", len(md_raw), 0o644), io.BytesIO(md_raw))
    header_bytes = header_raw.getvalue()
    header_name = f"header{suffix}"
    version_bytes = b'{"format":"mender","version":3}'

    lines = []
    sizes: list[int] = []
    for f in files:
        digest, size = _source_digest(f)
        sizes.append(size)
        lines.append(f"{digest}  data/0000/{f.name}\n")
    lines.append(f"{hashlib.sha256(header_bytes).hexdigest()}  {header_name}\n")
    lines.append(f"{hashlib.sha256(version_bytes).hexdigest()}  version\n")
    manifest = "".join(lines).encode("utf-8")
    signature = sign_manifest(manifest, signing_key) if signing_key is not None else None

    out = Path(out)
    with tempfile.TemporaryFile(dir=out.parent) as spool:
        with _compressor(spool, compression) as dz:
            dt = _TarWriter(dz, tarfile.PAX_FORMAT)
            for f, size in zip(files, sizes, strict=True):
                with _open_source(f) as fh:
                    dt.add(_tarinfo(f.name, size, 0o644), fh)
            dt.close()
        data_size = spool.tell()
        spool.seek(0)
        with atomic_open(out, mode=0o644) as raw_out:
            tee = _Tee(raw_out)
            ot = _TarWriter(cast(IO[bytes], tee), tarfile.USTAR_FORMAT)
            for name, content in (("version", version_bytes), ("manifest", manifest)):
                ot.add(_tarinfo(name, len(content)), io.BytesIO(content))
            if signature is not None:
                ot.add(_tarinfo("manifest.sig", len(signature)), io.BytesIO(signature))
            ot.add(_tarinfo(header_name, len(header_bytes)), io.BytesIO(header_bytes))
            ot.add(_tarinfo(f"data/0000{suffix}", data_size), spool)
            ot.close()
    return tee.hash.hexdigest()


class _TarWriter:
    """Write a tar stream with large copies (tarfile's stream mode copies its buffer per 16 KiB)."""

    def __init__(self, out: IO[bytes], fmt: Literal[0, 1, 2]) -> None:
        self._out = out
        self._fmt = fmt

    def add(self, ti: tarfile.TarInfo, src: IO[bytes]) -> None:
        self._out.write(ti.tobuf(self._fmt, "utf-8", "surrogateescape"))
        left = ti.size
        while left > 0:
            chunk = src.read(min(left, _COPY))
            if not chunk:
                raise UsageProblem(
                    f"payload file {ti.name!r} shrank while it was being written",
                    remedy="do not change payload files while an artifact is written",
                    code="bad-payload",
                )
            self._out.write(chunk)
            left -= len(chunk)
        if ti.size % tarfile.BLOCKSIZE:
            self._out.write(bytes(tarfile.BLOCKSIZE - ti.size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        self._out.write(bytes(2 * tarfile.BLOCKSIZE))
