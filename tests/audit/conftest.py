"""Keys and bundles for the audit tests (made at test time with D's writer, never committed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from gapferry.common.bundle import (
    Actor,
    ArtifactSource,
    Deployment,
    LogLine,
    Receipt,
    ResultDevicePlan,
    StatusStep,
    TransferDevicePlan,
    manifest_sha256,
    write_result_bundle,
    write_transfer_bundle,
)
from gapferry.common.bundle.model import Outcome
from gapferry.common.cli import main
from gapferry.common.signers import Signer
from gapferry.common.trust import TrustPolicy
from gapferry.fixtures.artifacts import KeyPair as ArtifactKey
from gapferry.fixtures.artifacts import gapferry_write, make_ec_key, single_file_payload
from gapferry.fixtures.selfcheck import ThrowawayKey, make_sample_transfer, throwaway_key

__all__ = ["Keys", "World"]

MakeResult = Callable[..., Path]
Cli = Callable[..., Result]
DevicePlan = Callable[..., ResultDevicePlan]


@dataclass(frozen=True, kw_only=True)
class Keys:
    alice: ThrowawayKey
    bob: ThrowawayKey
    mallory: ThrowawayKey
    allowed_signers: Path

    def policy(self, threshold: int = 1) -> TrustPolicy:
        return TrustPolicy.from_file(self.allowed_signers, threshold=threshold)


@dataclass(frozen=True, kw_only=True)
class World:
    """A transfer bundle, the keys, and the time it was packed."""

    keys: Keys
    transfer: Path
    created: datetime
    tmp: Path

    @property
    def receipt(self) -> Receipt:
        raw = (self.transfer / "manifest.json").read_bytes()
        bundle_id = raw.split(b'"bundle_id":"', 1)[1].split(b'"', 1)[0].decode()
        return Receipt(transfer_bundle_id=bundle_id, transfer_manifest_sha256=manifest_sha256(raw))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("audit-keys")
    alice = throwaway_key(d, "alice")
    bob = throwaway_key(d, "bob")
    mallory = throwaway_key(d, "mallory")
    allowed = d / "allowed_signers"
    allowed.write_text(
        alice.allowed_signers_line("alice@plant-a")
        + "\n"
        + bob.allowed_signers_line("bob@plant-a")
        + "\n",
        encoding="utf-8",
    )
    return Keys(alice=alice, bob=bob, mallory=mallory, allowed_signers=allowed)


@pytest.fixture
def world(tmp_path: Path, keys: Keys) -> World:
    created = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(hours=2)
    transfer = make_sample_transfer(
        tmp_path / "stick",
        tmp_path / "work",
        signers=[keys.alice.signer],
        max_file_size=128,
        created=created,
    )
    return World(keys=keys, transfer=transfer, created=created, tmp=tmp_path)


def _device(
    name: str, n: int, deployment: str, outcome: Outcome, t0: datetime, *, reason: str | None = None
) -> ResultDevicePlan:
    steps: list[StatusStep] = []
    if outcome != "skipped":
        steps = [
            StatusStep(status="downloading", at=t0 + timedelta(minutes=n)),
            StatusStep(status="installing", at=t0 + timedelta(minutes=n, seconds=20)),
            StatusStep(status=outcome, at=t0 + timedelta(minutes=n, seconds=40)),
        ]
    return ResultDevicePlan(
        name=name,
        mender_device_id=f"6f1e{n:04d}-0000-4000-8000-00000000000{n}",
        deployment_id=deployment,
        outcome=outcome,
        reason=reason,
        steps=steps,
        log=[
            LogLine(timestamp=t0 + timedelta(minutes=n), level="info", message=f"{name}: {outcome}")
        ],
        artifact_name_after="app-v2" if outcome == "success" else None,
    )


APP = Deployment(id="0d4c7b7e-2f5b-4f8e-9d63-6b1f4a3c2e10", name="app-v2 rollout")
OS = Deployment(id="9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", name="os-v7")


def _make_result(
    world: World,
    *,
    signers: Sequence[Signer] | None = None,
    devices: Sequence[ResultDevicePlan] | None = None,
    receipt: Receipt | None = None,
    media: str = "back",
    started: datetime | None = None,
) -> Path:
    """A result answering `world.transfer` (by default: pump-1 success, pump-2 failure,
    pump-3 skipped), visited an hour after packing."""
    t0 = started or world.created + timedelta(hours=1)
    plans = (
        devices
        if devices is not None
        else [
            _device("pump-1", 1, APP.id, "success", t0),
            _device("pump-2", 2, APP.id, "failure", t0),
            _device("pump-3", 3, OS.id, "skipped", t0, reason="powered off"),
        ]
    )
    return write_result_bundle(
        world.tmp / media,
        site="selfcheck",
        sequence=1,
        receipt=receipt or world.receipt,
        applier=Actor(name="bob@plant-a", host="laptop", software="gapferry test"),
        started=t0,
        finished=t0 + timedelta(minutes=10),
        created=t0 + timedelta(minutes=11),
        devices=plans,
        signers=signers if signers is not None else [world.keys.bob.signer],
    )


def _run_cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def make_result() -> MakeResult:
    """``make_result(world, *, signers=, devices=, receipt=, media=, started=)`` -> result folder."""
    return _make_result


@pytest.fixture
def device_plan() -> DevicePlan:
    """``device_plan(name, n, deployment_id, outcome, t0)`` -> a `ResultDevicePlan`."""
    return _device


@dataclass(frozen=True, kw_only=True)
class SignedArtifactTransfer:
    """A transfer bundle carrying one real Mender Artifact (split in parts), signed by `key`."""

    transfer: Path
    key: ArtifactKey
    other: ArtifactKey


@pytest.fixture
def signed_artifact_transfer(world: World) -> SignedArtifactTransfer:
    key = make_ec_key(world.tmp / "mkeys", "signer")
    other = make_ec_key(world.tmp / "mkeys", "other")
    files = single_file_payload(
        world.tmp / "payload", dest_dir="/opt/app", filename="app.bin", content=b"app v3\n"
    )
    artifact = gapferry_write(
        world.tmp / "app-v3.mender", name="app-v3", payload_type="single-file", files=files, key=key
    )
    transfer = write_transfer_bundle(
        world.tmp / "signed-stick",
        site="selfcheck",
        sequence=3,
        packer=Actor(name="alice@plant-a", host="h", software="test"),
        devices=[
            TransferDevicePlan(
                name="pump-1",
                mender_device_id="id-1",
                identity={"mac": "00:11"},
                device_type="test-device",
                current_artifact_name="app-v2",
                deployment=Deployment(id="dep-3", name="app-v3"),
                artifact=ArtifactSource(path=artifact, name="app-v3"),
            )
        ],
        signers=[world.keys.alice.signer],
        max_file_size=1024,  # split into parts, so readers must join them
    )
    return SignedArtifactTransfer(transfer=transfer, key=key, other=other)


@pytest.fixture
def cli() -> Cli:
    """Run ``gapferry ARGS...`` in-process; returns click's `Result`."""
    return _run_cli
