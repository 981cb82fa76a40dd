"""The OpenSSH ``allowed_signers`` trust file, parsed exactly as ``ssh-keygen(1)`` documents it.

Section "ALLOWED SIGNERS" of ssh-keygen(1) (OpenSSH 9.2), with the parsing rules of
``sshsig.c`` (``parse_principals_key_and_options``, ``sshsigopt_parse``) and ``misc.c``
(``parse_absolute_time``, ``match_pattern_list``):

    principals [options] keytype base64-key [comment]

- ``principals``: a comma-separated pattern list (``*``, ``?``, ``!`` negation), optionally in
  double quotes.
- options (comma separated, no spaces outside quotes): ``cert-authority``,
  ``namespaces="pattern-list"``, ``valid-after="YYYYMMDD[HHMM[SS]][Z|UTC]"``,
  ``valid-before="..."``. A time without ``Z``/``UTC`` is local time, as in OpenSSH (which calls
  ``mktime`` with ``tm_isdst = 0``; we do the same). Names are case-insensitive, values quoted.
- blank lines and lines whose first non-blank character is ``#`` are ignored.

One difference on purpose: OpenSSH skips a line it cannot parse (logging an error); gapferry
refuses the whole file, naming the line, so a typo can never silently drop a trust rule.
"""

from __future__ import annotations

import calendar
import dataclasses
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

from gapferry.common.errors import InvalidData
from gapferry.common.sshkeys import PLAIN_TYPES, SshPublicKey, is_certificate_type, parse_public_key

__all__ = [
    "AllowedSigner",
    "match_pattern",
    "match_pattern_list",
    "parse_absolute_time",
    "parse_allowed_signers",
]

_MAX_LINES: Final = 10_000
_WS: Final = " \t"
_KNOWN_KEY_WORDS: Final = PLAIN_TYPES | {"ssh-dss", "ssh-dss-cert-v01@openssh.com"}


@dataclass(frozen=True, kw_only=True)
class AllowedSigner:
    """One line of an ``allowed_signers`` file."""

    #: The principals pattern list split at commas (``!`` negations kept).
    principals: tuple[str, ...]
    cert_authority: bool
    #: The ``namespaces=`` pattern list split at commas, or None (any namespace).
    namespaces: tuple[str, ...] | None
    valid_after: datetime | None
    valid_before: datetime | None
    key: SshPublicKey
    line: int
    source: str = "allowed_signers"
    #: The principals field as written (ssh-keygen -Y find-principals prints this).
    principals_text: str = field(default="", compare=False)

    def allows_principal(self, name: str) -> bool:
        """``match_pattern_list(name, principals) == 1`` (negations win)."""
        return match_pattern_list(name, ",".join(self.principals)) == 1

    def allows_namespace(self, namespace: str) -> bool:
        """True if this line puts no namespace restriction, or the restriction matches."""
        if self.namespaces is None:
            return True
        return match_pattern_list(namespace, ",".join(self.namespaces)) == 1

    def where(self) -> str:
        return f"{self.source}:{self.line}"


@lru_cache(maxsize=1024)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def match_pattern(string: str, pattern: str) -> bool:
    """OpenSSH ``match_pattern``: ``*`` any run, ``?`` one character, case-sensitive."""
    return _pattern_regex(pattern).fullmatch(string) is not None


def match_pattern_list(string: str, patterns: str) -> int:
    """OpenSSH ``match_pattern_list``: 1 on a positive match, -1 if a ``!pattern`` matched, 0 else."""
    got_positive = 0
    for item in patterns.split(","):
        negated = item.startswith("!")
        sub = item[1:] if negated else item
        if len(sub) >= 1023:
            return 0
        if match_pattern(string, sub):
            if negated:
                return -1
            got_positive = 1
    return got_positive


def parse_absolute_time(value: str) -> datetime:
    """OpenSSH ``parse_absolute_time``: ``YYYYMMDD[HHMM[SS]]`` then optional ``Z``/``UTC``.

    Raises:
        ValueError: not one of those forms, or not a real date.
    """
    s = value
    utc = False
    if len(s) > 1 and s[-1] in "Zz":
        utc, s = True, s[:-1]
    elif len(s) > 3 and s[-3:].upper() == "UTC":
        utc, s = True, s[:-3]
    if len(s) not in (8, 12, 14) or not s.isascii() or not s.isdigit():
        raise ValueError(f"time {value!r} is not YYYYMMDD[HHMM[SS]][Z]")
    year, month, day = int(s[0:4]), int(s[4:6]), int(s[6:8])
    hour = int(s[8:10]) if len(s) >= 12 else 0
    minute = int(s[10:12]) if len(s) >= 12 else 0
    second = int(s[12:14]) if len(s) == 14 else 0
    datetime(year, month, day, hour, minute, second)  # raises ValueError if not a real time
    fields = (year, month, day, hour, minute, second, 0, 0, 0)
    epoch = calendar.timegm(fields) if utc else int(time.mktime(fields))
    if epoch <= 0:
        raise ValueError(f"time {value!r} is not after 1970")
    return datetime.fromtimestamp(epoch, tz=UTC)


def _dequote(s: str, pos: int) -> tuple[str, int]:
    """OpenSSH ``opt_dequote``: a double-quoted value, ``\\"`` escapes a quote."""
    if pos >= len(s) or s[pos] != '"':
        raise ValueError("missing start quote")
    pos += 1
    out = []
    while pos < len(s) and s[pos] != '"':
        if s[pos] == "\\" and pos + 1 < len(s) and s[pos + 1] == '"':
            pos += 1
        out.append(s[pos])
        pos += 1
    if pos >= len(s):
        raise ValueError("missing end quote")
    return "".join(out), pos + 1


def _parse_options(
    opts: str,
) -> tuple[bool, tuple[str, ...] | None, datetime | None, datetime | None]:
    """OpenSSH ``sshsigopt_parse``. Raises ValueError with OpenSSH's reason."""
    ca = False
    namespaces: tuple[str, ...] | None = None
    after: datetime | None = None
    before: datetime | None = None
    pos = 0
    while pos < len(opts):
        rest = opts[pos:]
        low = rest.lower()
        if low.startswith("cert-authority") and (
            len(rest) == len("cert-authority") or rest[len("cert-authority")] == ","
        ):
            ca = True
            pos += len("cert-authority")
        elif low.startswith("namespaces="):
            if namespaces is not None:
                raise ValueError('multiple "namespaces" clauses')
            value, pos = _dequote(opts, pos + len("namespaces="))
            namespaces = tuple(value.split(","))
        elif low.startswith(("valid-after=", "valid-before=")):
            name = "valid-after" if low.startswith("valid-after=") else "valid-before"
            if (after if name == "valid-after" else before) is not None:
                raise ValueError(f'multiple "{name}" clauses')
            value, pos = _dequote(opts, pos + len(name) + 1)
            try:
                when = parse_absolute_time(value)
            except ValueError as e:
                raise ValueError(f'invalid "{name}" time: {e}') from e
            if name == "valid-after":
                after = when
            else:
                before = when
        else:
            raise ValueError(f"unsupported option {rest.split(',', 1)[0]!r}")
        if pos < len(opts):
            if opts[pos] != ",":
                raise ValueError("unexpected end-of-options")
            pos += 1
    if after is not None and before is not None and before <= after:
        raise ValueError('"valid-before" time is before "valid-after"')
    return ca, namespaces, after, before


def _advance_past_options(s: str) -> int:
    """OpenSSH ``sshkey_advance_past_options``: the index of the first blank outside quotes."""
    quoted = False
    i = 0
    while i < len(s) and (quoted or s[i] not in _WS):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] == '"':
            i += 1
        elif s[i] == '"':
            quoted = not quoted
        i += 1
    if quoted:
        raise ValueError("unterminated quote in options")
    return i


def _first_word(text: str) -> str:
    """`text` up to its first blank, where only space and tab are blanks (as in OpenSSH's
    ``strcspn(cp, " \\t")``): `str.split()` would also cut at other Unicode whitespace."""
    cut = len(text)
    for ws in _WS:
        idx = text.find(ws)
        if 0 <= idx < cut:
            cut = idx
    return text[:cut]


def _parse_line(line: str) -> AllowedSigner | None:
    s = line.lstrip(_WS)
    if not s or s.startswith("#"):
        return None
    if s.startswith('"'):
        end = s.find('"', 1)
        if end < 0:
            raise ValueError("principals: missing end quote")
        principals_text, rest = s[1:end], s[end + 1 :]
        if rest and rest[0] not in _WS:
            raise ValueError("principals: expected a blank after the closing quote")
    else:
        principals_text = _first_word(s)
        rest = s[len(principals_text) :]
    if not principals_text:
        raise ValueError("empty principals field")
    rest = rest.lstrip(_WS)
    if not rest:
        raise ValueError("missing key")
    first_word = _first_word(rest)
    opts = ""
    if first_word not in _KNOWN_KEY_WORDS and not is_certificate_type(first_word):
        end = _advance_past_options(rest)
        opts, rest = rest[:end], rest[end:].lstrip(_WS)
        if not rest:
            raise ValueError("missing key")
        first_word = _first_word(rest)
    if is_certificate_type(first_word):
        raise ValueError(
            "a certificate is not a signer key; trust its CA with a cert-authority line"
        )
    key = parse_public_key(rest)
    ca, namespaces, after, before = _parse_options(opts)
    return AllowedSigner(
        principals=tuple(principals_text.split(",")),
        cert_authority=ca,
        namespaces=namespaces,
        valid_after=after,
        valid_before=before,
        key=key,
        line=0,
        principals_text=principals_text,
    )


def parse_allowed_signers(text: str, *, source: str = "allowed_signers") -> list[AllowedSigner]:
    """Parse an ``allowed_signers`` file (ssh-keygen(1) "ALLOWED SIGNERS").

    Raises:
        InvalidData: code ``bad-allowed-signers`` naming ``source:line`` and the reason, for
            any line that OpenSSH would reject or that holds a key gapferry cannot verify (DSA).
    """
    out: list[AllowedSigner] = []
    lines = text.split("\n")
    if len(lines) > _MAX_LINES:
        raise InvalidData(
            f"{source} has {len(lines)} lines, more than {_MAX_LINES}",
            remedy="Split the trust file or remove unused lines.",
            code="bad-allowed-signers",
        )
    for number, raw in enumerate(lines, start=1):
        try:
            entry = _parse_line(raw.rstrip("\r"))
        except InvalidData as e:
            raise InvalidData(
                f"{source}:{number}: bad key: {e.message}",
                remedy="Fix or remove this line (format: principals [options] keytype base64).",
                code="bad-allowed-signers",
            ) from e
        except ValueError as e:
            raise InvalidData(
                f"{source}:{number}: {e}",
                remedy="Fix or remove this line; see ssh-keygen(1), section ALLOWED SIGNERS.",
                code="bad-allowed-signers",
            ) from e
        if entry is not None:
            out.append(dataclasses.replace(entry, line=number, source=source))
    return out
