"""A hunt group router in a few lines: subclass sipshield.routing.Router.

Config::

    [server]
    plugins = ["huntgroup_plugins"]      # this package must be importable
    [pipeline]
    stages = ["sanity", "options", "dialog", "registrar", "huntgroup", "location", "routes", "final"]
    [stage.huntgroup]
    sales = ["alice", "bob"]             # INVITE sip:sales@DOMAIN rings alice and bob

Calling ``sip:sales@example.com`` rings every registered phone of every member
at once (parallel fork); the first to answer wins and the others get CANCEL.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from sipshield.message import URI
from sipshield.routing import RequestContext, Router, StageFactory, Target
from sipshield.state import aor_of


class HuntGroupRouter(Router):
    name = "huntgroup"

    def route(self, context: RequestContext) -> Any:
        request = context.request
        uri = request.uri
        if request.method != "INVITE" or not uri.is_sip or uri.user not in self.options:
            return None  # not a hunt group: next stage
        members = [f"sip:{member}@{uri.host}" for member in self.options[uri.user]]
        lookups = [self.environment.location.bindings(aor_of(URI.parse(aor))) for aor in members]
        return defer.gatherResults(lookups).addCallback(self._targets)

    def _targets(self, results: list[list[Any]]) -> list[Target]:
        # An empty list makes the base class answer 480 Temporarily Unavailable.
        return [Target(uri=URI.parse(b.contact), q=b.q, route=b.path, source=b.source) for bindings in results for b in bindings]


huntgroup = StageFactory("huntgroup", "ring every member of a group at once", HuntGroupRouter)
