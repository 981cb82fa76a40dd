"""Coverage-guided fuzzing of every parser of removable-media input (issue 10), with atheris.

Run (one command; installs atheris into the project venv first; atheris 3.0 ships a CPython
3.11 wheel for x86_64 Linux, checked 2026-12)::

    .venv/bin/pip install atheris && .venv/bin/python tests/fuzz/atheris_harness.py -atheris_runs=10000

The run starts from a seed corpus of valid inputs for every target (written to
``bench/out/atheris/corpus``, ignored by git, unless corpus folders are given) and libFuzzer writes
any crashing input to ``bench/out/atheris/findings/`` (unless ``-artifact_prefix=`` is given),
never into the checkout. Exit status: 0 no finding, 1 (libFuzzer: 77 or more) a finding, 2
atheris is not installed.

Without atheris (mutations of the same seeds plus random bytes; CI runs it through
tests/fuzz/test_fuzz_harness.py)::

    .venv/bin/python tests/fuzz/atheris_harness.py --smoke 2000

The first input byte picks the target; the rest is the input:

0. the Mender Artifact reader (`read_artifact`);
1. a transfer manifest signed by a trusted key (`verify_transfer_manifest`), i.e. what a hostile
   but trusted packer could write;
2. a result manifest signed by a trusted key (`verify_result_manifest`);
3. the result log reader (zstd, declared sizes from the input);
4. the completion marker parser;
5. the allowed_signers (trust policy) parser.

Every target may refuse its input with `InvalidData`; any other exception is a finding. Not
collected by pytest (the file name does not start with ``test_``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import random
import re
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

try:
    atheris: Any = importlib.import_module("atheris")
except ImportError:  # the --smoke mode needs no atheris
    atheris = None

# Instrument gapferry's own modules only (coverage feedback); third-party code stays fast.
with atheris.instrument_imports(include=["gapferry"]) if atheris else contextlib.nullcontext():
    from gapferry.common.artifact.reader import read_artifact
    from gapferry.common.bundle import Receipt, verify_result_manifest, verify_transfer_manifest
    from gapferry.common.bundle.layout import marker_bytes, namespace_for, parse_marker
    from gapferry.common.bundle.model import LogRef
    from gapferry.common.bundle.read import _read_log
    from gapferry.common.errors import InvalidData, UsageProblem
    from gapferry.common.limits import Limits
    from gapferry.common.signers import KeyFileSigner
    from gapferry.common.trust import TrustPolicy
    from gapferry.fixtures.artifacts import gapferry_write, single_file_payload
    from gapferry.fixtures.selfcheck import (
        make_sample_result,
        make_sample_transfer,
        throwaway_key,
    )

__all__ = ["TARGETS", "main", "one_input", "seeds", "smoke"]

_OUT = Path(__file__).resolve().parents[2] / "bench" / "out" / "atheris"

_LIMITS = Limits(
    artifact_bytes=1 << 20,
    artifact_header_bytes=1 << 16,
    artifact_decompressed_bytes=1 << 20,
    payload_decompressed_bytes=1 << 20,
    manifest_bytes=1 << 20,
    log_bytes=1 << 16,
    log_lines=500,
)
_NOW = datetime(2026, 6, 1, tzinfo=UTC)
_KEY_DIR = Path(tempfile.mkdtemp(prefix="gapferry-atheris-"))
_KEY = throwaway_key(_KEY_DIR, "fuzz")
_SIGNER = KeyFileSigner(_KEY.private)
_POLICY = TrustPolicy.from_text(_KEY.allowed_signers_line("fuzz@gapferry"))
_LOGS = _KEY_DIR / "log-root"
(_LOGS / "logs").mkdir(parents=True)


def _artifact(data: bytes) -> None:
    read_artifact(io.BytesIO(data), limits=_LIMITS)


_CREATED = re.compile(rb'"created":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z"')


def _now_for(data: bytes) -> datetime:
    """A minute after the manifest's own ``created`` (found by a regex: fuzzing only), so that
    mutated manifests get past the clock checks and reach the deeper ones."""
    m = _CREATED.search(data)
    if m is None:
        return _NOW
    try:
        return datetime.fromisoformat(m.group(1).decode()).replace(tzinfo=UTC) + timedelta(
            minutes=1
        )
    except ValueError:
        return _NOW


def _transfer(data: bytes) -> None:
    sig = _SIGNER.sign_sshsig(data, namespace_for("transfer"))
    verify_transfer_manifest(data, [sig], policy=_POLICY, now=_now_for(data), limits=_LIMITS)


def _result(data: bytes) -> None:
    sig = _SIGNER.sign_sshsig(data, namespace_for("result"))
    verify_result_manifest(data, [sig], policy=_POLICY, now=_now_for(data), limits=_LIMITS)


def _log(data: bytes) -> None:
    size = int.from_bytes(data[:3].ljust(3, b"\0"), "big")
    lines = int.from_bytes(data[3:5].ljust(2, b"\0"), "big")
    packed = data[5:]
    sha = hashlib.sha256(packed).hexdigest()
    ref = LogRef(
        path=f"logs/{sha}.log.zst",
        sha256=sha,
        size=len(packed),
        decompressed_size=size,
        lines=lines,
    )
    target = _LOGS / ref.path
    target.write_bytes(packed)
    try:
        _read_log(_LOGS, ref, _LIMITS)
    finally:
        target.unlink()


def _marker(data: bytes) -> None:
    found = parse_marker(data)
    if found is not None and len(found) != 64:
        raise AssertionError(f"parse_marker returned {found!r}")


def _allowed_signers(data: bytes) -> None:
    try:
        TrustPolicy.from_text(data.decode("utf-8", "replace"))
    except UsageProblem as e:
        if e.code != "empty-trust":  # a file with no signer at all: refused as a usage problem
            raise


TARGETS: list[Callable[[bytes], None]] = [
    _artifact,
    _transfer,
    _result,
    _log,
    _marker,
    _allowed_signers,
]


def one_input(data: bytes) -> None:
    """The fuzz entry point: refusal with `InvalidData` is fine, anything else propagates."""
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    try:
        target(data[1:])
    except InvalidData:
        return


def seeds(work: Path) -> list[bytes]:
    """One valid input per target (target byte first), made in `work`: the starting corpus."""
    stick = work / "stick"
    transfer = make_sample_transfer(stick, work / "t", signers=[_SIGNER], big_artifact_bytes=64)
    result = make_sample_result(
        stick,
        signers=[_SIGNER],
        receipt=Receipt(
            transfer_bundle_id="7e0c1a55-0b1e-4c2a-9f00-000000000001",
            transfer_manifest_sha256="c" * 64,
        ),
    )
    files = single_file_payload(
        work / "payload", dest_dir="/etc/plant", filename="app.conf", content=b"speed=2\n"
    )
    artifact = gapferry_write(
        work / "app.mender", name="app-2", payload_type="single-file", files=files
    )
    log_lines = b'{"level":"info","message":"m","timestamp":"2026-01-01T00:00:00Z"}\n' * 3
    packed = zstandard_compress(log_lines)
    log = len(log_lines).to_bytes(3, "big") + (3).to_bytes(2, "big") + packed
    raw_transfer = (transfer / "manifest.json").read_bytes()
    return [
        bytes([0]) + artifact.read_bytes(),
        bytes([1]) + raw_transfer,
        bytes([2]) + (result / "manifest.json").read_bytes(),
        bytes([3]) + log,
        bytes([4]) + marker_bytes(hashlib.sha256(raw_transfer).hexdigest()),
        bytes([5]) + _KEY.allowed_signers_line("fuzz@gapferry").encode() + b"\n",
    ]


def zstandard_compress(data: bytes) -> bytes:
    """zstd of `data` (the result log format)."""
    zstandard = importlib.import_module("zstandard")
    out: bytes = zstandard.ZstdCompressor().compress(data)
    return out


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    """A few byte flips, insertions, deletions or a cut, keeping the target byte."""
    data = bytearray(seed[1:])
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if how == 0 and data:
            data[pos % len(data)] = rng.randrange(256)
        elif how == 1:
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif how == 2:
            del data[pos : pos + rng.randint(1, 16)]
        else:
            del data[pos:]
    return seed[:1] + bytes(data)


def smoke(runs: int, seed: int) -> int:
    """`runs` inputs without atheris: mutated seeds (3 in 4) and random bytes. Returns how many
    inputs ran; a finding propagates as the exception `one_input` let through."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="gapferry-smoke-") as tmp:
        corpus = seeds(Path(tmp))
    for _ in range(runs):
        if rng.randrange(4):
            data = _mutate(rng, rng.choice(corpus))
        else:
            n = rng.choice([0, 1, 8, 64, 512, 4096])
            data = bytes([rng.randrange(len(TARGETS))]) + rng.randbytes(n)
        try:
            one_input(data)
        except Exception as e:
            raise AssertionError(f"finding on input {data[:200]!r}: {e!r}") from e
    return runs


def _atheris_argv(argv: list[str]) -> list[str]:
    """`argv` with the seed corpus and the findings folder added unless the caller chose them."""
    out = list(argv)
    if not any(a.startswith("-artifact_prefix=") for a in out[1:]):
        findings = _OUT / "findings"
        findings.mkdir(parents=True, exist_ok=True)
        out.insert(1, f"-artifact_prefix={findings}/")
    if not any(not a.startswith("-") for a in out[1:]):
        corpus = _OUT / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="gapferry-seeds-") as tmp:
            for data in seeds(Path(tmp)):
                (corpus / f"seed-{hashlib.sha256(data).hexdigest()[:16]}").write_bytes(data)
        out.append(str(corpus))
    return out


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "--smoke":
        n = smoke(int(argv[2]), seed=int(os.environ.get("GAPFERRY_FUZZ_SEED", "1")))
        print(f"smoke: {n} inputs (mutated seeds and random bytes), no finding")
        return 0
    if atheris is None:
        print(
            "atheris is not installed, so no coverage-guided run is possible: install it with "
            "`.venv/bin/pip install atheris` (or run `--smoke N` without it)",
            file=sys.stderr,
        )
        return 2
    atheris.Setup(_atheris_argv(argv), one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
