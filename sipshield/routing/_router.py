"""The base class users subclass to write a router in a few lines.

Modelled on ldaptor's ``ProxyBase``: two documented hooks with safe
defaults, called so that they may answer synchronously or with a Deferred.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from sipshield.interfaces import IPipelineStage
from sipshield.message import URI, Response
from sipshield.proxy import CONTINUE, Decision, RequestContext, Target

if TYPE_CHECKING:
    from sipshield.environment import StageEnvironment

__all__ = ["Router"]


@implementer(IPipelineStage)
class Router:
    """Subclass and override :meth:`route` (and optionally :meth:`on_response`).

    ``route(context)`` returns (or fires with) one of:

    - ``None``: not mine, let the next stage decide;
    - a list of targets (``Target``, ``URI`` or ``"sip:..."`` strings): fork
      to all of them in parallel (RFC 3261 16.6); an empty list answers 480;
    - a :class:`Decision` for full control (``Decision.reply(486)``...).

    ``options`` is the router's ``[stage.NAME]`` table; ``environment`` the
    service's StageEnvironment (its ``location`` store, ``config``,
    ``reactor``, ``is_local``, ``events``...).  The class itself is a stage
    factory's build function: ``StageFactory("name", "what", MyRouter)``.
    """

    name = "router"

    def __init__(self, environment: StageEnvironment | None = None, options: dict[str, Any] | None = None) -> None:
        self.environment = environment
        self.options = dict(options or {})

    @property
    def service(self) -> StageEnvironment | None:
        """The older name of :attr:`environment` (routers written when it was
        the whole service used ``self.service.location``, which still works)."""
        return self.environment

    def route(self, context: RequestContext) -> Any:
        """Pick targets for ``context.request``; the default routes nothing."""
        return None

    def on_response(self, context: RequestContext, response: Response) -> Response | None:
        """Called with the final response the proxy is about to send upstream
        for a request this router relayed (for logging, CDRs, failover ideas).
        Return a Response to send that one instead, or None to keep it.  It
        is called synchronously; if it raises, the error is logged and the
        response goes upstream unchanged.  The default does nothing."""
        return None

    def process(self, context: RequestContext) -> Decision | Deferred[Decision]:
        result = self.route(context)
        if isinstance(result, Deferred):
            return result.addCallback(self._decide, context)
        return self._decide(result, context)

    def _decide(self, result: Any, context: RequestContext) -> Decision:
        if result is None:
            return CONTINUE
        if isinstance(result, Decision):
            decision = result
        else:
            targets = [self._target(t) for t in result]
            if not targets:
                return Decision.reply(480, "Temporarily Unavailable")
            decision = Decision.relay(targets)
        if decision.kind == "relay":
            context.response_hooks += (self.on_response,)
        return decision

    @staticmethod
    def _target(item: Target | URI | str) -> Target:
        if isinstance(item, Target):
            return item
        if isinstance(item, str):
            item = URI.parse(item)
        return Target(uri=item)
