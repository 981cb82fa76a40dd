"""Trust policy: which detached SSHSIG signatures count, and whether enough of them do.

`evaluate` is pure (no disk, no network, the reference time is an argument; STYLE.md practice
1). For each signature it does what ``ssh-keygen -Y verify`` of OpenSSH 9.2 does
(``sshsig.c``: ``sshsig_wrap_verify``, ``check_allowed_keys_line``; ``sshkey.c``:
``sshkey_cert_check_authority``):

1. the signature parses and was made for ``namespace`` (``wrong-namespace``) and verifies over
   the exact message bytes with sha256/sha512 (``bad-signature``; SHA-1 RSA refused);
2. some ``allowed_signers`` line matches: a plain-key line with the same (plain) key, or a
   ``cert-authority`` line whose key signed the certificate (a certificate never matches the
   plain line of its certified key); otherwise ``untrusted-signer``;
3. for a ``cert-authority`` line: a *user* certificate, ``valid_after <= now < valid_before``
   (``outside-validity``), and at least one certificate principal matching the line's principal
   patterns (``untrusted-signer``);
4. the line's ``namespaces=`` list matches ``namespace`` (``wrong-namespace``);
5. the line's ``valid-after <= now <= valid-before`` (``outside-validity``).

A threshold policy then needs *m distinct* trusted keys: the same key signing twice counts once
(a certificate counts as its certified key). `require` turns a result into a pass or an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Final

from gapferry.common.allowed_signers import AllowedSigner, parse_allowed_signers
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.common.limits import DEFAULT_LIMITS, Limits
from gapferry.common.sshsig import SshSig, parse_armored, verify_cryptographically

__all__ = [
    "SignatureCheck",
    "TrustFailure",
    "TrustPolicy",
    "TrustResult",
    "evaluate",
    "require",
]

#: When several signatures fail and none is trusted, the error code is the first of these found.
_SEVERITY: Final = ("bad-signature", "wrong-namespace", "outside-validity", "untrusted-signer")


@dataclass(frozen=True, kw_only=True)
class TrustPolicy:
    """The trusted signers (an ``allowed_signers`` file) and how many distinct keys must sign.

    Raises (on construction):
        UsageProblem: code ``bad-threshold`` for a threshold below 1, ``empty-trust`` for a
            policy without signers (it would trust nothing).
    """

    signers: tuple[AllowedSigner, ...]
    threshold: int = 1

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise UsageProblem(
                f"a signature threshold must be at least 1, got {self.threshold}",
                remedy="Pass --threshold 1 or more.",
                code="bad-threshold",
            )
        if not self.signers:
            raise UsageProblem(
                "the trust policy lists no signers, so nothing could ever verify",
                remedy="Add the signers' keys to the allowed_signers file.",
                code="empty-trust",
            )

    @classmethod
    def from_text(
        cls, text: str, *, threshold: int = 1, source: str = "allowed_signers"
    ) -> TrustPolicy:
        """Build a policy from ``allowed_signers`` text.

        Raises:
            InvalidData: code ``bad-allowed-signers`` (see `parse_allowed_signers`).
            UsageProblem: as the constructor.
        """
        return cls(signers=tuple(parse_allowed_signers(text, source=source)), threshold=threshold)

    @classmethod
    def from_file(
        cls, path: Path, *, threshold: int = 1, limits: Limits = DEFAULT_LIMITS
    ) -> TrustPolicy:
        """Read an ``allowed_signers`` file (at most ``limits.allowed_signers_bytes``).

        Raises:
            UsageProblem: code ``trust-file-missing`` when it cannot be read.
            InvalidData: code ``bad-allowed-signers`` when too large, not UTF-8 or malformed.
        """
        try:
            with Path(path).open("rb") as f:
                data = f.read(limits.allowed_signers_bytes + 1)
        except OSError as e:
            raise UsageProblem(
                f"cannot read the trust file {path}: {e.strerror}",
                remedy="Pass --trust with the path of an OpenSSH allowed_signers file.",
                code="trust-file-missing",
            ) from e
        if len(data) > limits.allowed_signers_bytes:
            raise InvalidData(
                f"trust file {path} is larger than {limits.allowed_signers_bytes} bytes",
                remedy="Pass an allowed_signers file, not another file.",
                code="bad-allowed-signers",
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidData(
                f"trust file {path} is not UTF-8 text",
                remedy="Pass an OpenSSH allowed_signers file.",
                code="bad-allowed-signers",
            ) from e
        return cls.from_text(text, threshold=threshold, source=str(path))


@dataclass(frozen=True, kw_only=True)
class SignatureCheck:
    """What was found about one detached signature (index = position in the input)."""

    index: int
    ok: bool
    #: An error code when not ok: ``bad-signature-format``, ``bad-signature``,
    #: ``wrong-namespace``, ``untrusted-signer``, ``outside-validity``.
    reason: str | None
    #: Why, in words (None when ok).
    detail: str | None = None
    #: The matching principal(s): the line's principals, or the certificate's principals that
    #: the cert-authority line allows.
    principal: str | None = None
    key_type: str | None = None
    fingerprint: str | None = None
    #: key_id, serial, principals, valid_after, valid_before, ca_key_type, ca_fingerprint.
    certificate: dict[str, object] | None = None
    #: ``source:line`` of the allowed_signers line that made this signature trusted.
    matched_line: str | None = None
    valid_after: datetime | None = None
    valid_before: datetime | None = None
    namespace: str | None = None
    hash_alg: str | None = None
    signature_algorithm: str | None = None
    #: Set when an earlier signature (that index) is by the same key: this one does not count.
    duplicate_of: int | None = None

    @property
    def counted(self) -> bool:
        return self.ok and self.duplicate_of is None

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "ok": self.ok,
            "counted": self.counted,
            "reason": self.reason,
            "detail": self.detail,
            "principal": self.principal,
            "key_type": self.key_type,
            "fingerprint": self.fingerprint,
            "certificate": self.certificate,
            "matched_line": self.matched_line,
            "valid_after": self.valid_after.isoformat() if self.valid_after else None,
            "valid_before": self.valid_before.isoformat() if self.valid_before else None,
            "namespace": self.namespace,
            "hash_alg": self.hash_alg,
            "signature_algorithm": self.signature_algorithm,
            "duplicate_of": self.duplicate_of,
        }

    def describe(self) -> str:
        """One line for people: ``#0 ok alice (ssh-ed25519 SHA256:...)`` or why it failed."""
        who = f"{self.key_type} {self.fingerprint}" if self.fingerprint else "unreadable"
        if self.ok and self.duplicate_of is not None:
            return f"#{self.index} same key as #{self.duplicate_of}, counted once ({who})"
        if self.ok:
            return f"#{self.index} trusted: {self.principal} ({who})"
        return f"#{self.index} {self.reason}: {self.detail} ({who})"


@dataclass(frozen=True, kw_only=True)
class TrustResult:
    """Every signature's check and whether the threshold of distinct trusted keys is met."""

    checks: tuple[SignatureCheck, ...]
    distinct_trusted: int
    threshold: int
    satisfied: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "satisfied", self.distinct_trusted >= self.threshold)

    def to_json(self) -> dict[str, object]:
        return {
            "satisfied": self.satisfied,
            "distinct_trusted": self.distinct_trusted,
            "threshold": self.threshold,
            "signatures": [c.to_json() for c in self.checks],
        }


class TrustFailure(InvalidData):
    """The signatures do not satisfy the trust policy; ``result`` says why, per signature."""

    def __init__(self, message: str, *, remedy: str, code: str, result: TrustResult) -> None:
        super().__init__(message, remedy=remedy, code=code)
        self.result = result


def _epoch(when: datetime) -> int:
    return math.floor(when.timestamp())


def _match_line(
    line: AllowedSigner, sig: SshSig, *, namespace: str, now_s: int
) -> tuple[str | None, str]:
    """Check one matching line. Returns ``(None, principal)`` or ``(failure code, why)``."""
    cert = sig.certificate
    principal = line.principals_text
    if line.cert_authority and cert is not None:
        if not cert.user_certificate:
            return "untrusted-signer", f"certificate {cert.key_id!r} is a host certificate"
        if now_s < cert.valid_after_epoch:
            return "outside-validity", f"certificate {cert.key_id!r} is not yet valid"
        if now_s >= cert.valid_before_epoch:
            return "outside-validity", f"certificate {cert.key_id!r} has expired"
        if not cert.principals:
            return "untrusted-signer", f"certificate {cert.key_id!r} lists no principals"
        allowed = [p for p in cert.principals if line.allows_principal(p)]
        if not allowed:
            return (
                "untrusted-signer",
                f"certificate principals {', '.join(cert.principals)} do not match "
                f"{principal!r} at {line.where()}",
            )
        principal = ",".join(allowed)
    if not line.allows_namespace(namespace):
        return (
            "wrong-namespace",
            f"{line.where()} allows namespaces {','.join(line.namespaces or ())!r}, "
            f"not {namespace!r}",
        )
    if line.valid_after is not None and now_s < _epoch(line.valid_after):
        return (
            "outside-validity",
            f"{line.where()} is valid only from {line.valid_after.isoformat()}",
        )
    if line.valid_before is not None and now_s > _epoch(line.valid_before):
        return (
            "outside-validity",
            f"{line.where()} was valid only until {line.valid_before.isoformat()}",
        )
    return None, principal


def _line_matches_key(line: AllowedSigner, sig: SshSig) -> bool:
    """OpenSSH ``sshkey_equal``: a plain line matches only a plain signature key (a certificate
    never matches its certified key's plain line); a CA line matches the certificate's CA."""
    if line.cert_authority:
        return sig.certificate is not None and sig.certificate.signature_key == line.key
    return sig.certificate is None and line.key == sig.public_key


def _check_one(
    index: int,
    data: bytes,
    *,
    message: bytes,
    policy: TrustPolicy,
    namespace: str,
    now_s: int,
    limits: Limits,
) -> tuple[SignatureCheck, bytes | None]:
    """Check one signature; also return the trusted key's identity (its plain blob) if ok."""
    try:
        sig = parse_armored(data, max_bytes=limits.signature_bytes)
    except InvalidData as e:
        return SignatureCheck(index=index, ok=False, reason=e.code, detail=e.message), None
    cert = sig.certificate
    try:
        sig_alg: str | None = sig.signature_algorithm
    except InvalidData:
        sig_alg = None
    found = SignatureCheck(
        index=index,
        ok=False,
        reason=None,
        key_type=cert.cert_type if cert else sig.public_key.key_type,
        fingerprint=sig.public_key.fingerprint,
        certificate=cert.describe() if cert else None,
        namespace=sig.namespace,
        hash_alg=sig.hash_alg,
        signature_algorithm=sig_alg,
    )
    try:
        verify_cryptographically(message, sig, namespace=namespace)
    except InvalidData as e:
        return replace(found, reason=e.code, detail=e.message), None

    failures: list[tuple[str, str]] = []
    for line in policy.signers:
        if not _line_matches_key(line, sig):
            continue
        code, text = _match_line(line, sig, namespace=namespace, now_s=now_s)
        if code is None:
            trusted = replace(
                found,
                ok=True,
                principal=text,
                matched_line=line.where(),
                valid_after=line.valid_after,
                valid_before=line.valid_before,
            )
            return trusted, sig.public_key.blob
        failures.append((code, text))
    if not failures:
        what = (
            f"neither the key nor the certificate's CA ({cert.signature_key.fingerprint})"
            if cert
            else "the key"
        )
        return replace(
            found, reason="untrusted-signer", detail=f"{what} is not in the trust policy"
        ), None
    detail = "; ".join(text for _, text in failures)
    return replace(found, reason=failures[0][0], detail=detail), None


def evaluate(
    message: bytes,
    signatures: Sequence[bytes],
    *,
    policy: TrustPolicy,
    namespace: str,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
) -> TrustResult:
    """Check each armored signature over ``message`` against ``policy`` at time ``now``.

    Pure: no disk, no network. A bad signature is recorded in its `SignatureCheck`, never raised.

    Raises:
        UsageProblem: code ``naive-time`` when ``now`` has no timezone.
        InvalidData: code ``too-many-signatures`` beyond ``limits.signatures``.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise UsageProblem(
            "the reference time must carry a timezone",
            remedy="Pass datetime.now(tz=UTC).",
            code="naive-time",
        )
    if len(signatures) > limits.signatures:
        raise InvalidData(
            f"{len(signatures)} signatures attached, more than the limit of {limits.signatures}",
            remedy="Remove surplus .sig files; a bundle needs only its required signers.",
            code="too-many-signatures",
        )
    now_s = _epoch(now)
    checks: list[SignatureCheck] = []
    seen: dict[bytes, int] = {}
    for index, data in enumerate(signatures):
        check, identity = _check_one(
            index,
            data,
            message=message,
            policy=policy,
            namespace=namespace,
            now_s=now_s,
            limits=limits,
        )
        if identity is not None:
            if identity in seen:
                check = replace(check, duplicate_of=seen[identity])
            else:
                seen[identity] = index
        checks.append(check)
    return TrustResult(checks=tuple(checks), distinct_trusted=len(seen), threshold=policy.threshold)


def require(result: TrustResult) -> None:
    """Pass if ``result`` is satisfied, else raise a `TrustFailure` that lists every signature.

    Raises:
        TrustFailure: code ``unsigned`` (no signatures); ``below-threshold`` (some but fewer
            than ``threshold`` distinct trusted keys); otherwise, with no trusted key, the most
            serious reason found, in this order: ``bad-signature`` (also for unreadable
            signatures), ``wrong-namespace``, ``outside-validity``, ``untrusted-signer``.
    """
    if result.satisfied:
        return
    if not result.checks:
        raise TrustFailure(
            "expected at least one signature, found none",
            remedy="Have it signed (gapferry pack --sign, gapferry cosign, or ssh-keygen -Y sign) "
            "before using it.",
            code="unsigned",
            result=result,
        )
    listing = "; ".join(c.describe() for c in result.checks)
    if result.distinct_trusted > 0:
        raise TrustFailure(
            f"expected {result.threshold} distinct trusted keys, found {result.distinct_trusted} "
            f"of {result.threshold}: {listing}",
            remedy="Have more of the trusted signers co-sign, each with their own key "
            "(gapferry cosign BUNDLE --sign KEY --trust ALLOWED_SIGNERS).",
            code="below-threshold",
            result=result,
        )
    reasons = {
        "bad-signature" if c.reason == "bad-signature-format" else (c.reason or "")
        for c in result.checks
    }
    code = next((r for r in _SEVERITY if r in reasons), "untrusted-signer")
    raise TrustFailure(
        f"expected a signature by a trusted key, found none of {len(result.checks)} "
        f"(needs {result.threshold} distinct): {listing}",
        remedy={
            "bad-signature": "The data or a signature was altered; do not use it. Obtain it again.",
            "wrong-namespace": "The signature was made for another kind of data; re-sign for this one.",
            "outside-validity": "The key or certificate is not valid at this time; check the "
            "clock, renew the certificate or update allowed_signers.",
            "untrusted-signer": "Check that the signer's key (or its CA) is in the allowed_signers "
            "file you trust.",
        }[code],
        code=code,
        result=result,
    )
