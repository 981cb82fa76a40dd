"""A small, strict, streaming tar reader (ustar, pax and GNU long names) in constant memory.

Python's `tarfile` reads pax and GNU long-name records of any announced size into memory and
accepts far more than Mender writes. This reader yields one entry at a time with a bounded reader
for its content, caps every metadata record, and leaves the policy (which types and names are
allowed) to the caller. Format: POSIX.1-2001 pax / ustar, as Go's archive/tar reads it (the reader
mender-artifact 3.9 and mender-client 3.4 use, `../shared/mender/artifact-and-client.md` 1.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import msgspec
from gapferry.common.artifact.errors import ArtifactStructureError, ArtifactTooLarge

__all__ = ["BLOCK", "ByteSource", "MemberReader", "TarEntry", "TarReader"]

BLOCK = 512
#: Largest pax extended header or GNU long-name record accepted (Mender writes none or tiny ones).
MAX_META_RECORD = 64 * 1024
_CHUNK = 1024 * 1024

_TYPES = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",  # contiguous file: a regular file for every reader
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"6": "fifo",
}


class ByteSource(Protocol):
    """Anything with ``read(n)``."""

    def read(self, size: int = -1, /) -> bytes: ...


class TarEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One tar member's header. ``kind`` is file, dir, symlink, hardlink, char, block, fifo or other."""

    name: str
    kind: str
    size: int
    mode: int
    mtime: int
    linkname: str


def _read_exact(src: ByteSource, n: int, what: str) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left > 0:
        b = src.read(left)
        if not b:
            raise ArtifactStructureError(f"{what}: unexpected end of data (truncated tar)")
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _octal(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:
        # GNU base-256: big-endian, top bit set (negative numbers are refused).
        if field[0] & 0x40:
            raise ArtifactStructureError(f"{what}: negative number in tar header")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as e:
        raise ArtifactStructureError(f"{what}: bad number {text!r} in tar header") from e


def _text(field: bytes, what: str) -> str:
    raw = field.split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactStructureError(f"{what}: tar name is not UTF-8") from e


def _parse_pax(data: bytes, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            raise ArtifactStructureError(f"{what}: malformed pax record")
        try:
            length = int(data[pos:sp].decode("ascii"), 10)
        except (ValueError, UnicodeDecodeError) as e:
            raise ArtifactStructureError(f"{what}: malformed pax record length") from e
        end = pos + length
        if length <= sp - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ArtifactStructureError(f"{what}: malformed pax record")
        kv = data[sp + 1 : end - 1]
        key, eq, value = kv.partition(b"=")
        if not eq:
            raise ArtifactStructureError(f"{what}: pax record without '='")
        try:
            out[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ArtifactStructureError(f"{what}: pax record is not UTF-8") from e
        pos = end
    return out


class MemberReader:
    """Reads the content of the current entry; nothing past its end."""

    def __init__(self, src: ByteSource, size: int, what: str) -> None:
        self._src = src
        self._left = size
        self._what = what

    @property
    def remaining(self) -> int:
        return self._left

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0:
            return b""
        if size < 0 or size > self._left:
            size = self._left
        # Short reads are allowed: read() without a size must not need unbounded memory.
        b = self._src.read(min(size, _CHUNK))
        if not b:
            raise ArtifactStructureError(f"{self._what}: unexpected end of data (truncated tar)")
        self._left -= len(b)
        return b

    def readinto(self, buffer: memoryview, /) -> int:
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        b = self.read(n)
        buffer[: len(b)] = b
        return len(b)

    def readall(self, limit: int) -> bytes:
        """The whole content, refused if longer than `limit` bytes."""
        if self._left > limit:
            raise ArtifactTooLarge(
                f"{self._what}: {self._left} bytes, more than the limit of {limit}",
                remedy="the artifact is malformed or hostile; a larger input needs a larger configured limit",
            )
        return _read_exact(self, self._left, self._what)

    def skip(self) -> None:
        while self._left > 0:
            self.read(_CHUNK)


class TarReader:
    """Iterate a tar stream as ``(TarEntry, MemberReader)``; the reader is valid until the next step.

    The archive ends at a zero block or at a clean end of data on a block boundary (as Go's
    archive/tar accepts). Raises `ArtifactStructureError` on a malformed header and
    `ArtifactTooLarge` past ``max_members``.
    """

    def __init__(self, src: ByteSource, *, what: str, max_members: int) -> None:
        self._src = src
        self._what = what
        self._max = max_members
        self.ended_with_zero_block = False

    def _block(self) -> bytes | None:
        first = self._src.read(BLOCK)
        if not first:
            return None
        if len(first) < BLOCK:
            first += _read_exact(self._src, BLOCK - len(first), self._what)
        return first

    def __iter__(self) -> Iterator[tuple[TarEntry, MemberReader]]:
        count = 0
        pax: dict[str, str] = {}
        longname: str | None = None
        while True:
            hdr = self._block()
            if hdr is None:
                if pax or longname is not None:
                    raise ArtifactStructureError(f"{self._what}: archive ends inside a member")
                return
            if hdr == bytes(BLOCK):
                self.ended_with_zero_block = True
                return
            stored = _octal(hdr[148:156], self._what)
            summed = sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])
            if stored != summed:
                signed = sum(int.from_bytes([b], signed=True) for b in hdr[:148] + hdr[156:]) + 256
                if stored != signed:
                    raise ArtifactStructureError(f"{self._what}: tar header checksum mismatch")
            typeflag = hdr[156:157]
            size = _octal(hdr[124:136], self._what)
            if typeflag in (b"x", b"g", b"L", b"K"):
                if size > MAX_META_RECORD:
                    raise ArtifactTooLarge(
                        f"{self._what}: tar metadata record of {size} bytes (limit {MAX_META_RECORD})"
                    )
                data = _read_exact(self._src, size, self._what)
                _read_exact(self._src, -size % BLOCK, self._what)
                if typeflag == b"x":
                    pax.update(_parse_pax(data, self._what))
                elif typeflag == b"L":
                    longname = _text(data, self._what)
                # 'g' (global pax) and 'K' (GNU long link name) carry nothing we use.
                continue
            count += 1
            if count > self._max:
                raise ArtifactTooLarge(f"{self._what}: more than {self._max} tar members")
            name = _text(hdr[0:100], self._what)
            if hdr[257:263] in (b"ustar\x00", b"ustar "):
                prefix = _text(hdr[345:500], self._what) if hdr[257:263] == b"ustar\x00" else ""
                if prefix:
                    name = f"{prefix}/{name}"
            if longname is not None:
                name = longname
            if "path" in pax:
                name = pax["path"]
            if "size" in pax:
                try:
                    size = int(pax["size"], 10)
                except ValueError as e:
                    raise ArtifactStructureError(f"{self._what}: bad pax size") from e
                if size < 0:
                    raise ArtifactStructureError(f"{self._what}: negative pax size")
            linkname = _text(hdr[157:257], self._what)
            if "linkpath" in pax:
                linkname = pax["linkpath"]
            kind = _TYPES.get(typeflag, "other")
            if kind in ("dir", "symlink", "hardlink", "char", "block", "fifo"):
                size = 0  # these carry no data, whatever the header says (as Go's archive/tar)
            entry = TarEntry(
                name=name,
                kind=kind,
                size=size,
                mode=_octal(hdr[100:108], self._what) & 0o7777,
                mtime=_octal(hdr[136:148], self._what),
                linkname=linkname,
            )
            pax = {}
            longname = None
            member = MemberReader(self._src, size, f"{self._what}: {name}")
            yield entry, member
            member.skip()
            _read_exact(self._src, -size % BLOCK, self._what)
