"""OpenSSH signatures (SSHSIG): the armored detached format of ``ssh-keygen -Y sign``.

Implements OpenSSH ``PROTOCOL.sshsig`` as shipped with OpenSSH 9.2:

    byte[6] "SSHSIG"; uint32 version (1); string publickey; string namespace;
    string reserved; string hash_algorithm; string signature

over the signed data ``"SSHSIG" || string namespace || string "" || string hash_algorithm ||
string H(message)``. The armor is ``-----BEGIN SSH SIGNATURE-----``, base64 wrapped at 70
columns, ``-----END SSH SIGNATURE-----``: byte-identical to what ``ssh-keygen`` writes.

This module checks only that a signature is well formed, made for the expected namespace and
cryptographically valid. Whether the key is *trusted* is `gapferry.common.trust`'s job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.common.sshkeys import (
    SshCertificate,
    SshPublicKey,
    WireReader,
    is_certificate_type,
    parse_certificate,
    parse_key_blob,
    put_string,
    verify_ssh_signature,
)

if TYPE_CHECKING:
    from gapferry.common.signers import Signer

__all__ = [
    "BEGIN",
    "END",
    "HASH_ALGORITHMS",
    "SshSig",
    "armor",
    "encode_sshsig",
    "parse_armored",
    "sign",
    "signed_data",
    "verify_cryptographically",
]

BEGIN: Final = "-----BEGIN SSH SIGNATURE-----"
END: Final = "-----END SSH SIGNATURE-----"
MAGIC: Final = b"SSHSIG"
VERSION: Final = 1
#: Hash algorithms accepted on verify (PROTOCOL.sshsig); gapferry signs with sha512.
HASH_ALGORITHMS: Final = ("sha256", "sha512")
_WRAP: Final = 70
_MAX_NAMESPACE: Final = 256

_REMEDY_FORMAT = (
    "The .sig file is damaged or is not an OpenSSH signature; obtain it again or re-sign "
    "(ssh-keygen -Y sign)."
)


def _digest(hash_alg: str, message: bytes) -> bytes:
    if hash_alg == "sha512":
        return hashlib.sha512(message).digest()
    if hash_alg == "sha256":
        return hashlib.sha256(message).digest()
    raise InvalidData(
        f"signature uses hash algorithm {hash_alg!r}; expected one of {', '.join(HASH_ALGORITHMS)}",
        remedy="Re-sign with ssh-keygen -Y sign (sha512) or gapferry.",
        code="bad-signature",
    )


def signed_data(message: bytes, *, namespace: str, hash_alg: str) -> bytes:
    """The bytes the key actually signs (PROTOCOL.sshsig "Signed Data").

    Raises:
        InvalidData: code ``bad-signature`` for a hash algorithm other than sha256/sha512.
    """
    return (
        MAGIC
        + put_string(namespace.encode("utf-8"))
        + put_string(b"")
        + put_string(hash_alg.encode("ascii"))
        + put_string(_digest(hash_alg, message))
    )


def encode_sshsig(
    *, public_key_blob: bytes, namespace: str, hash_alg: str, signature: bytes
) -> bytes:
    """The binary SSHSIG blob (before armor)."""
    return (
        MAGIC
        + struct.pack(">I", VERSION)
        + put_string(public_key_blob)
        + put_string(namespace.encode("utf-8"))
        + put_string(b"")
        + put_string(hash_alg.encode("ascii"))
        + put_string(signature)
    )


def armor(blob: bytes) -> bytes:
    """Armor an SSHSIG blob exactly as ``ssh-keygen -Y sign`` does."""
    b64 = base64.b64encode(blob).decode("ascii")
    lines = [b64[i : i + _WRAP] for i in range(0, len(b64), _WRAP)]
    return (BEGIN + "\n" + "\n".join(lines) + "\n" + END + "\n").encode("ascii")


@dataclass(frozen=True, kw_only=True)
class SshSig:
    """A parsed (not yet verified) SSHSIG.

    ``public_key`` is the key that made the signature (for a certificate: the certified key);
    ``certificate`` is set when the signature carries an OpenSSH certificate.
    """

    public_key: SshPublicKey
    certificate: SshCertificate | None
    namespace: str
    hash_alg: str
    signature: bytes = field(repr=False)
    raw: bytes = field(repr=False)

    @property
    def signature_algorithm(self) -> str:
        """The SSH signature algorithm name inside the signature (e.g. ``rsa-sha2-512``)."""
        r = WireReader(self.signature, what="SSH signature", code="bad-signature-format")
        return r.text(max_len=64)


def _format_error(detail: str) -> InvalidData:
    return InvalidData(
        f"expected an OpenSSH signature (SSHSIG), found {detail}",
        remedy=_REMEDY_FORMAT,
        code="bad-signature-format",
    )


def _dearmor(data: bytes, *, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise _format_error(f"{len(data)} bytes, more than the limit of {max_bytes}")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise _format_error("non-ASCII bytes") from e
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and lines[-1].strip() == "":
        lines.pop()
    if len(lines) < 3 or lines[0] != BEGIN or lines[-1] != END:
        raise _format_error(f"text without the {BEGIN} / {END} armor")
    body = "".join(lines[1:-1])
    try:
        blob = binascii.a2b_base64(body.encode("ascii"), strict_mode=True)
    except binascii.Error as e:
        raise _format_error("invalid base64 inside the armor") from e
    # Canonical base64 only: no two armored texts decode to the same signature.
    if base64.b64encode(blob).decode("ascii") != body:
        raise _format_error("non-canonical base64 inside the armor")
    return blob


def parse_armored(data: bytes, *, max_bytes: int) -> SshSig:
    """Parse an armored SSHSIG (a detached ``.sig`` file). Does not verify anything.

    Raises:
        InvalidData: code ``bad-signature-format`` when the file is larger than ``max_bytes``,
            not armored, not base64, not SSHSIG version 1, has trailing bytes, or carries an
            unparseable key or certificate.
    """
    blob = _dearmor(data, max_bytes=max_bytes)
    r = WireReader(blob, what="SSH signature", code="bad-signature-format")
    if r.raw(6) != MAGIC:
        raise _format_error("data without the SSHSIG magic")
    version = r.u32()
    if version != VERSION:
        raise _format_error(f"SSHSIG version {version} (only version 1 exists)")
    key_blob = r.string(max_len=16384)
    namespace_raw = r.string(max_len=_MAX_NAMESPACE)
    r.string(max_len=4096)  # reserved: ignored, as OpenSSH does
    hash_alg_raw = r.string(max_len=32)
    signature = r.string(max_len=8192)
    r.done()
    try:
        namespace = namespace_raw.decode("utf-8")
        hash_alg = hash_alg_raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise _format_error("a namespace or hash algorithm that is not text") from e
    kr = WireReader(key_blob, what="signature key", code="bad-signature-format")
    key_type = kr.text(max_len=64)
    certificate: SshCertificate | None = None
    try:
        if is_certificate_type(key_type):
            certificate = parse_certificate(key_blob)
            public_key = certificate.key
        else:
            public_key = parse_key_blob(key_blob)
    except InvalidData as e:
        raise InvalidData(
            f"the signature's key cannot be used: {e.message}",
            remedy=e.remedy,
            code="bad-signature-format",
        ) from e
    return SshSig(
        public_key=public_key,
        certificate=certificate,
        namespace=namespace,
        hash_alg=hash_alg,
        signature=signature,
        raw=blob,
    )


def verify_cryptographically(message: bytes, sig: SshSig, *, namespace: str) -> None:
    """Check that ``sig`` was made over ``message`` for ``namespace`` by ``sig.public_key``.

    This is ``ssh-keygen -Y check-novalidate``: it says nothing about whether the key is trusted.

    Raises:
        InvalidData: code ``wrong-namespace`` when the signature was made for another namespace;
            ``bad-signature`` when the hash algorithm is not sha256/sha512, an RSA signature uses
            SHA-1, or the signature does not match the message.
    """
    if sig.namespace != namespace:
        raise InvalidData(
            f"expected a signature for namespace {namespace!r}, found one for {sig.namespace!r}",
            remedy="The signature was made for another purpose; sign this data for the right namespace.",
            code="wrong-namespace",
        )
    data = signed_data(message, namespace=namespace, hash_alg=sig.hash_alg)
    verify_ssh_signature(sig.public_key, sig.signature, data)


def sign(message: bytes, *, signer: Signer, namespace: str) -> bytes:
    """Sign ``message`` for ``namespace``; return the armored SSHSIG (sha512).

    The result is parsed and verified before it is returned, so a misbehaving agent or token
    cannot hand back a signature by another key.

    Raises:
        UsageProblem: an empty namespace.
        InvalidData: the signer returned a signature that is not by its key or does not verify.
        EnvironmentFailure / UsageProblem: as raised by the signer.
    """
    if not namespace or len(namespace.encode("utf-8")) > _MAX_NAMESPACE:
        raise UsageProblem(
            f"a signature namespace must be 1..{_MAX_NAMESPACE} bytes, got {len(namespace)}",
            remedy="Pass the namespace of the bundle kind being signed.",
            code="bad-namespace",
        )
    armored = signer.sign_sshsig(message, namespace)
    sig = parse_armored(armored, max_bytes=1 << 20)
    if sig.public_key != signer.public_key:
        raise InvalidData(
            f"the signer returned a signature by {sig.public_key.fingerprint}, expected "
            f"{signer.public_key.fingerprint}",
            remedy="Check which key the agent or token holds.",
            code="bad-signature",
        )
    verify_cryptographically(message, sig, namespace=namespace)
    return armored
