"""Run a local program (``ssh``, ``sftp``, a check command) and keep only the tail of what it
prints, so that a chatty or hostile device or check command cannot make the laptop hold
unbounded output in memory (the result log keeps a bounded part anyway; issue 6 step 4).
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

__all__ = ["OUTPUT_TAIL", "Finished", "Tail", "run_bounded"]

#: Bytes of each of stdout and stderr kept (the end: where errors are).
OUTPUT_TAIL = 256 * 1024


class Tail:
    """Reads a pipe to its end in a thread, keeping the last `limit` bytes."""

    def __init__(self, pipe: IO[bytes], limit: int = OUTPUT_TAIL) -> None:
        self._pipe = pipe
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._limit = limit
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while data := self._pipe.read1(65536):  # type: ignore[attr-defined]
            self._chunks.append(data)
            self._size += len(data)
            while self._size - len(self._chunks[0]) >= self._limit:
                self._size -= len(self._chunks.popleft())

    def value(self, timeout: float = 10) -> bytes:
        """The kept output, once the pipe is at its end (or after `timeout`); closes the pipe."""
        self._thread.join(timeout)
        data = b"".join(self._chunks)
        if not self._thread.is_alive():
            self._pipe.close()
        return data[-self._limit :]


@dataclass(frozen=True, kw_only=True)
class Finished:
    """A finished program: its exit code and the tails of its output."""

    returncode: int
    stdout: bytes
    stderr: bytes


def run_bounded(
    argv: Sequence[str],
    *,
    timeout: float,
    input_bytes: bytes = b"",
    env: Mapping[str, str] | None = None,
    limit: int = OUTPUT_TAIL,
) -> Finished:
    """`subprocess.run` with ``capture_output``, but keeping at most `limit` bytes of each stream.

    Raises:
        subprocess.TimeoutExpired: the program ran past `timeout` (it is killed first).
        OSError: the program could not be started.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    if stdin is None or stdout is None or stderr is None:  # pragma: no cover - PIPE given above
        raise OSError("the program's pipes were not opened")
    out, err = Tail(stdout, limit), Tail(stderr, limit)
    feeder = threading.Thread(target=_feed, args=(stdin, input_bytes), daemon=True)
    feeder.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        out.value(timeout=1)
        err.value(timeout=1)
        raise
    feeder.join(timeout=1)
    return Finished(returncode=rc, stdout=out.value(), stderr=err.value())


def _feed(pipe: IO[bytes], data: bytes) -> None:
    # A program that stops reading (BrokenPipeError) says why through its exit code.
    with contextlib.suppress(BrokenPipeError):
        if data:
            pipe.write(data)
    with contextlib.suppress(BrokenPipeError):
        pipe.close()
