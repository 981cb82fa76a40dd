"""Streaming sha256: one pass, constant memory, optionally copying as it hashes.

Large streams go through `pump`: the calling thread reads into a small ring of buffers while
each consumer (a hash, a file write) works on earlier buffers in a thread of its own, in order.
hashlib (for updates above 2 KiB), ``os.write`` and ``readinto`` release the GIL, so reading,
hashing and writing overlap on separate cores instead of taking turns (ADR 0034; bench/README.md,
hot spots 2 to 4). Memory stays flat: ``buffers * chunk`` bytes per stream, whatever its size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

import msgspec
from gapferry.common.atomic import atomic_open
from gapferry.common.errors import InvalidData

__all__ = [
    "CHUNK",
    "PIPE_BUFFERS",
    "PIPE_CHUNK",
    "CopyResult",
    "Readable",
    "copy_hashed",
    "pump",
    "sha256_file",
    "sha256_stream",
]

#: Read size for streaming: large enough to keep syscalls cheap, small enough for flat memory.
CHUNK = 1024 * 1024
#: Buffer size and count of `pump`'s ring: 4 x 4 MiB in flight per stream (measured in ADR 0034).
PIPE_CHUNK = 4 * CHUNK
PIPE_BUFFERS = 4
#: Streams shorter than this are copied serially (threads cost more than they save).
OVERLAP_MIN = 2 * PIPE_CHUNK
#: How far ahead of the reader `pump(..., readahead=True)` asks the kernel to fetch a file
#: (``POSIX_FADV_WILLNEED``): larger, earlier reads than the default read-ahead window (128 KiB
#: on many disks), so several files read at once still stream (measured in ADR 0034).
READAHEAD = 32 * CHUNK

Progress = Callable[[int], None]
#: Called by `pump` with the running byte count after each read, before the bytes are handed on;
#: raising there stops the stream (size limits).
Check = Callable[[int], None]
Sink = Callable[[memoryview], object]


class Readable(Protocol):
    """Anything with ``readinto``: a binary file, a socket file, an HTTP body adapter."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class CopyResult(msgspec.Struct, frozen=True, kw_only=True):
    sha256: str
    size: int


class _ReadAhead:
    """A file `Readable` that keeps `READAHEAD` bytes beyond its position requested from the
    kernel (``POSIX_FADV_WILLNEED``, asynchronous), in batches of half that."""

    def __init__(self, src: Readable, fd: int) -> None:
        self._src = src
        self._fd = fd
        self._pos = os.lseek(fd, 0, os.SEEK_CUR)
        self._asked = self._pos

    def readinto(self, buffer: memoryview, /) -> int:
        n = self._src.readinto(buffer) or 0
        self._pos += n
        if n and self._asked - self._pos < READAHEAD // 2:
            start = max(self._asked, self._pos)
            end = self._pos + READAHEAD
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_WILLNEED)
            self._asked = end
        return n


def _with_readahead(src: Readable) -> Readable:
    """`src` wrapped in `_ReadAhead` when it is a seekable file and the OS has fadvise."""
    fileno = getattr(src, "fileno", None)
    if fileno is None or not hasattr(os, "posix_fadvise"):
        return src
    try:
        fd = int(fileno())
        os.lseek(fd, 0, os.SEEK_CUR)
    except (OSError, ValueError):  # BytesIO, pipes, sockets
        return src
    return _ReadAhead(src, fd)


class _Stop(Exception):
    """Internal: a consumer thread is told to stop early."""


class _Consumer:
    """One sink fed the ring's buffers in order by its own thread."""

    def __init__(self, sink: Sink, ring: _Ring) -> None:
        self._sink = sink
        self._ring = ring
        self.done = 0  # buffers finished
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gapferry-pump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ring = self._ring
        i = 0
        try:
            while True:
                view = ring.next_for(i)
                if view is None:
                    return
                self._sink(view)
                i += 1
                with ring.cond:
                    self.done = i
                    ring.cond.notify_all()
        except _Stop:
            return
        except BaseException as e:  # noqa: BLE001 - handed to the reading thread, which re-raises it
            with ring.cond:
                self.error = e
                ring.cond.notify_all()

    def join(self) -> None:
        self._thread.join()


class _Ring:
    """The buffers between the reading thread and the consumers (see `pump`)."""

    def __init__(self, chunk: int, buffers: int) -> None:
        self.cond = threading.Condition()
        self.bufs = [memoryview(bytearray(chunk)) for _ in range(buffers)]
        self.filled: list[int] = [0] * buffers
        self.published = 0  # buffers handed to consumers
        self.finished = False
        self.stopped = False
        self.consumers: list[_Consumer] = []

    def next_for(self, i: int) -> memoryview | None:
        """The `i`-th buffer for a consumer (waits for it); None at the end."""
        with self.cond:
            while self.published <= i and not self.finished and not self.stopped:
                self.cond.wait()
            if self.stopped:
                raise _Stop
            if self.published <= i:
                return None
            slot = i % len(self.bufs)
            return self.bufs[slot][: self.filled[slot]]

    def slot_for_reading(self, i: int) -> memoryview:
        """The buffer to read the `i`-th chunk into, once every consumer is done with it."""
        reuse = i - len(self.bufs)
        with self.cond:
            while True:
                self.raise_consumer_error()
                if all(c.done > reuse for c in self.consumers):
                    return self.bufs[i % len(self.bufs)]
                self.cond.wait()

    def publish(self, i: int, n: int) -> None:
        with self.cond:
            self.filled[i % len(self.bufs)] = n
            self.published = i + 1
            self.cond.notify_all()

    def finish(self) -> None:
        """No more buffers: wait until every consumer has drained the ring."""
        with self.cond:
            self.finished = True
            self.cond.notify_all()
            while True:
                self.raise_consumer_error()
                if all(c.done >= self.published for c in self.consumers):
                    return
                self.cond.wait()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def raise_consumer_error(self) -> None:
        for c in self.consumers:
            if c.error is not None:
                raise c.error


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise InvalidData(
            "stopped because another file failed", remedy="see the other error", code="cancelled"
        )


def pump(
    src: Readable,
    sinks: Sequence[Sink],
    *,
    check: Check | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    chunk: int = PIPE_CHUNK,
    buffers: int = PIPE_BUFFERS,
    readahead: bool = False,
) -> int:
    """Read `src` to its end and hand every chunk, in order, to each of `sinks`; return the byte
    count. The calling thread reads (and runs `check` and `progress`); each sink runs in a thread
    of its own, at most `buffers` chunks behind the reader, so memory is ``buffers * chunk``.

    A `TeeReader` source is unwrapped: its hash object is fed by a sink thread of its own, with
    the same bytes in the same order. A sink must finish with the buffer before returning (it
    is reused afterwards). When `cancel` is set the stream stops early with `InvalidData`
    ``cancelled`` (callers stop sibling streams after a failure this way). With `readahead` a
    file source is fetched `READAHEAD` bytes ahead of the reader (`_ReadAhead`).

    Raises:
        The first exception of `check`, `src.readinto` or a sink, unchanged (an `OSError` from a
        write keeps its errno), after every thread has stopped.
    """
    untee = getattr(src, "untee", None)  # a TeeReader: its hash becomes one more sink
    if untee is not None:
        src, hasher = untee()
        sinks = [*sinks, hasher.update]
    if readahead:
        src = _with_readahead(src)
    ring = _Ring(chunk, buffers)
    ring.consumers = [_Consumer(s, ring) for s in sinks]
    total = 0
    try:
        i = 0
        while True:
            _check_cancel(cancel)
            view = ring.slot_for_reading(i)
            n = src.readinto(view) or 0
            if n == 0:
                break
            total += n
            if check is not None:
                check(total)
            ring.publish(i, n)
            if progress is not None:
                progress(n)
            i += 1
        ring.finish()
    except BaseException:
        ring.stop()
        raise
    finally:
        for c in ring.consumers:
            c.join()
        # Break the ring <-> consumer cycle now, so the buffers go back to the OS at once
        # rather than at the next garbage collection (flat memory across consecutive streams).
        ring.consumers = []
        ring.bufs = []
    return total


def sha256_stream(
    src: Readable, *, max_bytes: int | None = None, progress: Progress | None = None
) -> CopyResult:
    """Hash a stream to its end. Raises `InvalidData` past `max_bytes`."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := src.readinto(view):
        size += n
        if max_bytes is not None and size > max_bytes:
            raise InvalidData(
                f"stream is longer than the limit of {max_bytes} bytes",
                remedy="check the source; a larger input needs a larger configured limit",
                code="too-large",
            )
        h.update(view[:n])
        if progress is not None:
            progress(n)
    return CopyResult(sha256=h.hexdigest(), size=size)


def sha256_file(path: Path, *, progress: Progress | None = None) -> CopyResult:
    """Hash a regular file without following a final symlink, reading ahead of the hash."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as f:
        if os.fstat(fd).st_size < OVERLAP_MIN:
            return sha256_stream(f, progress=progress)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        h = hashlib.sha256()
        size = pump(f, [h.update], progress=progress, readahead=True)
        return CopyResult(sha256=h.hexdigest(), size=size)


def _write_all(out: BinaryIO) -> Sink:
    fd = out.fileno()

    def write(view: memoryview) -> None:
        while view:
            view = view[os.write(fd, view) :]

    return write


def copy_hashed(
    src: Readable,
    dst: Path,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    max_bytes: int | None = None,
    mode: int = 0o644,
    progress: Progress | None = None,
    overlap: bool = False,
    write_sink: Callable[[BinaryIO], Sink] | None = None,
) -> CopyResult:
    """Copy `src` to `dst` crash-safely, hashing in the same pass.

    The copy lands under `dst` only if it is complete and, when given, matches `expected_size` and
    `expected_sha256`; otherwise nothing is left behind and `InvalidData` is raised. `max_bytes`
    bounds a source whose size nobody announced, so a hostile peer cannot fill the disk.

    With `overlap` (and an `expected_size` of at least `OVERLAP_MIN`) the copy goes through
    `pump`: reading, hashing and writing overlap in three threads; `src` is then read by the
    calling thread only. `write_sink` replaces the plain write loop (the media writer adds
    write-back pacing, `gapferry.common.media.write`); it gets the open temporary file.

    Raises:
        InvalidData: ``size-mismatch``, ``too-large``, ``digest-mismatch``.
        OSError: from reading or writing, unchanged (errno kept for the caller's mapping).
    """

    def check(size: int) -> None:
        if expected_size is not None and size > expected_size:
            raise InvalidData(
                f"{dst.name}: source is longer than the announced {expected_size} bytes",
                remedy="the source changed or lies about its size; fetch it again",
                code="size-mismatch",
            )
        if max_bytes is not None and size > max_bytes:
            raise InvalidData(
                f"{dst.name}: source is longer than the limit of {max_bytes} bytes",
                remedy="the source is hostile or broken; a larger input needs a larger limit",
                code="too-large",
            )

    h = hashlib.sha256()
    with atomic_open(dst, mode=mode) as out:
        if overlap and expected_size is not None and expected_size >= OVERLAP_MIN:
            out.flush()
            sink = (write_sink or _write_all)(out)
            size = pump(src, [h.update, sink], check=check, progress=progress, readahead=True)
        else:
            size = 0
            view = memoryview(bytearray(CHUNK))
            while n := src.readinto(view):
                size += n
                check(size)
                h.update(view[:n])
                out.write(view[:n])
                if progress is not None:
                    progress(n)
        if expected_size is not None and size != expected_size:
            raise InvalidData(
                f"{dst.name}: expected {expected_size} bytes, got {size}",
                remedy="the source was truncated; fetch it again",
                code="size-mismatch",
            )
        digest = h.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise InvalidData(
                f"{dst.name}: expected sha256 {expected_sha256}, got {digest}",
                remedy="the source is corrupt or was tampered with; fetch it again",
                code="digest-mismatch",
            )
    return CopyResult(sha256=digest, size=size)
