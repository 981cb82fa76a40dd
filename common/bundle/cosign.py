"""Co-signing after packing: add one detached signature, never touch the manifest
(bundle_spec/SPEC.md section 6.3).
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime
from pathlib import Path

from gapferry.common.bundle.layout import namespace_for, signature_name
from gapferry.common.bundle.read import open_bundle
from gapferry.common.errors import UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS, Limits
from gapferry.common.media.write import copy_to_medium
from gapferry.common.signers import Signer
from gapferry.common.trust import TrustPolicy

__all__ = ["cosign"]


def cosign(
    bundle_dir: Path,
    signer: Signer,
    *,
    policy: TrustPolicy,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
    check_files: bool = True,
) -> Path:
    """Verify the bundle under `policy` (pass the policy you expect it to satisfy *before* your
    signature, typically threshold 1), then add `signer`'s signature as the next
    ``manifest.json.sig.<n>``. Returns the new signature file.

    Raises:
        UsageProblem: ``already-signed`` when this key has signed the bundle already.
        InvalidData, IncompleteBundle: anything `open_bundle` raises (nobody co-signs what
            they could not verify).
    """
    opened = open_bundle(
        Path(bundle_dir), policy=policy, now=now, limits=limits, check_files=check_files
    )
    mine = signer.public_key.fingerprint
    if any(c.fingerprint == mine for c in opened.verified.trust.checks):
        raise UsageProblem(
            f"{opened.path.name} is already signed by {mine}",
            remedy="a second signature by the same key does not count; sign with another key",
            code="already-signed",
        )
    index = len(opened.signature_files) + 1
    if index > limits.signatures:
        raise UsageProblem(
            f"{opened.path.name} already has {limits.signatures} signatures",
            remedy="no more signatures can be attached",
            code="too-many-signatures",
        )
    taken = set(opened.signature_files)
    while signature_name(index) in taken:
        index += 1
    sig = signer.sign_sshsig(opened.verified.raw, namespace_for(opened.kind))
    dst = opened.path / signature_name(index)
    copy_to_medium(io.BytesIO(sig), dst, size=len(sig), sha256=hashlib.sha256(sig).hexdigest())
    return dst
