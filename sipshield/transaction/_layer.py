"""The transaction layer: the tables, matching and the TU-facing entry points (RFC 3261 17)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipshield._tally import StatusTally

from ._base import CALLING, PROCEEDING, TRYING, Destination, Sender, TimerSettings, TransactionUser
from ._client import ClientTransaction, InviteClientTransaction, NonInviteClientTransaction, ResponseCallback, TransactionCallback
from ._keys import MAGIC_COOKIE, rfc2543_key, server_key, shared_method
from ._server import InviteServerTransaction, NonInviteServerTransaction, ServerTransaction
from ._timers import TimerQueues

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from sipshield.message import Request, Response
    from sipshield.transport import Flow

__all__ = ["TransactionLayer"]

_DEFAULT_TIMERS = TimerSettings()


class TransactionLayer:
    """Owns every client and server transaction of one SIP element (RFC 3261 17).

    *reactor* supplies time (``callLater``, ``seconds``: a
    ``twisted.internet.task.Clock`` in tests), *user* receives new requests
    and whatever matches no transaction, *sender* puts client requests on
    the wire. With *send_trying* (the default) a new INVITE server
    transaction answers ``100 Trying`` at once (RFC 3261 17.2.1, 16.2).
    """

    __slots__ = (
        "_reactor",
        "_user",
        "_sender",
        "timers",
        "send_trying",
        "_servers",
        "_per_source",
        "_server_acks",
        "_clients",
        "_timers",
        "_on_server_timeout",
        "_admit",
        "sent",
        "invites_answered",
    )

    def __init__(
        self,
        reactor: IReactorTime,
        user: TransactionUser,
        sender: Sender,
        timers: TimerSettings = _DEFAULT_TIMERS,
        *,
        send_trying: bool = True,
    ) -> None:
        self._reactor = reactor
        self._user = user
        self._sender = sender
        self.timers = timers
        self.send_trying = send_trying
        self._servers: dict[Any, ServerTransaction] = {}
        # Live server transactions per source IP; a source leaves the dict
        # with its last transaction, so it holds only sources with state.
        self._per_source: dict[str, int] = {}
        self._server_acks: dict[Any, InviteServerTransaction] = {}
        self._clients: dict[Any, ClientTransaction] = {}
        self._timers = TimerQueues(reactor)
        self._on_server_timeout = getattr(user, "transaction_timeout", None)
        self._admit = getattr(user, "admit", None)
        self.sent = StatusTally()
        """Responses the server transactions sent, by status (retransmissions not counted)."""
        self.invites_answered = 0
        """INVITE server transactions that sent a 2xx (answered calls, re-INVITEs included)."""

    # -- server side ---------------------------------------------------------------

    def handle_request(self, request: Request, flow: Flow) -> None:
        """Match *request* to a server transaction or create one (RFC 3261 17.2.3).

        A retransmission goes to its transaction (which may resend its last
        response), an ACK to its INVITE transaction (3xx-6xx: absorbed,
        -> Confirmed); an ACK matching nothing (the ACK for a 2xx) goes to
        ``user.stray_ack``. A new request creates a transaction and is
        passed to ``user.request_received``, unless the TU's optional
        ``admit(request, flow) -> bool`` refuses it first (it has then
        answered statelessly, or dropped it).
        """
        method = shared_method(request.method)
        via = request.top_via
        branch = via.params.get("branch")
        if branch is not None and branch.startswith(MAGIC_COOKIE):
            key: Any = server_key(branch, via.host, via.port, "INVITE" if method == "ACK" else method)
            txn = self._servers.get(key)
        elif method == "ACK":
            txn = self._server_acks.get(rfc2543_key(request, "ACK", request.to.tag))
        else:
            key = rfc2543_key(request, method, request.to.tag)
            txn = self._servers.get(key)
        if txn is not None:
            txn._on_request(request, flow)
            return
        if method == "ACK":
            self._user.stray_ack(request, flow)
            return
        if self._admit is not None and not self._admit(request, flow):
            return  # answered statelessly or dropped: no transaction, no 100 Trying
        server: ServerTransaction
        source = flow.remote[0]
        self._per_source[source] = self._per_source.get(source, 0) + 1
        if method == "INVITE":
            server = InviteServerTransaction(self, key, request, flow, PROCEEDING)
            self._servers[key] = server
            if self.send_trying:
                server.send_response(request.make_response(100))
        else:
            server = NonInviteServerTransaction(self, key, request, flow, TRYING)
            self._servers[key] = server
        self._user.request_received(server)

    def server_load(self, source: str) -> tuple[int, int]:
        """Live server transactions: ``(all of them, those from *source*)``,
        a source being the IP address a request came from.  O(1)."""
        return len(self._servers), self._per_source.get(source, 0)

    def _server_gone(self, source: str) -> None:
        left = self._per_source[source] - 1
        if left:
            self._per_source[source] = left
        else:
            del self._per_source[source]

    def find_invite(self, cancel: Request) -> ServerTransaction | None:
        """The live INVITE server transaction a CANCEL targets (RFC 3261 9.2: the 17.2.3 match
        with method INVITE), or None."""
        via = cancel.top_via
        branch = via.params.get("branch")
        if branch is not None and branch.startswith(MAGIC_COOKIE):
            return self._servers.get(server_key(branch, via.host, via.port, "INVITE"))
        return self._servers.get(rfc2543_key(cancel, "INVITE", cancel.to.tag))

    # -- client side ---------------------------------------------------------------

    def send_request(
        self,
        request: Request,
        destination: Destination,
        on_response: ResponseCallback,
        on_timeout: TransactionCallback,
        on_transport_error: TransactionCallback,
        flow: Flow | None = None,
    ) -> ClientTransaction:
        """Start a client transaction for *request* (RFC 3261 17.1.1, 17.1.2).

        The TU has already put its own Via with a fresh z9hG4bK branch on
        top; the key is that branch and the method (17.1.3). The request is
        serialised once. *on_response(txn, response)* receives provisional
        and final responses and, in Accepted, 2xx retransmissions (RFC 6026);
        *on_timeout(txn)* fires on Timer B / F (a proxy answers 408);
        *on_transport_error(txn)* when the sender fails (17.1.4), possibly
        before this method returns, in which case the transaction comes
        back already Terminated and was never in the table.
        """
        method = shared_method(request.method)
        if method == "ACK":
            raise ValueError("ACK is not sent in a client transaction (RFC 3261 17.1)")
        branch = request.top_via.params.get("branch")
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            raise ValueError("the top Via needs a branch starting with z9hG4bK (RFC 3261 8.1.1.7)")
        key = (branch, method)
        if key in self._clients:
            raise ValueError(f"a client transaction with branch {branch} and method {method} exists")
        txn: ClientTransaction
        if method == "INVITE":
            txn = InviteClientTransaction(self, key, request, destination, on_response, on_timeout, on_transport_error, flow)
            txn._start(CALLING)
        else:
            txn = NonInviteClientTransaction(self, key, request, destination, on_response, on_timeout, on_transport_error, flow)
            txn._start(TRYING)
        return txn

    def handle_response(self, response: Response, flow: Flow) -> None:
        """Match *response* to a client transaction: top Via branch and CSeq method
        (RFC 3261 17.1.3); anything else goes to ``user.stray_response``."""
        txn = self._clients.get((response.top_via.params.get("branch"), response.cseq.method))
        if txn is None:
            self._user.stray_response(response, flow)
            return
        txn._on_response(response)

    # -- lifecycle and metrics ---------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Table sizes: ``server`` and ``client`` transactions, and ``rfc2543_ack``
        (ACK aliases of RFC 2543 INVITE server transactions in Completed/Confirmed),
        ``sources`` (source IPs with a live server transaction)."""
        return {"server": len(self._servers), "client": len(self._clients), "rfc2543_ack": len(self._server_acks), "sources": len(self._per_source)}

    def stop(self) -> None:
        """Terminate every transaction and cancel every timer (service shutdown).

        No TU callback is made.
        """
        for table in (self._servers, self._clients):
            for txn in list(table.values()):
                txn._terminate()
        self._server_acks.clear()
        self._per_source.clear()
        self._timers.stop()
