"""What every transaction shares: timer values, states, the TU and sender contracts.

RFC 3261 17 (transactions), 17.1.1.1 and table 4 (timer values), RFC 6026
(the Accepted states).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sipshield.message import Request, Response
    from sipshield.transport import Flow

    from ._layer import TransactionLayer
    from ._server import ServerTransaction
    from ._timers import TimerEntry

__all__ = [
    "ACCEPTED",
    "CALLING",
    "COMPLETED",
    "CONFIRMED",
    "PROCEEDING",
    "TERMINATED",
    "TRYING",
    "Destination",
    "Sender",
    "TimerSettings",
    "TransactionUser",
]

# States are interned strings: as cheap to compare with ``is`` as small ints,
# and readable in reprs, logs and test failures.
CALLING = sys.intern("Calling")
TRYING = sys.intern("Trying")
PROCEEDING = sys.intern("Proceeding")
COMPLETED = sys.intern("Completed")
CONFIRMED = sys.intern("Confirmed")
ACCEPTED = sys.intern("Accepted")
TERMINATED = sys.intern("Terminated")

Destination = tuple[str, str, int]
"""``(transport, host, port)``: transport is ``UDP``, ``TCP`` or ``TLS`` (RFC 3263 result)."""

_NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """T1, T2 and T4 (RFC 3261 17.1.1.1, table 4); every other timer derives from them.

    ``t1`` is the RTT estimate (default 500 ms), ``t2`` the cap on
    non-INVITE and response retransmission intervals (4 s), ``t4`` the
    maximum time a message stays in the network (5 s).
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def timeout(self) -> float:
        """64*T1: timers B, F, H, J (unreliable), L and M (RFC 3261 17, RFC 6026)."""
        return 64 * self.t1

    @property
    def timer_d(self) -> float:
        """Timer D: at least 32 s over unreliable transports (RFC 3261 17.1.1.2), and
        never shorter than the server's Timer H so that every retransmitted
        final response is still answered with an ACK."""
        return max(32.0, 64 * self.t1)


class TransactionUser(Protocol):
    """The transaction user (RFC 3261 17): a proxy core or a UA core.

    The layer calls these synchronously from inside ``handle_request`` and
    ``handle_response``; they must not block. Optionally the TU may also
    define ``transaction_timeout(transaction: ServerTransaction) -> None``,
    called when Timer H fires on an INVITE server transaction (no ACK for
    a non-2xx final response, RFC 3261 17.2.1 "MUST indicate to the TU
    that a transaction failure has occurred"), and
    ``admit(request: Request, flow: Flow) -> bool``, asked before a new
    server transaction is created: False means the TU answered the request
    statelessly or dropped it, and no transaction (nor 100 Trying) exists.
    """

    def request_received(self, transaction: ServerTransaction) -> None:
        """A new request created *transaction* (RFC 3261 17.2.1, 17.2.2).

        The TU answers through ``transaction.send_response``. CANCEL arrives
        here too, as its own non-INVITE transaction; the TU finds the INVITE
        with ``TransactionLayer.find_invite`` (RFC 3261 9.2, 16.10).
        """

    def stray_ack(self, request: Request, flow: Flow) -> None:
        """An ACK that is not part of any INVITE server transaction: the ACK
        for a 2xx, which is end to end (RFC 3261 17.2.3, 13.2.2.4; RFC 6026
        8.7: an ACK received in Accepted is passed to the TU too)."""

    def stray_response(self, response: Response, flow: Flow) -> None:
        """A response that matches no client transaction (RFC 3261 17.1.3).

        Nothing vouches for them: a 2xx retransmission or a forked 2xx
        reaches the TU through its client transaction in Accepted (RFC 6026
        7.2), so the sipshield proxy drops these and counts them.
        """


class Sender(Protocol):
    """The transport layer as seen by client transactions (RFC 3261 18.1.1)."""

    def send(self, data: bytes, destination: Destination, flow: Flow | None) -> Flow | None:
        """Send one serialised request to *destination* ``(transport, host, port)``.

        *flow* is an existing connection the caller prefers (for example the
        one a previous send returned, or an RFC 5626 flow). Returns the flow
        actually used, whose ``reliable`` decides whether the transaction
        retransmits, or None when the message could not be sent (RFC 3261
        17.1.4: the transaction then reports a transport error).
        """


class _Transaction:
    """Timer plumbing shared by the four machines.

    Each transaction has at most ONE timer running at a time, an entry of
    the layer's :class:`~sipshield.transaction._timers.TimerQueues` held in
    ``_timer``. A retransmission timer and its deadline (A+B, E+F, G+H)
    share it: the timer runs until whichever comes first and
    ``_deadline_next`` says which it is. A single-purpose timer (D, I, J, K,
    L, M) replaces whatever was running.
    """

    __slots__ = ("_layer", "_table", "key", "state", "method", "reliable", "_timer", "_interval", "_remaining", "_deadline_next")

    _layer: TransactionLayer
    _table: dict[Any, Any]
    key: Any
    state: str
    method: str
    reliable: bool
    _timer: TimerEntry | None
    _interval: float
    _remaining: float
    _deadline_next: bool

    def _retransmit_until(self, interval: float, total: float) -> None:
        """Retransmit after *interval* (then as ``_on_timer`` decides) until *total* has elapsed."""
        self._interval = interval
        self._remaining = total
        self._arm()

    def _arm(self) -> None:
        interval = self._interval
        remaining = self._remaining
        self._stop_timer()
        if interval < remaining:
            self._deadline_next = False
            self._timer = self._layer._timers.start(interval, self)
        else:
            self._deadline_next = True
            self._timer = self._layer._timers.start(remaining, self)

    def _after(self, delay: float) -> None:
        """Run the single-purpose timer of the new state after *delay*."""
        self._stop_timer()
        self._deadline_next = True
        self._timer = self._layer._timers.start(delay, self)

    def _fire(self) -> None:
        self._timer = None
        if self._deadline_next:
            self._on_timer(True)
        else:
            self._remaining -= self._interval
            self._on_timer(False)

    def _on_timer(self, deadline: bool) -> None:
        raise NotImplementedError

    def _stop_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            self._layer._timers.cancel(timer)

    def _terminate(self) -> None:
        """Enter Terminated: cancel the timer and leave the table at once (no leaks)."""
        if self.state is TERMINATED:
            return
        self.state = TERMINATED
        self._stop_timer()
        self._table.pop(self.key, None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state} {self.key!r}>"
