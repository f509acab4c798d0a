"""What a stage factory gets to build its stage: the typed parts of the
running service it may use, and nothing else (twisted.cred's Portal is
built from typed parts the same way)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.cred.portal import Portal
    from twisted.internet.interfaces import IReactorTime

    from sipshield.auth._downgrade import DowngradeLock
    from sipshield.auth._mtls import TrunkMap
    from sipshield.auth._nonce import NonceManager
    from sipshield.auth._setup import BearerSetup
    from sipshield.config import Config
    from sipshield.events import SecurityEvents
    from sipshield.interfaces import ILocationStore
    from sipshield.message import Request
    from sipshield.state import ShieldState
    from sipshield.transport import Flow

__all__ = ["StageEnvironment"]


@dataclass(frozen=True, slots=True)
class StageEnvironment:
    """The environment ``IStageFactory.build(environment, options)`` receives.

    Built once by the service, before it starts; the same one goes to every
    factory.  A stage keeps what it needs from it.
    """

    reactor: IReactorTime
    """The clock every timer and timestamp comes from (task.Clock in tests)."""
    config: Config
    """The whole validated configuration; a stage's own ``[stage.NAME]``
    table is the ``options`` passed beside this."""
    location: ILocationStore
    """The registrar's bindings (the location service)."""
    is_local: Callable[[str, int | None], bool]
    """``is_local(host, port)``: does sip:host:port name this proxy?"""
    routed_by_us: Callable[[Request, Flow], bool]
    """Does the request follow a route set this proxy record-routed (our
    token, valid for its dialog and source)?  The request is not changed."""
    events: SecurityEvents
    """The security event sink (``emit(SecurityEvent)``)."""
    portal: Portal
    """The twisted.cred Portal over the configured credential backends."""
    nonces: Callable[[], NonceManager]
    """The nonce manager; a callable because its secret is read from
    data_dir only when the service starts."""
    trunks: TrunkMap | None = None
    """``[auth] trunks`` (TLS client certificates), None when not configured."""
    bearer: BearerSetup | None = None
    """``[auth] bearer`` (RFC 8898 tokens), None when not configured."""
    shield: ShieldState | None = None
    """The shield's counters, buckets and bans (bounded; shared by the
    service's protections), for stages that count per user or source."""
    exempt_from_limits: Callable[[str, str], bool] | None = None
    """``exempt(host, transport)``: a source no rate limit applies to
    (``[ratelimit] allowlist``, the trusted sources over their transports)."""
    downgrade: DowngradeLock | None = None
    """The MD5 downgrade lock (its marks in the database, read in the auth
    thread pool); None leaves MD5 answers unguarded."""
