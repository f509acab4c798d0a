"""Waiting on the state of an outside process (a file it writes, a process
it ends, a port it opens) that sends no event to wait on: polled, with one
deadline that does not reset.  Reactor time in tests is a task.Clock; this
is only for what lives outside the test's process."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL = 0.02
"""Seconds between two looks."""


def wait_until(ready: Callable[[], bool], timeout: float, what: str, failed: Callable[[], bool] = lambda: False) -> None:
    """Return once *ready()* is true; AssertionError naming *what* past *timeout*
    seconds, or at once when *failed()* says it never will be."""
    deadline = time.monotonic() + timeout
    while not ready():
        if failed():
            raise AssertionError(f"{what}: gave up (the process it waits on is gone)")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(POLL)
