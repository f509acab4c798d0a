"""``[registrar] store = "redis"`` (docs/scaling.md "Several nodes"): the
Redis location store takes ``[state] redis_url`` and ``key_prefix``; it is
the default store when ``[state] backend = "redis"`` and ``[registrar]
store`` is not given; workers may share it."""

from __future__ import annotations

import pytest

from sipshield.config import ConfigError, parse_config
from sipshield.state import RedisLocationStore
from sipshield.state._redis_location import redis_location_store

URL = "redis://:pw@10.0.0.5:6380/2"


def test_redis_shield_state_makes_redis_the_default_location_store() -> None:
    config = parse_config({"state": {"backend": "redis", "redis_url": URL}})
    assert config.registrar.store == "redis"
    assert parse_config({}).registrar.store == "memory"


def test_a_store_named_in_registrar_is_kept_with_redis_shield_state() -> None:
    config = parse_config({"state": {"backend": "redis", "redis_url": URL}, "registrar": {"store": "sql"}})
    assert config.registrar.store == "sql"
    assert parse_config({"state": {"backend": "redis", "redis_url": URL}, "registrar": {"store": "memory"}}).registrar.store == "memory"


def test_redis_store_without_redis_url_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"state\.redis_url: \[registrar\] store = \"redis\" needs \[state\] redis_url") as error:
        parse_config({"registrar": {"store": "redis"}})
    assert error.value.key == "state.redis_url"
    with pytest.raises(ConfigError, match="state.redis_url"):
        parse_config({"state": {"backend": "redis"}})  # the default store then is redis too


def test_unknown_store_lists_redis() -> None:
    with pytest.raises(ConfigError, match="registrar.store: 'mongo' is not one of memory, sql, redis"):
        parse_config({"registrar": {"store": "mongo"}})


def test_workers_may_share_the_redis_store() -> None:
    config = parse_config({"server": {"workers": 2}, "registrar": {"store": "redis"}, "state": {"redis_url": URL}})
    assert (config.server.workers, config.registrar.store) == (2, "redis")


def test_posture_names_the_redis_store_without_its_password() -> None:
    posture = dict(parse_config({"registrar": {"store": "redis"}, "state": {"redis_url": URL, "key_prefix": "pbx1:"}}).posture())
    assert posture["locations"].startswith("redis (redis://:***@10.0.0.5:6380/2, keys pbx1:loc:*): shared by every node and worker")
    assert "pw" not in posture["locations"]


def test_the_store_is_built_from_the_url_and_prefix_without_connecting() -> None:
    from twisted.internet.task import Clock

    store = redis_location_store(URL, "pbx1:", Clock())
    assert isinstance(store, RedisLocationStore)
    assert (store.link.where, store.prefix) == ("10.0.0.5:6380/2", "pbx1:")
    assert not store.link.up()
