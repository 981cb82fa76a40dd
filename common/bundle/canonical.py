"""Canonical bytes of manifests and of the ``SHA256SUMS`` file (bundle_spec/SPEC.md section 3.5
and 4.4).

Writers produce canonical bytes; readers never re-serialise to check anything (STYLE practice 2):
signatures and hashes are always over the bytes as stored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

import msgspec
from gapferry.common.bundle.model import FileEntry, ResultManifest, TransferManifest
from gapferry.common.errors import InvalidData

__all__ = [
    "decode_manifest",
    "encode",
    "manifest_sha256",
    "peek_header",
    "reject_duplicate_keys",
    "render_sha256sums",
]

_ENCODER = msgspec.json.Encoder(order="sorted")

M = TypeVar("M", TransferManifest, ResultManifest)


def encode(obj: Any) -> bytes:
    """Canonical JSON: UTF-8, keys sorted, no insignificant whitespace, one final newline."""
    return _ENCODER.encode(obj) + b"\n"


def manifest_sha256(raw: bytes) -> str:
    """sha256 (lowercase hex) of the manifest bytes as stored: what markers and receipts bind."""
    return hashlib.sha256(raw).hexdigest()


class _Header(msgspec.Struct, frozen=True, kw_only=True):
    """The two fields read before the full decode (unknown fields ignored here on purpose)."""

    format_version: int
    kind: str


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def reject_duplicate_keys(raw: bytes, *, what: str = "manifest.json") -> None:
    """Refuse JSON with an object key twice (SPEC 1.3): readers disagree on which one counts
    (first or last), so a signed document could mean different things to different readers.

    Raises:
        InvalidData: code ``malformed-manifest``.
    """
    try:
        json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except _DuplicateKey as e:
        raise InvalidData(
            f"{what} has the key {e.args[0]!r} more than once in one object",
            remedy="JSON readers disagree on duplicate keys; the writer is buggy or hostile",
            code="malformed-manifest",
        ) from e
    except (ValueError, RecursionError) as e:
        raise InvalidData(
            f"{what} is not valid JSON ({type(e).__name__})",
            remedy="the bundle was not written by gapferry or is damaged; ask for a new one",
            code="malformed-manifest",
        ) from e


def peek_header(raw: bytes) -> tuple[int, str]:
    """Read `format_version` and `kind` of already signature-verified manifest bytes, after
    refusing duplicate keys anywhere in them.

    Raises:
        InvalidData: code ``malformed-manifest`` when the bytes are not a JSON object with both,
            or have a duplicate key.
    """
    reject_duplicate_keys(raw)
    try:
        h = msgspec.json.decode(raw, type=_Header)
    except msgspec.DecodeError as e:
        raise InvalidData(
            f"manifest.json is not a gapferry manifest: {e}",
            remedy="the bundle was not written by gapferry or is damaged; ask for a new one",
            code="malformed-manifest",
        ) from e
    return h.format_version, h.kind


def decode_manifest(raw: bytes, type_: type[M]) -> M:
    """Decode verified manifest bytes into `type_`.

    Raises:
        InvalidData: code ``malformed-manifest`` on any shape error, unknown field included.
    """
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.DecodeError as e:
        raise InvalidData(
            f"manifest.json does not match format version 1: {e}",
            remedy="the writer is buggy or hostile (the signature was valid); report it to the signer",
            code="malformed-manifest",
        ) from e


def render_sha256sums(files: list[FileEntry]) -> bytes:
    """The ``SHA256SUMS`` file for `files`: ``<sha256>  <path>\\n`` per file, in manifest order
    (GNU ``sha256sum`` text format, checkable with ``sha256sum -c --strict``)."""
    return "".join(f"{f.sha256}  {f.path}\n" for f in files).encode("utf-8")
