"""Keys, a test CA and certificates for the signing tests, made once per session with ssh-keygen."""

from __future__ import annotations

import pytest
from gapferry.fixtures.sshkeys import Keyring, make_keyring


@pytest.fixture(scope="session")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    return make_keyring(tmp_path_factory.mktemp("signing-keys"))
