"""The proxy core (RFC 3261 16): the transaction user behind every listener.

Transports hand parsed messages to :class:`ProxyCore`; it runs them through
the transaction layer, validates new requests and lets the pipeline it is
given (a :class:`RequestPipeline`: the routing stages) decide.  A relay
decision forks the request to its targets (16.6) and a
:class:`ResponseContext` brings the best answer back (16.7).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import operator
import secrets
import weakref
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipshield._ratelog import ThrottledLog
from sipshield._tally import LatencyHistogram, MethodTally, SourceTally, StatusTally
from sipshield.events import SIPS_REFUSED, SecurityEvent, SecurityEvents
from sipshield.message import ParseError, Request, Response, Via, check_header_values, parse_message
from sipshield.proxy._branch import new_branch
from sipshield.proxy._decision import AckCheck, Decision, RequestContext, RequestPipeline, Target
from sipshield.proxy._explain import Explanation
from sipshield.proxy._forward import Hop, RouteSet, apply_route_set, endpoints, is_ip, next_hop, record_route_uri, route_set, stateless_branch
from sipshield.proxy._hop import unusable_hop
from sipshield.proxy._response import Branch, ResponseContext, filtered, run_response_hooks
from sipshield.proxy._signer import RecordRouteSigner
from sipshield.proxy._sips import SIPS_NOT_ALLOWED, SipsAdmission, arrived_in_clear, needs_tls, sips_warning

if TYPE_CHECKING:
    from sipshield.transport import Flow

__all__ = ["ProxyCore"]

_LOOPBACK_NAMES = frozenset(("localhost", "localhost.localdomain"))
RECORD_ROUTE_METHODS = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
_OWN_HEADERS_ALLOWANCE = 200  # our Via and up to two Record-Route values
_CAP_RETRY_AFTER = "5"  # seconds: transactions end within 64*T1, most much sooner
_SENT_ONCE = frozenset((401, 407))
AMPLIFICATION_LIMIT = 4
"""A stateless reply over UDP is at most this many times the request's size
(docs/security.md): the source may be forged, the reply then aimed at a victim."""


class ProxyCore:
    """The controller behind every listener (see transport.MessageHandler)
    and the transaction user of the transaction layer."""

    log = Logger()

    def __init__(
        self, domains: Iterable[str] = (), reactor: Any = None, timer_c: float = 180.0, signer: RecordRouteSigner | None = None,
        max_header_values: int = 64, max_transactions: int = 100000, max_transactions_per_source: int = 1000, resolve_timeout: float = 10.0,
    ) -> None:
        # Signs our Record-Route values and verifies the Routes that come
        # back; the service replaces it with one keyed from data_dir at start.
        self.signer = signer if signer is not None else RecordRouteSigner()
        self.domains = frozenset(d.lower() for d in domains)
        self.reactor = reactor
        self.timer_c = timer_c
        self.max_header_values = max_header_values
        """``[limits] max_header_values``: more values of one header name gets
        400 (a request) or a drop (a response) before anything else is done."""
        self.max_transactions = max_transactions
        self.max_transactions_per_source = max_transactions_per_source
        """``[limits]``: live server transactions in all and per source IP; a
        new request above either gets a stateless 503 with Retry-After."""
        self.resolve_timeout = resolve_timeout
        """Seconds a next hop's DNS lookup may take; past it the branch counts as a transport error."""
        self.local_hosts: set[str] = set()
        self.local_ports: set[int] = set()
        self.pipeline: RequestPipeline | None = None
        self.transactions: Any = None
        self.dispatcher: Any = None
        self.contexts: dict[Any, ResponseContext] = {}
        self.admission: tuple[Any, ...] = ()
        self.ack_checks: tuple[AckCheck, ...] = ()
        """See AckCheck: the stages' ``check_ack`` (the service sets them)."""
        self.source_filter: Callable[[str], bool] | None = None
        """``source_filter(host)``: True drops everything from *host* before
        parsing (the service sets the ban policy's ``refuse_source``)."""
        """Steps asked before any transaction exists: each has
        ``admission(request, flow) -> Decision | None`` (None: no objection)."""
        self.events: SecurityEvents | None = None
        """Where the core reports its own security decisions (a sips: branch
        refused over a hop in clear); the service sets its event bus."""
        self.sips = SipsAdmission()
        """The admission step refusing a sips: request that came in clear; the
        service puts it in ``admission`` (after the shield's, before the
        challenge) and gives it the event bus.  Asked again here when a strict
        router's rewrite gives a request another Request-URI after admission."""
        self._route_set: tuple[Request, str, RouteSet] | None = None
        """The route set admission read for the request now going through
        ``handle_request`` (same object, same source), so that
        ``request_received`` does not read and verify it again."""
        self.counters = {"requests": 0, "responses": 0, "malformed": 0, "stateless_replies": 0, "admission_drops": 0, "stray_responses": 0,
                         "transaction_cap_refusals": 0, "amplification_drops": 0, "acks_refused": 0, "calls_started": 0}
        # Read by the metrics at scrape time (sipshield/_tally.py): plain increments here.
        self.requests_by = MethodTally()
        """Requests received, by method (unknown ones: ``other``) and transport."""
        self.responses_by = StatusTally()
        """Responses received from the next hops, by status."""
        self.stateless_sent = StatusTally()
        """Responses sent without a transaction (admission, caps, malformed requests), by status."""
        self.requests_from = SourceTally()
        """Requests received, by source host (the heaviest senders only: a bounded summary, for the admin API's top talkers)."""
        self.latency = LatencyHistogram()
        """Seconds the core spends on one parsed message, up to its decision or forwarding
        (the synchronous part: a stage's Deferred ends the measured span)."""
        self.remote_log = ThrottledLog(self.log, reactor) if reactor is not None else None
        """Lines caused by remote input go through this (per source and kind, bounded)."""

    # -- who we are -----------------------------------------------------
    def add_local_address(self, host: str, port: int) -> None:
        """Teach the core one address it listens on (called as listeners bind)."""
        host = host.lower()
        self.local_hosts.add(host)
        self.local_hosts.add(f"[{host}]")
        self.local_ports.add(port)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return
        if ip.is_loopback or ip.is_unspecified:
            self.local_hosts.update(_LOOPBACK_NAMES)
            self.local_hosts.update(("127.0.0.1", "::1", "[::1]"))

    def is_local(self, host: str, port: int | None) -> bool:
        """Is sip:host:port this proxy?  Domains match on any of our ports."""
        host = host.lower()
        if host in self.domains:
            return port is None or port in self.local_ports
        return host in self.local_hosts and (port is None or port in self.local_ports)

    # -- transports -> transactions -------------------------------------
    def refuse_source(self, host: str) -> bool:
        """Asked by the transports before parsing a datagram or accepting a
        connection: the service sets ``source_filter`` (the ban policy)."""
        source_filter = self.source_filter
        return source_filter is not None and source_filter(host)

    def message_received(self, message: Request | Response, flow: Flow) -> None:
        started = perf_counter()
        try:
            # First, for every transport: what follows walks some headers value
            # by value, so its cost must be bounded by the cap, not the input.
            check_header_values(message, self.max_header_values)
            if isinstance(message, Response):
                self.counters["responses"] += 1
                self.responses_by.add(message.status)
                self.transactions.handle_response(message, flow)
            else:
                self.counters["requests"] += 1
                self.requests_by.add(message.method, flow.transport_name)
                self.requests_from.add(flow.remote[0])
                _mark_source(message, flow)
                self.transactions.handle_request(message, flow)
        except ParseError as e:
            # A header a proxy reads only now (Route, Contact...) is malformed.
            self.bad_message(ParseError(e.reason, e.status, message), flow)
        self.latency.observe(perf_counter() - started)

    def bad_message(self, error: ParseError, flow: Flow) -> None:
        self.counters["malformed"] += 1
        message = error.message
        if self.remote_log is not None:
            self.remote_log.warn(
                "malformed", flow.remote[0], "malformed message from {transport} {host}:{port}: {reason}",
                transport=flow.transport_name, host=flow.remote[0], port=flow.remote[1], reason=error.reason,
            )
        if isinstance(message, Request) and message.method != "ACK":
            try:
                response = message.make_response(error.status, error.reason, to_tag=secrets.token_hex(6))
            except ParseError:
                return
            # The Via of a malformed request cannot be trusted: answer the
            # address the bytes came from (as RFC 3581 would).
            data = response.serialise()
            if not _within_amplification_limit(data, message, flow):
                self.counters["amplification_drops"] += 1
                return
            self.stateless_sent.add(error.status)
            flow.send(data)

    # -- admission (before any state) ---------------------------------------
    def routed_by_us(self, request: Request, flow: Flow) -> bool:
        """True when a Route (or strict-routed Request-URI) naming us carries
        our valid token for this request's dialog; the request is unchanged."""
        try:
            return self._read_route_set(request, flow.remote[0]).signed
        except ParseError:
            return False  # a malformed Route proves nothing (request_received answers it 400)

    def _read_route_set(self, request: Request, source: str) -> RouteSet:
        """:func:`route_set`, read once per request: admission's reading is
        kept for ``request_received`` (the transaction layer calls both for
        the same request object, in one call, with nothing in between that
        changes it)."""
        kept = self._route_set
        if kept is not None and kept[0] is request and kept[1] == source:
            return kept[2]
        found = route_set(request, self.is_local, self.signer, source)
        self._route_set = (request, source, found)
        return found

    def _take_route_set(self, request: Request, source: str) -> RouteSet:
        """:meth:`_read_route_set`, the last use: the kept reading is let go."""
        try:
            return self._read_route_set(request, source)
        finally:
            self._route_set = None

    def admit(self, request: Request, flow: Flow) -> bool:
        """Run the admission steps on a request that matched no transaction.

        A reply is sent statelessly, once, to the address the request came
        from (no transaction, no 100 Trying, no retransmission: a forged
        source gets one datagram at most); a drop sends nothing.  A request
        the steps admit must still fit under the transaction caps.  Returns
        True to admit the request to a server transaction.
        """
        for step in self.admission:
            decision = step.admission(request, flow)
            if decision is None:
                continue
            if decision.kind == "reply":
                self._stateless_reply(request, flow, decision.status, decision.reason, decision.headers)
            else:
                self.counters["admission_drops"] += 1
            return False
        return self._under_transaction_caps(request, flow)

    def _stateless_reply(self, request: Request, flow: Flow, status: int, reason: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send one response, once, within :data:`AMPLIFICATION_LIMIT`.

        A reply over UDP larger than 4 times the request is sent with the
        first value of each repeated header only (a stage lists alternatives,
        such as one challenge per digest algorithm, most preferred first: RFC 8760
        2.3); still too large, it is dropped and counted
        (``amplification_drops``).  No genuine UA sends a request that small.
        Over TCP and TLS the source is proven by the handshake: no limit.
        """
        headers = tuple(headers)
        to_tag = secrets.token_hex(6)
        for choice in (headers, _first_of_each(headers)):
            response = request.make_response(status, reason, to_tag=to_tag)
            for name, value in choice:
                response.headers.add(name, value)
            data = response.serialise()
            if _within_amplification_limit(data, request, flow):
                self.counters["stateless_replies"] += 1
                self.stateless_sent.add(status)
                flow.send(data)
                return
        self.counters["amplification_drops"] += 1

    def _under_transaction_caps(self, request: Request, flow: Flow) -> bool:
        """``[limits] max_transactions`` and ``max_transactions_per_source``.

        Above either, a new request gets 503 with Retry-After, statelessly
        (RFC 3261 21.5.4; an upstream proxy turns it into 500, 16.7 step 6,
        and tries another server).  An ACK never gets here (it creates no
        transaction).  A CANCEL is not refused: it frees state.  One for a
        live INVITE transaction is admitted (at most one per INVITE, so the
        cap holds within a factor of two), one matching none gets the 481
        it would get anyway, statelessly (RFC 3261 9.2).
        """
        source = flow.remote[0]
        total, per_source_ok = self._load(flow)
        if total < self.max_transactions and per_source_ok:
            return True
        if request.method == "CANCEL":
            if self.transactions.find_invite(request) is not None:
                return True
            self._stateless_reply(request, flow, 481, "Call/Transaction Does Not Exist")
            return False
        self.counters["transaction_cap_refusals"] += 1
        per_source = not per_source_ok
        if self.remote_log is not None:
            self.remote_log.warn(
                "transaction-cap", source, "{method} from {host} refused with 503: {what} ({limit} live server transactions)",
                method=request.method, host=source, limit=self.max_transactions_per_source if per_source else self.max_transactions,
                what="limits.max_transactions_per_source" if per_source else "limits.max_transactions",
            )
        self._stateless_reply(request, flow, 503, "Service Unavailable", (("Retry-After", _CAP_RETRY_AFTER),))
        return False

    def _load(self, flow: Flow) -> tuple[int, bool]:
        """Live server transactions in all, and whether *flow*'s source is under its own cap."""
        total, mine = self.transactions.server_load(flow.remote[0])
        # A source the auth stage already vouched for at admission (a trusted
        # network, a trunk certificate, a proven connection) is a known edge
        # or trunk: only the global cap applies to it.
        return total, mine < self.max_transactions_per_source or flow.authenticated

    def explain_caps(self, request: Request, flow: Flow) -> Explanation:
        """``sipshield explain``: what the transaction caps would say now (read, nothing made)."""
        total, per_source_ok = self._load(flow)
        load = f"{total} live server transactions (at most {self.max_transactions}; {self.max_transactions_per_source} per source)"
        if total < self.max_transactions and per_source_ok:
            return Explanation.passes("transaction caps", load)
        if request.method == "CANCEL":
            return Explanation.passes("transaction caps", f"{load}: a CANCEL is not refused")
        cap = "limits.max_transactions" if per_source_ok else "limits.max_transactions_per_source"
        return Explanation.of("transaction caps", Decision.reply(503, "Service Unavailable"), f"{load}: over {cap}")

    # -- transaction user -------------------------------------------------
    def request_received(self, txn: Any) -> None:
        """A new server transaction (not a retransmission)."""
        request: Request = txn.request
        if request.method == "CANCEL":
            self._cancel_received(txn)
            return
        try:
            found = self._take_route_set(request, txn.flow.remote[0])
        except ParseError as e:
            # A Route is read only now; the transaction exists, so it must end with the 400.
            self._reply(txn, e.status, e.reason)
            return
        routed = apply_route_set(request, found)
        if found.strict_uri is not None:
            refusal = self.sips.admission(request, txn.flow)
            if refusal is not None:  # a reply: an ACK never gets here (it makes no transaction)
                self._reply(txn, refusal.status, refusal.reason, refusal.headers)
                return
        # Admission ran on this request (the transaction layer asks ``admit``
        # before it creates a transaction) unless a strict router's rewrite
        # has just given it another Request-URI.
        admitted_by = self.admission if found.strict_uri is None else ()
        # ``route_set``: it follows a dialog we record-routed (token verified).
        context = RequestContext(request, txn.flow, now=self.reactor.seconds(), route_set=routed, admitted_by=admitted_by)
        assert self.pipeline is not None
        decision = self.pipeline.run(context)
        if isinstance(decision, Deferred):
            decision.addCallback(self._decided, txn, context)
            decision.addErrback(self._decision_failed, txn, context)
        else:
            try:
                self._decided(decision, txn, context)
            except ParseError as e:
                self._reply(txn, e.status, e.reason, context=context)

    def _decision_failed(self, failure: Failure, txn: Any, context: RequestContext) -> None:
        error = failure.value
        if isinstance(error, ParseError):
            self._reply(txn, error.status, error.reason, context=context)
            return
        self.log.failure("routing failed for {method}", failure, method=txn.method)
        self._reply(txn, 500, "Server Internal Error", context=context)

    def _decided(self, decision: Decision, txn: Any, context: RequestContext) -> None:
        kind = decision.kind
        if kind == "reply":
            self._reply(txn, decision.status, decision.reason, decision.headers, context)
        elif kind == "relay":
            self._relay(txn, context, decision.targets)
        elif kind == "drop":
            terminate = getattr(txn, "terminate", None)
            if terminate is not None:
                terminate()
        else:
            self._reply(txn, 500, "No routing decision", context=context)

    def _reply(
        self, txn: Any, status: int, reason: str, headers: Iterable[tuple[str, str]] = (), context: RequestContext | None = None,
    ) -> None:
        """Answer from the proxy itself (RFC 3261 8.2.6).  With the request's
        *context*, its response hooks see the answer first (a stage that
        counted the request learns that it ended here, unrelayed)."""
        request: Request | None = txn.request
        if request is None or request.method == "ACK":
            return  # (None: the transaction has sent its final response already)
        response = request.make_response(status, reason, to_tag=None if status == 100 else secrets.token_hex(6))
        for name, value in headers:
            response.headers.add(name, value)
        if context is not None and context.response_hooks and status >= 200:
            response = run_response_hooks(context, response)
        txn.send_response(response)
        if status in _SENT_ONCE:
            # RFC 3261 26.3.2.4: a 401/407 need not be retransmitted.  A wrong
            # password would otherwise buy 11 copies (Timer G until H) and 32 s
            # of state; the ACK for it then matches nothing and is dropped
            # (stray_ack: no route set of ours).
            txn.terminate()

    def stray_ack(self, request: Request, flow: Flow) -> None:
        """An ACK for a 2xx (its own end-to-end transaction): forward it
        statelessly along its route set (RFC 3261 16.11).  A sips: one
        that came in clear, or would go out in clear, is not forwarded."""
        if arrived_in_clear(request, flow):
            return
        if not apply_route_set(request, self._take_route_set(request, flow.remote[0])):
            # Not on a route set we can verify we made: nothing of ours to
            # forward (forwarding it would make the proxy an open relay).
            return
        mf = request.max_forwards
        if mf is not None and mf <= 0:
            return
        request.headers.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
        uri, hop = next_hop(request)
        if hop[0] != "TLS" and needs_tls(request, uri):
            return
        for check in self.ack_checks:
            if not check(request, flow, hop):
                # Not forwarded: the callee retransmits its 2xx, then ends
                # the dialog with a BYE (RFC 3261 13.3.1.4).
                self.counters["acks_refused"] += 1
                return
        self._send_stateless(request, hop, stateless_branch(request))

    def stray_response(self, response: Response, flow: Flow) -> None:
        """A response matching no client transaction: dropped and counted.

        Forwarding it along its Via would let anyone aim a response (over
        TCP, a new connection) at a host of their choosing; RFC 6026's
        Accepted state keeps genuine 2xx retransmissions on their client
        transaction, which forwards them (``forward_retransmitted_2xx``).
        """
        self.counters["stray_responses"] += 1

    def forward_retransmitted_2xx(self, response: Response, upstream: Flow) -> None:
        """A 2xx retransmission on a client transaction in Accepted whose
        response context is gone: forward it statelessly (RFC 3261 16.7 step
        10, RFC 6026 8.2) to where the INVITE came from, not along the Via."""
        if len(response.vias) < 2:
            return
        response.headers.remove_first("Via")
        upstream.send(response.serialise())

    # -- relaying (RFC 3261 16.6) --------------------------------------------
    def _relay(self, txn: Any, context: RequestContext, targets: tuple[Target, ...]) -> None:
        request: Request = txn.request
        if not targets:
            self._reply(txn, 480, "Temporarily Unavailable", context=context)
            return
        mf = request.max_forwards
        if mf is not None and mf <= 0:
            self._reply(txn, 483, "Too Many Hops", context=context)
            return
        # Every branch is built before anything exists (a Route of the request
        # or of a target that it cannot follow drops that target; with none
        # left, the 400) and is in the context before any is sent, so that no
        # branch failing at once finishes the context while others are still to go.
        prepared = []
        malformed: ParseError | None = None
        for target in sorted(targets, key=lambda t: -t.q):
            try:
                prepared.append(self._prepare(request, target))
            except ParseError as e:
                malformed = e
        if not prepared:
            if malformed is not None:
                self._reply(txn, malformed.status, malformed.reason, context=context)
            return
        is_invite = request.method == "INVITE"
        if is_invite:
            self.counters["calls_started"] += 1
        rc = ResponseContext(self, txn, context, is_invite)
        self.contexts[txn] = rc
        branches = [Branch(rc, fwd, hop, flow, sips) for fwd, hop, flow, sips in prepared]
        for branch in branches:
            rc.add_branch(branch)
        for branch in branches:
            self._start_branch(txn, branch)

    def _prepare(self, request: Request, target: Target) -> tuple[Request, Hop, Any, bool]:
        """The forwarded copy for one target, its next hop (RFC 3261 16.6
        steps 1-7) and whether that hop must be TLS (a sips: request or target)."""
        fwd = Request(request.method, target.uri.copy(), request.headers.copy(), request.body)
        mf = request.max_forwards
        fwd.headers.set("Max-Forwards", str(70 if mf is None else mf - 1))
        for value in reversed(target.route):
            fwd.headers.prepend("Route", value)
        uri, hop = next_hop(fwd, target.next_hop)
        sips = needs_tls(request, fwd.uri, uri)
        flow = target.flow
        if target.source is not None and not target.route and target.next_hop is None:
            # A registered phone: reach it where it registered from (NAT, TCP/TLS flow).
            hop = target.source
        elif hop[0] == "UDP" and flow is None and self._too_big_for_udp(fwd, target):
            hop = ("TCP", hop[1], hop[2])
        return fwd, hop, flow, sips

    def _start_branch(self, txn: Any, branch: Branch) -> None:
        host = branch.hop[1]
        if is_ip(host):
            self._send_branch(txn, branch)
            return
        # The branch is pending meanwhile, so the caller's one final answer
        # waits for it: never a 503 now and the request sent later.
        resolving = self.reactor.resolve(host)
        resolving.addTimeout(self.resolve_timeout, self.reactor)
        resolving.addCallbacks(self._resolved, self._unresolvable, callbackArgs=(txn, branch), errbackArgs=(branch,))

    def _resolved(self, ip: str, txn: Any, branch: Branch) -> None:
        rc = branch.context
        if rc is None or branch.final is not None:
            return  # answered meanwhile (timer C, a 6xx or 2xx elsewhere)
        if rc.cancelled or branch.cancel_pending:
            rc.on_cancelled_unsent(branch)
            return
        transport, _, port = branch.hop
        branch.hop = (transport, ip, port)
        self._send_branch(txn, branch)

    def _too_big_for_udp(self, fwd: Request, target: Target) -> bool:
        """RFC 3261 18.1.1: a request within 200 bytes of a 1500-byte MTU goes
        over TCP unless the URI insists on UDP (and we have a TCP listener).
        Only big bodies can get there, so small requests are not measured."""
        if len(fwd.body) < 400 or (target.next_hop or target.uri).transport == "udp":
            return False
        return len(fwd.serialise()) + _OWN_HEADERS_ALLOWANCE > 1300 and self.dispatcher.local_address("TCP", "127.0.0.1") is not None

    def _log_unresolvable(self, host: str, failure: Failure) -> None:
        """A next hop's name comes from remote input (a Request-URI, a
        Route): its failure is logged within the remote-input budgets."""
        if self.remote_log is not None:
            self.remote_log.warn("unresolvable", host, "cannot resolve {host}: {why}", host=host, why=failure.getErrorMessage())

    def _unresolvable(self, failure: Failure, branch: Branch) -> None:
        self._log_unresolvable(branch.hop[1], failure)
        if branch.context is not None:
            branch.context.on_transport_error(None, branch)

    def _send_branch(self, txn: Any, branch: Branch) -> None:
        rc = branch.context
        if rc is None:
            return
        fwd, hop = branch.request, branch.hop
        transport = hop[0]
        if branch.sips and transport != "TLS":
            self._refuse_sips_branch(txn, branch)
            return
        outbound = self.dispatcher.local_address(transport, hop[1])
        why = unusable_hop(hop, outbound)
        if why is not None or outbound is None:
            if self.remote_log is not None:
                self.remote_log.warn("unusable-hop", hop[1], "cannot use next hop {transport} {host}:{port}: {why}", transport=transport, host=hop[1], port=hop[2], why=why)
            rc.on_unusable_hop(branch, why or "no listener")
            return
        refusal = rc.branch_refusal(branch)
        if refusal is not None:
            rc.end_unsent(branch, refusal)
            return
        if fwd.method in RECORD_ROUTE_METHODS and fwd.to.tag is None:
            local_host, local_port = self.dispatcher.reached_at(txn.flow)
            inbound: Hop = (txn.flow.transport_name, local_host, local_port)
            outbound_side: Hop = (transport, outbound[0], outbound[1])
            double = inbound != outbound_side
            token = self.signer.token(fwd.call_id, fwd.from_.tag, endpoints(txn.flow.remote[0], hop[1]))
            if double:
                fwd.headers.prepend("Record-Route", record_route_uri(inbound, double=True, token=token, sips=branch.sips))
            fwd.headers.prepend("Record-Route", record_route_uri(outbound_side, double=double, token=token, sips=branch.sips))
        host, port = outbound
        shown = f"[{host}]" if ":" in host else host
        fwd.headers.prepend("Via", f"SIP/2.0/{transport} {shown}:{port};branch={new_branch(rc.context.request)}")
        calls = branch.calls = _BranchCallbacks(branch, self, txn.flow, rc.context)
        branch.txn = self.transactions.send_request(fwd, hop, calls, calls.timeout, calls.error, flow=branch.flow)

    def _refuse_sips_branch(self, txn: Any, branch: Branch) -> None:
        """A branch of a sips: request whose next hop is UDP or TCP (a phone
        registered over UDP, a static route or a Route in clear): nothing is
        sent, the branch ends with 480 and Warning 380 (RFC 5630 5.3)."""
        rc = branch.context
        assert rc is not None
        transport, host, port = branch.hop
        if self.events is not None:
            flow = txn.flow
            user = rc.context.user
            self.events.emit(SecurityEvent(
                SIPS_REFUSED, flow.remote[0], flow.transport_name, None if user is None else user[0],
                f"{branch.request.method} {branch.request.uri} not sent: its next hop is {transport} {host}:{port}, not TLS",
            ))
        rc.on_sips_refused(branch, sips_warning(SIPS_NOT_ALLOWED, txn.flow.local))

    def _send_stateless(self, request: Request, hop: Hop, branch: str) -> None:
        if not is_ip(hop[1]):
            # A datagram socket writes to addresses only (RFC 3263: resolve first).
            resolving = self.reactor.resolve(hop[1])
            resolving.addCallbacks(lambda ip: self._send_stateless(request, (hop[0], ip, hop[2]), branch),
                                   lambda f: self._log_unresolvable(hop[1], f))
            return
        outbound = self.dispatcher.local_address(hop[0], hop[1])
        if outbound is None:
            return
        host, port = outbound
        shown = f"[{host}]" if ":" in host else host
        request.headers.prepend("Via", f"SIP/2.0/{hop[0]} {shown}:{port};branch={branch}")
        self.dispatcher.send(request.serialise(), hop, None)

    # -- CANCEL (RFC 3261 16.10) ---------------------------------------------
    def _cancel_received(self, txn: Any) -> None:
        invite_txn = self.transactions.find_invite(txn.request)
        rc = self.contexts.get(invite_txn) if invite_txn is not None else None
        if rc is None:
            self._reply(txn, 481, "Call/Transaction Does Not Exist")
            return
        self._reply(txn, 200, "OK")
        rc.cancel()

    def send_cancel(self, branch: Branch, reason: str | None = None) -> None:
        """CANCEL one branch (RFC 3261 9.1, 16.10) on its own client transaction."""
        if branch.txn is None:
            return
        cancel = branch.txn.make_cancel()
        if reason:
            cancel.headers.add("Reason", reason)
        self.transactions.send_request(cancel, branch.hop, _ignore_response, _ignore, _ignore, flow=branch.txn.flow)

    def context_finished(self, rc: ResponseContext) -> None:
        rc.stop()
        self.contexts.pop(rc.server_txn, None)
        # The branches' callbacks judge the late 2xx responses (up to 64*T1)
        # with the request's start line and echoed headers, kept as bytes,
        # not with the request itself (see _LateFilters).
        late = _LateFilters.of(rc.context) if rc.context.response_filters else None
        for branch in rc.branches:
            branch.context = None  # break branch <-> context; see _BranchCallbacks
            if branch.calls is not None:
                branch.calls.context_gone(late)


def _mark_source(request: Request, flow: Flow) -> None:
    """RFC 3261 18.2.1 and RFC 3581 4: record where the request really came
    from in its top Via (received when sent-by differs from the source
    address, rport filled in when the client asked for it)."""
    via = request.top_via
    host, port = flow.remote
    add_received = via.host.strip("[]") != host and via.received != host
    fill_rport = via.rport == ""
    if not (add_received or fill_rport):
        return
    params = dict(via.params)
    if add_received:
        params["received"] = host
    if fill_rport:
        params["rport"] = str(port)
    request.headers.replace_first("Via", str(Via(via.transport, via.host, via.port, params, via.protocol)))


class _LateFilters:
    """What the response filters of a finished call judge its late 2xx with.

    Once the response context is gone, a client transaction in Accepted
    still passes every 2xx up (RFC 6026 7.2: retransmissions, and new 2xx of
    a fork further on) for up to 64*T1, and each is judged by the filters
    before it is relayed.  Rather than the request (its parsed headers, its
    body: kilobytes per call, times every call of the last 32 s), this keeps
    the request's start line and the headers a response echoes (Via, From,
    To, Call-ID, CSeq: RFC 3261 8.2.6.2) as bytes, and the other fields of
    the context as they were; a late 2xx gets a RequestContext rebuilt from
    them, whose request has those headers only (what the built-in filters
    read: the method, and ``make_response``).
    """

    __slots__ = ("_head", "_fields")

    _ECHOED = ("Via", "From", "To", "Call-ID", "CSeq")

    def __init__(self, head: bytes, fields: tuple[Any, ...]) -> None:
        self._head = head
        self._fields = fields

    @classmethod
    def of(cls, context: RequestContext) -> _LateFilters:
        request = context.request
        headers = request.headers
        lines = [f"{request.method} {request.uri} SIP/2.0"]
        lines += [f"{name}: {value}" for name in cls._ECHOED for value in headers.get_all(name)]
        lines.append("Content-Length: 0\r\n\r\n")
        fields = _context_fields(context)
        if not context.attributes:
            # The usual empty dict is kept as None, made afresh.
            kept = list(fields)
            kept[_ATTRIBUTES] = None
            fields = tuple(kept)
        return cls("\r\n".join(lines).encode("utf-8", "surrogateescape"), fields)

    def context(self) -> RequestContext:
        request = parse_message(self._head)
        assert isinstance(request, Request)  # built from a request's own start line
        context = RequestContext(request, *self._fields)
        if context.attributes is None:
            context.attributes = {}
        return context


_CONTEXT_FIELDS = tuple(f.name for f in dataclasses.fields(RequestContext))[1:]
"""Every field of a RequestContext after ``request``, in their order."""
_context_fields = operator.attrgetter(*_CONTEXT_FIELDS)
_ATTRIBUTES = _CONTEXT_FIELDS.index("attributes")


class _BranchCallbacks:
    """What a client transaction calls back, holding its branch weakly.

    A client transaction outlives its response context (RFC 6026 Accepted
    lasts 64*T1), and strong references both ways would make every call a
    reference cycle left to the cyclic garbage collector, whose full passes
    stall the reactor under load.  Once the context is gone, a 2xx
    retransmission is forwarded statelessly to the flow the request came in
    on (RFC 3261 16.7, RFC 6026 8.2).  The object itself is the transaction's
    ``on_response`` (one bound method less per branch, kept through Timer M).
    """

    __slots__ = ("_branch", "_core", "_upstream", "_filtering", "_hop", "muted")

    def __init__(self, branch: Branch, core: ProxyCore, upstream: Flow, context: RequestContext) -> None:
        self._branch: weakref.ref[Branch] | None = weakref.ref(branch)
        self._core = core
        self._upstream = upstream
        # The response filters still judge each 2xx once the response context
        # is gone: a retransmission, or a new 2xx of a fork further on
        # (another To tag, its own SDP), is otherwise relayed unchecked.
        # The context while it lives, then what context_gone leaves.
        self._filtering: RequestContext | _LateFilters | None = context if context.response_filters else None
        self._hop = branch.hop
        self.muted = False  # a response filter refused the branch's 2xx (Branch.mute)

    def context_gone(self, late: _LateFilters | None) -> None:
        """The response context finished: let go of the branch (and of the
        request context, for *late*: what the filters judge late 2xx with)."""
        self._branch = None
        if self._filtering is not None:
            self._filtering = late

    def _live_branch(self) -> Branch | None:
        ref = self._branch
        branch = ref() if ref is not None else None
        return branch if branch is not None and branch.context is not None else None

    def response(self, txn: Any, response: Response) -> None:
        if self.muted:
            return
        branch = self._live_branch()
        if branch is not None:
            branch.context.on_response(txn, response, branch)  # type: ignore[union-attr]
        elif 200 <= response.status < 300:
            filtering = self._filtering
            if filtering is not None:
                context = filtering if isinstance(filtering, RequestContext) else filtering.context()
                passed = filtered(context, response, self._hop)
                if passed is None or passed.status >= 300:
                    self.muted = True  # the caller has its final answer: nothing to send instead
                    return
                response = passed
            self._core.forward_retransmitted_2xx(response, self._upstream)

    __call__ = response

    def timeout(self, txn: Any) -> None:
        branch = self._live_branch()
        if branch is not None:
            branch.context.on_timeout(txn, branch)  # type: ignore[union-attr]

    def error(self, txn: Any) -> None:
        branch = self._live_branch()
        if branch is not None:
            branch.context.on_transport_error(txn, branch)  # type: ignore[union-attr]


def _ignore(txn: Any) -> None:
    """A CANCEL's own transaction outcome needs no action (RFC 3261 9.1)."""


def _ignore_response(txn: Any, response: Response) -> None:
    """The 200 to our CANCEL needs no action; the INVITE's 487 does the work."""


def _within_amplification_limit(data: bytes, request: Request, flow: Flow) -> bool:
    """May *data* go back to *request*'s source?  Over UDP only when at most
    :data:`AMPLIFICATION_LIMIT` times the request's size (a request built in
    code, with no size, is not weighed)."""
    return flow.reliable or not request.wire_size or len(data) <= AMPLIFICATION_LIMIT * request.wire_size


def _first_of_each(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    seen: set[str] = set()
    first = []
    for name, value in headers:
        if name.lower() not in seen:
            seen.add(name.lower())
            first.append((name, value))
    return tuple(first)
