"""Table-driven: gapferry's trust decision agrees with ``ssh-keygen -Y verify`` (OpenSSH 9.2).

Each case writes one allowed_signers line, signs with ssh-keygen, then asks both tools at the same
reference time (``-O verify-time``). Both must accept, or both refuse; gapferry's reason is the
expected code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gapferry.common.trust import TrustPolicy, evaluate
from gapferry.fixtures import sshkeys as fx
from gapferry.fixtures.sshkeys import Keyring

pytestmark = pytest.mark.real_tools

MESSAGE = b"manifest bytes\n"
NS = "gapferry-transfer@example.org"


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    expected: str | None  # None: both accept; else gapferry's reason, and ssh-keygen refuses
    at: str = "20250601120000Z"
    signer: str = "plain"  # plain: ed25519 key; cert: alice's certificate; host: host cert
    line_key: str = "plain"  # plain, ca, other, other-ca, cert-plain (alice's raw key)
    principals: str = "signer@example.org"
    principal: str = "signer@example.org"  # ssh-keygen -I
    sign_ns: str = NS
    options: dict[str, str] = field(default_factory=dict)


CASES = [
    Case(name="plain key, no options", expected=None),
    Case(name="other key not trusted", expected="untrusted-signer", line_key="other"),
    Case(name="signed for another namespace", expected="wrong-namespace", sign_ns="other"),
    Case(name="namespaces= matches", expected=None, options={"namespaces": NS}),
    Case(name="namespaces= pattern", expected=None, options={"namespaces": "file,gapferry-*"}),
    Case(
        name="namespaces= excludes", expected="wrong-namespace", options={"namespaces": "file,git"}
    ),
    Case(
        name="namespaces= negated",
        expected="wrong-namespace",
        options={"namespaces": f"*,!{NS}"},
    ),
    Case(
        name="valid-after: one second early",
        expected="outside-validity",
        at="20241231235959Z",
        options={"valid_after": "20250101Z"},
    ),
    Case(
        name="valid-after: exactly at",
        expected=None,
        at="20250101000000Z",
        options={"valid_after": "20250101Z"},
    ),
    Case(
        name="valid-before: exactly at",
        expected=None,
        at="20250101000000Z",
        options={"valid_before": "20250101Z"},
    ),
    Case(
        name="valid-before: one second late",
        expected="outside-validity",
        at="20250101000001Z",
        options={"valid_before": "20250101Z"},
    ),
    Case(
        name="valid-after with seconds",
        expected="outside-validity",
        at="20250101120029Z",
        options={"valid_after": "20250101120030Z"},
    ),
    Case(
        name="window, inside",
        expected=None,
        options={"valid_after": "202501010000Z", "valid_before": "20260101UTC"},
    ),
    Case(
        name="local time form, well inside",
        expected=None,
        at="20250103000000Z",
        options={"valid_after": "20250101"},
    ),
    Case(
        name="local time form, well before",
        expected="outside-validity",
        at="20241229000000Z",
        options={"valid_after": "20250101"},
    ),
    Case(
        name="cert: inside validity",
        expected=None,
        principal="alice@example.org",
        signer="cert",
        line_key="ca",
        principals="*@example.org",
    ),
    Case(
        name="cert: one second before valid",
        expected="outside-validity",
        at="20241231235959Z",
        principal="alice@example.org",
        signer="cert",
        line_key="ca",
        principals="*@example.org",
    ),
    Case(
        name="cert: first second valid",
        expected=None,
        at="20250101000000Z",
        principal="alice@example.org",
        signer="cert",
        line_key="ca",
        principals="*@example.org",
    ),
    Case(
        name="cert: last second valid",
        expected=None,
        at="20251231235959Z",
        principal="alice@example.org",
        signer="cert",
        line_key="ca",
        principals="*@example.org",
    ),
    Case(
        name="cert: valid-before is exclusive",
        expected="outside-validity",
        at="20260101000000Z",
        principal="alice@example.org",
        signer="cert",
        line_key="ca",
        principals="*@example.org",
    ),
    Case(
        name="cert: principal pattern matches one",
        expected=None,
        signer="cert",
        line_key="ca",
        principals="ops@*",
        principal="ops@example.org",
    ),
    Case(
        name="cert: principals do not match line",
        expected="untrusted-signer",
        signer="cert",
        line_key="ca",
        principals="bob@example.org",
        principal="alice@example.org",
    ),
    Case(
        name="cert: line negates the principals",
        expected="untrusted-signer",
        signer="cert",
        line_key="ca",
        principals="*,!alice@example.org,!ops@example.org",
        principal="alice@example.org",
    ),
    Case(
        name="cert: another CA",
        expected="untrusted-signer",
        signer="cert",
        line_key="other-ca",
        principals="*@example.org",
        principal="alice@example.org",
    ),
    Case(
        name="cert: CA line restricted to other namespace",
        expected="wrong-namespace",
        principal="alice@example.org",
        options={"namespaces": "file"},
        signer="cert",
        line_key="ca",
        principals="*@example.org",
    ),
    Case(
        name="cert: CA line expired",
        expected="outside-validity",
        principal="alice@example.org",
        options={"valid_before": "20250301Z"},
        signer="cert",
        line_key="ca",
        principals="*@example.org",
    ),
    Case(
        name="cert: CA key as a plain line is not a CA",
        expected="untrusted-signer",
        signer="cert",
        line_key="ca-no-flag",
        principals="*@example.org",
        principal="alice@example.org",
    ),
    Case(
        name="cert: host certificate refused",
        expected="untrusted-signer",
        signer="host",
        line_key="ca",
        principals="*@example.org",
        principal="alice@example.org",
    ),
    Case(
        # OpenSSH never matches a certificate signature against its key's plain line.
        name="cert: plain line of the certified key does not match",
        expected="untrusted-signer",
        signer="cert",
        line_key="cert-plain",
        principals="alice@example.org",
        principal="alice@example.org",
    ),
]


def _line(keyring: Keyring, case: Case) -> str:
    key_line = {
        "plain": keyring.keys["ed25519"].public_line(),
        "other": keyring.other.public_line(),
        "ca": keyring.ca.public_line(),
        "ca-no-flag": keyring.ca.public_line(),
        "other-ca": keyring.other_ca.public_line(),
        "cert-plain": keyring.cert_key.public_line(),
    }[case.line_key]
    return fx.allowed_signers_line(
        case.principals,
        key_line,
        cert_authority=case.line_key in ("ca", "other-ca"),
        namespaces=case.options.get("namespaces"),
        valid_after=case.options.get("valid_after"),
        valid_before=case.options.get("valid_before"),
    )


@pytest.fixture(scope="module")
def signatures(keyring: Keyring) -> dict[tuple[str, str], bytes]:
    out = {}
    for signer, path in (
        ("plain", keyring.keys["ed25519"].private),
        ("cert", keyring.cert_key.certificate),
        ("host", keyring.host_cert_key.certificate),
    ):
        for ns in (NS, "other"):
            out[signer, ns] = fx.ssh_keygen_sign(path, MESSAGE, ns)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_signing_agrees_with_ssh_keygen(
    keyring: Keyring, signatures: dict[tuple[str, str], bytes], tmp_path: Path, case: Case
) -> None:
    line = _line(keyring, case)
    trust = fx.write_allowed_signers(tmp_path / "allowed_signers", [line])
    signature = signatures[case.signer, case.sign_ns]
    now = datetime.strptime(case.at, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)

    openssh_ok, out = fx.ssh_keygen_verify(
        allowed_signers=trust,
        principal=case.principal,
        namespace=NS,
        message=MESSAGE,
        signature=signature,
        verify_time=case.at,
    )
    result = evaluate(
        MESSAGE, [signature], policy=TrustPolicy.from_file(trust), namespace=NS, now=now
    )

    (check,) = result.checks
    assert openssh_ok == (case.expected is None), out
    assert check.ok == (case.expected is None), check.detail
    assert check.reason == case.expected
    assert result.satisfied == (case.expected is None)
