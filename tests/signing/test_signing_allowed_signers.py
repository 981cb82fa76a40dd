"""The allowed_signers format (ssh-keygen(1) ALLOWED SIGNERS): what parses, what is refused."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from gapferry.common import sshsig
from gapferry.common.allowed_signers import (
    match_pattern_list,
    parse_absolute_time,
    parse_allowed_signers,
)
from gapferry.common.errors import InvalidData, UsageProblem
from gapferry.common.limits import Limits
from gapferry.common.signers import KeyFileSigner
from gapferry.common.sshkeys import parse_public_key
from gapferry.common.trust import TrustPolicy
from gapferry.fixtures import sshkeys as fx
from gapferry.fixtures.sshkeys import Keyring

pytestmark = pytest.mark.real_tools

NS = "gapferry-transfer@example.org"
MESSAGE = b"m"


def test_signing_allowed_signers_full_syntax(keyring: Keyring) -> None:
    ed = keyring.keys["ed25519"].public_line()
    rsa = keyring.keys["rsa"].public_line()
    ca = keyring.ca.public_line()
    text = (
        "# trust for site A\n"
        "   \t# indented comment\n"
        "\n"
        f"alice@example.org {ed}\n"
        f'"alice@example.org,bob@example.org" namespaces="file,gapferry-*",'
        f'valid-after="20250101",valid-before="20260101Z" {rsa}\n'
        f'*@example.org CERT-AUTHORITY,Namespaces="gapferry-*" {ca}\r\n'
        f'carol@example.org namespaces="a\\"b" {ed}\n'
    )
    lines = parse_allowed_signers(text, source="site-a")

    assert [s.line for s in lines] == [4, 5, 6, 7]
    first, second, third, fourth = lines
    assert first.principals == ("alice@example.org",)
    assert first.key == parse_public_key(ed)
    assert first.key.comment == "ed25519@example.org"
    assert not first.cert_authority
    assert first.namespaces is None
    assert first.valid_after is None
    assert first.where() == "site-a:4"
    assert second.principals == ("alice@example.org", "bob@example.org")
    assert second.namespaces == ("file", "gapferry-*")
    assert second.valid_before == datetime(2026, 1, 1, tzinfo=UTC)
    assert second.valid_after is not None
    assert second.allows_namespace(NS)
    assert not second.allows_namespace("git")
    assert third.cert_authority
    assert third.allows_principal("anyone@example.org")
    assert not third.allows_principal("anyone@example.com")
    assert fourth.namespaces == ('a"b',)


def test_signing_ssh_keygen_accepts_the_same_file(keyring: Keyring, tmp_path: Path) -> None:
    key = keyring.keys["ed25519"]
    text = (
        f'"ops@example.org,alice@example.org" cert-authority {keyring.ca.public_line()}\n'
        f'alice@example.org namespaces="file,gapferry-*",valid-after="20200101" {key.public_line()}\n'
    )
    path = tmp_path / "allowed_signers"
    path.write_text(text, encoding="utf-8")
    TrustPolicy.from_file(path)
    signature = sshsig.sign(MESSAGE, signer=KeyFileSigner(key.private), namespace=NS)
    ok, out = fx.ssh_keygen_verify(
        allowed_signers=path,
        principal="alice@example.org",
        namespace=NS,
        message=MESSAGE,
        signature=signature,
    )
    assert ok, out


BAD_LINES = [
    ("missing key", "alice@example.org", "missing key"),
    ("unquoted option value", "alice@example.org namespaces=file {key}", "missing start quote"),
    ("short time", 'alice@example.org valid-after="2025" {key}', 'invalid "valid-after" time'),
    (
        "window reversed",
        'alice@example.org valid-after="20260101Z",valid-before="20250101Z" {key}',
        "before",
    ),
    ("unknown option", 'alice@example.org no-touch-required="x" {key}', "unsupported option"),
    (
        "namespaces twice",
        'alice@example.org namespaces="a",namespaces="b" {key}',
        'multiple "namespaces"',
    ),
    ("space in options", 'alice@example.org cert-authority, namespaces="a" {key}', "bad key"),
    ("broken key", "alice@example.org ssh-ed25519 AAAAC3Nza", "bad key"),
    ("unterminated principals", '"alice@example.org {key}', "missing end quote"),
    ("certificate as key", "alice@example.org {cert}", "cert-authority"),
]


@pytest.mark.parametrize(("name", "line", "fragment"), BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_signing_bad_allowed_signers_line_refused_with_line_number(
    keyring: Keyring, tmp_path: Path, name: str, line: str, fragment: str
) -> None:
    key = keyring.keys["ed25519"]
    bad = line.format(
        key=key.public_line(),
        cert=keyring.cert_key.certificate.read_text(encoding="ascii").strip(),
    )
    text = f"# header\nbob@example.org {keyring.other.public_line()}\n{bad}\n"

    with pytest.raises(InvalidData) as excinfo:
        parse_allowed_signers(text, source="trust.txt")

    assert excinfo.value.code == "bad-allowed-signers"
    assert excinfo.value.message.startswith("trust.txt:3: ")
    assert fragment in excinfo.value.message
    # OpenSSH does not trust the key through such a line either.
    path = tmp_path / "allowed_signers"
    path.write_text(text, encoding="utf-8")
    ok, _ = fx.ssh_keygen_verify(
        allowed_signers=path,
        principal="alice@example.org",
        namespace=NS,
        message=MESSAGE,
        signature=fx.ssh_keygen_sign(key.private, MESSAGE, NS),
    )
    assert not ok


def test_signing_impossible_date_refused_where_openssh_normalises(keyring: Keyring) -> None:
    """Deliberately stricter: OpenSSH's strptime/timegm turn 2025-02-30 into 2025-03-02."""
    line = f'alice@example.org valid-after="20250230Z" {keyring.keys["ed25519"].public_line()}'
    with pytest.raises(InvalidData) as excinfo:
        parse_allowed_signers(line)
    assert excinfo.value.code == "bad-allowed-signers"
    assert 'invalid "valid-after" time' in excinfo.value.message


def test_signing_trust_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem) as usage:
        TrustPolicy.from_file(tmp_path / "absent")
    assert usage.value.code == "trust-file-missing"
    big = tmp_path / "big"
    big.write_bytes(b"#" * 100)
    with pytest.raises(InvalidData) as invalid:
        TrustPolicy.from_file(big, limits=Limits(allowed_signers_bytes=99))
    assert invalid.value.code == "bad-allowed-signers"
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidData) as invalid:
        TrustPolicy.from_file(binary)
    assert invalid.value.code == "bad-allowed-signers"


@pytest.mark.parametrize(
    ("string", "patterns", "expected"),
    [
        ("alice@example.org", "alice@example.org", 1),
        ("alice@example.org", "*@example.org", 1),
        ("alice@example.org", "?lice@example.org", 1),
        ("alice@example.org", "bob@example.org", 0),
        ("alice@example.org", "*,!alice@*", -1),
        ("alice@example.org", "!bob@*", 0),
        ("a.b", "a?b", 1),
        ("axb", "a.b", 0),
    ],
)
def test_signing_pattern_lists_match_openssh(string: str, patterns: str, expected: int) -> None:
    assert match_pattern_list(string, patterns) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20250102Z", datetime(2025, 1, 2, tzinfo=UTC)),
        ("202501021314z", datetime(2025, 1, 2, 13, 14, tzinfo=UTC)),
        ("20250102131415UTC", datetime(2025, 1, 2, 13, 14, 15, tzinfo=UTC)),
    ],
)
def test_signing_absolute_times(text: str, expected: datetime) -> None:
    assert parse_absolute_time(text) == expected


@pytest.mark.parametrize("text", ["2025010", "2025-01-01", "20251301Z", "19700101Z", "Z", ""])
def test_signing_bad_absolute_times(text: str) -> None:
    with pytest.raises(ValueError, match=r"time|month|day|after 1970"):
        parse_absolute_time(text)
