"""Coverage-guided fuzzing of every parser of removable-media input (issue 10), with atheris.

Run (one command; installs atheris into the project venv first)::

    .venv/bin/pip install atheris && .venv/bin/python tests/fuzz/atheris_harness.py -atheris_runs=10000

Without atheris (a quick random smoke run, also what CI can afford)::

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
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:
    atheris: Any = importlib.import_module("atheris")
except ImportError:  # the --smoke mode needs no atheris
    atheris = None

# Instrument gapferry's own modules only (coverage feedback); third-party code stays fast.
with atheris.instrument_imports(include=["gapferry"]) if atheris else contextlib.nullcontext():
    from gapferry.common.artifact.reader import read_artifact
    from gapferry.common.bundle import verify_result_manifest, verify_transfer_manifest
    from gapferry.common.bundle.layout import namespace_for, parse_marker
    from gapferry.common.bundle.model import LogRef
    from gapferry.common.bundle.read import _read_log
    from gapferry.common.errors import InvalidData, UsageProblem
    from gapferry.common.limits import Limits
    from gapferry.common.signers import KeyFileSigner
    from gapferry.common.trust import TrustPolicy
    from gapferry.fixtures.selfcheck import throwaway_key

__all__ = ["TARGETS", "main", "one_input"]

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


def _transfer(data: bytes) -> None:
    sig = _SIGNER.sign_sshsig(data, namespace_for("transfer"))
    verify_transfer_manifest(data, [sig], policy=_POLICY, now=_NOW, limits=_LIMITS)


def _result(data: bytes) -> None:
    sig = _SIGNER.sign_sshsig(data, namespace_for("result"))
    verify_result_manifest(data, [sig], policy=_POLICY, now=_NOW, limits=_LIMITS)


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


def _smoke(runs: int, seed: int) -> int:
    rng = random.Random(seed)
    for _ in range(runs):
        n = rng.choice([0, 1, 8, 64, 512, 4096])
        one_input(bytes([rng.randrange(len(TARGETS))]) + rng.randbytes(n))
    print(f"smoke: {runs} random inputs, no finding")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "--smoke":
        return _smoke(int(argv[2]), seed=int(os.environ.get("GAPFERRY_FUZZ_SEED", "1")))
    if atheris is None:
        print("atheris is not installed: .venv/bin/pip install atheris", file=sys.stderr)
        return 2
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
