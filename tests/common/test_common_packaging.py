"""Issue 2, item 1: the package ships its type information, and the README opens with exactly the
two commands a fresh machine needs, the second of which is what CI runs."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "package", ["gapferry.common", "gapferry.connected", "gapferry.isolated", "gapferry.fixtures"]
)
def test_every_subpackage_is_typed(package: str) -> None:
    assert importlib.resources.files(package).joinpath("py.typed").is_file()


def _opening_commands() -> list[str]:
    """The fenced blocks before the README's first section heading."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    opening = text.split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", opening, flags=re.DOTALL)]


def test_readme_opens_with_two_commands() -> None:
    install, tests = _opening_commands()
    for command in (install, tests):
        assert "\n" not in command, command
    assert "apt-get install" in install
    assert "pip install ." in install
    assert install.endswith("gapferry demo")
    assert tests.endswith("bash tests/run.sh")


def test_ci_runs_the_readmes_test_command_and_it_runs_everything() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^exec bash tests/run\.sh\b", ci, flags=re.MULTILINE), ci
    run = (REPO / "tests" / "run.sh").read_text(encoding="utf-8")
    for step in (
        "apt-get install",
        "ruff check .",
        "ruff format --check .",
        "mypy -p gapferry",
        "mypy tests",
        "pytest",
    ):
        assert step in run, step
