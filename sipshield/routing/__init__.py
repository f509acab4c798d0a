"""Routing: the pipeline, built-in stages and the Router base class.

``Decision``, ``Target``, ``RequestContext``, ``CONTINUE`` and ``DROP`` live with
the proxy core (sipshield.proxy) and are re-exported here for stage and
router authors: ``from sipshield.routing import Decision`` keeps working.
"""

from sipshield.proxy import CONTINUE, DROP, Decision, RequestContext, Target
from sipshield.routing._pipeline import Pipeline
from sipshield.routing._plugins import StageFactory, available_stages, build_stages
from sipshield.routing._router import Router

__all__ = [
    "CONTINUE",
    "DROP",
    "Decision",
    "Pipeline",
    "RequestContext",
    "Router",
    "StageFactory",
    "Target",
    "available_stages",
    "build_stages",
]
