"""The loop that purges expired bindings from a location store."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipshield.state._errors import StoreUnavailable

__all__ = ["ExpiryLoop"]


class ExpiryLoop(Service):
    """Every ``interval`` seconds, ``store.expire(reactor.seconds())``.

    A binding lapses when its expiry passes (RFC 3261 10.2.1.1, 10.3 step
    7); lookups already skip lapsed bindings, so this only reclaims their
    space.  The loop waits for each round to finish before scheduling the
    next (a slow database never gets overlapping DELETEs), and a failed
    round is logged and retried at the next tick rather than stopping the
    loop.
    """

    log = Logger()

    def __init__(self, store: Any, reactor: Any, interval: float = 10.0) -> None:
        self.setName("location-expiry")
        self.store = store
        self.reactor = reactor
        self.interval = interval
        self.expired = 0
        """Bindings removed since the service started (for metrics)."""
        self._loop: LoopingCall | None = None
        self._running: Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        loop = self._loop = LoopingCall(self.run_once)
        loop.clock = self.reactor
        self._running = loop.start(self.interval, now=False)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return self._running

    def run_once(self) -> Deferred[int]:
        """One expiry round; fires with the count removed (0 after a failure)."""
        d: Deferred[int] = maybeDeferred(self.store.expire, self.reactor.seconds())
        d.addCallbacks(self._done, self._failed)
        return d

    def _done(self, removed: int) -> int:
        self.expired += removed
        return removed

    def _failed(self, failure: Failure) -> int:
        if failure.check(StoreUnavailable):
            self.log.warn("location expiry round failed: {error}", error=failure.getErrorMessage())
        else:
            self.log.failure("location expiry round failed", failure)
        return 0
