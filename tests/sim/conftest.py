"""Fixtures for the Mender Server stand-in tests (tests/sim). The OpenAPI check of every
response lives in tests/conftest.py (suite-wide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from gapferry.fixtures.sim import MenderSim


@pytest.fixture
def sim(tmp_path: Path) -> MenderSim:
    return MenderSim(artifact_dir=tmp_path / "artifacts", management_token="test-pat")


@pytest.fixture
def client_for() -> Iterator[Callable[..., httpx.Client]]:
    """`client_for(sim, token=None)`: an in-process client (MockTransport) for any sim."""
    made: list[httpx.Client] = []

    def make(sim: MenderSim, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(
            transport=httpx.MockTransport(sim.handler), base_url="https://sim.test", headers=headers
        )
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def mgmt(sim: MenderSim, client_for: Callable[..., httpx.Client]) -> httpx.Client:
    return client_for(sim, "test-pat")


@pytest.fixture
def anon(sim: MenderSim, client_for: Callable[..., httpx.Client]) -> httpx.Client:
    return client_for(sim)
