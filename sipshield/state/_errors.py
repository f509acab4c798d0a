"""Errors the location stores report."""

from __future__ import annotations

__all__ = ["StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store could not be read or written (database down, not started,
    timed out).  The registrar answers 503 with Retry-After (fail closed)."""
