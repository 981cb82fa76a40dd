"""The writer on real file systems: a FAT32 stick (split parts, no chmod, verify from the stick,
single-file export) and a too-small medium (refused before anything is written)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from gapferry.common.bundle import open_bundle, to_tar
from gapferry.common.errors import EnvironmentFailure
from gapferry.common.limits import DEFAULT_LIMITS
from gapferry.fixtures.media_mounts import mount_fat32, mount_tmpfs
from gapferry.fixtures.selfcheck import BundleKeys, make_sample_transfer

pytestmark = pytest.mark.real_tools


def test_transfer_bundle_on_fat32(tmp_path: Path, keys: BundleKeys) -> None:
    with mount_fat32(tmp_path, size_mb=40) as m:
        bundle = make_sample_transfer(
            m.path, tmp_path / "work", signers=[keys.a.signer], max_file_size=128
        )
        assert bundle.parent == m.path / "gapferry"
        opened = open_bundle(
            bundle, policy=keys.policy(), now=datetime.now(tz=UTC), limits=DEFAULT_LIMITS
        )
        assert any(a.parts for a in opened.transfer.manifest.artifacts)
        tar = to_tar(bundle, tmp_path / "bundle.tar", limits=DEFAULT_LIMITS)
        assert tar.stat().st_size > 0


def test_too_small_medium_is_refused_before_writing(tmp_path: Path, keys: BundleKeys) -> None:
    with mount_tmpfs(tmp_path, size="64k") as m:
        with pytest.raises(EnvironmentFailure) as e:
            make_sample_transfer(
                m.path, tmp_path / "work", signers=[keys.a.signer], big_artifact_bytes=1024 * 1024
            )
        assert e.value.code == "media-full"
        assert not list(m.path.rglob("COMPLETE"))
        assert not list(m.path.rglob("*.mender"))
