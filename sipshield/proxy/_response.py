"""The response context of one proxied request (RFC 3261 16.7): branches,
best-response selection, CANCEL of pending branches, timer C."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from sipshield.message import Request, Response
from sipshield.proxy._hop import UNUSABLE_HOP_STATUS
from sipshield.proxy._sips import SIPS_REASON_OUTBOUND, SIPS_STATUS

if TYPE_CHECKING:
    from sipshield.proxy._core import ProxyCore
    from sipshield.proxy._decision import RequestContext

__all__ = ["Branch", "ResponseContext", "filtered"]

_log = Logger()


def filtered(context: RequestContext, response: Response, hop: tuple[str, str, int]) -> Response | None:
    """*response* after every response filter of *context* (see ResponseFilter),
    or None: a filter dropped it, or raised (logged; fail closed)."""
    for check in context.response_filters:
        try:
            passed = check(context, response, hop)
        except Exception:
            _log.failure("response filter {filter} failed; response not relayed", filter=getattr(check, "__qualname__", repr(check)))
            return None
        if passed is None:
            return None
        response = passed
    return response


class Branch:
    """One forwarded copy of the request and its client transaction."""

    __slots__ = ("context", "request", "hop", "flow", "sips", "txn", "final", "provisional", "cancel_pending", "cancelled", "timer_c", "muted", "calls", "__weakref__")

    def __init__(self, context: ResponseContext, request: Request, hop: tuple[str, str, int], flow: Any, sips: bool = False) -> None:
        self.context: ResponseContext | None = context
        self.request = request
        self.hop = hop
        self.flow = flow
        self.sips = sips
        """The branch must go over TLS (a sips: request, Request-URI or next hop: RFC 5630)."""
        self.txn: Any = None
        self.final: Response | None = None
        self.provisional = False
        self.cancel_pending = False
        self.cancelled = False
        self.timer_c: Any = None
        self.muted = False
        """A response filter refused this branch's 2xx: nothing more of it goes upstream."""
        self.calls: Any = None
        """What its client transaction calls back (the core's _BranchCallbacks), muted with it."""

    def mute(self) -> None:
        """Relay nothing more from this branch, also after the response context is gone."""
        self.muted = True
        if self.calls is not None:
            self.calls.muted = True


def _rank(status: int) -> tuple[int, int]:
    """RFC 3261 16.7 step 6 ordering: 6xx first, then the lowest class;
    within 4xx, prefer the informative ones over 408/480-style defaults."""
    cls = status // 100
    if cls == 6:
        return (0, status)
    if status == 503:
        return (cls, 999)  # 503 only if nothing else (and it becomes 500)
    if status in (401, 407, 415, 420, 484):
        return (cls, status - 1000)  # answers the UAC can act on
    return (cls, status)


class ResponseContext:
    """Collects branch responses for one server transaction."""

    log = Logger()

    def __init__(self, core: ProxyCore, server_txn: Any, context: RequestContext, is_invite: bool) -> None:
        self.core = core
        self.server_txn = server_txn
        self.context = context
        self.is_invite = is_invite
        self.branches: list[Branch] = []
        self.answered = False  # a final response went upstream
        self.best: Response | None = None
        self.cancelled = False

    # -- branches -------------------------------------------------------
    def add_branch(self, branch: Branch) -> None:
        self.branches.append(branch)
        if self.is_invite:
            branch.timer_c = self.core.reactor.callLater(self.core.timer_c, self._timer_c, branch)

    def _pending(self) -> list[Branch]:
        return [b for b in self.branches if b.final is None]

    # -- client transaction callbacks ----------------------------------
    def on_response(self, txn: Any, response: Response, branch: Branch) -> None:
        status = response.status
        # RFC 3261 16.7 step 3: remove our Via.
        response.headers.remove_first("Via")
        if status < 200:
            if status == 100:
                return
            branch.provisional = True
            if branch.cancel_pending:
                self._send_cancel(branch)
            if self.is_invite and branch.timer_c is not None and branch.timer_c.active():
                branch.timer_c.reset(self.core.timer_c)
            if not self.answered:
                passed = self._filtered(response, branch)
                if passed is not None and passed.status < 200:
                    self.server_txn.send_response(passed)
            return
        first_final = branch.final is None
        if first_final:
            branch.final = response
            self._stop_timer(branch)
        if 200 <= status < 300:
            passed = self._filtered(response, branch)
            if passed is None or passed.status >= 300:
                self._refused_2xx(branch, passed, first_final)
                return
            response = passed
            # 16.7 step 5: every 2xx goes upstream at once (also retransmissions
            # and 2xx from other branches: the UAC must see them to ACK/BYE).
            self._forward_final(response)
            if self.is_invite:
                self._cancel_pending("SIP;cause=200;text=\"Call completed elsewhere\"")
            self._maybe_finish()
            return
        if not first_final:
            return  # a retransmitted non-2xx final: already handled
        if status >= 600 and self.is_invite:
            self._cancel_pending()
        self._consider(response)

    def _filtered(self, response: Response, branch: Branch) -> Response | None:
        """The response after every filter of the context (see ResponseFilter), or None."""
        return filtered(self.context, response, branch.hop)

    def _refused_2xx(self, branch: Branch, replacement: Response | None, first_final: bool) -> None:
        """A filter refused a branch's 2xx: the branch ends with *replacement*
        (else the proxy's own 502) instead, which is weighed as any final;
        its 2xx retransmissions go nowhere (the callee gets no ACK and ends
        the dialog itself, RFC 3261 13.3.1.4)."""
        branch.mute()
        if not first_final:
            return  # a 2xx after a final of this branch: only dropped
        if replacement is None:
            replacement = self.context.request.make_response(502, "Bad Gateway: answer refused")
        branch.final = replacement
        self._consider(replacement)

    def on_timeout(self, txn: Any, branch: Branch) -> None:
        """Timer B/F fired: the branch behaves as if it got 408 (16.7 step 2)."""
        self._local_final(branch, 408, "Request Timeout")

    def on_transport_error(self, txn: Any, branch: Branch) -> None:
        """RFC 3261 16.9: a transport error counts as 503 on that branch."""
        self._local_final(branch, 503, "Service Unavailable")

    def on_unusable_hop(self, branch: Branch, why: str) -> None:
        """The branch's next hop is no address to send to (port 0, broadcast,
        multicast, no listener of its transport or family): nothing is sent,
        and the branch ends with the proxy's own 502 saying why."""
        self._local_final(branch, UNUSABLE_HOP_STATUS, f"Bad Gateway: {why}")

    def on_sips_refused(self, branch: Branch, warning: tuple[str, str]) -> None:
        """The branch of a sips: request would leave over UDP or TCP: nothing
        is sent, and it ends with 480 and the *warning* (RFC 5630 5.3)."""
        response = self.context.request.make_response(SIPS_STATUS, SIPS_REASON_OUTBOUND)
        response.headers.add(*warning)
        self.end_unsent(branch, response)

    def on_cancelled_unsent(self, branch: Branch) -> None:
        """The request was cancelled before this branch could be sent (its
        next hop was still being resolved): it ends as if it had answered 487."""
        self._local_final(branch, 487, "Request Terminated")

    def _local_final(self, branch: Branch, status: int, reason: str) -> None:
        """A final answer the proxy makes up for a branch that gave none."""
        # From the request as it reached us: a branch that failed before it
        # was sent (no listener, a name that does not resolve) has no Via of ours.
        self.end_unsent(branch, self.context.request.make_response(status, reason))

    def end_unsent(self, branch: Branch, response: Response) -> None:
        """End a branch with the proxy's own final *response* (one made from
        the request as it reached us), weighed as any other answer."""
        if branch.final is not None:
            return
        self._stop_timer(branch)
        branch.final = response
        self._consider(response)

    def branch_refusal(self, branch: Branch) -> Response | None:
        """What the context's branch checks say of *branch* before it is sent
        (see BranchCheck): None to send it, else the final it ends with."""
        for check in self.context.branch_checks:
            try:
                refusal = check(self.context, branch.request, branch.hop)
            except Exception:
                self.log.failure("branch check {check} failed; branch not sent", check=getattr(check, "__qualname__", repr(check)))
                return self.context.request.make_response(500, "Server Internal Error")
            if refusal is not None:
                return refusal
        return None

    def _consider(self, response: Response) -> None:
        """Keep the best final so far (16.7 step 6), then finish if all are in."""
        if self.best is None or _rank(response.status) < _rank(self.best.status):
            self.best = response
        self._maybe_finish()

    # -- finishing ------------------------------------------------------
    def _maybe_finish(self) -> None:
        if self._pending():
            return
        best = self.best
        if not self.answered and best is not None:
            if best.status == 503:
                # 16.7 step 6: a 503 is not passed on as-is; the UAC would think we are overloaded.
                best = self._rewrite_status(best, 500, "Server Internal Error")
            elif best.status in (401, 407):
                best = self._aggregate_challenges(best)
            self._forward_final(best)
        self.core.context_finished(self)

    def _rewrite_status(self, response: Response, status: int, reason: str) -> Response:
        return Response(status, reason, response.headers, response.body)

    def _aggregate_challenges(self, best: Response) -> Response:
        """16.7 step 7: collect WWW-/Proxy-Authenticate from every 401/407 branch."""
        for branch in self.branches:
            other = branch.final
            if other is None or other is best or other.status not in (401, 407):
                continue
            for name in ("WWW-Authenticate", "Proxy-Authenticate"):
                for value in other.headers.get_all(name):
                    best.headers.add(name, value)
        return best

    def _forward_final(self, response: Response) -> None:
        if response.status >= 300 and self.answered:
            return
        if response.status >= 200:
            if not self.answered:
                response = self._run_hooks(response)
            self.answered = True
        self.server_txn.send_response(response)

    def _run_hooks(self, response: Response) -> Response:
        return run_response_hooks(self.context, response)

    # -- CANCEL (RFC 3261 16.10) ---------------------------------------
    def cancel(self) -> None:
        """Upstream cancelled: CANCEL every pending branch."""
        self.cancelled = True
        self._cancel_pending()

    def _cancel_pending(self, reason: str | None = None) -> None:
        for branch in self._pending():
            if branch.cancelled:
                continue
            if branch.provisional:
                self._send_cancel(branch, reason)
            else:
                # RFC 3261 9.1: CANCEL only after a provisional response.
                branch.cancel_pending = True

    def _send_cancel(self, branch: Branch, reason: str | None = None) -> None:
        branch.cancelled = True
        branch.cancel_pending = False
        self.core.send_cancel(branch, reason)

    def _timer_c(self, branch: Branch) -> None:
        """16.6 step 11 / 16.8: no final answer in time: CANCEL it if it rang,
        else treat it as timed out (408)."""
        branch.timer_c = None
        if branch.final is not None:
            return
        if branch.provisional:
            self._send_cancel(branch)
        self.on_timeout(None, branch)

    def _stop_timer(self, branch: Branch) -> None:
        if branch.timer_c is not None and branch.timer_c.active():
            branch.timer_c.cancel()
        branch.timer_c = None

    def stop(self) -> None:
        for branch in self.branches:
            self._stop_timer(branch)


_log = Logger()


def run_response_hooks(context: RequestContext, response: Response) -> Response:
    """The guarded response chain (ldaptor ProxyBase's handleProxiedResponse):
    each hook in ``context.response_hooks`` sees the final response, and may
    return another Response to send instead.  A hook that raises is logged
    and skipped; the response still goes upstream.  The proxy core runs it
    on the best final response of a relayed request, and on its own final
    answer to a request a stage left hooks on but that was not relayed."""
    for hook in context.response_hooks:
        try:
            replaced = hook(context, response)
        except Exception:
            _log.failure("response hook {hook} failed; skipped", hook=getattr(hook, "__qualname__", repr(hook)))
            continue
        if isinstance(replaced, Response):
            response = replaced
    return response
