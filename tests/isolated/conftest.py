"""Session keys for the applier tests (generated at test time, never committed)."""

from __future__ import annotations

import pytest
from gapferry.fixtures.device import Keys, make_keys


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("isolated-keys"))
