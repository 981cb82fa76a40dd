"""The rooms of the house and the doors between them (STYLE.md "The house", ADR 0001).

- isolated/ never imports connected/ or an HTTP client; common/ imports neither side.
- The isolated side's command, run as the technician runs it, loads no connected code and no
  HTTP client.
- Every registered subcommand loads, and the root command answers --version and --help.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from gapferry.common.cli import main

REPO = Path(__file__).resolve().parents[2]

HTTP_CLIENTS = ("httpx", "requests", "aiohttp", "http.client", "urllib.request", "urllib3")
BANNED = {
    "isolated": ("gapferry.connected", *HTTP_CLIENTS),
    "common": ("gapferry.connected", "gapferry.isolated", "gapferry.fixtures", *HTTP_CLIENTS),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # Relative imports could climb out of the room; the house uses absolute imports.
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


@pytest.mark.parametrize("room", sorted(BANNED))
def test_room_imports_nothing_it_must_not(room: str) -> None:
    violations = []
    for path in sorted((REPO / room).rglob("*.py")):
        for lineno, mod in _imports(path):
            if mod.startswith("."):
                violations.append(f"{path.relative_to(REPO)}:{lineno} relative import {mod}")
            elif any(mod == b or mod.startswith(b + ".") for b in BANNED[room]):
                violations.append(f"{path.relative_to(REPO)}:{lineno} imports {mod}")
    assert violations == []


def test_apply_loads_no_connected_code_and_no_http_client() -> None:
    probe = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from gapferry.common.cli import main\n"
        "r = CliRunner().invoke(main, ['apply', '--help'])\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('httpx','requests','aiohttp','urllib3') or m in ('http.client',) "
        "or m.startswith('gapferry.connected'))\n"
        "print(json.dumps({'exit': r.exit_code, 'mods': mods, 'out': r.output[:200]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    )
    result = json.loads(out.stdout)
    assert result["exit"] == 0, result["out"]
    assert result["mods"] == []


def test_every_registered_command_loads() -> None:
    eps = importlib.metadata.entry_points(group="gapferry.commands")
    names = sorted(ep.name for ep in eps)
    assert "apply" in names
    assert "verify" in names
    for ep in eps:
        assert isinstance(ep.load(), click.Command), ep.name


def test_version_and_help() -> None:
    runner = CliRunner()
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0
    assert version.output.startswith("gapferry, version ")
    helptext = runner.invoke(main, ["--help"])
    assert helptext.exit_code == 0
    for name in ("apply", "pack", "ingest", "verify"):
        assert f"  {name} " in helptext.output
    assert "unavailable" not in helptext.output


def test_unknown_command_is_a_usage_error() -> None:
    r = CliRunner().invoke(main, ["no-such-command"])
    assert r.exit_code == 2


def test_help_summaries_match_each_command() -> None:
    """`gapferry --help` lists commands from a table (so it imports none of them); the table must
    say exactly what each command's own help says, and cover every registered command."""
    from gapferry.common.cli import SUMMARIES

    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="gapferry.commands")}
    assert sorted(SUMMARIES) == sorted(eps)
    for name, ep in eps.items():
        cmd = ep.load()
        assert SUMMARIES[name] == cmd.get_short_help_str(limit=1000), name


def test_help_imports_no_command_module() -> None:
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from gapferry.common.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.startswith('gapferry.') and m not in "
        "('gapferry.common', 'gapferry.common.cli')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "[]"


def _complete(words: str, shell: str = "bash") -> str:
    """Ask the installed console script for completions, as the shell's hook does."""
    script = Path(sys.executable).with_name("gapferry")
    assert script.is_file(), f"{script} is missing: pip install -e . in the venv"
    env = {
        "PATH": "/usr/bin:/bin",
        "_GAPFERRY_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    out = subprocess.run([script], env=env, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout


def test_shell_completion_script_and_answers() -> None:
    """`gapferry --help` promises ``eval "$(_GAPFERRY_COMPLETE=bash_source gapferry)"``:
    the script is emitted, and subcommands (registered lazily), nested commands and options
    complete."""
    helptext = CliRunner().invoke(main, ["--help"]).output
    assert 'eval "$(_GAPFERRY_COMPLETE=bash_source gapferry)"' in helptext
    script = Path(sys.executable).with_name("gapferry")
    source = subprocess.run(
        [script],
        env={"PATH": "/usr/bin:/bin", "_GAPFERRY_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "complete -o nosort -F _gapferry_completion gapferry" in source
    assert _complete("gapferry ver").splitlines() == ["plain,verify"]
    commands = {line.split(",", 1)[1] for line in _complete("gapferry ").splitlines()}
    assert {"apply", "audit", "cosign", "custody", "ingest", "pack", "verify"} <= commands
    assert _complete("gapferry custody ").splitlines() == ["plain,add", "plain,show"]
    assert "plain,--threshold" in _complete("gapferry verify --t").splitlines()
