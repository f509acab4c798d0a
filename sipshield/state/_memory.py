"""The in-memory location store: the default, and the one on the call hot path."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from sipshield.interfaces import ILocationStore
from sipshield.state._binding import Binding

__all__ = ["MemoryLocationStore"]


def _by_q(binding: Binding) -> float:
    return -binding.q


@implementer(ILocationStore)
class MemoryLocationStore:
    """Bindings in a dict ``aor -> {contact: Binding}`` (RFC 3261 10.2 location service).

    Every method answers at once with an already-fired Deferred.  Expiry is
    a min-heap of ``(expires_at, aor, contact)``: ``expire(now)`` pops only
    what is due, O(expired log n).  A refreshed or removed binding leaves its
    old heap entry behind; it is skipped when popped (its expires_at no
    longer matches) and the heap is rebuilt from the live bindings when
    stale entries outnumber live ones, so a UA refreshing every second cannot
    grow it without bound.

    ``bindings()`` filters out bindings already past their expiry on the
    reactor's clock, so a lookup never returns one the expiry loop has not
    reached yet.  Among equal q values, bindings keep their first
    registration order.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._aors: dict[str, dict[str, Binding]] = {}
        self._heap: list[tuple[float, str, str]] = []
        self._count = 0
        # Bindings per identity; an identity leaves with its last binding.
        self._identities: dict[str, int] = {}

    # -- ILocationStore ---------------------------------------------------

    def bindings(self, aor: str) -> Deferred[list[Binding]]:
        """RFC 3261 10.2: the unexpired bindings of ``aor``, highest q first."""
        return defer.succeed(self.bindings_now(aor))

    def put(self, binding: Binding) -> Deferred[None]:
        self._put(binding)
        return defer.succeed(None)

    def remove(self, aor: str, contact: str) -> Deferred[bool]:
        return defer.succeed(self._remove(aor, contact))

    def remove_all(self, aor: str) -> Deferred[int]:
        contacts = self._aors.pop(aor, None)
        removed = len(contacts) if contacts else 0
        for binding in (contacts or {}).values():
            self._own(binding.identity, -1)
        self._count -= removed
        self._maybe_compact()
        return defer.succeed(removed)

    def expire(self, now: float) -> Deferred[int]:
        heap = self._heap
        aors = self._aors
        removed = 0
        while heap and heap[0][0] <= now:
            expires_at, aor, contact = heapq.heappop(heap)
            contacts = aors.get(aor)
            if contacts is None:
                continue
            binding = contacts.get(contact)
            if binding is None or binding.expires_at != expires_at:
                continue  # stale entry: refreshed or removed since
            del contacts[contact]
            if not contacts:
                del aors[aor]
            self._own(binding.identity, -1)
            removed += 1
        self._count -= removed
        return defer.succeed(removed)

    def count(self) -> Deferred[int]:
        return defer.succeed(self._count)

    def count_for_identity(self, identity: str) -> Deferred[int]:
        """O(1); counts bindings past their expiry until the expiry loop reaps them."""
        return defer.succeed(self._identities.get(identity, 0))

    def listing(self, limit: int) -> Deferred[list[Binding]]:
        found: list[Binding] = []
        for aor in sorted(self._aors):
            if len(found) >= limit:
                break
            found += self.bindings_now(aor)[: limit - len(found)]
        return defer.succeed(found)

    # -- beyond the interface ---------------------------------------------

    def update(self, aor: str, remove: Iterable[str] = (), put: Iterable[Binding] = ()) -> Deferred[None]:
        """Remove contacts then add or replace bindings of one AOR, all or
        nothing (RFC 3261 10.3 step 7: the updates of one REGISTER are
        committed together).  Not part of ILocationStore; the registrar uses
        it when a store has it."""
        for contact in remove:
            self._remove(aor, contact)
        for binding in put:
            self._put(binding)
        return defer.succeed(None)

    def bindings_now(self, aor: str) -> list[Binding]:
        """``bindings()`` without the Deferred, for synchronous callers."""
        contacts = self._aors.get(aor)
        if not contacts:
            return []
        now = self._reactor.seconds()
        live = [b for b in contacts.values() if b.expires_at > now]
        if len(live) > 1:
            live.sort(key=_by_q)
        return live

    # -- internals ----------------------------------------------------------

    def _put(self, binding: Binding) -> None:
        contacts = self._aors.get(binding.aor)
        if contacts is None:
            contacts = self._aors[binding.aor] = {}
        old = contacts.get(binding.contact)
        contacts[binding.contact] = binding
        if old is None or old.identity != binding.identity:
            self._own(binding.identity, 1)
            if old is not None:
                self._own(old.identity, -1)
        if old is None:
            self._count += 1
        elif old.expires_at == binding.expires_at:
            return  # its heap entry is still right
        heapq.heappush(self._heap, (binding.expires_at, binding.aor, binding.contact))
        self._maybe_compact()

    def _remove(self, aor: str, contact: str) -> bool:
        contacts = self._aors.get(aor)
        removed = contacts.pop(contact, None) if contacts is not None else None
        if removed is None:
            return False
        self._own(removed.identity, -1)
        if not contacts:
            del self._aors[aor]
        self._count -= 1
        self._maybe_compact()
        return True

    def _own(self, identity: str | None, delta: int) -> None:
        if identity is None:
            return
        left = self._identities.get(identity, 0) + delta
        if left:
            self._identities[identity] = left
        else:
            del self._identities[identity]

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * self._count + 64:
            self._heap = [(b.expires_at, b.aor, b.contact) for contacts in self._aors.values() for b in contacts.values()]
            heapq.heapify(self._heap)
