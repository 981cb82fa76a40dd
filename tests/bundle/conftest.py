"""Throwaway keys and sample bundles for the bundle tests (made at test time, never committed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from gapferry.fixtures.selfcheck import BundleKeys, make_bundle_keys, make_sample_transfer


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> BundleKeys:
    return make_bundle_keys(tmp_path_factory.mktemp("bundle-keys"))


@pytest.fixture
def now() -> datetime:
    return datetime.now(tz=UTC)


@pytest.fixture
def transfer(tmp_path: Path, keys: BundleKeys) -> Path:
    """A signed transfer bundle (artifacts split at 128 bytes) under tmp_path/stick."""
    return make_sample_transfer(
        tmp_path / "stick", tmp_path / "work", signers=[keys.a.signer], max_file_size=128
    )
