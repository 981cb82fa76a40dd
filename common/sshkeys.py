"""OpenSSH public keys and user certificates: strict wire-format parsing and verification.

Implements the key and signature encodings of RFC 4253 section 6.6, RFC 5656 section 3.1
(ECDSA), RFC 8332 (rsa-sha2-256/512), RFC 8709 (Ed25519), OpenSSH ``PROTOCOL.u2f`` (``sk-``
security-key types) and ``PROTOCOL.certkeys`` (certificates). Every length is checked against the
bytes that remain, and no structure may carry trailing bytes. Only the cryptography itself comes
from `cryptography`.

Fingerprints are ``SHA256:`` + unpadded base64 of the SHA-256 of the plain key blob, exactly as
``ssh-keygen -l`` prints them (for a certificate: the fingerprint of its plain key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from gapferry.common.errors import InvalidData

__all__ = [
    "CERT_FOREVER",
    "PLAIN_TYPES",
    "SshCertificate",
    "SshPublicKey",
    "WireReader",
    "is_certificate_type",
    "parse_certificate",
    "parse_key_blob",
    "parse_public_key",
    "put_mpint",
    "put_string",
    "verify_ssh_signature",
]

#: ``valid before`` of a certificate that never expires (PROTOCOL.certkeys).
CERT_FOREVER: Final = 0xFFFF_FFFF_FFFF_FFFF

_MAX_STRING: Final = 1 << 20
_MAX_LINE: Final = 64 * 1024
_RSA_MIN_BITS: Final = 1024  # OpenSSH SSH_RSA_MINIMUM_MODULUS_SIZE
_RSA_MAX_BITS: Final = 16384  # OpenSSH SSHBUF_MAX_BIGNUM * 8
_MAX_PRINCIPALS: Final = 256  # OpenSSH SSHKEY_CERT_MAX_PRINCIPALS
_MAX_OPTIONS: Final = 256

_CURVES: Final[dict[str, tuple[ec.EllipticCurve, int, hashes.HashAlgorithm]]] = {
    "nistp256": (ec.SECP256R1(), 32, hashes.SHA256()),
    "nistp384": (ec.SECP384R1(), 48, hashes.SHA384()),
    "nistp521": (ec.SECP521R1(), 66, hashes.SHA512()),
}

PLAIN_TYPES: Final = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_CERT_SUFFIX: Final = "-cert-v01@openssh.com"


def _cert_type_of(plain: str) -> str:
    if plain.endswith("@openssh.com"):
        return plain[: -len("@openssh.com")] + _CERT_SUFFIX
    return plain + _CERT_SUFFIX


_CERT_TYPES: Final = {_cert_type_of(t): t for t in PLAIN_TYPES}

_REMEDY_KEY = "Use an OpenSSH Ed25519, ECDSA (P-256/P-384/P-521) or RSA (>= 2048 bit) key."


def _bad(message: str, *, code: str = "bad-key") -> InvalidData:
    return InvalidData(message, remedy=_REMEDY_KEY, code=code)


def put_string(data: bytes) -> bytes:
    """Encode an RFC 4251 ``string``: uint32 length, then the bytes."""
    return struct.pack(">I", len(data)) + data


def put_mpint(value: int) -> bytes:
    """Encode an RFC 4251 ``mpint`` (non-negative)."""
    if value == 0:
        return put_string(b"")
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")
    return put_string(raw)


class WireReader:
    """A bounded reader of RFC 4251 data types. Every read checks the bytes that remain.

    Raises:
        InvalidData: (code given at construction) on any short read or over-long field.
    """

    def __init__(self, data: bytes, *, what: str, code: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what
        self._code = code

    def _fail(self, detail: str) -> InvalidData:
        return InvalidData(
            f"{self._what} is malformed: {detail} (at byte {self._pos})",
            remedy="The data is damaged or was not made by OpenSSH; obtain it again.",
            code=self._code,
        )

    def raw(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise self._fail(f"needs {n} more bytes, {len(self._data) - self._pos} remain")
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def u8(self) -> int:
        return self.raw(1)[0]

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.raw(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.raw(8))[0]
        return value

    def string(self, *, max_len: int = _MAX_STRING) -> bytes:
        n = self.u32()
        if n > max_len:
            raise self._fail(f"field of {n} bytes exceeds the limit of {max_len}")
        return self.raw(n)

    def text(self, *, max_len: int = 4096) -> str:
        raw = self.string(max_len=max_len)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._fail("text field is not UTF-8") from e

    def mpint(self, *, max_bytes: int = _RSA_MAX_BITS // 8 + 1) -> int:
        raw = self.string(max_len=max_bytes)
        if raw and raw[0] & 0x80:
            raise self._fail("negative mpint")
        return int.from_bytes(raw, "big")

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    @property
    def position(self) -> int:
        return self._pos

    def done(self) -> None:
        if self._pos != len(self._data):
            raise self._fail(f"{len(self._data) - self._pos} trailing bytes")


def _fingerprint(blob: bytes) -> str:
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, kw_only=True)
class SshPublicKey:
    """A plain (non-certificate) OpenSSH public key.

    ``blob`` is the exact wire encoding; equality of keys is equality of blobs (the comment is
    not part of the identity).
    """

    key_type: str
    blob: bytes
    comment: str = field(default="", compare=False)

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` exactly as ``ssh-keygen -l`` prints it."""
        return _fingerprint(self.blob)

    @property
    def is_security_key(self) -> bool:
        """True for FIDO ``sk-`` keys (signing needs the token, through ``ssh-keygen``)."""
        return self.key_type.startswith("sk-")

    def to_line(self) -> str:
        """The ``authorized_keys`` / ``.pub`` form: type, base64 blob, optional comment."""
        b64 = base64.b64encode(self.blob).decode("ascii")
        line = f"{self.key_type} {b64}"
        return f"{line} {self.comment}" if self.comment else line

    def __repr__(self) -> str:
        return f"SshPublicKey({self.key_type} {self.fingerprint})"


def _read_plain_fields(r: WireReader, key_type: str) -> bytes:
    """Read the public fields of ``key_type`` from ``r``; return their wire encoding."""
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        pk = r.string(max_len=64)
        if len(pk) != 32:
            raise _bad(f"Ed25519 public key has {len(pk)} bytes, expected 32")
        ed25519.Ed25519PublicKey.from_public_bytes(pk)
        out = put_string(pk)
        if key_type.startswith("sk-"):
            out += put_string(r.string(max_len=1024))
        return out
    if key_type.startswith(("ecdsa-sha2-", "sk-ecdsa-sha2-")):
        curve_name = key_type.removesuffix("@openssh.com").rsplit("-", 1)[1]
        curve, size, _ = _CURVES[curve_name]
        got_curve = r.string(max_len=32)
        if got_curve != curve_name.encode():
            raise _bad(f"ECDSA key of type {key_type} names curve {got_curve!r}")
        point = r.string(max_len=2 * size + 1)
        if len(point) != 2 * size + 1 or point[0] != 4:
            raise _bad("ECDSA public point is not an uncompressed point of the right size")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except ValueError as e:
            raise _bad("ECDSA public point is not on the curve") from e
        out = put_string(got_curve) + put_string(point)
        if key_type.startswith("sk-"):
            out += put_string(r.string(max_len=1024))
        return out
    if key_type == "ssh-rsa":
        exponent = r.mpint(max_bytes=16)
        n = r.mpint()
        if not _RSA_MIN_BITS <= n.bit_length() <= _RSA_MAX_BITS:
            raise _bad(f"RSA modulus of {n.bit_length()} bits is outside 1024..16384")
        if exponent < 3 or exponent % 2 == 0:
            raise _bad("RSA public exponent is invalid")
        return put_mpint(exponent) + put_mpint(n)
    raise _bad(f"unsupported key type {key_type!r}", code="unsupported-key")


def parse_key_blob(blob: bytes, *, comment: str = "") -> SshPublicKey:
    """Parse the wire encoding of a plain public key (no certificate).

    Raises:
        InvalidData: code ``bad-key`` for a malformed blob, ``unsupported-key`` for a type
            gapferry does not verify (DSA, certificates: see `parse_certificate`).
    """
    r = WireReader(blob, what="SSH public key", code="bad-key")
    key_type = r.text(max_len=64)
    if key_type not in PLAIN_TYPES:
        raise _bad(f"unsupported key type {key_type!r}", code="unsupported-key")
    fields = _read_plain_fields(r, key_type)
    r.done()
    canonical = put_string(key_type.encode()) + fields
    if canonical != blob:
        raise _bad("key blob is not in canonical form")
    return SshPublicKey(key_type=key_type, blob=blob, comment=comment)


def _split_line(line: str) -> tuple[str, bytes, str]:
    if len(line) > _MAX_LINE:
        raise _bad(f"public key line of {len(line)} characters exceeds {_MAX_LINE}")
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise _bad("expected '<type> <base64> [comment]', found fewer than two fields")
    try:
        blob = binascii.a2b_base64(parts[1].encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise _bad("the key's base64 field is not valid base64") from e
    return parts[0], blob, parts[2] if len(parts) > 2 else ""


def parse_public_key(line: str) -> SshPublicKey:
    """Parse a ``.pub`` / ``authorized_keys``-style line ``<type> <base64> [comment]``.

    Raises:
        InvalidData: code ``bad-key`` or ``unsupported-key`` (as `parse_key_blob`); also when
            the type named on the line differs from the type inside the blob.
    """
    key_type, blob, comment = _split_line(line)
    key = parse_key_blob(blob, comment=comment)
    if key.key_type != key_type:
        raise _bad(f"line says {key_type!r} but the key inside is {key.key_type!r}")
    return key


# --- signatures --------------------------------------------------------------------------------


def _sk_tbs(app: bytes, flags: int, counter: int, message_hash: bytes) -> bytes:
    return hashlib.sha256(app).digest() + bytes([flags]) + struct.pack(">I", counter) + message_hash


def verify_ssh_signature(key: SshPublicKey, signature: bytes, data: bytes) -> str:
    """Verify an SSH signature blob (``string alg, string sig[, sk fields]``) over ``data``.

    Accepts ``ssh-ed25519``, ``ecdsa-sha2-*`` (curve hash per RFC 5656), ``rsa-sha2-256`` and
    ``rsa-sha2-512`` (RFC 8332; SHA-1 ``ssh-rsa`` is refused), and the ``sk-`` forms of
    PROTOCOL.u2f. Returns the signature algorithm name.

    Raises:
        InvalidData: code ``bad-signature`` when the blob is malformed, uses another algorithm
            than the key, uses SHA-1, or does not verify.
    """
    r = WireReader(signature, what="SSH signature", code="bad-signature")
    alg = r.text(max_len=64)

    def fail(why: str) -> InvalidData:
        return InvalidData(
            f"signature by {key.key_type} key {key.fingerprint} does not verify: {why}",
            remedy="The data or the signature was changed, or it was signed by another key; "
            "do not use this data.",
            code="bad-signature",
        )

    kr = WireReader(key.blob, what="SSH public key", code="bad-key")
    kr.text()
    try:
        if key.key_type == "ssh-ed25519":
            if alg != "ssh-ed25519":
                raise fail(f"algorithm {alg!r} does not match the key")
            raw = r.string(max_len=64)
            r.done()
            if len(raw) != 64:
                raise fail("Ed25519 signature is not 64 bytes")
            ed25519.Ed25519PublicKey.from_public_bytes(kr.string()).verify(raw, data)
        elif key.key_type.startswith("ecdsa-sha2-"):
            if alg != key.key_type:
                raise fail(f"algorithm {alg!r} does not match the key")
            curve_name = kr.text()
            curve, size, digest = _CURVES[curve_name]
            point = kr.string()
            inner = WireReader(r.string(max_len=256), what="ECDSA signature", code="bad-signature")
            r.done()
            sig_r, sig_s = inner.mpint(max_bytes=size + 1), inner.mpint(max_bytes=size + 1)
            inner.done()
            pub = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
            pub.verify(encode_dss_signature(sig_r, sig_s), data, ec.ECDSA(digest))
        elif key.key_type == "ssh-rsa":
            hash_alg: hashes.HashAlgorithm
            if alg == "rsa-sha2-512":
                hash_alg = hashes.SHA512()
            elif alg == "rsa-sha2-256":
                hash_alg = hashes.SHA256()
            elif alg == "ssh-rsa":
                raise fail("SHA-1 RSA signatures (ssh-rsa) are refused; sign with rsa-sha2-512")
            else:
                raise fail(f"algorithm {alg!r} does not match the key")
            e, n = kr.mpint(), kr.mpint()
            modlen = (n.bit_length() + 7) // 8
            raw = r.string(max_len=modlen)
            r.done()
            raw = raw.rjust(modlen, b"\0")  # OpenSSH pads short signatures the same way
            pub_rsa = rsa.RSAPublicNumbers(e, n).public_key()
            pub_rsa.verify(raw, data, padding.PKCS1v15(), hash_alg)
        elif key.key_type == "sk-ssh-ed25519@openssh.com":
            if alg != key.key_type:
                raise fail(f"algorithm {alg!r} does not match the key")
            raw = r.string(max_len=64)
            flags, counter = r.u8(), r.u32()
            r.done()
            if len(raw) != 64:
                raise fail("Ed25519 signature is not 64 bytes")
            pk, app = kr.string(), kr.string()
            tbs = _sk_tbs(app, flags, counter, hashlib.sha256(data).digest())
            ed25519.Ed25519PublicKey.from_public_bytes(pk).verify(raw, tbs)
        elif key.key_type == "sk-ecdsa-sha2-nistp256@openssh.com":
            if alg != key.key_type:
                raise fail(f"algorithm {alg!r} does not match the key")
            inner = WireReader(r.string(max_len=256), what="ECDSA signature", code="bad-signature")
            flags, counter = r.u8(), r.u32()
            r.done()
            sig_r, sig_s = inner.mpint(max_bytes=33), inner.mpint(max_bytes=33)
            inner.done()
            kr.string()
            point, app = kr.string(), kr.string()
            tbs = _sk_tbs(app, flags, counter, hashlib.sha256(data).digest())
            pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            pub.verify(encode_dss_signature(sig_r, sig_s), tbs, ec.ECDSA(hashes.SHA256()))
        else:  # pragma: no cover - parse_key_blob admits only the types above
            raise fail(f"unsupported key type {key.key_type}")
    except InvalidSignature as e:
        raise fail("the signature does not match") from e
    except ValueError as e:
        raise fail("the signature values are out of range") from e
    return alg


# --- certificates ------------------------------------------------------------------------------


def _epoch_to_datetime(value: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True, kw_only=True)
class SshCertificate:
    """A parsed OpenSSH certificate whose CA signature has been verified (PROTOCOL.certkeys).

    ``valid_after_epoch`` / ``valid_before_epoch`` are the raw uint64 seconds; the datetime
    properties give None for "since always" (0) and "forever" (2**64-1).
    """

    cert_type: str
    blob: bytes
    key: SshPublicKey
    nonce: bytes = field(repr=False)
    serial: int
    user_certificate: bool
    key_id: str
    principals: tuple[str, ...]
    valid_after_epoch: int
    valid_before_epoch: int
    critical_options: tuple[tuple[str, bytes], ...]
    extensions: tuple[tuple[str, bytes], ...]
    signature_key: SshPublicKey
    signature_algorithm: str
    comment: str = field(default="", compare=False)

    @property
    def key_type(self) -> str:
        return self.cert_type

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the certified key (as ``ssh-keygen -l`` prints for a cert)."""
        return self.key.fingerprint

    @property
    def valid_after(self) -> datetime | None:
        return None if self.valid_after_epoch == 0 else _epoch_to_datetime(self.valid_after_epoch)

    @property
    def valid_before(self) -> datetime | None:
        if self.valid_before_epoch == CERT_FOREVER:
            return None
        return _epoch_to_datetime(self.valid_before_epoch)

    def to_line(self) -> str:
        b64 = base64.b64encode(self.blob).decode("ascii")
        line = f"{self.cert_type} {b64}"
        return f"{line} {self.comment}" if self.comment else line

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary: key id, serial, principals, validity, CA fingerprint."""
        va, vb = self.valid_after, self.valid_before
        return {
            "key_id": self.key_id,
            "serial": self.serial,
            "principals": list(self.principals),
            "valid_after": va.isoformat() if va else None,
            "valid_before": vb.isoformat() if vb else None,
            "ca_key_type": self.signature_key.key_type,
            "ca_fingerprint": self.signature_key.fingerprint,
        }


def _read_options(raw: bytes, *, what: str) -> tuple[tuple[str, bytes], ...]:
    r = WireReader(raw, what=f"certificate {what}", code="bad-certificate")
    out: list[tuple[str, bytes]] = []
    while r.remaining:
        if len(out) >= _MAX_OPTIONS:
            raise _bad(f"certificate has more than {_MAX_OPTIONS} {what}", code="bad-certificate")
        name = r.text(max_len=256)
        out.append((name, r.string(max_len=4096)))
    names = [n for n, _ in out]
    if names != sorted(names) or len(set(names)) != len(names):
        raise _bad(f"certificate {what} are not sorted and unique", code="bad-certificate")
    return tuple(out)


def parse_certificate(data: bytes | str) -> SshCertificate:
    """Parse an OpenSSH certificate (a ``-cert.pub`` line or its blob) and verify its CA signature.

    Refuses a CA key that is itself a certificate, SHA-1 ``ssh-rsa`` CA signatures, and
    malformed principal or option lists.

    Raises:
        InvalidData: code ``bad-certificate`` (malformed or CA signature invalid),
            ``unsupported-key`` (unknown certificate type).
    """
    comment = ""
    if isinstance(data, str):
        line_type, blob, comment = _split_line(data)
    else:
        line_type, blob = "", data
    r = WireReader(blob, what="SSH certificate", code="bad-certificate")
    cert_type = r.text(max_len=64)
    if line_type and line_type != cert_type:
        raise _bad(f"line says {line_type!r} but the certificate is {cert_type!r}")
    plain = _CERT_TYPES.get(cert_type)
    if plain is None:
        raise _bad(f"unsupported certificate type {cert_type!r}", code="unsupported-key")
    nonce = r.string(max_len=256)
    try:
        fields = _read_plain_fields(r, plain)
    except InvalidData as e:
        raise _bad(f"certificate key: {e.message}", code="bad-certificate") from e
    key = parse_key_blob(put_string(plain.encode()) + fields, comment=comment)
    serial = r.u64()
    ctype = r.u32()
    if ctype not in (1, 2):
        raise _bad(
            f"certificate type {ctype} is neither user (1) nor host (2)", code="bad-certificate"
        )
    key_id = r.text(max_len=4096)
    pr = WireReader(r.string(max_len=65536), what="certificate principals", code="bad-certificate")
    principals: list[str] = []
    while pr.remaining:
        if len(principals) >= _MAX_PRINCIPALS:
            raise _bad(
                f"certificate lists more than {_MAX_PRINCIPALS} principals", code="bad-certificate"
            )
        principals.append(pr.text(max_len=1024))
    valid_after, valid_before = r.u64(), r.u64()
    critical = _read_options(r.string(max_len=65536), what="critical options")
    extensions = _read_options(r.string(max_len=65536), what="extensions")
    r.string(max_len=65536)  # reserved
    ca_blob = r.string(max_len=8192)
    signed_len = r.position
    signature = r.string(max_len=8192)
    r.done()
    try:
        ca_key = parse_key_blob(ca_blob)
    except InvalidData as e:
        raise _bad(f"certificate CA key: {e.message}", code="bad-certificate") from e
    try:
        alg = verify_ssh_signature(ca_key, signature, blob[:signed_len])
    except InvalidData as e:
        raise _bad(
            f"certificate {key_id!r} is not signed by the CA it names: {e.message}",
            code="bad-certificate",
        ) from e
    return SshCertificate(
        cert_type=cert_type,
        blob=blob,
        key=key,
        nonce=nonce,
        serial=serial,
        user_certificate=ctype == 1,
        key_id=key_id,
        principals=tuple(principals),
        valid_after_epoch=valid_after,
        valid_before_epoch=valid_before,
        critical_options=critical,
        extensions=extensions,
        signature_key=ca_key,
        signature_algorithm=alg,
        comment=comment,
    )


def is_certificate_type(key_type: str) -> bool:
    """True for the ``*-cert-v01@openssh.com`` types gapferry parses."""
    return key_type in _CERT_TYPES
