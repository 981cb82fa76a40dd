"""The two error families and their exit codes (common/errors.py, common/cliutil.py)."""

from __future__ import annotations

from gapferry.common.cliutil import exit_code_for
from gapferry.common.errors import EnvironmentFailure, IncompleteBundle, InvalidData, UsageProblem


def test_every_error_carries_a_remedy_and_family() -> None:
    err = InvalidData("digest of x: expected a, found b", remedy="fetch it again", code="digest")
    assert err.diagnostics() == "digest of x: expected a, found b\n  what to do: fetch it again"
    assert err.to_json() == {
        "family": "InvalidData",
        "code": "digest",
        "message": "digest of x: expected a, found b",
        "remedy": "fetch it again",
    }
    assert IncompleteBundle("m", remedy="r").to_json()["family"] == "InvalidData"


def test_exit_codes_by_family() -> None:
    assert exit_code_for(InvalidData("m", remedy="r")) == 1
    assert exit_code_for(UsageProblem("m", remedy="r")) == 2
    assert exit_code_for(IncompleteBundle("m", remedy="r")) == 3
    assert exit_code_for(EnvironmentFailure("m", remedy="r")) == 4
