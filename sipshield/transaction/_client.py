"""Client transactions (RFC 3261 17.1, RFC 6026 7.2 and 8).

Two machines, each with one method per event: ``_on_response`` (a
matching response arrived) and ``_on_timer`` (the transaction's one timer
fired); sending failures go through ``_transport_error`` (17.1.4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sipshield.message import Headers, Request

from ._base import _NEVER, ACCEPTED, CALLING, COMPLETED, PROCEEDING, TRYING, Destination, _Transaction
from ._keys import shared_method

if TYPE_CHECKING:
    from sipshield.message import Response
    from sipshield.transport import Flow

    from ._layer import TransactionLayer

__all__ = ["ClientTransaction", "InviteClientTransaction", "NonInviteClientTransaction", "ResponseCallback", "TransactionCallback"]

ResponseCallback = Callable[["ClientTransaction", "Response"], object]
"""``on_response(transaction, response)``."""
TransactionCallback = Callable[["ClientTransaction"], object]
"""``on_timeout(transaction)`` and ``on_transport_error(transaction)``."""


class ClientTransaction(_Transaction):
    """The client side of one transaction (RFC 3261 17.1).

    ``request`` is the request as sent, ``destination`` where it goes,
    ``flow`` the flow the sender used (None until sent), ``method`` its
    method and ``state`` one of the state constants.  Once a final
    response has arrived, ``request`` is None and the serialised request is
    let go: waiting out Timer D, K or M the transaction keeps only what it
    may still send (the ACK for a 3xx-6xx, with its flow) and the one TU
    callback its state may still call (``on_response`` in Accepted, for
    every 2xx; ``on_transport_error`` in Completed, should the ACK fail).
    ``flow`` is None in Accepted and in a non-INVITE's Completed: they send
    nothing.
    """

    __slots__ = ("request", "destination", "flow", "_data", "_response_cb", "_timeout_cb", "_error_cb")

    request: Request | None
    destination: Destination
    flow: Flow | None
    _data: bytes

    def __init__(
        self,
        layer: TransactionLayer,
        key: Any,
        request: Request,
        destination: Destination,
        on_response: ResponseCallback,
        on_timeout: TransactionCallback,
        on_transport_error: TransactionCallback,
        flow: Flow | None,
    ) -> None:
        self._layer = layer
        self._table = layer._clients
        self.key = key
        self.request = request
        self.method = shared_method(request.method)
        self.destination = destination
        self.flow = flow
        self.state = CALLING
        self.reliable = False
        self._timer = None
        self._response_cb = on_response
        self._timeout_cb = on_timeout
        self._error_cb = on_transport_error
        self._data = request.serialise()

    def _start(self, initial: str) -> None:
        """Send the request and start the timers of *initial* (17.1.1.2, 17.1.2.2)."""
        # In the table before sending: a sender may deliver a response synchronously.
        self.state = initial
        self._table[self.key] = self
        flow = self._layer._sender.send(self._data, self.destination, self.flow)
        if flow is None:
            self._transport_error()
            return
        self.flow = flow
        timers = self._layer.timers
        reliable = self.reliable = flow.reliable
        # Timer A / E only over unreliable transports; Timer B / F always.
        self._retransmit_until(_NEVER if reliable else timers.t1, timers.timeout)

    def _retransmit(self) -> bool:
        flow = self._layer._sender.send(self._data, self.destination, self.flow)
        if flow is None:
            self._transport_error()
            return False
        self.flow = flow
        return True

    def _transport_error(self) -> None:
        """RFC 3261 17.1.4: inform the TU and go to Terminated."""
        self._terminate()
        self._error_cb(self)

    def _timed_out(self) -> None:
        self._terminate()
        self._timeout_cb(self)

    def _on_response(self, response: Response) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """A final response arrived: nothing will be (re)sent from the request
        any more, and the timer that runs now (D, K, M) ends the transaction
        without telling the TU: its timeout callback is let go."""
        self.request = None
        self._data = b""
        self._timeout_cb = _unused
        self._interval = self._remaining = 0.0  # no retransmission any more (one float less kept)

    def terminate(self) -> None:
        """Drop the transaction now; idempotent.

        The TU calls this when it gives up on an INVITE that is Proceeding
        (Timer C, RFC 3261 16.6 step 11 and 16.8; 9.1 after a CANCEL got no
        final response in 64*T1): the RFC gives that state no timer.
        """
        self._terminate()


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.2.2, figure 6: Trying -> Proceeding -> Completed -> Terminated."""

    __slots__ = ()

    def _on_response(self, response: Response) -> None:
        state = self.state
        if state is not TRYING and state is not PROCEEDING:
            return  # Completed absorbs retransmitted responses
        if response.status < 200:
            self.state = PROCEEDING
        elif self.reliable:
            self._terminate()  # Timer K = 0
        else:
            self._release()
            self.state = COMPLETED
            self._after(self._layer.timers.t4)  # Timer K = T4 (E and F stop)
            # Completed absorbs retransmitted finals and sends nothing:
            # neither the TU's callbacks nor the flow are needed any more.
            callback = self._response_cb
            self._response_cb = _absorbed
            self._error_cb = _unused
            self.flow = None
            callback(self, response)
            return
        self._response_cb(self, response)

    def _on_timer(self, deadline: bool) -> None:
        state = self.state
        if state is COMPLETED:
            self._terminate()  # Timer K
        elif deadline:
            self._timed_out()  # Timer F
        elif self._retransmit():
            # Timer E: doubles up to T2 in Trying, T2 in Proceeding.
            t2 = self._layer.timers.t2
            interval = self._interval * 2
            self._interval = t2 if state is PROCEEDING or interval > t2 else interval
            self._arm()


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 17.1.1.2 figure 5 with RFC 6026 7.2: Calling -> Proceeding, then
    Completed after a 3xx-6xx (the transaction ACKs it) or Accepted after a 2xx."""

    __slots__ = ("_ack",)

    _ack: bytes | None

    def __init__(
        self,
        layer: TransactionLayer,
        key: Any,
        request: Request,
        destination: Destination,
        on_response: ResponseCallback,
        on_timeout: TransactionCallback,
        on_transport_error: TransactionCallback,
        flow: Flow | None,
    ) -> None:
        super().__init__(layer, key, request, destination, on_response, on_timeout, on_transport_error, flow)
        self._ack = None

    def _on_response(self, response: Response) -> None:
        state = self.state
        status = response.status
        if state is CALLING or state is PROCEEDING:
            if status < 200:
                if state is CALLING:
                    self.state = PROCEEDING
                    self._stop_timer()  # A and B stop; Proceeding has no timer
            elif status < 300:
                self._release()
                self.state = ACCEPTED  # RFC 6026 7.2
                self._after(self._layer.timers.timeout)  # Timer M
                # Accepted sends nothing (the TU ACKs a 2xx): no flow, and no
                # transport error to report; every 2xx still goes to the TU.
                self._error_cb = _unused
                self.flow = None
            else:
                assert self.request is not None  # released only on leaving Calling/Proceeding
                self._ack = build_ack(self.request, response).serialise()
                self._release()
                self.state = COMPLETED
                if not self._send_ack():
                    # The response still goes to the TU (a proxy forwards it
                    # upstream); then the failed ACK is reported (17.1.4).
                    self._terminate()
                    self._response_cb(self, response)
                    self._error_cb(self)
                    return
                if self.reliable:
                    self._terminate()  # Timer D = 0
                else:
                    self._after(self._layer.timers.timer_d)
                # Completed resends the ACK for a retransmitted final and
                # passes nothing more to the TU (17.1.1.2).
                callback = self._response_cb
                self._response_cb = _absorbed
                callback(self, response)
                return
            self._response_cb(self, response)
        elif state is COMPLETED:
            # 17.1.1.2: a retransmitted final gets the ACK again and is not passed to the TU.
            if status >= 300 and not self._send_ack():
                self._transport_error()
        elif state is ACCEPTED and 200 <= status < 300:
            self._response_cb(self, response)  # RFC 6026 7.2: every 2xx goes to the TU

    def _send_ack(self) -> bool:
        ack = self._ack
        if ack is None:
            return True
        return self._layer._sender.send(ack, self.destination, self.flow) is not None

    def _on_timer(self, deadline: bool) -> None:
        if self.state is CALLING:
            if deadline:
                self._timed_out()  # Timer B
            elif self._retransmit():
                self._interval *= 2  # Timer A doubles without a cap (17.1.1.2)
                self._arm()
            return
        self._terminate()  # Timer D (Completed) or Timer M (Accepted)

    def make_cancel(self) -> Request:
        """Build the CANCEL for this INVITE (RFC 3261 9.1).

        Request-URI, Call-ID, To, From and the CSeq number are the INVITE's,
        the only Via is the INVITE's top Via (so the CANCEL has the same
        branch), Route headers are copied. The TU sends it with
        ``TransactionLayer.send_request`` to the same destination, and only
        once a provisional response has arrived (9.1), and before a final
        one (after it there is nothing to cancel, and no request: ValueError).
        """
        request = self.request
        if request is None:
            raise ValueError("a final response has arrived: nothing to cancel")
        return _build_follow_up(request, "CANCEL", request.headers.get("to") or "")


def _absorbed(transaction: ClientTransaction, response: Response) -> None:
    """The response callback of a transaction past its final response whose
    state passes nothing more to the TU (Completed: 17.1.1.2, 17.1.2.2)."""


def _unused(transaction: ClientTransaction) -> None:
    """A callback the transaction's state can no longer call (shared, so a
    finished transaction holds none of the TU's objects through it)."""


def build_ack(request: Request, response: Response) -> Request:
    """The ACK for a 3xx-6xx response to *request* (RFC 3261 17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number (method ACK), the To of
    the response (with its tag), only the top Via, and the Route headers
    of the INVITE.
    """
    return _build_follow_up(request, "ACK", response.headers.get("to") or "")


def _build_follow_up(request: Request, method: str, to: str) -> Request:
    source = request.headers
    via = source.get_values("via")[0]
    entries = [("Via", via)]
    entries += [("Route", value) for value in source.get_all("route")]
    max_forwards = source.get("max-forwards")
    entries.append(("Max-Forwards", max_forwards if max_forwards is not None else "70"))
    entries.append(("From", source.get("from") or ""))
    entries.append(("To", to))
    entries.append(("Call-ID", request.call_id))
    entries.append(("CSeq", f"{request.cseq.seq} {method}"))
    return Request(method, request.uri.copy(), Headers(entries))
