"""The routing pipeline: an ordered list of stages, each settling the request
or passing it on (twisted.names' resolver chain, with explicit Decisions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipshield.interfaces import IPipelineStage
from sipshield.message import ParseError
from sipshield.routing._decision import Decision, RequestContext

__all__ = ["Pipeline"]

_NOBODY = Decision.reply(404, "Not Found")


class Pipeline:
    """Run stages in order until one returns a final Decision.

    Synchronous stages cost one method call each; the pipeline switches to a
    Deferred only when a stage returns one.  A stage that raises is a bug:
    it is logged with its traceback and the request gets 500 (fail closed),
    except for a ParseError: a malformed header met late gets its 400.
    """

    log = Logger()

    def __init__(self, stages: Sequence[IPipelineStage], fallback: Decision = _NOBODY) -> None:
        self.stages = tuple(stages)
        self.fallback = fallback

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def run(self, context: RequestContext, start: int = 0) -> Decision | Deferred[Decision]:
        """Fire (or return) the first final Decision; the fallback if none settles it."""
        stages = self.stages
        for index in range(start, len(stages)):
            stage = stages[index]
            try:
                decision = stage.process(context)
            except Exception:
                return self._failed(Failure(), stage)
            if isinstance(decision, Deferred):
                return decision.addCallbacks(self._resumed, self._failed, callbackArgs=(context, index + 1), errbackArgs=(stage,))
            if decision.kind != "continue":
                return decision
        return self.fallback

    def _resumed(self, decision: Decision, context: RequestContext, next_index: int) -> Any:
        if decision.kind != "continue":
            return decision
        return self.run(context, next_index)

    def _failed(self, failure: Failure, stage: IPipelineStage) -> Decision:
        if failure.check(ParseError):
            # A header the stage parses on access is malformed: the request's
            # fault, not the stage's (400 with the reason, no traceback).
            error: ParseError = failure.value  # type: ignore[assignment]
            return Decision.reply(error.status, error.reason)
        self.log.failure("pipeline stage {stage} failed", failure, stage=getattr(stage, "name", repr(stage)))
        return Decision.reply(500, f"Internal error in stage {getattr(stage, 'name', '?')}")
