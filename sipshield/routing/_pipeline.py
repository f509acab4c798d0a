"""The routing pipeline: an ordered list of stages, each settling the request
or passing it on (twisted.names' resolver chain, with explicit Decisions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipshield.interfaces import IPipelineStage
from sipshield.message import ParseError
from sipshield.proxy import DROP, Decision, RequestContext

__all__ = ["Pipeline"]

_NOBODY = Decision.reply(404, "Not Found")


class Pipeline:
    """Run stages in order until one returns a final Decision.

    Synchronous stages cost one method call each; the pipeline switches to a
    Deferred only when a stage returns one.  A stage that raises is a bug:
    it is logged with its traceback and the request gets 500 (fail closed),
    except a ParseError (a header the stage was first to read is malformed),
    which is bad input and gets its 400 and reason.  With a *reactor*, a
    stage's Deferred has *stage_timeout* seconds to fire (``[limits]
    stage_timeout``); past it the Deferred is cancelled, one line is logged
    and the request gets 500, so no transaction waits on it for ever.

    With *refuse_source* (the service gives the core's, which asks the ban
    policy), a request whose stage answered later is dropped if its source
    was refused meanwhile: failures verified while this request waited for
    a credential backend may have banned it, and a right guess among a burst
    of wrong ones must then go no further (no binding, no answer).
    """

    log = Logger()

    def __init__(
        self, stages: Sequence[IPipelineStage], fallback: Decision = _NOBODY, reactor: IReactorTime | None = None, stage_timeout: float = 10.0,
        refuse_source: Callable[[str], bool] | None = None,
    ) -> None:
        self.refuse_source = refuse_source
        self.stages = tuple(stages)
        self.fallback = fallback
        self.reactor = reactor
        self.stage_timeout = stage_timeout

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
                if self.reactor is not None:
                    decision.addTimeout(self.stage_timeout, self.reactor)
                return decision.addCallbacks(self._resumed, self._failed, callbackArgs=(context, index + 1), errbackArgs=(stage,))
            if decision.kind != "continue":
                return decision
        return self.fallback

    def _resumed(self, decision: Decision, context: RequestContext, next_index: int) -> Any:
        refuse = self.refuse_source
        if refuse is not None and refuse(context.source[0]):
            return DROP
        if decision.kind != "continue":
            return decision
        return self.run(context, next_index)

    def _failed(self, failure: Failure, stage: IPipelineStage) -> Decision:
        name = getattr(stage, "name", "?")
        error = failure.value
        if isinstance(error, ParseError):
            return Decision.reply(error.status, error.reason)
        if isinstance(error, TimeoutError):
            self.log.warn("pipeline stage {stage} gave no decision within {timeout:g} s: 500", stage=name, timeout=self.stage_timeout)
            return Decision.reply(500, f"No decision in time from stage {name}")
        self.log.failure("pipeline stage {stage} failed", failure, stage=name)
        return Decision.reply(500, f"Internal error in stage {name}")
