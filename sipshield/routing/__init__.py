"""Routing: the pipeline, its decisions, built-in stages and the Router base class."""

from sipshield.routing._decision import CONTINUE, DROP, Decision, RequestContext, Target
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
