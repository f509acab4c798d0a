"""The location stores' shared suite (location_store_contract) on PostgreSQL, at
``SIPSHIELD_TEST_POSTGRES_URL`` (docs/development.md), in a table of its own
dropped afterwards.  Skips when PostgreSQL is not usable; fails under CI=true."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from location_store_contract import *  # noqa: F403  (the shared suite, run on the store below)
from location_store_contract import POSTGRES_URL, sql_store

from sipshield.state import SQLLocationStore


@pytest.fixture
def store() -> Iterator[SQLLocationStore]:
    yield from sql_store(POSTGRES_URL)
