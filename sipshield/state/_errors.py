"""Errors the location stores report."""

from __future__ import annotations

__all__ = ["BindingRefused", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store could not be read or written (database down, not started,
    timed out).  The registrar answers 503 with Retry-After (fail closed)."""


class BindingRefused(Exception):
    """A store that checks the registrar's limits itself refused an update
    (RFC 3261 10.3 step 7 CSeq order, or a cap); nothing was changed.
    ``status`` and ``reason`` are the registrar's answer (400 or 403)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
