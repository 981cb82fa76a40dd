"""The atheris harness (tests/fuzz/atheris_harness.py) runs with one command, and can fail
(issue 10, ADR 0091).

CI has no atheris (a native wheel, minutes per useful run); it runs the harness's ``--smoke``
mode, which feeds the same targets mutated seeds and random bytes, and checks that the harness
reports a finding and says clearly when atheris is missing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from gapferry.common.errors import InvalidData
from gapferry.common.trust import TrustPolicy

HARNESS = Path(__file__).resolve().with_name("atheris_harness.py")


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gapferry_atheris_harness", HARNESS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fuzz_harness_smoke_runs_with_one_command() -> None:
    p = subprocess.run(
        [sys.executable, str(HARNESS), "--smoke", "600"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "smoke: 600 inputs (mutated seeds and random bytes), no finding"


def test_fuzz_harness_seeds_are_valid_inputs(tmp_path: Path) -> None:
    """Every seed is accepted by its target: the mutations start from inputs that reach the
    deep checks, not from noise refused at the first byte."""
    h = _harness()
    corpus = h.seeds(tmp_path)
    assert sorted(s[0] for s in corpus) == list(range(len(h.TARGETS)))
    for data in corpus:
        h.TARGETS[data[0]](data[1:])


def test_fuzz_harness_reports_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A target that raises anything but InvalidData is a finding, not a refusal."""
    h = _harness()

    def broken(data: bytes) -> None:
        if len(data) > 3:
            raise IndexError("list index out of range")
        raise InvalidData("short", remedy="-", code="short")

    monkeypatch.setattr(h, "TARGETS", [broken] * len(h.TARGETS))
    with pytest.raises(AssertionError, match=r"finding on input .*IndexError"):
        h.smoke(200, seed=1)
    h.one_input(b"\x00ab")  # refused with InvalidData: no finding


def test_fuzz_harness_without_atheris_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    h = _harness()
    monkeypatch.setattr(h, "atheris", None)
    assert h.main([str(HARNESS), "-atheris_runs=10"]) == 2
    err = capsys.readouterr().err
    assert "atheris is not installed" in err
    assert ".venv/bin/pip install atheris" in err


@pytest.mark.parametrize("line", ["a \x1c", "-\t\x0b", "a \x0c\n"])
def test_fuzz_finding_allowed_signers_with_other_whitespace_is_refused(line: str) -> None:
    """Found by the atheris harness (2026-12-02): a line with whitespace other than space and
    tab (\\x0b, \\x0c, \\x1c-\\x1f) raised IndexError instead of being refused."""
    with pytest.raises(InvalidData) as e:
        TrustPolicy.from_text(line)
    assert e.value.code == "bad-allowed-signers"
