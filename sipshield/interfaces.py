"""Every zope Interface that sipshield plugins implement, in one place.

Implementations say ``@implementer(IThing)`` and tests check them with
``zope.interface.verify.verifyObject``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from sipshield.environment import StageEnvironment


class ILocationStore(Interface):
    """The location service (RFC 3261 10.2): address-of-record -> bindings.

    Every method returns a Deferred (stores may be remote: SQL, Redis).  Times
    are seconds on the service's IReactorTime (``reactor.seconds()``), so the
    in-memory store can be driven by task.Clock in tests.
    """

    def bindings(aor: str) -> Any:
        """Fire with the unexpired :class:`sipshield.state.Binding` list of
        ``aor`` (a normalised ``sip:user@domain`` string), highest q first;
        an unknown AOR gives an empty list."""

    def put(binding: Any) -> Any:
        """Add or replace the binding with the same (aor, contact) pair.
        Fires with None."""

    def remove(aor: str, contact: str) -> Any:
        """Remove one binding; fires with True if it existed."""

    def remove_all(aor: str) -> Any:
        """Remove every binding of ``aor`` (``Contact: *``); fires with the count removed."""

    def expire(now: float) -> Any:
        """Delete bindings whose ``expires_at`` <= ``now``; fires with the count removed."""

    def count() -> Any:
        """Fire with the number of bindings held (for metrics and leak tests)."""

    def count_for_identity(identity: str) -> Any:
        """Fire with the number of unexpired bindings whose ``identity`` is
        *identity*, across every AOR (the registrar's per-identity cap)."""

    def listing(limit: int) -> Any:
        """Fire with at most *limit* unexpired bindings of every AOR, by AOR
        then highest q first (the admin API's registrations)."""


class IPipelineStage(Interface):
    """One step of request handling (see sipshield.routing.pipeline).

    Like a twisted.names resolver in a chain, a stage either settles the
    request (reply, relay, drop) or passes it on (``CONTINUE``).
    """

    name = Attribute("Short name used in [pipeline] stages and in logs.")

    def process(context: Any) -> Any:
        """Decide about ``context.request`` (a :class:`RequestContext`).

        Returns a :class:`sipshield.routing.Decision`, or a Deferred firing
        with one.  Stages on the hot path should answer synchronously.
        Raising is a bug: the pipeline logs it and answers 500.
        """


class IStageFactory(Interface):
    """A twisted.plugin (found with getPlugins in sipshield.plugins and the
    packages named in ``[server] plugins``) that builds a pipeline stage."""

    name = Attribute("The name used in ``[pipeline] stages``.")
    description = Attribute("One line for `sipshield plugins` and errors listing known stages.")

    def build(environment: StageEnvironment, options: dict[str, Any]) -> IPipelineStage:
        """Build the stage from the typed ``environment`` of the service
        (sipshield.environment.StageEnvironment: reactor, config, location
        store, ``is_local``, ``routed_by_us``, the security event sink, the
        auth parts); ``options`` is the stage's own ``[stage.NAME]`` config
        table (may be empty).  Raise ConfigError on bad options."""


class ILocationStoreFactory(Interface):
    """A twisted.plugin that builds a location store from configuration."""

    name = Attribute("The name used in ``[registrar] store``.")

    def build(service: Any, options: dict[str, Any]) -> ILocationStore:
        """Build the store; raise ConfigError on bad options.

        Not used yet (the service builds the memory and SQL stores itself);
        when it is, it should get a typed environment as stages do, not the
        service."""


class IAdmissionStep(Interface):
    """A check the proxy core runs on every new request between parsing and
    the transaction layer, synchronously and before any state exists (the
    shield's scanner blocking and rate limits; the auth stage's challenge)."""

    name = Attribute("A short name for logs and configuration.")

    def admission(request: Any, flow: Any) -> Any:
        """None to admit the request to the next step; a reply Decision to
        answer it statelessly (once, within the amplification limit); a drop
        Decision to send nothing.  Must not block and must not raise."""


class IExplainable(Interface):
    """A pipeline stage that can say what it would decide about a request
    without deciding it (``sipshield explain``, sipshield/proxy/_explain.py)."""

    def explain(context: Any) -> Any:
        """What ``process(context)`` would decide and why: an
        :class:`sipshield.proxy._explain.Explanation` (or a Deferred firing
        with one), read from the same rule ``process`` applies.  *context* is
        an ``ExplainContext``; the stage may set on it what ``process`` would
        (roles, ``external``) for the stages after it.  Must change no state:
        no counter, bucket, nonce, ban, binding or event."""


class IExplainableAdmission(Interface):
    """An admission step that can say what it would decide (see IExplainable)."""

    def explain_admission(context: Any) -> Any:
        """What ``admission(context.request, context.flow)`` would decide and
        why, as an Explanation; changes no state."""
