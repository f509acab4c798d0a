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
