"""The reader fails only with InvalidData on mutated or random input, and streams in constant memory."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
import tracemalloc
from pathlib import Path

from gapferry.common.artifact.reader import read_artifact, read_artifact_file
from gapferry.common.artifact.writer import PayloadSource, write_module_image
from gapferry.common.errors import InvalidData
from gapferry.common.limits import Limits
from hypothesis import given, settings
from hypothesis import strategies as st

_SMALL = Limits(
    artifact_bytes=1 << 20, artifact_header_bytes=1 << 16, artifact_decompressed_bytes=1 << 20
)


def _seed(tmp: Path, compression: str) -> bytes:
    out = tmp / f"seed-{compression}.mender"
    write_module_image(
        out,
        artifact_name="fuzz",
        device_types=["d"],
        payload_type="single-file",
        files=[
            PayloadSource(name="f", data=b"abc" * 50),
            PayloadSource(name="dest_dir", data=b"/x\n"),
        ],
        compression=compression,
        meta_data={"k": "v"},
    )
    return out.read_bytes()


@functools.cache
def _seeds() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        return {c: _seed(Path(tmp), c) for c in ("none", "gzip", "lzma")}


def _read(data: bytes) -> None:
    with contextlib.suppress(InvalidData):
        read_artifact(io.BytesIO(data), limits=_SMALL)


@settings(max_examples=300, deadline=None)
@given(
    which=st.sampled_from(["none", "gzip", "lzma"]),
    flips=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(1, 255)), min_size=1, max_size=8
    ),
)
def test_artifact_fuzz_byte_flips(which: str, flips: list[tuple[int, int]]) -> None:
    data = bytearray(_seeds()[which])
    for pos, x in flips:
        data[pos % len(data)] ^= x
    _read(bytes(data))


@settings(max_examples=200, deadline=None)
@given(
    which=st.sampled_from(["none", "gzip", "lzma"]),
    cut=st.integers(min_value=0),
    tail=st.binary(max_size=600),
)
def test_artifact_fuzz_truncate_and_append(which: str, cut: int, tail: bytes) -> None:
    data = _seeds()[which]
    _read(data[: cut % (len(data) + 1)] + tail)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_artifact_fuzz_random_bytes(data: bytes) -> None:
    _read(data)


def test_artifact_streams_large_payload_in_constant_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    art = tmp_path / "big.mender"
    write_module_image(
        art,
        artifact_name="big",
        device_types=["d"],
        payload_type="single-file",
        files=[PayloadSource(name="big.bin", path=big)],
        compression="none",
    )
    tracemalloc.start()
    try:
        info = read_artifact_file(art)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.payloads[0].files[0].size == 48 << 20
    assert peak < 12 << 20, f"peak {peak} bytes"
