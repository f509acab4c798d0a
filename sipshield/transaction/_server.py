"""Server transactions (RFC 3261 17.2, RFC 6026 7.1 and 8).

Two machines, each with one method per event: ``send_response`` (the TU
answers), ``_on_request`` (a retransmission or the ACK arrived) and
``_on_timer`` (the transaction's one timer fired).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import _NEVER, ACCEPTED, COMPLETED, CONFIRMED, PROCEEDING, TERMINATED, TRYING, _Transaction
from ._keys import _RFC2543, rfc2543_key, shared_method

if TYPE_CHECKING:
    from sipshield.message import Request, Response
    from sipshield.transport import Flow

    from ._layer import TransactionLayer

__all__ = ["InviteServerTransaction", "NonInviteServerTransaction", "ServerTransaction"]


class ServerTransaction(_Transaction):
    """The server side of one transaction (RFC 3261 17.2).

    ``request`` is the request that created it, ``flow`` the flow it came
    in on, ``method`` its method and ``state`` one of the state constants.
    Once the final response is sent, ``request`` is None: waiting out its
    timer (up to 64*T1), the transaction keeps only its key, its flow and
    the bytes it may still resend (the final response in Completed; none in
    Accepted and Confirmed, which absorb retransmissions), not the parsed
    request (memory, and objects for the garbage collector to walk, at
    every call rate: docs/performance.md, bench/bench_memory.py).
    """

    __slots__ = ("request", "flow", "_last")

    request: Request | None
    flow: Flow
    _last: bytes | None

    def __init__(self, layer: TransactionLayer, key: Any, request: Request, flow: Flow, state: str) -> None:
        self._layer = layer
        self._table = layer._servers
        self.key = key
        self.request = request
        self.flow = flow
        self.method = shared_method(request.method)
        self.state = state
        self.reliable = flow.reliable
        self._timer = None
        self._last = None

    def send_response(self, response: Response) -> bool:
        """Send *response* to the request's sender if the state allows it.

        Returns False when the transaction discards it (RFC 3261 17.2.1,
        17.2.2: e.g. a second final response, or anything after
        Terminated). The response is serialised once and the bytes kept for
        retransmission.
        """
        raise NotImplementedError

    def _on_request(self, request: Request, flow: Flow) -> None:
        raise NotImplementedError

    def terminate(self) -> None:
        """Drop the transaction now (the TU gives up on it); idempotent."""
        self._terminate()

    def _terminate(self) -> None:
        if self.state is TERMINATED:
            return
        super()._terminate()
        self._layer._server_gone(self.flow.remote[0])


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.2, figure 8: Trying -> Proceeding -> Completed -> Terminated."""

    __slots__ = ()

    def send_response(self, response: Response) -> bool:
        state = self.state
        if state is not TRYING and state is not PROCEEDING:
            return False  # 17.2.2: further finals are discarded in Completed
        data = response.serialise()
        self._last = data
        self.flow.send(data)
        self._layer.sent.add(response.status)
        if response.status < 200:
            self.state = PROCEEDING
            return True
        self.request = None
        if self.reliable:
            self._terminate()  # Timer J = 0 on reliable transports
        else:
            self.state = COMPLETED
            self._after(self._layer.timers.timeout)  # Timer J = 64*T1
        return True

    def _on_request(self, request: Request, flow: Flow) -> None:
        # 17.2.2: retransmissions are discarded in Trying and answered with
        # the last response in Proceeding and Completed.
        last = self._last
        if last is not None:
            self.flow.send(last)

    def _on_timer(self, deadline: bool) -> None:
        self._terminate()  # Timer J


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 17.2.1 figure 7 with RFC 6026 8.5-8.7: Proceeding, then Completed ->
    Confirmed after a 3xx-6xx, or Accepted after a 2xx, then Terminated."""

    __slots__ = ("_ack_key",)

    _ack_key: tuple[Any, ...] | None

    def __init__(self, layer: TransactionLayer, key: Any, request: Request, flow: Flow, state: str) -> None:
        super().__init__(layer, key, request, flow, state)
        self._ack_key = None

    def send_response(self, response: Response) -> bool:
        state = self.state
        status = response.status
        if state is PROCEEDING:
            data = response.serialise()
            self._last = data
            self.flow.send(data)
            layer = self._layer
            layer.sent.add(status)
            if status < 200:
                return True
            timers = layer.timers
            if status < 300:
                layer.invites_answered += 1
                self.request = None
                # Accepted resends nothing itself (RFC 6026 8.6, 8.7: the TU's
                # 2xx retransmissions pass through, a retransmitted INVITE is
                # absorbed): the 2xx's bytes are let go too.
                self._last = None
                self.state = ACCEPTED  # RFC 6026 8.5
                self._after(timers.timeout)  # Timer L
                return True
            self.state = COMPLETED
            if self.key[0] is _RFC2543:
                self._register_ack(response)
            self.request = None
            # Timer G only over unreliable transports, Timer H always.
            self._retransmit_until(_NEVER if self.reliable else timers.t1, timers.timeout)
            return True
        if state is ACCEPTED and 200 <= status < 300:
            # RFC 6026 8.6: the TU's 2xx retransmissions (or further 2xx of
            # a forked request) pass through; the transaction makes none.
            self.flow.send(response.serialise())
            self._layer.sent.add(status)
            return True
        return False

    def _on_request(self, request: Request, flow: Flow) -> None:
        state = self.state
        if request.method == "ACK":
            if state is COMPLETED:
                if self.reliable:
                    self._terminate()  # Timer I = 0
                else:
                    self.state = CONFIRMED
                    self._last = None  # Confirmed absorbs everything: nothing left to resend
                    self._after(self._layer.timers.t4)  # Timer I (G and H stop)
            elif state is ACCEPTED:
                # RFC 6026 8.7: the ACK for a 2xx belongs to the TU.
                self._layer._user.stray_ack(request, flow)
            # Confirmed: ACK retransmission, absorbed. Proceeding: no final yet, absorbed.
            return
        # A retransmitted INVITE: 17.2.1 resends the last provisional in
        # Proceeding and the final in Completed; RFC 6026 8.7 absorbs it in
        # Accepted; Confirmed absorbs it too.
        if state is PROCEEDING or state is COMPLETED:
            last = self._last
            if last is not None:
                self.flow.send(last)

    def _on_timer(self, deadline: bool) -> None:
        if self.state is COMPLETED:
            if deadline:  # Timer H: the ACK never came
                self._terminate()
                notify = self._layer._on_server_timeout
                if notify is not None:
                    notify(self)
                return
            # Timer G: resend the final, doubling up to T2.
            last = self._last
            if last is not None:
                self.flow.send(last)
            interval = self._interval * 2
            t2 = self._layer.timers.t2
            self._interval = interval if interval < t2 else t2
            self._arm()
            return
        self._terminate()  # Timer I (Confirmed) or Timer L (Accepted)

    def _register_ack(self, response: Response) -> None:
        """RFC 2543 peers: the ACK matches by the To tag of the response we sent (17.2.3)."""
        assert self.request is not None  # called as the final response is sent
        key = rfc2543_key(self.request, "ACK", response.to.tag)
        self._ack_key = key
        self._layer._server_acks[key] = self

    def _terminate(self) -> None:
        if self.state is TERMINATED:
            return
        super()._terminate()
        key = self._ack_key
        if key is not None:
            self._ack_key = None
            self._layer._server_acks.pop(key, None)
