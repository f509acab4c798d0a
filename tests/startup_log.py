"""What the service logs when it starts (and stops again)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher

from sipshield.config import Config
from sipshield.service import makeService


@defer.inlineCallbacks
def startup_log(config: Config) -> Generator[Any, Any, list[tuple[str, str]]]:
    """Start the service built from *config* on the real reactor, wait until
    its stores are ready (and counted), stop it, and return every line it
    logged meanwhile as (level name, text)."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    service = makeService(config, reactor)
    try:
        service.privilegedStartService()
        service.startService()
        yield service.schema_ready
    finally:
        globalLogPublisher.removeObserver(events.append)
        yield service.stopService()
    return [(e["log_level"].name, formatEvent(e)) for e in events if e.get("log_level") is not None]


@defer.inlineCallbacks
def startup_warnings(config: Config) -> Generator[Any, Any, list[str]]:
    """The text of every warning :func:`startup_log` saw."""
    lines = yield startup_log(config)
    return [text for level, text in lines if level == "warn"]
