"""Hypothesis: the models round-trip through canonical JSON, and any single-byte change to a
signed bundle (manifest, signature, artifact, checksum list, marker) is detected."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from gapferry.common.bundle import (
    Actor,
    ArtifactEntry,
    ArtifactRef,
    Deployment,
    FileEntry,
    InventoryAttribute,
    LogRef,
    Receipt,
    ResultDevice,
    ResultManifest,
    StatusStep,
    TransferDevice,
    TransferManifest,
    encode,
    open_bundle,
)
from gapferry.common.errors import InvalidData
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.fixtures.selfcheck import BundleKeys, make_sample_result, make_sample_transfer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
sha = st.text("0123456789abcdef", min_size=64, max_size=64)
uuid = st.uuids().map(str)
times = st.datetimes(
    timezones=st.just(UTC), min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)
)
size = st.integers(min_value=0, max_value=2**62)
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.one_of(text, numbers, st.lists(text, max_size=3), st.lists(numbers, max_size=3))
actor = st.builds(Actor, name=text, host=text, software=text)
files = st.lists(st.builds(FileEntry, path=text, size=size, sha256=sha), max_size=3)
site = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?\Z")

transfers = st.builds(
    TransferManifest,
    format_version=st.just(1),
    kind=st.just("transfer"),
    bundle_id=uuid,
    site=site,
    sequence=st.integers(min_value=1, max_value=2**53),
    created=times,
    expires=times,
    packer=actor,
    devices=st.lists(
        st.builds(
            TransferDevice,
            name=text,
            mender_device_id=text,
            identity=st.dictionaries(text, text, max_size=2),
            device_type=text,
            current_artifact_name=text,
            deployment=st.builds(Deployment, id=text, name=text),
            artifact=st.builds(ArtifactRef, name=text, size=size, sha256=sha, path=text),
        ),
        max_size=3,
    ),
    artifacts=st.lists(
        st.builds(
            ArtifactEntry,
            sha256=sha,
            size=size,
            name=text,
            path=text,
            parts=st.lists(text, max_size=2),
        ),
        max_size=2,
    ),
    files=files,
    checksums_sha256=sha,
)

results = st.builds(
    ResultManifest,
    format_version=st.just(1),
    kind=st.just("result"),
    result_id=uuid,
    site=site,
    sequence=st.integers(min_value=1, max_value=2**53),
    receipt=st.builds(Receipt, transfer_bundle_id=uuid, transfer_manifest_sha256=sha),
    applier=actor,
    started=times,
    finished=times,
    created=times,
    devices=st.lists(
        st.builds(
            ResultDevice,
            name=text,
            mender_device_id=text,
            deployment_id=text,
            outcome=st.sampled_from(["success", "failure", "already-installed", "skipped"]),
            reason=st.none() | text,
            steps=st.lists(
                st.builds(
                    StatusStep,
                    status=st.sampled_from(["downloading", "installing", "success"]),
                    at=times,
                    substate=st.none() | text,
                ),
                max_size=3,
            ),
            log=st.none()
            | st.builds(
                LogRef,
                path=text,
                size=size,
                sha256=sha,
                decompressed_size=size,
                lines=st.integers(min_value=1, max_value=10),
            ),
            inventory=st.lists(st.builds(InventoryAttribute, name=text, value=values), max_size=3),
            artifact_name_after=st.none() | text,
        ),
        max_size=3,
    ),
    files=files,
    checksums_sha256=sha,
)


@given(transfers)
def test_transfer_manifest_round_trips(m: TransferManifest) -> None:
    raw = encode(m)
    back = msgspec.json.decode(raw, type=TransferManifest)
    assert back == m
    assert encode(back) == raw


@given(results)
def test_result_manifest_round_trips(m: ResultManifest) -> None:
    raw = encode(m)
    back = msgspec.json.decode(raw, type=ResultManifest)
    assert back == m
    assert encode(back) == raw


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BundleKeys, list[Path]]]:
    from gapferry.fixtures.selfcheck import make_bundle_keys

    base = tmp_path_factory.mktemp("props")
    keys = make_bundle_keys(base / "keys")
    t = make_sample_transfer(
        base / "stick", base / "work", signers=[keys.a.signer, keys.b.signer], max_file_size=128
    )
    r = make_sample_result(
        base / "stick",
        signers=[keys.a.signer],
        receipt=Receipt(
            transfer_bundle_id="7e0c1a55-0b1e-4c2a-9f00-000000000001",
            transfer_manifest_sha256="c" * 64,
        ),
    )
    yield keys, [t, r]
    shutil.rmtree(base)


def _targets(bundle: Path) -> list[Path]:
    return sorted(p for p in bundle.rglob("*") if p.is_file())


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.integers(min_value=0, max_value=1),
    pick=st.integers(min_value=0),
    offset=st.integers(min_value=0),
    xor=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_is_detected(
    bundles: tuple[BundleKeys, list[Path]], which: int, pick: int, offset: int, xor: int
) -> None:
    keys, paths = bundles
    bundle = paths[which]
    targets = _targets(bundle)
    target = targets[pick % len(targets)]
    original = target.read_bytes()
    if not original:
        return
    data = bytearray(original)
    data[offset % len(data)] ^= xor
    target.write_bytes(bytes(data))
    try:
        with pytest.raises(InvalidData):
            open_bundle(
                bundle, policy=keys.policy(), now=datetime.now(tz=UTC), limits=DEFAULT_LIMITS
            )
    finally:
        target.write_bytes(original)
    open_bundle(bundle, policy=keys.policy(), now=datetime.now(tz=UTC), limits=DEFAULT_LIMITS)
