"""Shared keys and payload folders for the artifact tests (generated at test time, never committed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gapferry.fixtures.artifacts import KeyPair, make_ec_key, make_rsa_key


@pytest.fixture(scope="session")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def rsa_key(keydir: Path) -> KeyPair:
    return make_rsa_key(keydir, "rsa3072", bits=3072)


@pytest.fixture(scope="session")
def other_rsa_key(keydir: Path) -> KeyPair:
    return make_rsa_key(keydir, "rsa2048-other", bits=2048)


@pytest.fixture(scope="session")
def ec_key(keydir: Path) -> KeyPair:
    return make_ec_key(keydir, "ec256")


@pytest.fixture(scope="session")
def rsa_pkcs8_key(keydir: Path) -> KeyPair:
    return make_rsa_key(keydir, "rsa2048-pkcs8", bits=2048, pkcs8=True)


@pytest.fixture(scope="session")
def ec_pkcs8_key(keydir: Path) -> KeyPair:
    return make_ec_key(keydir, "ec256-pkcs8", pkcs8=True)
