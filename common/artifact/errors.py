"""Errors raised while reading, verifying, checking or unpacking a Mender Artifact.

Every class is an `InvalidData` with its own stable ``code`` so that callers (and tests) can tell
them apart: an unsigned artifact when a signature is required is a different problem from a bad
signature, and both differ from a corrupt payload. Messages follow the wording of
mender-artifact 3.9 and mender-client 3.4 where one exists
(`../shared/mender/artifact-and-client.md` sections 1.2-1.4 and 3.2), so an operator who searches
for the client's message finds ours too.
"""

from __future__ import annotations

from gapferry.common.errors import InvalidData

__all__ = [
    "ArtifactBadSignature",
    "ArtifactChecksumError",
    "ArtifactError",
    "ArtifactHeaderError",
    "ArtifactIncompatible",
    "ArtifactStructureError",
    "ArtifactTooLarge",
    "ArtifactUnsafePath",
    "ArtifactUnsigned",
    "ArtifactVersionError",
    "ArtifactWrongKeyType",
    "ArtifactZstd",
]

_REPLACE = "the artifact is corrupt or was tampered with; get a fresh copy from its publisher"


class ArtifactError(InvalidData):
    """Base of all artifact errors."""

    code = "artifact-invalid"

    def __init__(self, message: str, *, remedy: str = _REPLACE, code: str | None = None) -> None:
        super().__init__(message, remedy=remedy, code=code)


class ArtifactStructureError(ArtifactError):
    """The outer or an inner tar is malformed, or members are missing, extra or out of order."""

    code = "artifact-structure"


class ArtifactVersionError(ArtifactError):
    """The `version` member names a format other than Mender Artifact v2 or v3."""

    code = "artifact-version"


class ArtifactZstd(ArtifactError):
    """A member is zstd-compressed: Mender 3.x clients (mender-artifact < 3.10) cannot read it."""

    code = "artifact-zstd"


class ArtifactChecksumError(ArtifactError):
    """A manifest line does not match the member's bytes, a file has no manifest line, a listed
    file is absent, or the manifest itself is not in canonical form."""

    code = "artifact-checksum"


class ArtifactHeaderError(ArtifactError):
    """header-info, type-info or meta-data is not the JSON Mender expects."""

    code = "artifact-header"


class ArtifactTooLarge(ArtifactError):
    """A count or size exceeds the configured `Limits`."""

    code = "artifact-too-large"


class ArtifactUnsigned(ArtifactError):
    """A signature is required (a key was given, or ``require_signature``) but there is none."""

    code = "artifact-unsigned"


class ArtifactWrongKeyType(ArtifactError):
    """The verification key is not RSA or ECDSA P-256, or does not match the signature's kind."""

    code = "artifact-wrong-key-type"


class ArtifactBadSignature(ArtifactError):
    """The signature does not verify (wrong key, tampered manifest, PSS, DER-encoded ECDSA)."""

    code = "artifact-bad-signature"


class ArtifactIncompatible(ArtifactError):
    """The artifact does not fit the device: device type or artifact_depends not met."""

    code = "artifact-incompatible"


class ArtifactUnsafePath(ArtifactError):
    """A payload would write outside its destination, or contains a link or a device file."""

    code = "artifact-unsafe-path"
