"""Crash consistency in CI: a small seeded sample of `bench/crash.py`'s trials (issue 10).

Each trial kills the real `gapferry pack`, `apply` or `ingest` subprocess with SIGKILL at a
seeded random point (a random time, or a random number of visible effects plus jitter), judges what it left on the medium (refused or complete, never a
half-written bundle accepted), runs the command again (it must complete), and checks that every
status reached the Mender stand-in exactly once, in order (strict mode). The benchmark runs the
same code with 100+ trials: ``.venv/bin/python bench/crash.py --trials 100``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from gapferry.fixtures.connected_world import World

pytestmark = [pytest.mark.real_tools, pytest.mark.slow]

TRIALS = 3
#: Draws k = 2 of 3 effects for the progress-triggered trial of each command: a kill mid-work
#: (k = 3, after the last effect, can come after a fast run has ended).
SEED = 25


def _crash_module() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "crash.py"
    spec = importlib.util.spec_from_file_location("gapferry_bench_crash", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("command", ["pack", "apply", "ingest"])
def test_attack_kill_minus_9_at_random_points_then_rerun(command: str, tmp_path: Path) -> None:
    crash = _crash_module()
    trials = crash.run_trials(command, trials=TRIALS, seed=SEED, base=tmp_path)
    assert len(trials) == TRIALS
    problems = [f"#{t.index} kill at {t.delay}s: {t.problems}" for t in trials if not t.ok]
    assert problems == []
    assert all(t.rerun_exit == 0 for t in trials)
    # Whatever a killed run left is either refused by the verifier or complete and valid.
    for t in trials:
        for name, verdict in t.left_behind.items():
            assert verdict in ("valid", "incomplete", "missing-file", "truncated-file"), (
                name,
                verdict,
            )
    assert any(t.killed for t in trials), "every sampled kill came after the command finished"
    # The progress-triggered trial (#1) kills after some effects are visible: mid-work, where a
    # half-written bundle or a half-reported status would show.
    assert any(t.after_effects for t in trials), [(t.trigger, t.progress_at_kill) for t in trials]
    # How far each killed run had got is measured (statuses received, devices updated) and
    # never exceeds what a full run does: a re-run that reported again would show up here too.
    for t in trials:
        # 3 devices: pack's `installing`, ingest's final status (ADR 0046), apply's devices.
        assert t.progress_total == 3, t
        assert 0 <= t.progress_at_kill <= t.progress_total, t


def test_attack_half_written_result_left_by_a_killed_apply_does_not_fail_ingest(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    try:
        dep_id = world.release()
        packed = world.pack()
        assert packed.bundle_path is not None
        half = world.write_result(packed.bundle_path)
        (half / "COMPLETE").unlink()  # what SIGKILL before the marker leaves
        world.write_result(packed.bundle_path)  # the re-run's complete result
        report = world.ingest()
        assert [r.action for r in report.rows if r.bundle == half.name] == ["superseded"]
        assert [s for d, _, s in world.status_puts() if d == dep_id] == ["installing", "success"]
        assert report.ok, report
    finally:
        world.close()
