"""The two error families (STYLE.md practice 4).

- `InvalidData`: hostile or broken input: a bad signature, an expired or replayed bundle, a digest
  mismatch, a path that escapes its folder. Retrying will not help; the input must be replaced.
- `EnvironmentFailure`: the outside world: media, network, a server, a missing tool. The input may
  be fine; fixing the environment and running again may help.

Every error says what was expected, what was found, and what the user can do (`remedy`). Wrap at
each seam with ``raise X(...) from e``. Messages never contain secrets: callers pass names and
fingerprints, never key material, tokens or passphrases.
"""

from __future__ import annotations

__all__ = [
    "EnvironmentFailure",
    "GapferryError",
    "IncompleteBundle",
    "InvalidData",
    "UsageProblem",
]


class GapferryError(Exception):
    """Base of every error gapferry raises on purpose."""

    #: A stable, greppable code for scripts (``--json`` output) and tests.
    code: str = "error"

    def __init__(self, message: str, *, remedy: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        if code is not None:
            self.code = code

    def diagnostics(self) -> str:
        """The message and the remedy, as printed to a person."""
        return f"{self.message}\n  what to do: {self.remedy}"

    def to_json(self) -> dict[str, str]:
        return {
            "family": type(self).family(),
            "code": self.code,
            "message": self.message,
            "remedy": self.remedy,
        }

    @classmethod
    def family(cls) -> str:
        for base in cls.__mro__:
            if base in (InvalidData, EnvironmentFailure, UsageProblem):
                return base.__name__
        return "GapferryError"


class InvalidData(GapferryError):
    """Hostile or broken data: reject it; do not retry with the same input."""

    code = "invalid"


class IncompleteBundle(InvalidData):
    """A bundle without a valid completion marker, or with parts missing: still being written,
    interrupted, or truncated."""

    code = "incomplete"


class EnvironmentFailure(GapferryError):
    """The world outside the data failed: media, network, server, missing tool."""

    code = "environment"


class UsageProblem(GapferryError):
    """The command was called in a way that cannot work (a missing file, a bad option value)."""

    code = "usage"
