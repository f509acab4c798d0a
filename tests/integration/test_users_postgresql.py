"""The SQL credential store's shared suite (user_store_contract) on PostgreSQL, at
``SIPSHIELD_TEST_POSTGRES_URL`` (docs/development.md), in tables of their own
dropped afterwards.  Skips when PostgreSQL is not usable; fails under CI=true."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from user_store_contract import *  # noqa: F403  (the shared suite, run on the store below)
from user_store_contract import POSTGRES_URL, open_store

from sipshield.auth._users import UserStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UserStore]:
    yield from open_store(POSTGRES_URL, tmp_path / "credential.keys")
