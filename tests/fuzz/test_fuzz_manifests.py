"""Property fuzzing of the parsers of removable-media input that tests/bundle and tests/artifact
do not reach (issue 10).

What exists elsewhere and is not repeated here: manifest round trips and single-byte changes to
whole bundles (tests/bundle/test_bundle_properties.py), byte flips, truncation and random bytes
for the artifact reader (tests/artifact/test_artifact_fuzz.py), the signature and allowed_signers
parsers (tests/signing/test_signing_tamper_property.py).

Added here:
- manifests a hostile but TRUSTED signer could write: a valid manifest mutated at a random place,
  then signed, through the full pure core (`verify_transfer_manifest` / `verify_result_manifest`):
  only `InvalidData` may come out, and whatever is accepted keeps the invariants the applier and
  ingest rely on;
- the result log reader (zstd) on mutated and random data, within the limits;
- the completion marker parser and the single-file (tar) bundle form on mutated bytes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import tarfile
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard
from gapferry.common.bundle import (
    Receipt,
    find_bundles,
    from_tar,
    to_tar,
    verify_result_manifest,
    verify_transfer_manifest,
)
from gapferry.common.bundle.layout import namespace_for, parse_marker
from gapferry.common.bundle.model import LogRef
from gapferry.common.bundle.read import _read_log
from gapferry.common.errors import InvalidData
from gapferry.common.limits import Limits
from gapferry.common.safepath import checked_relpath
from gapferry.common.signers import Signer
from gapferry.common.trust import TrustPolicy
from gapferry.fixtures.selfcheck import (
    BundleKeys,
    make_bundle_keys,
    make_sample_result,
    make_sample_transfer,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_LIMITS = Limits(log_bytes=1 << 16, log_lines=200, manifest_bytes=1 << 20)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "..", "../x", "/etc/passwd", "a" * 300, "2026-01-01T00:00:00Z"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


class Samples:
    def __init__(self, base: Path) -> None:
        self.keys: BundleKeys = make_bundle_keys(base / "keys")
        self.transfer = make_sample_transfer(
            base / "stick", base / "work", signers=[self.keys.a.signer], big_artifact_bytes=300
        )
        self.result = make_sample_result(
            base / "stick",
            signers=[self.keys.a.signer],
            receipt=Receipt(
                transfer_bundle_id="7e0c1a55-0b1e-4c2a-9f00-000000000001",
                transfer_manifest_sha256="c" * 64,
            ),
        )
        self.tar = to_tar(self.transfer, base / "single.tar", limits=Limits())

    @property
    def signer(self) -> Signer:
        return self.keys.a.signer

    @property
    def policy(self) -> TrustPolicy:
        return self.keys.policy()

    def doc(self, kind: str) -> dict[str, Any]:
        bundle = self.transfer if kind == "transfer" else self.result
        doc = json.loads((bundle / "manifest.json").read_bytes())
        assert isinstance(doc, dict)
        return doc


@functools.cache
def _samples() -> Samples:
    return Samples(Path(tempfile.mkdtemp(prefix="gapferry-fuzz-")))


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every place in a JSON tree (the root excluded)."""
    out: list[tuple[str | int, ...]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: dict[str, Any], where: tuple[str | int, ...], how: str, value: object) -> None:
    parent: Any = doc
    for step in where[:-1]:
        parent = parent[step]
    last = where[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif how == "duplicate" and isinstance(parent, list):
        assert isinstance(last, int)
        parent.append(copy.deepcopy(parent[last]))
    elif how == "duplicate" and isinstance(parent, dict):
        parent[f"{last}_"] = copy.deepcopy(parent[last])


def _sign_and_verify(kind: str, doc: dict[str, Any]) -> object:
    s = _samples()
    raw = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    sig = s.signer.sign_sshsig(raw, namespace_for("transfer" if kind == "transfer" else "result"))
    created = datetime.fromisoformat(str(s.doc(kind)["created"]).replace("Z", "+00:00"))
    now = created + timedelta(minutes=1)
    verify = verify_transfer_manifest if kind == "transfer" else verify_result_manifest
    try:
        return verify(raw, [sig], policy=s.policy, now=now, limits=_LIMITS)
    except InvalidData:
        return None


def _check_transfer_invariants(verified: Any) -> None:
    m = verified.manifest
    listed = {f.path for f in m.files}
    by_sha = {a.sha256: a for a in m.artifacts}
    for f in m.files:
        checked_relpath(f.path, limits=_LIMITS)
    for d in m.devices:
        entry = by_sha[d.artifact.sha256]
        assert (entry.name, entry.size, entry.path) == (
            d.artifact.name,
            d.artifact.size,
            d.artifact.path,
        )
        for p in entry.parts or [entry.path]:
            assert p in listed
    assert len({d.name for d in m.devices}) == len(m.devices)
    assert m.created < m.expires


def _check_result_invariants(verified: Any) -> None:
    m = verified.manifest
    listed = {f.path: f for f in m.files}
    for d in m.devices:
        if d.log is not None:
            assert d.log.path in listed
            assert d.log.decompressed_size <= _LIMITS.log_bytes
        for a in d.inventory:
            if isinstance(a.value, list):
                assert len({isinstance(x, str) for x in a.value}) <= 1
    assert len({d.name for d in m.devices}) == len(m.devices)


@st.composite
def mutations(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    doc = _samples().doc(kind)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        places = _paths(doc)
        if not places:
            break
        where = draw(st.sampled_from(places))
        how = draw(st.sampled_from(["replace", "replace", "delete", "duplicate"]))
        _mutate(doc, where, how, draw(json_values))
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutations("transfer"))
def test_fuzz_signed_hostile_transfer_manifest(doc: dict[str, Any]) -> None:
    verified = _sign_and_verify("transfer", doc)
    if verified is not None:
        _check_transfer_invariants(verified)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutations("result"))
def test_fuzz_signed_hostile_result_manifest(doc: dict[str, Any]) -> None:
    verified = _sign_and_verify("result", doc)
    if verified is not None:
        _check_result_invariants(verified)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=2048))
def test_fuzz_signed_random_bytes_as_manifest(raw: bytes) -> None:
    """Any bytes a trusted key signed: refused with InvalidData, never another exception."""
    s = _samples()
    sig = s.signer.sign_sshsig(raw, namespace_for("transfer"))
    with pytest.raises(InvalidData):
        verify_transfer_manifest(raw, [sig], policy=s.policy, now=datetime.now(UTC), limits=_LIMITS)


_LINE = b'{"level":"info","message":"m","timestamp":"2026-01-01T00:00:00Z"}\n'


def _read_packed(packed: bytes, *, size: int, lines: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sha = hashlib.sha256(packed).hexdigest()
        ref = LogRef(
            path=f"logs/{sha}.log.zst",
            sha256=sha,
            size=len(packed),
            decompressed_size=size,
            lines=lines,
        )
        (Path(tmp) / "logs").mkdir()
        (Path(tmp) / ref.path).write_bytes(packed)
        try:
            out = _read_log(Path(tmp), ref, _LIMITS)
        except InvalidData:
            return
        assert len(out) == lines <= _LIMITS.log_lines


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=20),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=4),
    size_delta=st.integers(min_value=-5, max_value=5),
    lines_delta=st.integers(min_value=-1, max_value=1),
    tail=st.binary(max_size=64),
)
def test_fuzz_result_log_reader(
    n: int, flips: list[tuple[int, int]], size_delta: int, lines_delta: int, tail: bytes
) -> None:
    plain = _LINE * n
    packed = bytearray(zstandard.ZstdCompressor().compress(plain) + tail)
    for pos, x in flips:
        packed[pos % len(packed)] ^= x
    _read_packed(bytes(packed), size=max(0, len(plain) + size_delta), lines=max(0, n + lines_delta))


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=1024), size=st.integers(min_value=0, max_value=1 << 20))
def test_fuzz_result_log_reader_random_bytes(data: bytes, size: int) -> None:
    _read_packed(data, size=size, lines=size // 64)


@given(raw=st.binary(max_size=300))
def test_fuzz_completion_marker(raw: bytes) -> None:
    found = parse_marker(raw)
    assert found is None or (len(found) == 64 and set(found) <= set("0123456789abcdef"))


@settings(max_examples=150, deadline=None)
@given(
    flips=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(1, 255)), min_size=1, max_size=4
    ),
    cut=st.integers(min_value=0),
)
def test_fuzz_single_file_bundle(flips: list[tuple[int, int]], cut: int) -> None:
    """Mutated single-file (tar) bundles: refused with InvalidData and nothing left behind, or
    imported intact."""
    s = _samples()
    data = bytearray(s.tar.read_bytes())
    for pos, x in flips:
        data[pos % len(data)] ^= x
    data = data[: len(data) - cut % 4096] if cut % 3 == 0 else data
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.tar"
        src.write_bytes(bytes(data))
        dest = Path(tmp) / "out"
        dest.mkdir()
        try:
            opened = from_tar(src, dest, policy=s.policy, now=datetime.now(UTC), limits=Limits())
        except InvalidData:
            assert find_bundles(dest) == []
            return
        assert (
            opened.transfer.manifest_sha256
            == hashlib.sha256((s.transfer / "manifest.json").read_bytes()).hexdigest()
        )


def test_fuzz_single_file_bundle_with_a_corrupted_folder_name() -> None:
    s = _samples()
    data = bytearray(s.tar.read_bytes())
    data[512] ^= 1  # the first member's name: the bundle folder
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.tar"
        src.write_bytes(bytes(data))
        with pytest.raises(InvalidData):
            from_tar(
                src, Path(tmp) / "out", policy=s.policy, now=datetime.now(UTC), limits=Limits()
            )


def test_fuzz_single_file_bundle_with_hostile_members() -> None:
    """A tar with a link, a device node and an escaping name next to the real members."""
    s = _samples()
    for member in ("link", "device", "escape"):
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.tar"
            with tarfile.open(s.tar) as orig, tarfile.open(src, "w") as out:
                for m in orig.getmembers():
                    f = orig.extractfile(m) if m.isfile() else None
                    out.addfile(m, f)
                info = tarfile.TarInfo(f"{s.transfer.name}/artifacts/x")
                if member == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                elif member == "device":
                    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 1
                else:
                    info.name, info.size = "../escape", 1
                out.addfile(info, io.BytesIO(b"x") if member == "escape" else None)
            dest = Path(tmp) / "out"
            dest.mkdir()
            with pytest.raises(InvalidData):
                from_tar(src, dest, policy=s.policy, now=datetime.now(UTC), limits=Limits())
            assert find_bundles(dest) == []
            assert not (Path(tmp) / "escape").exists()
