"""A thread pool that runs its work at once, in the caller's thread.

deferToThreadPool hands the result back through ``reactor.callFromThread``;
with this pool and a reactor whose ``callFromThread`` calls at once (a
``Clock`` subclass in the tests), a credential lookup completes before the
call returns, so Clock-driven tests stay deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool


def call_inline(onResult: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any, **kw: Any) -> None:
    """``ThreadPool.callInThreadWithCallback``, run now."""
    try:
        result = func(*args, **kw)
    except Exception:
        onResult(False, Failure())
    else:
        onResult(True, result)


class InlinePool(ThreadPool):
    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        call_inline(onResult, func, *args, **kw)


class ImmediateReactor(Clock):
    """A Clock whose ``callFromThread`` calls at once (see the module docstring)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class QueuedPool(ThreadPool):
    """A thread pool whose jobs wait in a queue until the test runs them, in
    order, in its own thread: two requests' store calls then interleave
    exactly as they would with a slow database, deterministically."""

    def __init__(self) -> None:
        super().__init__(minthreads=0, maxthreads=1)
        self.queued: list[tuple[Callable[[bool, Any], None], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.queued.append((onResult, func, args, kw))

    def run_queued(self, limit: int = 1000) -> int:
        """Run the jobs queued so far and those they queue, oldest first; how many ran."""
        ran = 0
        while self.queued and ran < limit:
            onResult, func, args, kw = self.queued.pop(0)
            call_inline(onResult, func, *args, **kw)
            ran += 1
        return ran
