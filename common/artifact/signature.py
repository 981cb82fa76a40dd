"""Sign and verify a Mender Artifact's `manifest` exactly as mender-artifact 3.9 does.

`../shared/mender/artifact-and-client.md` 1.3 and 1.6: the signed message is the bytes of the
`manifest` member; `manifest.sig` holds standard base64 (padded, no newline) of

- RSA: RSASSA-PKCS1-v1_5 with SHA-256 (PSS does not verify in mender-artifact or the client);
- ECDSA P-256: SHA-256, stored as raw fixed-width ``r || s`` (32 + 32 bytes), **not** DER.

Ed25519 and other curves are refused (mender-artifact 3.9 and client 3.4 support neither).
Verification takes a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo), as ``validate -k`` and the client's
``ArtifactVerifyKey`` do. Signing accepts any unencrypted PEM private key, including PKCS#8,
which mender-artifact 3.9 itself cannot read.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from gapferry.common.artifact.errors import ArtifactBadSignature, ArtifactWrongKeyType
from gapferry.common.errors import UsageProblem

__all__ = ["key_kind", "load_verify_key", "sign_manifest", "verify_manifest"]

_P256 = "secp256r1"
_KEY_REMEDY = "use the PEM public key (BEGIN PUBLIC KEY) of the RSA or ECDSA P-256 key that signs the artifacts"

VerifyKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def load_verify_key(pem: bytes) -> VerifyKey:
    """Parse a PEM public key usable for artifact signatures.

    Raises:
        ArtifactWrongKeyType: not a PEM public key, or not RSA / ECDSA P-256.
    """
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ArtifactWrongKeyType(
            "verification key is not a PEM public key (BEGIN PUBLIC KEY)", remedy=_KEY_REMEDY
        ) from e
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != _P256:
            raise ArtifactWrongKeyType(
                f"verification key is ECDSA {key.curve.name}; Mender Artifacts use only P-256",
                remedy=_KEY_REMEDY,
            )
        return key
    raise ArtifactWrongKeyType(
        f"unsupported public key type {type(key).__name__}: Mender Artifacts are signed with RSA or ECDSA P-256",
        remedy=_KEY_REMEDY,
    )


def key_kind(key: VerifyKey) -> str:
    """``rsa-<bits>`` or ``ecdsa-p256``, for messages and inspect output."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return "ecdsa-p256"


def verify_manifest(manifest: bytes, signature_member: bytes, key_pem: bytes) -> str:
    """Verify `signature_member` (the bytes of `manifest.sig`) over `manifest` with `key_pem`.

    Returns the key kind (``rsa-3072``, ``ecdsa-p256``) on success.

    Raises:
        ArtifactWrongKeyType: the key is unusable, or the signature was made by the other kind of key.
        ArtifactBadSignature: not base64, a DER ECDSA signature, PSS, or simply does not verify.
    """
    key = load_verify_key(key_pem)
    try:
        sig = base64.b64decode(signature_member, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ArtifactBadSignature(
            "manifest.sig is not standard base64 (mender-artifact writes padded base64, no newline)"
        ) from e
    if isinstance(key, rsa.RSAPublicKey):
        if len(sig) == 64:
            raise ArtifactWrongKeyType(
                f"signature is an ECDSA P-256 signature (64 bytes) but the verification key is"
                f" RSA-{key.key_size} (mender: crypto/rsa: verification error)",
                remedy=_KEY_REMEDY,
            )
        try:
            key.verify(sig, manifest, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as e:
            raise ArtifactBadSignature(
                "RSA signature over the manifest does not verify with the given key"
                " (expected RSASSA-PKCS1-v1_5 with SHA-256; RSA-PSS is not accepted by Mender)"
                " (mender: crypto/rsa: verification error)"
            ) from e
        return key_kind(key)
    if len(sig) != 64:
        if 68 <= len(sig) <= 72 and sig[0] == 0x30:
            raise ArtifactBadSignature(
                f"ECDSA signature is {len(sig)} bytes of ASN.1 DER; Mender Artifacts need the raw"
                " 64-byte r||s form (mender: signer: invalid ecdsa key size)",
                remedy="re-sign the artifact with mender-artifact or gapferry, which write raw r||s",
            )
        if len(sig) >= 128:
            raise ArtifactWrongKeyType(
                f"signature is {len(sig)} bytes, an RSA signature, but the verification key is"
                f" ECDSA P-256 (mender: signer: invalid ecdsa key size: {len(sig)})",
                remedy=_KEY_REMEDY,
            )
        raise ArtifactBadSignature(
            f"ECDSA signature must be 64 raw bytes (r||s), got {len(sig)}"
            f" (mender: signer: invalid ecdsa key size: {len(sig)})"
        )
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), manifest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as e:
        raise ArtifactBadSignature(
            "ECDSA P-256 signature over the manifest does not verify with the given key"
        ) from e
    return key_kind(key)


def sign_manifest(manifest: bytes, private_key_pem: bytes) -> bytes:
    """Return the bytes to store as `manifest.sig` for `manifest` (base64, no newline).

    Accepts an unencrypted PEM private key: RSA (PKCS#1 or PKCS#8) or ECDSA P-256 (SEC1 or PKCS#8).
    The key never appears in an error message.

    Raises:
        UsageProblem: not a readable unencrypted PEM private key, or not RSA / P-256.
    """
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise UsageProblem(
            "signing key is not an unencrypted PEM private key",
            remedy="give an RSA or ECDSA P-256 private key in PEM form (PKCS#1, SEC1 or PKCS#8)",
            code="bad-signing-key",
        ) from e
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(manifest, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == _P256:
        r, s = decode_dss_signature(key.sign(manifest, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        raise UsageProblem(
            "signing key must be RSA or ECDSA P-256 (Mender Artifacts support no other kind)",
            remedy="generate an RSA-3072 or P-256 key",
            code="bad-signing-key",
        )
    return base64.b64encode(sig)
