"""Crash consistency: ``kill -9`` the real ``gapferry pack``, ``apply`` and ``ingest`` at random
points, then run them again (issue 10).

Run (100 trials of each command, about 15 minutes on 2 cores)::

    .venv/bin/python bench/crash.py --trials 100 --seed 1 --out bench/out/crash.json

Each trial builds a fresh world (the Mender stand-in in strict mode on loopback, keys, artifacts),
starts the command as a real subprocess and sends SIGKILL at a seeded random point, chosen one of
two ways (alternating):

- by time: after a delay drawn uniformly between the interpreter's start-up time (``gapferry
  --version``, measured; a kill before it tests nothing) and the command's measured clean run time;
- by progress: once the command's k-th effect is visible (k drawn from 1..all the run makes; an
  effect is a status the stand-in received, or a device holding the new content), plus a random
  jitter of up to 50 ms. With small worlds most of a run is start-up, so time alone rarely lands between two
  effects, where a crash matters most (the bundle write comes before ``installing``, pack's only
  status report; the result write after the last device).

It records how far the command had got when it died (its progress), and then:

1. checks every bundle the dead process left on the medium: it must either be refused by the
   verifier (incomplete, truncated, ...) or be complete and valid: a half-written bundle is
   never accepted;
2. runs the same command again, which must complete (exit 0);
3. checks that every status was reported exactly once and in order (the stand-in's request log;
   strict mode flags any repeat), that the device got the new content (apply), and that the
   final bundles verify.

The attack suite (tests/attacks/test_attack_crash.py) runs a small seeded sample of the same
trials in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gapferry.common.bundle import find_bundles, open_bundle
from gapferry.common.errors import GapferryError
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.trust import TrustPolicy
from gapferry.fixtures.connected_world import World
from gapferry.fixtures.device import (
    DevicePlan,
    Keys,
    make_keys,
    make_transfer,
    single_file_artifact,
    write_devices_file,
)
from gapferry.fixtures.sim import running_server

__all__ = ["COMMANDS", "Trial", "run_trials"]

COMMANDS = ("pack", "apply", "ingest")
_CLI = [sys.executable, "-c", "from gapferry.common.cli import main; main()"]
_TIMEOUT = 180


@dataclass
class Trial:
    """One kill and re-run."""

    command: str
    index: int
    #: Seconds from the start to the SIGKILL (or to the end, when the command finished first).
    delay: float
    #: How the kill point was chosen: ``time`` or ``after N effects + J ms``.
    trigger: str
    #: True when the process was still running when SIGKILL arrived.
    killed: bool
    #: Bundles the dead process left: name -> "valid" or the verifier's error code.
    left_behind: dict[str, str] = field(default_factory=dict)
    #: How far the command had got when it died (`_Setup.progress`), out of `progress_total`.
    progress_at_kill: int = 0
    progress_total: int = 0
    rerun_exit: int | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def after_effects(self) -> bool:
        """Killed while still running, with some of its effects already visible (effects come
        in bursts: pack reports to all devices at once), the case where a crash matters most."""
        return self.killed and self.progress_at_kill > 0


@dataclass
class _Setup:
    """What one trial runs: the argument list, its environment, and the checks."""

    args: list[str]
    env: dict[str, str]
    #: After the kill: (bundle folder, policy) pairs to judge.
    policy: TrustPolicy
    media: Path
    #: The kind of bundle the command writes (``transfer-`` or ``result-``).
    prefix: str
    check: Callable[[Trial], None]
    #: Effects visible so far (statuses the stand-in received, devices updated), and their total.
    progress: Callable[[], int]
    total: int


def _judge_left_behind(setup: _Setup, trial: Trial) -> None:
    for path in find_bundles(setup.media):
        if not path.name.startswith(setup.prefix):
            continue
        try:
            open_bundle(
                path,
                policy=setup.policy,
                now=datetime.now(UTC) + timedelta(seconds=5),
                limits=DEFAULT_LIMITS,
            )
        except GapferryError as e:
            trial.left_behind[path.name] = e.code
        else:
            trial.left_behind[path.name] = "valid"


def _all_valid(setup: _Setup, trial: Trial) -> list[Path]:
    """The bundles on the medium after the re-run that verify. A folder the killed run left
    half-written may stay refused (not a problem: it is never accepted); any other bundle that
    does not verify is a problem."""
    refused = {n for n, code in trial.left_behind.items() if code != "valid"}
    valid = []
    for path in find_bundles(setup.media):
        if not path.name.startswith(setup.prefix):
            continue
        try:
            open_bundle(
                path,
                policy=setup.policy,
                now=datetime.now(UTC) + timedelta(seconds=5),
                limits=DEFAULT_LIMITS,
            )
        except GapferryError as e:
            if path.name not in refused:
                trial.problems.append(f"after the re-run, {path.name} does not verify: {e.code}")
        else:
            valid.append(path)
    return valid


# --- the three worlds ------------------------------------------------------------------------


@contextmanager
def _connected(work: Path, command: str) -> Iterator[_Setup]:
    world = World(work, devices=3)
    try:
        dep_id = world.release()
        with running_server(world.sim) as url:
            env = {
                **os.environ,
                "MENDER_SERVER_URL": url,
                "MENDER_API_TOKEN": world.sim.management_token,
                "MENDER_TENANT_TOKEN": "",
                "GAPFERRY_STATE": str(world.state),
            }
            if command == "pack":
                args = [
                    *_CLI,
                    "pack",
                    "--site",
                    str(world.site_file),
                    "--to",
                    str(world.media),
                    "--sign",
                    str(world.packer_key.private),
                    "--json",
                ]
                expected = ["installing"]
                policy = TrustPolicy.from_file(_packer_trust(world))
                prefix = "transfer-"
                already = 0
            else:
                report = world.pack()
                assert report.bundle_path is not None, report
                world.write_result(report.bundle_path)
                args = [*_CLI, "ingest", str(world.media), "--trust", str(world.appliers), "--json"]
                expected = ["installing", "success"]
                policy = TrustPolicy.from_file(world.appliers)
                prefix = "result-"
                already = 1  # pack reported installing for each device (ADR 0046)

            def progress() -> int:
                done = sum(1 for dep, _, _ in world.status_puts() if dep == dep_id)
                return done - 3 * already

            def check(trial: Trial) -> None:
                if command == "pack":
                    found = _all_valid(setup, trial)
                    if not found:
                        trial.problems.append("no valid transfer bundle after the re-run")
                by_device: dict[str, list[str]] = {}
                for dep, device, status in world.status_puts():
                    if dep == dep_id:
                        by_device.setdefault(device, []).append(status)
                if len(by_device) != 3 or any(v != expected for v in by_device.values()):
                    trial.problems.append(f"statuses {by_device}, expected {expected} for 3")
                if world.sim.strict_violations:
                    trial.problems.append(f"strict mode: {world.sim.strict_violations}")

            setup = _Setup(
                args=args,
                env=env,
                policy=policy,
                media=world.media,
                prefix=prefix,
                check=check,
                progress=progress,
                total=3 * (len(expected) - already),
            )
            yield setup
    finally:
        world.close()


def _packer_trust(world: World) -> Path:
    path = world.tmp / "packer_allowed_signers"
    path.write_text(f"* {world.packer_key.public_line()}\n")
    return path


@contextmanager
def _isolated(work: Path, keys: Keys, artifact: Path) -> Iterator[_Setup]:
    roots = []
    plans = []
    entries: dict[str, dict[str, object]] = {}
    for i in range(3):
        root = work / f"device-{i}"
        (root / "etc" / "plant").mkdir(parents=True)
        (root / "etc" / "plant" / "app.conf").write_bytes(b"speed=1\n")
        roots.append(root)
        plans.append(DevicePlan(name=f"hmi-{i}", artifact=artifact, artifact_name="app-2"))
        entries[f"hmi-{i}"] = {"method": "file", "path": str(root)}
    media = work / "media"
    make_transfer(media, keys, plans)
    devices = write_devices_file(work / "devices.toml", entries, verify_key=keys.artifact.public)
    args = [
        *_CLI,
        "apply",
        str(media),
        "--trust",
        str(keys.trust),
        "--devices",
        str(devices),
        "--state",
        str(work / "applier.db"),
        "--sign",
        str(keys.technician.private),
        "--json",
    ]

    def progress() -> int:
        return sum((r / "etc" / "plant" / "app.conf").read_bytes() == b"speed=2\n" for r in roots)

    def check(trial: Trial) -> None:
        for root in roots:
            got = (root / "etc" / "plant" / "app.conf").read_bytes()
            if got != b"speed=2\n":
                trial.problems.append(f"{root.name} holds {got!r} after the re-run")
            leftovers = [p.name for p in (root / "etc" / "plant").iterdir() if p.name != "app.conf"]
            if leftovers:
                trial.problems.append(f"{root.name} keeps {leftovers}")
        if not _all_valid(setup, trial):
            trial.problems.append("no valid result bundle after the re-run")

    setup = _Setup(
        args=args,
        env=dict(os.environ),
        policy=TrustPolicy.from_file(keys.trust),
        media=media,
        prefix="result-",
        check=check,
        progress=progress,
        total=len(roots),
    )
    yield setup


# --- running -------------------------------------------------------------------------------------


def _run_to_end(setup: _Setup) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        setup.args, env=setup.env, capture_output=True, text=True, timeout=_TIMEOUT, check=False
    )


def _kill_after_progress(setup: _Setup, effects: int, jitter: float) -> tuple[bool, float]:
    """Start the command; SIGKILL it `jitter` seconds after `effects` of its effects are visible.
    Returns (killed, seconds from the start)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        setup.args, env=setup.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while proc.poll() is None and setup.progress() < effects:
            if time.monotonic() - start > _TIMEOUT:
                break
            time.sleep(0.001)
        if proc.poll() is None:
            time.sleep(jitter)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return True, time.monotonic() - start
        return False, time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _kill_after(setup: _Setup, delay: float) -> bool:
    proc = subprocess.Popen(
        setup.args, env=setup.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        return False
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


class _Worlds:
    """Makes the world of one command in a fresh folder (keys and artifact made once)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._keys: Keys | None = None
        self._artifact: Path | None = None
        self._n = 0

    def _iso(self) -> tuple[Keys, Path]:
        if self._keys is None or self._artifact is None:
            self._keys = make_keys(self.base / "keys")
            self._artifact = single_file_artifact(
                self.base / "app-2.mender",
                name="app-2",
                dest_dir=Path("/etc/plant"),
                content=b"speed=2\n",
                key=self._keys.artifact,
            )
        return self._keys, self._artifact

    @contextmanager
    def make(self, command: str) -> Iterator[_Setup]:
        self._n += 1
        work = self.base / f"{command}-{self._n:04d}"
        work.mkdir()
        if command == "apply":
            keys, artifact = self._iso()
            with _isolated(work, keys, artifact) as s:
                yield s
        else:
            with _connected(work, command) as s:
                yield s


def _clean_run_seconds(worlds: _Worlds, command: str) -> float:
    with worlds.make(command) as setup:
        start = time.monotonic()
        done = _run_to_end(setup)
        took = time.monotonic() - start
        if done.returncode != 0:
            raise RuntimeError(f"clean {command} failed: {done.stdout}\n{done.stderr}")
    return took


def _startup_seconds() -> float:
    """The interpreter's and the CLI's start-up (``gapferry --version``), the best of three."""
    best = float("inf")
    for _ in range(3):
        start = time.monotonic()
        subprocess.run([*_CLI, "--version"], capture_output=True, timeout=60, check=True)
        best = min(best, time.monotonic() - start)
    return best


def run_trials(
    command: str, *, trials: int, seed: int, base: Path, log: Callable[[Trial], None] | None = None
) -> list[Trial]:
    """`trials` kills of `command` at seeded random points, each followed by a re-run."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    worlds = _Worlds(base)
    span = _clean_run_seconds(worlds, command)
    earliest = min(_startup_seconds(), span / 2)
    rng = random.Random(f"{seed}-{command}")
    out = []
    for i in range(trials):
        by_time = i % 2 == 0
        delay = rng.uniform(earliest, span)
        # k of the clean run's effects (drawn as a fraction: the count is known once the world
        # exists); never more than the run makes, or the kill would always come after the end.
        share = rng.random()
        jitter = rng.uniform(0.0, 0.05)
        trial = Trial(command=command, index=i, delay=round(delay, 3), trigger="", killed=False)
        start = time.monotonic()
        with ExitStack() as stack:
            setup = stack.enter_context(worlds.make(command))
            effects = 1 + min(int(share * setup.total), setup.total - 1)
            trial.trigger = (
                "time" if by_time else f"after {effects} effects + {jitter * 1000:.0f} ms"
            )
            if by_time:
                trial.killed = _kill_after(setup, delay)
            else:
                trial.killed, took = _kill_after_progress(setup, effects, jitter)
                trial.delay = round(took, 3)
            trial.progress_at_kill = setup.progress()
            trial.progress_total = setup.total
            _judge_left_behind(setup, trial)
            done = _run_to_end(setup)
            trial.rerun_exit = done.returncode
            if done.returncode != 0:
                trial.problems.append(
                    f"re-run exit {done.returncode}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
                )
            else:
                setup.check(trial)
        trial.seconds = round(time.monotonic() - start, 2)
        out.append(trial)
        if log is not None:
            log(trial)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="kills per command")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--out", type=Path, default=None, help="write the trials as JSON here")
    args = parser.parse_args(argv)

    def log(t: Trial) -> None:
        mark = "ok " if t.ok else "BAD"
        print(
            f"{mark} {t.command:6} #{t.index:03d} kill at {t.delay:6.3f}s ({t.trigger})"
            f" ({'killed' if t.killed else 'had finished'},"
            f" progress {t.progress_at_kill}/{t.progress_total}) left {t.left_behind or '-'}"
            f" {'; '.join(t.problems)}",
            flush=True,
        )

    results: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="gapferry-crash-") as tmp:
        for command in args.commands.split(","):
            results += run_trials(
                command, trials=args.trials, seed=args.seed, base=Path(tmp), log=log
            )
    bad = [t for t in results if not t.ok]
    killed = sum(t.killed for t in results)
    late = sum(t.after_effects for t in results)
    print(
        f"{len(results)} trials, {killed} killed mid-run ({late} of them after some of their"
        f" effects were visible), {len(bad)} with problems"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([asdict(t) for t in results], indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
