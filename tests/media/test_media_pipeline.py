"""Overlapped read / hash / write (common/digest.py `pump`, media write-behind, read-back read-ahead,
bundle files hashed in parallel): same bytes, same checks and errors as the serial loops, bounded
memory (ADR 0034)."""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gapferry.common.atomic import temp_name_for
from gapferry.common.bundle import read as bundle_read
from gapferry.common.bundle.model import FileEntry
from gapferry.common.bundle.read import OpenedBundle, open_bundle
from gapferry.common.bundle.steps import check_listing
from gapferry.common.digest import (
    OVERLAP_MIN,
    READAHEAD,
    CopyResult,
    Readable,
    copy_hashed,
    pump,
    sha256_file,
)
from gapferry.common.errors import EnvironmentFailure, InvalidData
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.common.media import write as media_write
from gapferry.common.media.readback import ReadbackMismatch, verify_file
from gapferry.common.media.write import (
    copy_to_medium,
    discard_partials,
    is_verified,
    paced_writer,
)
from gapferry.common.streams import RangeReader, TeeReader
from gapferry.fixtures.media_mounts import mount_fat32, mount_tmpfs
from gapferry.fixtures.selfcheck import BundleKeys, make_bundle_keys, make_sample_transfer

MIB = 1024 * 1024
BIG = os.urandom(OVERLAP_MIN + 3 * MIB + 5)
BIG_SHA = hashlib.sha256(BIG).hexdigest()


class _Counting(io.BytesIO):
    """A source that records how far it has been read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def readinto(self, buffer: memoryview, /) -> int:  # type: ignore[override]
        n = super().readinto(buffer)
        self.read_bytes += n
        return n


def test_pump_feeds_every_sink_in_order_and_lags_at_most_the_ring() -> None:
    src = _Counting(BIG)
    chunk, buffers = 64 * 1024, 3
    got: list[bytes] = []
    lag: list[int] = []
    h = hashlib.sha256()

    def slow_sink(view: memoryview) -> None:
        got.append(bytes(view))
        lag.append(src.read_bytes - sum(map(len, got)))

    seen: list[int] = []
    total = pump(src, [h.update, slow_sink], progress=seen.append, chunk=chunk, buffers=buffers)
    assert total == len(BIG) == sum(seen)
    assert b"".join(got) == BIG
    assert h.hexdigest() == BIG_SHA
    # The reader is never more than the ring ahead of a sink: memory is buffers x chunk.
    assert max(lag) <= buffers * chunk
    assert not [t for t in threading.enumerate() if t.name == "gapferry-pump"]


def test_pump_gives_a_tee_readers_hash_its_own_thread_with_the_same_bytes(tmp_path: Path) -> None:
    f = tmp_path / "src.bin"
    f.write_bytes(BIG)
    whole = hashlib.sha256()
    part = hashlib.sha256()
    fd = os.open(f, os.O_RDONLY)
    try:
        offset, length = MIB + 3, len(BIG) - 2 * MIB
        n = pump(TeeReader(RangeReader(fd, offset, length), whole), [part.update], chunk=MIB)
    finally:
        os.close(fd)
    assert n == length
    expected = hashlib.sha256(BIG[offset : offset + length]).hexdigest()
    assert part.hexdigest() == whole.hexdigest() == expected


def test_pump_readahead_asks_the_kernel_ahead_of_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "src.bin"
    f.write_bytes(BIG)
    asked: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_WILLNEED:
            asked.append((offset, offset + length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    h = hashlib.sha256()
    with f.open("rb", buffering=0) as src:
        assert pump(src, [h.update], chunk=MIB, readahead=True) == len(BIG)
    assert h.hexdigest() == BIG_SHA
    # Contiguous requests, each reaching READAHEAD beyond the read position, from the start.
    assert asked
    assert asked[0] == (MIB, MIB + READAHEAD)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(asked))
    # A source without a file descriptor is read as is.
    h2 = hashlib.sha256()
    assert pump(io.BytesIO(BIG), [h2.update], readahead=True) == len(BIG)
    assert h2.hexdigest() == BIG_SHA


def test_pump_raises_a_sinks_oserror_unchanged_and_stops_every_thread() -> None:
    calls = {"n": 0}

    def full(view: memoryview) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    src = _Counting(BIG)
    with pytest.raises(OSError, match="No space left") as ei:
        pump(src, [full], chunk=MIB, buffers=2)
    assert ei.value.errno == errno.ENOSPC
    assert src.read_bytes < len(BIG)  # stopped early, not read to the end
    assert not [t for t in threading.enumerate() if t.name == "gapferry-pump"]


def test_pump_check_and_cancel_stop_the_stream() -> None:
    def limit(total: int) -> None:
        if total > 2 * MIB:
            raise InvalidData("too long", remedy="-", code="too-large")

    src = _Counting(BIG)
    with pytest.raises(InvalidData) as ei:
        pump(src, [hashlib.sha256().update], check=limit, chunk=MIB)
    assert ei.value.code == "too-large"
    assert src.read_bytes == 3 * MIB
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InvalidData) as ei:
        pump(io.BytesIO(BIG), [hashlib.sha256().update], cancel=cancel)
    assert ei.value.code == "cancelled"


def test_copy_hashed_overlapped_same_result_and_same_refusals(tmp_path: Path) -> None:
    dst = tmp_path / "a.bin"
    res = copy_hashed(io.BytesIO(BIG), dst, expected_size=len(BIG), overlap=True)
    assert (res.sha256, res.size) == (BIG_SHA, len(BIG))
    assert dst.read_bytes() == BIG
    assert sha256_file(dst).sha256 == BIG_SHA
    longer = tmp_path / "longer.bin"
    with pytest.raises(InvalidData) as ei:
        copy_hashed(io.BytesIO(BIG + b"x"), longer, expected_size=len(BIG), overlap=True)
    assert ei.value.code == "size-mismatch"
    wrong = tmp_path / "wrong.bin"
    with pytest.raises(InvalidData) as ei:
        copy_hashed(
            io.BytesIO(BIG), wrong, expected_size=len(BIG), expected_sha256="0" * 64, overlap=True
        )
    assert ei.value.code == "digest-mismatch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_paced_writer_starts_write_back_per_window_and_waits_for_the_one_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = media_write._sync_file_range
    assert real is not None, "Linux has sync_file_range"
    calls: list[tuple[int, int, int]] = []

    def recorder(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((offset, length, flags))
        return real(fd, offset, length, flags)

    monkeypatch.setattr(media_write, "_sync_file_range", recorder)
    data = os.urandom(5 * MIB)
    with (tmp_path / "out.bin").open("wb") as out:
        write = paced_writer(out, window=2 * MIB)
        for i in range(5):
            write(memoryview(data)[i * MIB : (i + 1) * MIB])
    assert (tmp_path / "out.bin").read_bytes() == data
    start, wait = 2, 1 | 2 | 4
    assert calls == [(0, 2 * MIB, start), (2 * MIB, 2 * MIB, start), (0, 2 * MIB, wait)]


@pytest.mark.root_mounts
def test_copy_to_medium_overlapped_enospc_is_media_full_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    with mount_tmpfs(tmp_path, size="4m") as m:
        target = m.path / "big.bin"
        with pytest.raises(EnvironmentFailure) as ei:
            copy_to_medium(io.BytesIO(BIG), target, size=len(BIG), sha256=BIG_SHA)
        assert ei.value.code == "media-full"
        assert list(m.path.iterdir()) == []
        assert not temp_name_for(target).exists()


def test_copy_to_medium_overlapped_reads_back_and_catches_a_flip(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    seen: list[int] = []
    res = copy_to_medium(
        io.BytesIO(BIG), target, size=len(BIG), sha256=BIG_SHA, verify_progress=seen.append
    )
    assert res.sha256 == BIG_SHA
    assert sum(seen) == len(BIG)
    with target.open("r+b") as f:
        f.seek(OVERLAP_MIN + 7)
        b = f.read(1)
        f.seek(OVERLAP_MIN + 7)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(ReadbackMismatch) as ei:
        verify_file(target, sha256=BIG_SHA, size=len(BIG))
    assert ei.value.code == "readback-mismatch"
    assert BIG_SHA in ei.value.message


# --- gapferry verify: artifacts hashed in parallel ------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> BundleKeys:
    return make_bundle_keys(tmp_path_factory.mktemp("pipeline-keys"))


@pytest.fixture
def parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file through `pump`, two artifacts at once, whatever this machine's core count."""
    monkeypatch.setattr(bundle_read, "OVERLAP_MIN", 0)
    monkeypatch.setattr(bundle_read, "HASH_JOBS", 2)
    monkeypatch.setattr(bundle_read, "CORES", 2)


def _sample(tmp_path: Path, keys: BundleKeys, **kw: Any) -> Path:
    """A transfer bundle with two artifacts, the big one 3 MiB + 1 unless `kw` says otherwise."""
    kw.setdefault("big_artifact_bytes", 3 * MIB + 1)
    return make_sample_transfer(
        tmp_path / "stick", tmp_path / "work", signers=[keys.a.signer], **kw
    )


def _open(bundle: Path, keys: BundleKeys, **kw: Any) -> OpenedBundle:
    return open_bundle(
        bundle, policy=keys.policy(), now=datetime.now(tz=UTC), limits=DEFAULT_LIMITS, **kw
    )


def _flip(path: Path, at: int) -> None:
    with path.open("r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 1]))


@pytest.mark.usefixtures("parallel")
@pytest.mark.parametrize("split", [False, True])
def test_open_bundle_parallel_hashing_accepts_and_reports_progress(
    tmp_path: Path, keys: BundleKeys, *, split: bool
) -> None:
    bundle = _sample(tmp_path, keys, max_file_size=MIB if split else 4 * 1024**3 - 1)
    seen: list[int] = []
    opened = _open(bundle, keys, progress=seen.append)
    artifacts = opened.transfer.manifest.artifacts
    assert len(artifacts) == 2
    assert bool(artifacts[1].parts or artifacts[0].parts) is split
    assert sum(seen) == sum(a.size for a in artifacts)
    assert all(f.verified for f in opened.files)


def test_split_artifact_written_overlapped_parts_and_whole_hash_match(
    tmp_path: Path, keys: BundleKeys
) -> None:
    """Parts big enough for the overlapped copy: each part's hash and the whole artifact's hash
    (a `TeeReader` unwrapped by `pump`) come out right, and the bundle verifies."""
    bundle = _sample(
        tmp_path, keys, big_artifact_bytes=2 * OVERLAP_MIN + 5, max_file_size=OVERLAP_MIN
    )
    opened = _open(bundle, keys)
    (split,) = [a for a in opened.transfer.manifest.artifacts if a.parts]
    assert len(split.parts) == 3
    joined = hashlib.sha256()
    for rel in split.parts:
        joined.update((bundle / rel).read_bytes())
    assert joined.hexdigest() == split.sha256


@pytest.mark.usefixtures("parallel")
def test_open_bundle_parallel_hashing_reports_the_first_bad_artifact_in_order(
    tmp_path: Path, keys: BundleKeys
) -> None:
    bundle = _sample(tmp_path, keys, max_file_size=MIB)
    probe = _open(bundle, keys)
    first, second = probe.transfer.manifest.artifacts
    last_of = [(a.parts or [a.path])[-1] for a in (first, second)]
    # Damage the second artifact only: its file is named.
    _flip(bundle / last_of[1], 0)
    with pytest.raises(InvalidData) as ei:
        _open(bundle, keys)
    assert ei.value.code == "digest-mismatch"
    assert last_of[1] in ei.value.message
    # Damage both: the error is the one a one-by-one check gives (manifest order), never the
    # "cancelled" of a stream stopped early.
    _flip(bundle / last_of[0], 0)
    for _ in range(3):
        with pytest.raises(InvalidData) as ei:
            _open(bundle, keys)
        assert ei.value.code == "digest-mismatch"
        assert last_of[0] in ei.value.message
    assert not [t for t in threading.enumerate() if t.name.startswith("gapferry-")]


@pytest.mark.usefixtures("parallel")
def test_open_bundle_parallel_hashing_refuses_a_file_grown_after_the_listing(
    tmp_path: Path, keys: BundleKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _sample(tmp_path, keys)
    probe = _open(bundle, keys)
    big = max(probe.transfer.manifest.artifacts, key=lambda a: a.size)
    path = bundle / big.path
    data = path.read_bytes()

    def grow_after_listing(files: list[FileEntry], present: dict[str, int]) -> None:
        check_listing(files, present)
        path.write_bytes(data + b"extra")  # swapped for a longer file after the listing

    monkeypatch.setattr("gapferry.common.bundle.read.check_listing", grow_after_listing)
    with pytest.raises(InvalidData) as ei:
        _open(bundle, keys)
    assert ei.value.code == "size-mismatch"
    assert "changed while reading" in ei.value.message


# --- issue 8: read back before the completion marker; the overlapped path on FAT32 -------------
def test_bundle_write_stops_before_the_marker_when_the_medium_garbles_a_file(
    tmp_path: Path, keys: BundleKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stick that accepts the write but keeps other bytes (fake capacity, worn cell): the
    read-back catches it, the damaged file is removed and no COMPLETE marker is written."""
    garbled: list[Path] = []

    def garbling_copy(src: Readable, dst: Path, **kw: Any) -> CopyResult:
        res = copy_hashed(src, dst, **kw)
        if dst.parent.name == "artifacts" and not garbled:
            _flip(dst, dst.stat().st_size // 2)
            garbled.append(dst)
        return res

    monkeypatch.setattr("gapferry.common.media.write.copy_hashed", garbling_copy)
    with pytest.raises(ReadbackMismatch) as ei:
        _sample(tmp_path, keys, big_artifact_bytes=OVERLAP_MIN + 1)
    assert ei.value.code == "readback-mismatch"
    assert garbled
    assert garbled[0].name in ei.value.message
    assert not garbled[0].exists()
    (bundle,) = (tmp_path / "stick" / "gapferry").iterdir()
    assert not (bundle / "COMPLETE").exists()
    assert not (bundle / "manifest.json").exists()
    # Run again with a good stick: it completes (resume) and verifies.
    monkeypatch.undo()
    again = _sample(tmp_path, keys, big_artifact_bytes=OVERLAP_MIN + 1)
    assert (again / "COMPLETE").exists()
    _open(again, keys)


@pytest.mark.root_mounts
def test_copy_to_medium_overlapped_on_fat32_writes_and_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAT32 (fusefat): the overlapped copy with write-behind windows of 1 MiB (so that
    sync_file_range and the page drop run many times on FUSE) writes and reads back right."""
    monkeypatch.setattr(media_write, "WRITE_BEHIND", MIB)
    with mount_fat32(tmp_path, size_mb=40) as m:
        target = m.path / "BIG.BIN"
        res = copy_to_medium(io.BytesIO(BIG), target, size=len(BIG), sha256=BIG_SHA)
        assert res.sha256 == BIG_SHA
        assert is_verified(target, sha256=BIG_SHA, size=len(BIG))
        assert not temp_name_for(target).exists()
        assert target.read_bytes() == BIG


_KILLED_CHILD = """
import io, os, signal, sys
from pathlib import Path
from gapferry.common.media.write import copy_to_medium
data = Path(sys.argv[1]).read_bytes()
kill_after = int(sys.argv[3])
done = 0
def progress(n):
    global done
    done += n
    if done >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
copy_to_medium(io.BytesIO(data), Path(sys.argv[2]), size=len(data), progress=progress)
"""


@pytest.mark.parametrize("kill_after", [1, 5 * MIB, len(BIG)])
def test_overlapped_write_killed_then_resumed(tmp_path: Path, kill_after: int) -> None:
    """SIGKILL while the three threads copy (or just before the rename): what is left is only a
    ``.part`` the writer discards; running again writes the file whole and it reads back."""
    src = tmp_path / "src.bin"
    src.write_bytes(BIG)
    medium = tmp_path / "medium"
    medium.mkdir()
    target = medium / "big.bin"
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(src), str(target), str(kill_after)],
        check=False,
        capture_output=True,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not target.exists()
    assert discard_partials(medium) == [temp_name_for(target)]
    res = copy_to_medium(io.BytesIO(BIG), target, size=len(BIG), sha256=BIG_SHA)
    assert res.sha256 == BIG_SHA
    assert is_verified(target, sha256=BIG_SHA, size=len(BIG))
    assert sorted(p.name for p in medium.iterdir()) == ["big.bin"]


def test_open_bundle_on_one_core_hashes_in_a_plain_loop(
    tmp_path: Path, keys: BundleKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one usable core no threads are started (they only take turns there), and the plain
    loop accepts a good bundle and names a damaged file."""
    monkeypatch.setattr(bundle_read, "OVERLAP_MIN", 0)
    monkeypatch.setattr(bundle_read, "CORES", 1)
    monkeypatch.setattr(bundle_read, "HASH_JOBS", 1)

    def no_pump(*_a: object, **_k: object) -> int:
        raise AssertionError("pump used on one core")

    monkeypatch.setattr(bundle_read, "pump", no_pump)
    bundle = _sample(tmp_path, keys, max_file_size=MIB)
    opened = _open(bundle, keys)
    assert all(f.verified for f in opened.files)
    first = opened.transfer.manifest.artifacts[0]
    damaged = (first.parts or [first.path])[-1]
    _flip(bundle / damaged, 0)
    with pytest.raises(InvalidData) as ei:
        _open(bundle, keys)
    assert ei.value.code == "digest-mismatch"
    assert damaged in ei.value.message
