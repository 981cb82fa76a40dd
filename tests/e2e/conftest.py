"""Fixtures of the end-to-end tests (issue 9): the zones, a site, real artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gapferry.fixtures.zones import AirGap, air_gap


@pytest.fixture
def gap(tmp_path: Path) -> Iterator[AirGap]:
    with air_gap(tmp_path) as g:
        yield g
