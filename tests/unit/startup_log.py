"""What the service logs as warnings when it starts (and stops again)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher

from sipshield.config import Config
from sipshield.service import makeService


@defer.inlineCallbacks
def startup_warnings(config: Config) -> Generator[Any, Any, list[str]]:
    """Start the service built from *config* on the real reactor, stop it, and return the text of every warning it logged."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    service = makeService(config, reactor)
    try:
        service.privilegedStartService()
        service.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
        yield service.stopService()
    return [formatEvent(e) for e in events if e.get("log_level") is not None and e["log_level"].name == "warn"]
