"""gapferry benchmarks: one command, each figure a ratio against a baseline measured in the same run.

    .venv/bin/python bench/run.py            # full sizes (2 GiB pack, 1 and 4 GiB memory), ~10 min
    .venv/bin/python bench/run.py --quick    # small sizes, ~2 min
    .venv/bin/python bench/run.py --only pack --only startup

See bench/README.md. Benchmarks are not tests: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Figure", "main"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
GAPFERRY = str(VENV_BIN / "gapferry")
WORKER = str(HERE / "worker.py")
MIB = 1024 * 1024
GIB = 1024 * MIB
#: Children run as on a user's machine, where pip compiled the bytecode: this session's
#: PYTHONDONTWRITEBYTECODE would make every start compile gapferry from source (~0.3 s). The
#: bytecode goes to a cache outside the package folders (bench/out/ is ignored by git).
PYCACHE = HERE / "out" / "pycache"
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(PYCACHE)


@dataclass(kw_only=True)
class Figure:
    """One line of the report. `ratio` is oriented so that the target reads as written."""

    name: str
    value: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""

    def row(self) -> str:
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}x"
        met = {True: "yes", False: "NO", None: "-"}[self.met]  # None: a figure without a target
        return f"| {self.name} | {self.value} | {self.baseline} | {ratio} | {self.target} | {met} | {self.note} |"


@dataclass(kw_only=True)
class Sizes:
    pack: int
    pack_stick: int
    verify_files: int
    verify_each: int
    rss: tuple[int, ...]
    apply: int
    fleet: int
    seeds: int
    runs: int
    startup_runs: int


FULL = Sizes(
    pack=2 * GIB,
    pack_stick=2 * GIB,
    verify_files=4,
    verify_each=512 * MIB,
    rss=(1 * GIB, 4 * GIB),
    apply=512 * MIB,
    fleet=1000,
    seeds=50,
    runs=3,
    startup_runs=7,
)
QUICK = Sizes(
    pack=128 * MIB,
    pack_stick=64 * MIB,
    verify_files=4,
    verify_each=32 * MIB,
    rss=(64 * MIB, 256 * MIB),
    apply=16 * MIB,
    fleet=50,
    seeds=5,
    runs=3,
    startup_runs=5,
)


@dataclass(kw_only=True)
class Child:
    seconds: float
    maxrss: int  # bytes
    stdout: str
    stderr: str
    returncode: int

    def json(self) -> dict[str, Any]:
        if self.returncode != 0:
            raise RuntimeError(f"child failed ({self.returncode}): {self.stderr[-2000:]}")
        doc: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return doc


def run_child(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True
) -> Child:
    """Run `cmd`, measuring its wall time and its own peak RSS (``wait4``, not the whole tree's
    maximum as RUSAGE_CHILDREN would give)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=CHILD_ENV if env is None else env)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        child = Child(
            seconds=seconds,
            maxrss=usage.ru_maxrss * 1024,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            returncode=p.returncode,
        )
    if check and child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}): {child.stderr[-2000:]}")
    return child


# --- the page cache ---------------------------------------------------------------------------
_DROP = Path("/proc/sys/vm/drop_caches")


def _can_drop_all() -> bool:
    try:
        os.sync()
        _DROP.write_text("3\n")
    except OSError:
        return False
    return True


CACHE_METHOD = "drop_caches" if _can_drop_all() else "posix_fadvise(DONTNEED)"


def drop_caches(files: Sequence[Path]) -> None:
    """Empty the page cache (all of it when permitted, else the pages of `files`)."""
    if CACHE_METHOD == "drop_caches":
        os.sync()
        _DROP.write_text("3\n")
        return
    for f in files:
        for p in [f] if f.is_file() else [q for q in f.rglob("*") if q.is_file()]:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def warm(files: Sequence[Path]) -> None:
    for f in files:
        with f.open("rb", buffering=0) as src:
            while src.read(4 * MIB):
                pass


def make_file(path: Path, size: int, *, seed: int = 0) -> tuple[str, int]:
    """A file of `size` incompressible bytes (a random block, varied per MiB); its sha256."""
    block = bytearray(hashlib.sha256(f"bench{seed}".encode()).digest() * (MIB // 32))
    rnd = os.urandom(MIB)
    block = bytearray(a ^ b for a, b in zip(block, rnd, strict=True))
    h = hashlib.sha256()
    left = size
    i = 0
    with path.open("wb") as f:
        while left:
            block[:8] = i.to_bytes(8, "little")
            chunk = memoryview(block)[: min(MIB, left)]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            i += 1
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest(), size


def med(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def fmt_rate(size: int, seconds: float) -> str:
    return f"{size / seconds / MIB:.0f} MiB/s"


def fmt_size(n: int) -> str:
    return f"{n // GIB} GiB" if n >= GIB and n % GIB == 0 else f"{n // MIB} MiB"


# --- a scratch world --------------------------------------------------------------------------
@dataclass(kw_only=True)
class Ctx:
    work: Path
    sizes: Sizes
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    _key: Path | None = None
    _trust: Path | None = None
    _idle: int | None = None

    def key(self) -> Path:
        """An Ed25519 packer key (made with the real ssh-keygen) and its allowed_signers file."""
        if self._key is None:
            keydir = self.work / "keys"
            keydir.mkdir(exist_ok=True)
            key = keydir / "packer"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)],
                check=True,
            )
            pub = key.with_name("packer.pub").read_text().strip()
            trust = keydir / "allowed_signers"
            trust.write_text(f"* {pub}\n")
            self._key, self._trust = key, trust
        return self._key

    def trust(self) -> Path:
        self.key()
        assert self._trust is not None
        return self._trust

    def idle_rss(self) -> int:
        """Peak RSS of the interpreter with gapferry's modules imported and nothing done."""
        if self._idle is None:
            code = "import gapferry.common.bundle, gapferry.common.cli"
            self._idle = run_child([PYTHON, "-c", code]).maxrss
        return self._idle

    def add(self, fig: Figure) -> None:
        self.figures.append(fig)
        print("  " + fig.row(), flush=True)

    def pack(self, media: Path, sources: Sequence[tuple[Path, str, int]]) -> Child:
        args = {
            "media": str(media),
            "key": str(self.key()),
            "sources": [[str(p), s, n] for p, s, n in sources],
        }
        return run_child([PYTHON, WORKER, "pack", json.dumps(args)])


@contextlib.contextmanager
def scratch(ctx: Ctx, name: str) -> Iterator[Path]:
    d = ctx.work / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def stick(
    ctx: Ctx, name: str, size: int, *, speed: tuple[int, int] | None = None
) -> Iterator[tuple[Path, str]]:
    """A media folder standing in for a USB stick: a file system of its own (ext4 in an image on
    the work disk, on a loop device with direct I/O, so nothing is cached twice) when this user
    may mount one; else a plain folder on the work disk. A separate file system matters: `cp`
    between two folders of one ext4 uses copy_file_range (an in-kernel copy no tool that hashes
    can match), which it cannot do onto a stick. With `speed` (write, read bytes/s) the loop
    device is held to a stick's speed (cgroup v1 blkio throttle, whoever does the I/O); the
    description says when that was not possible. Yields the folder and what it is."""
    image = ctx.work / f"{name}.img"
    mnt = ctx.work / f"{name}.mnt"
    mnt.mkdir()
    loop = ""
    try:
        with image.open("wb") as f:
            f.truncate(size + size // 8 + 256 * MIB)
        made = subprocess.run(
            ["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, check=False
        )
        if made.returncode == 0:
            loop = subprocess.run(
                ["losetup", "-f", "--show", "--direct-io=on", str(image)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        mounted = bool(loop) and (
            subprocess.run(["mount", loop, str(mnt)], capture_output=True, check=False).returncode
            == 0
        )
        if mounted:
            what = f"ext4 on {loop} (direct I/O) over an image on the work disk"
            with throttled(loop, speed) as limits:
                yield mnt, what + limits
                subprocess.run(["umount", str(mnt)], check=True)
        else:
            yield mnt, "a folder on the work disk (no loop mount permitted)"
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)
        image.unlink(missing_ok=True)
        shutil.rmtree(mnt, ignore_errors=True)


_BLKIO = Path("/sys/fs/cgroup/blkio")


@contextlib.contextmanager
def throttled(device: str, speed: tuple[int, int] | None) -> Iterator[str]:
    """Hold `device` to `speed` (write, read bytes/s) with the root blkio cgroup's throttle,
    which limits every bio sent to it, the kernel's write-back included; lifted on exit. Yields
    what to add to the medium's description."""
    if speed is None:
        yield ""
        return
    files = [_BLKIO / "blkio.throttle.write_bps_device", _BLKIO / "blkio.throttle.read_bps_device"]
    numbers = subprocess.run(
        ["lsblk", "-dno", "MAJ:MIN", device], capture_output=True, text=True, check=False
    ).stdout.strip()
    try:
        for f, bps in zip(files, speed, strict=True):
            f.write_text(f"{numbers} {bps}\n")
    except OSError as e:
        yield f" (NOT held to stick speed: blkio throttle refused: {e})"
        return
    try:
        yield (
            f", held to {speed[0] // MIB} MiB/s write and {speed[1] // MIB} MiB/s read "
            "(blkio throttle, a USB 3 stick's speed)"
        )
    finally:
        for f in files:
            with contextlib.suppress(OSError):
                f.write_text(f"{numbers} 0\n")


# --- the benchmarks ---------------------------------------------------------------------------
def bench_startup(ctx: Ctx) -> None:
    """`gapferry --help` (the real console script) against `python -c pass`."""
    n = ctx.sizes.startup_runs
    run_child([GAPFERRY, "--help"])  # warm the file cache and bytecode
    base = med([run_child([PYTHON, "-c", "pass"]).seconds for _ in range(n)])
    ours = med([run_child([GAPFERRY, "--help"]).seconds for _ in range(n)])
    ctx.add(
        Figure(
            name="`gapferry --help` start-up",
            value=fmt_s(ours),
            baseline=f"{fmt_s(base)} (`python -c pass`)",
            ratio=ours / base,
            target="<= 0.3 s absolute",
            met=ours <= 0.3,
            note=f"median of {n}; ratio = time / interpreter start",
        )
    )


#: A USB 3 stick's sustained speed (write, read), for the pack figures on a stick-speed medium.
STICK_SPEED = (128 * MIB, 256 * MIB)


def io_runs(ctx: Ctx) -> int:
    """Runs of an I/O figure: an even number, so `in_turns` gives each side each order equally."""
    return ctx.sizes.runs + ctx.sizes.runs % 2


def in_turns(base: Callable[[], None], ours: Callable[[], None], runs: int) -> None:
    """`runs` of each, in the order A B, B A, A B, ... On this machine's virtual disk a cold read
    was fast and slow by turns (1.6 s, 4.0 s, 1.6 s, ... for the same 2 GiB, whoever read):
    always A then B would hand one side all the slow reads."""
    for i in range(runs):
        first, second = (base, ours) if i % 2 == 0 else (ours, base)
        first()
        second()


def bench_pack(ctx: Ctx) -> None:
    """Bundle writing vs `cp` (+ fsync), and with read-back vs `cp` + `openssl dgst` of the copy:
    onto the loop device as fast as the work disk, then held to a stick's speed."""
    _pack_figures(ctx, ctx.sizes.pack, speed=None)
    _pack_figures(ctx, ctx.sizes.pack_stick, speed=STICK_SPEED)


def _pack_figures(ctx: Ctx, size: int, *, speed: tuple[int, int] | None) -> None:
    label = "" if speed is None else ", stick speed"
    with (
        scratch(ctx, "pack") as d,
        stick(ctx, "pack-stick", size, speed=speed) as (media_root, what),
    ):
        src = d / "artifact.mender"
        sha, _ = make_file(src, size)
        media = media_root / "media"
        base_write: list[float] = []
        base_full: list[float] = []
        ours_write: list[float] = []
        ours_full: list[float] = []

        def base() -> None:
            shutil.rmtree(media, ignore_errors=True)
            media.mkdir()
            dst = media / "artifact.mender"
            drop_caches([src])
            t_cp = run_child(["cp", src.as_posix(), dst.as_posix()]).seconds
            t_sync = run_child(["sync", dst.as_posix()]).seconds  # fsync(2) of the copy
            drop_caches([dst])
            t_dgst = run_child(["openssl", "dgst", "-sha256", dst.as_posix()]).seconds
            base_write.append(t_cp + t_sync)
            base_full.append(t_cp + t_sync + t_dgst)

        def ours() -> None:
            shutil.rmtree(media, ignore_errors=True)
            media.mkdir()
            drop_caches([src])
            res = ctx.pack(media, [(src, sha, size)]).json()
            ours_write.append(float(res["write"]))
            ours_full.append(float(res["total"]))

        in_turns(base, ours, io_runs(ctx))
    bw, bf, ow, of = med(base_write), med(base_full), med(ours_write), med(ours_full)
    note = (
        f"{fmt_size(size)} onto {what}, median of {io_runs(ctx)} (in turns), cold cache "
        f"({CACHE_METHOD})"
    )
    ctx.add(
        Figure(
            name=f"pack: bundle write (one pass: read, hash, write overlapped; write-behind){label}",
            value=f"{fmt_s(ow)} ({fmt_rate(size, ow)})",
            baseline=f"{fmt_s(bw)} ({fmt_rate(size, bw)}) `cp` + `sync FILE`",
            ratio=bw / ow,
            target=">= 0.9x cp's throughput",
            met=bw / ow >= 0.9,
            note=note,
        )
    )
    ctx.add(
        Figure(
            name=f"pack: write + read-back verification (whole bundle, signed){label}",
            value=f"{fmt_s(of)} ({fmt_rate(size, of)})",
            baseline=f"{fmt_s(bf)} `cp` + `sync` + `openssl dgst -sha256` of the copy",
            ratio=bf / of,
            target=">= 0.9x",
            met=bf / of >= 0.9,
            note=note + "; the copy's pages dropped before openssl reads it, as gapferry does",
        )
    )


def _verify_bundle(ctx: Ctx, d: Path) -> tuple[Path, list[Path]]:
    n, each = ctx.sizes.verify_files, ctx.sizes.verify_each
    sources = []
    for i in range(n):
        p = d / f"src-{i}.mender"
        sha, size = make_file(p, each, seed=i)
        sources.append((p, sha, size))
    media = d / "media"
    media.mkdir()
    bundle = Path(ctx.pack(media, sources).json()["bundle"])
    for p, _, _ in sources:
        p.unlink()
    files = sorted((bundle / "artifacts").iterdir())
    return bundle, files


def bench_verify(ctx: Ctx) -> None:
    """`gapferry verify` vs `openssl dgst -sha256` over the same files; one core, and parallel."""
    n, each, runs = ctx.sizes.verify_files, ctx.sizes.verify_each, io_runs(ctx)
    with scratch(ctx, "verify") as d:
        bundle, files = _verify_bundle(ctx, d)
        trust = ctx.trust()
        dgst = ["openssl", "dgst", "-sha256", *map(str, files)]
        ours_cli = [GAPFERRY, "verify", str(bundle), "--trust", str(trust)]
        one = ["taskset", "-c", "0"]
        total = n * each
        for cache in ("warm", "cold"):

            def prep(cache: str = cache) -> None:
                if cache == "cold":
                    drop_caches(files)
                else:
                    warm(files)

            def paired(
                base: list[str], ours: list[str], prep: Callable[[], None] = prep
            ) -> tuple[float, float]:
                """Medians of `base` and `ours`, run in turns (see `in_turns`)."""
                xs: list[float] = []
                ys: list[float] = []

                def one_base() -> None:
                    prep()
                    xs.append(run_child(base).seconds)

                def one_ours() -> None:
                    prep()
                    ys.append(run_child(ours).seconds)

                in_turns(one_base, one_ours, runs)
                return med(xs), med(ys)

            b1, o1 = paired(one + dgst, one + ours_cli)
            bp, oser = paired(dgst, ours_cli)
            note = (
                f"{n} x {fmt_size(each)}, median of {runs} (in turns), {cache} page cache"
                + (f" ({CACHE_METHOD})" if cache == "cold" else "")
                + "; times include process start"
            )
            ctx.add(
                Figure(
                    name=f"verify on one core ({cache})",
                    value=f"{fmt_s(o1)} ({fmt_rate(total, o1)}) `taskset -c 0 gapferry verify`",
                    baseline=f"{fmt_s(b1)} ({fmt_rate(total, b1)}) `taskset -c 0 openssl dgst`",
                    ratio=b1 / o1,
                    target=">= 0.9x",
                    met=b1 / o1 >= 0.9,
                    note=note,
                )
            )
            ctx.add(
                Figure(
                    name=f"verify, all cores, `gapferry verify` ({cache})",
                    value=f"{fmt_s(oser)} ({fmt_rate(total, oser)})",
                    baseline=f"{fmt_s(bp)} ({fmt_rate(total, bp)}) `openssl dgst`",
                    ratio=bp / oser,
                    target="> 1x",
                    met=bp / oser > 1.0,
                    note=note + f"; artifacts hashed in parallel ({os.cpu_count()} cores), each "
                    "read ahead of its hash",
                )
            )


def bench_rss(ctx: Ctx) -> None:
    """Peak RSS of pack (writer library call in a child), verify (real CLI) at each size."""
    packs: list[tuple[int, Child]] = []
    verifies: list[tuple[int, Child]] = []
    for size in ctx.sizes.rss:
        with scratch(ctx, f"rss-{size}") as d, stick(ctx, f"rss-stick-{size}", size) as (m, _):
            src = d / "artifact.mender"
            sha, _ = make_file(src, size)
            media = m / "media"
            media.mkdir()
            drop_caches([src])
            child = ctx.pack(media, [(src, sha, size)])
            packs.append((size, child))
            src.unlink()
            bundle = Path(child.json()["bundle"])
            drop_caches([bundle])
            verifies.append(
                (size, run_child([GAPFERRY, "verify", str(bundle), "--trust", str(ctx.trust())]))
            )
    _rss_figure(ctx, "pack (bundle writer)", [(s, c.maxrss) for s, c in packs])
    _rss_figure(ctx, "verify (`gapferry verify`)", [(s, c.maxrss) for s, c in verifies])


def bench_fleet(ctx: Ctx) -> None:
    """One site through `gapferry pack` and `gapferry ingest` (real CLI) against the stand-in on
    loopback, twice: the first cycle authenticates every device, the second (a new release)
    reuses the cached tokens; vs the seeds' one-device-at-a-time bash workflow on the same
    stand-in."""
    n, n_seeds = ctx.sizes.fleet, ctx.sizes.seeds
    with scratch(ctx, "fleet") as d:
        args = {"devices": n, "seeds": n_seeds, "work": str(d), "gapferry": GAPFERRY}
        child = run_child([PYTHON, WORKER, "fleet", json.dumps(args)])
        res = child.json()
    _fleet_figures(ctx, res)


#: Requests made once per site and run (a deployment's name, the artifact's record and its
#: download), not once per device: counted apart, as they do not grow with the fleet.
PER_SITE = ("/api/management/", "/sim/download/")


def _fleet_figures(ctx: Ctx, res: dict[str, Any]) -> None:
    n, n_seeds, seeds = res["devices"], res["seeds"], res["seeds_run"]
    theirs = seeds["seconds"] / n_seeds

    def busy(run: dict[str, Any]) -> float:
        return float(sum(run.get("server_seconds", {}).values()))

    def split(run: dict[str, Any]) -> tuple[int, int]:
        """(per-device requests, per-site requests) of one command."""
        site = sum(
            v
            for k, v in run["requests"]["by_endpoint"].items()
            if any(k.split(" ", 1)[1].startswith(p) for p in PER_SITE)
        )
        return run["requests"]["total"] - site, site

    cycles = (("first", "first cycle: authenticates every device"), ("cached", "cached tokens"))
    for key, what in cycles:
        pack, ingest = res[key]["pack"], res[key]["ingest"]
        ours = (pack["seconds"] + ingest["seconds"]) / n
        ok = bool(pack["ok"] and ingest["ok"])
        # The target is for the cycle with cached tokens; the first cycle (once per
        # device and server URL, ADR 0045) is shown beside it without a target of its own.
        judged = key == "cached"
        ctx.add(
            Figure(
                name=f"fleet: {n} devices, pack + ingest, {what} (wall time per device)",
                value=f"{ours * 1000:.1f} ms/device (pack {fmt_s(pack['seconds'])}, "
                f"ingest {fmt_s(ingest['seconds'])})",
                baseline=f"{theirs * 1000:.0f} ms/device: seeds' bash + curl + openssl, "
                f"{n_seeds} devices in {fmt_s(seeds['seconds'])}",
                ratio=theirs / ours,
                target=">= 20x faster per device, cached tokens" if judged else "none (shown)",
                met=(theirs / ours >= 20 and ok) if judged else (None if ok else False),
                note=f"packed {pack['packed']}/{n}, reported {ingest['reported']}/{n}; seeds "
                f"reached success for {seeds['successes']}/{n_seeds}; the stand-in (one Python "
                f"process, ThreadingHTTPServer) was busy {busy(pack):.1f} s during pack and "
                f"{busy(ingest):.1f} s during ingest (summed over its threads); gapferry as CLI "
                "children, `--jobs 8` default",
            )
        )
    cached = res["cached"]
    per_device = {w: split(cached[w]) for w in ("pack", "ingest")}
    total = sum(d for d, _ in per_device.values()) / n
    errors = sum(cached[w]["requests"]["errors"] for w in ("pack", "ingest"))
    kinds = "; ".join(
        f"{w}: " + ", ".join(f"{k} {v}" for k, v in cached[w]["requests"]["by_endpoint"].items())
        for w in ("pack", "ingest")
    )
    first = sum(split(res["first"][w])[0] for w in ("pack", "ingest")) / n
    ctx.add(
        Figure(
            name="fleet: requests per device per cycle (pack + ingest), cached tokens",
            value=f"{total:.2f} per device (pack {per_device['pack'][0] / n:.2f}, ingest "
            f"{per_device['ingest'][0] / n:.2f}); plus "
            f"{sum(s for _, s in per_device.values())} per site",
            baseline=f"{seeds['requests']['total'] / n_seeds:.2f} per device for the whole "
            "seeds cycle (phases 3, 4, 6)",
            ratio=None,
            target="<= 4 per device per cycle, cached tokens",
            met=total <= 4 and errors == 0,
            note=f"first cycle (authenticating): {first:.2f} per device; {errors} errors; "
            f"per site: {', '.join(PER_SITE)}; {kinds}",
        )
    )
    for w in ("pack", "ingest"):
        peak = max(res[k][w]["maxrss"] for k, _ in cycles)
        ctx.add(
            Figure(
                name=f"peak RSS: {w} (`gapferry {w}`, {n} devices)",
                value=f"{peak / MIB:.0f} MB",
                baseline=f"{ctx.idle_rss() / MIB:.0f} MB (python + gapferry imported, idle)",
                ratio=peak / ctx.idle_rss(),
                target="<= 100 MB",
                met=peak <= 100 * MIB,
                note="the larger of the two cycles, the real CLI against the stand-in; result "
                "bundles carry no artifacts, so ingest's memory does not depend on artifact size",
            )
        )


def bench_apply(ctx: Ctx) -> None:
    """`gapferry apply` (real CLI) to a real device on loopback vs `scp` + `mender install`."""
    size, runs = ctx.sizes.apply, io_runs(ctx)
    with scratch(ctx, "apply") as d:
        args = {
            "work": str(d),
            "gapferry": GAPFERRY,
            "size": size,
            "runs": runs,
            "rss_sizes": list(ctx.sizes.rss),
        }
        res = run_child([PYTHON, WORKER, "apply", json.dumps(args)]).json()
    base = med([r["seconds"] for r in res["base"]])
    ours = med([r["seconds"] for r in res["ours"]])
    scp = med([r["scp"] for r in res["base"]])
    ctx.add(
        Figure(
            name="apply over SSH to a loopback device (`gapferry apply`)",
            value=f"{fmt_s(ours)}",
            baseline=f"{fmt_s(base)} `scp -O` ({fmt_s(scp)}) + `ssh mender install` + "
            "`ssh mender commit`",
            ratio=ours / base,
            target="<= 1.1x their time",
            met=ours / base <= 1.1,
            note=f"{fmt_size(size)} single-file artifact (signed, uncompressed), median of {runs} "
            "(in turns), cold cache; apply includes bundle verification, inventory and the signed result "
            f"bundle; outcomes {[r['outcome'] for r in res['ours']]}",
        )
    )
    rows = [(int(r["size"]), int(r["maxrss"])) for r in res["rss"]]
    if rows:
        _rss_figure(ctx, "apply (`gapferry apply`)", rows)
    for err in res.get("rss_errors", []):
        ctx.add(
            Figure(
                name="peak RSS: apply, a size could not be measured",
                value="error",
                baseline="-",
                ratio=None,
                target="<= 100 MB",
                met=False,
                note=" ".join(str(err).split()).replace("|", "/"),
            )
        )


def _rss_figure(ctx: Ctx, what: str, rows: Sequence[tuple[int, int]]) -> None:
    peaks = [m for _, m in rows]
    growth = peaks[-1] - peaks[0]
    ctx.add(
        Figure(
            name=f"peak RSS: {what}",
            value=", ".join(f"{m / MIB:.0f} MB at {fmt_size(s)}" for s, m in rows),
            baseline=f"{ctx.idle_rss() / MIB:.0f} MB (python + gapferry imported, idle)",
            ratio=max(peaks) / ctx.idle_rss(),
            target="<= 100 MB, flat with size",
            met=max(peaks) <= 100 * MIB and growth <= 8 * MIB,
            note=f"growth {growth / MIB:+.1f} MB from smallest to largest; ratio = peak / idle",
        )
    )


BENCHES: dict[str, Callable[[Ctx], None]] = {
    "startup": bench_startup,
    "pack": bench_pack,
    "verify": bench_verify,
    "rss": bench_rss,
    "apply": bench_apply,
    "fleet": bench_fleet,
}


# --- the machine and the report ---------------------------------------------------------------
def _sh(cmd: str) -> str:
    try:
        return subprocess.run(
            ["bash", "-c", cmd], capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine(work: Path) -> list[str]:
    cpu = _sh("lscpu | sed -n 's/^Model name: *//p' | head -1")
    disk = _sh(f"df -h --output=source,fstype,size,avail {work} | tail -1")
    dev = _sh(f"lsblk -no NAME,ROTA,MODEL $(findmnt -no SOURCE --target {work}) 2>/dev/null")
    return [
        f"- date: {datetime.now(tz=UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- nproc: {_sh('nproc')}; CPU: {cpu}",
        "- memory (`free -h`): " + _sh("free -h | sed -n 2p | tr -s ' '"),
        f"- disk under the work folder: {disk} (lsblk: {dev or '?'})",
        f"- kernel {platform.release()}, Python {platform.python_version()}, "
        + _sh("openssl version"),
        f"- page cache between runs: {CACHE_METHOD}",
        "- load when the run started (other work on the machine skews figures): "
        + _sh("cut -d' ' -f1-3 /proc/loadavg"),
    ]


def report(ctx: Ctx, head: list[str], seconds: float) -> str:
    lines = [
        "| figure | gapferry | baseline (same run) | ratio | target | met | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f.row() for f in ctx.figures]
    mode = "--quick (small sizes)" if ctx.quick else "full sizes"
    title = [
        "# Benchmark results (issue 11)",
        "",
        "Written by `.venv/bin/python bench/run.py --results bench/RESULTS.md`; how to run and what",
        "each figure means: `bench/README.md`. Every ratio compares with a baseline measured in the",
        'same run (the median of several runs). "yes"/"NO" says whether the target is met.',
        "",
        "## Latest run",
        "",
    ]
    run = f"Run: `bench/run.py` {mode}, {seconds:.0f} s"
    return "\n".join([*title, run, "", *head, "", *lines, ""])


#: In RESULTS.md, what follows this line is written by people and kept when the table is renewed.
NOTES_MARK = "<!-- notes below: kept by bench/run.py --results -->"


def with_kept_notes(text: str, results: Path) -> str:
    """The new report, followed by the hand-written notes of the file it replaces (if any)."""
    old = results.read_text() if results.exists() else ""
    notes = old[old.index(NOTES_MARK) :] if NOTES_MARK in old else NOTES_MARK + "\n"
    return text.rstrip("\n") + "\n\n" + notes


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    ap.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only these")
    ap.add_argument("--devices", type=int, default=None, help="fleet size (default 1000)")
    ap.add_argument("--runs", type=int, default=None, help="repetitions per figure (median)")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch folder on the disk to measure [bench/out]",
    )
    ap.add_argument("--results", type=Path, default=None, help="also write the table here")
    ns = ap.parse_args(argv)
    sizes = QUICK if ns.quick else FULL
    if ns.runs:
        sizes.runs = ns.runs
    if ns.devices:
        sizes.fleet = ns.devices
    base = ns.workdir or HERE / "out"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gapferry-bench-", dir=base))
    ctx = Ctx(work=work, sizes=sizes, quick=ns.quick)
    head = machine(work)
    print("\n".join(head), flush=True)
    t0 = time.perf_counter()
    try:
        for name in ns.only or list(BENCHES):
            print(f"== {name}", flush=True)
            try:
                BENCHES[name](ctx)
            except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
                ctx.add(
                    Figure(
                        name=f"{name}: could not be measured",
                        value="error",
                        baseline="-",
                        ratio=None,
                        target="-",
                        met=False,
                        note=" ".join(str(e).split())[-600:].replace("|", "/"),
                    )
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(ctx, head, time.perf_counter() - t0)
    print()
    print(text)
    if ns.results:
        ns.results.write_text(with_kept_notes(text, ns.results))
    met = [f.met for f in ctx.figures]
    return 1 if False in met else 0


if __name__ == "__main__":
    sys.exit(main())
