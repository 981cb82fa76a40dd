"""The two error families and their exit codes (common/errors.py, common/cliutil.py)."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner
from gapferry.common.cliutil import exit_code_for, handle_errors
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


def test_an_unforeseen_os_error_is_exit_4_with_the_path_and_no_traceback() -> None:
    @click.command()
    @click.option("--json", "json_output", is_flag=True)
    @handle_errors
    def pulled(json_output: bool) -> None:
        raise FileNotFoundError(2, "No such file or directory", "/media/stick/gapferry/x")

    text = CliRunner().invoke(pulled, [])
    assert text.exit_code == 4
    assert "No such file or directory (/media/stick/gapferry/x)" in text.output
    assert "Traceback" not in text.output
    doc = CliRunner().invoke(pulled, ["--json"])
    assert doc.exit_code == 4
    assert json.loads(doc.stdout)["error"]["code"] == "os-error"
