"""Wiring: build the sipshield service tree from a Config.

``makeService(config)`` returns a MultiService that can run under twistd or be
added to any Twisted application.  Nothing here touches the network or the
disk until the service starts.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from sipshield.config import Config, ConfigError
from sipshield.environment import StageEnvironment
from sipshield.events import LogSecurityEvents, SecurityEventBus
from sipshield.proxy import ProxyCore
from sipshield.routing import Pipeline, build_stages
from sipshield.transaction import TimerSettings, TransactionLayer
from sipshield.transport import (
    ServerTLSContext,
    SIPListener,
    TLSMaterial,
    generate_self_signed,
    load_tls_material,
)
from sipshield.transport._dispatch import TransportDispatcher
from sipshield.transport._tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY

if TYPE_CHECKING:
    from sipshield.auth import SharedNonceCounts

__all__ = ["RELOADABLE", "SIPShieldService", "makeService"]

RELOADABLE = frozenset(("acl", "ratelimit", "scanners", "routes", "roles", "egress"))
"""The configuration sections a running service takes on without a restart."""
_REBUILT_STAGES = frozenset(("ratelimit", "rbac", "egress", "routes"))
"""The built-in stages built from those sections, rebuilt on reload."""


class SIPShieldService(MultiService):
    """The whole proxy: listeners, the transaction layer, the proxy core and
    its pipeline, the location store and its expiry loop.

    Attributes users' plugins may rely on: ``config``, ``reactor``, ``core``
    (``core.is_local(host, port)``), ``location`` (an ILocationStore),
    ``transactions``, ``pipeline``, ``events`` (the security event bus), ``bans``
    (the ban policy, None when ``[bans] enabled = false``), ``nft_bans`` (their
    nftables set, None unless ``[bans.nftables] enabled = true``), ``overload``
    (the overload shedding step, None with ``[limits] overload_lag = 0``; its
    ReactorLag monitor is a child service) and ``environment`` (the
    StageEnvironment every stage factory gets).
    """

    log = Logger()

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        timers = config.timers
        limits = config.limits
        self.core = ProxyCore(
            config.server.domains, reactor, timer_c=timers.timer_c, max_header_values=limits.max_header_values,
            max_transactions=limits.max_transactions, max_transactions_per_source=limits.max_transactions_per_source,
            resolve_timeout=limits.stage_timeout,
        )
        server = config.server
        self.dispatcher = TransportDispatcher(reactor, server.advertise or (server.domains[0] if server.domains else None))
        self.transactions = TransactionLayer(reactor, self.core, self.dispatcher, TimerSettings(timers.t1, timers.t2, timers.t4))
        self.core.dispatcher = self.dispatcher
        self.core.transactions = self.transactions
        self.location = self._make_location_store()
        self._make_auth()
        self.events = SecurityEventBus([LogSecurityEvents(reactor)])
        from sipshield.ops import LogOutputs

        self.log_outputs = LogOutputs(config.logging, reactor)
        """The ``[logging]`` outputs (JSON lines, syslog), the first child service."""
        self.log_outputs.setServiceParent(self)
        from sipshield.security import OverloadShedding, build_ban_policy, build_nft_ban_set, build_overload
        from sipshield.state import build_shield_state

        self.shield_state, state_service = build_shield_state(config, reactor)
        """The shield's ShieldState: in memory, or shared through Redis (``[state]``, docs/scaling.md)."""
        if state_service is not None:
            state_service.setServiceParent(self)
        self.bans = build_ban_policy(config, reactor, self.events, on_ban=self._banned, state=self.shield_state)
        if self.bans is not None:
            self.events.subscribe(self.bans)
            self.core.source_filter = self.bans.refuse_source
            getattr(self.shield_state, "listeners", []).append(self.bans)  # bans made on other nodes
        self.nft_bans = build_nft_ban_set(config.bans.nftables, reactor, self.bans)
        exempt = self._exempt_from_limits()
        self.environment = StageEnvironment(
            reactor=reactor, config=config, location=self.location, is_local=self.core.is_local, routed_by_us=self.core.routed_by_us,
            events=self.events, portal=self.portal, nonces=lambda: self.nonces, trunks=self.trunks, bearer=self.bearer,
            downgrade=self.downgrade, shield=self.shield_state, exempt_from_limits=exempt,
        )
        self.pipeline = Pipeline(
            build_stages(config.stages, self.environment, config.server.plugins, config.stage_options), reactor=reactor,
            stage_timeout=limits.stage_timeout, refuse_source=self.core.refuse_source,
        )
        self.core.pipeline = self.pipeline
        overload = build_overload(
            config, reactor, self.events, exempt, self.core.routed_by_us, lambda: self.core.counters["calls_started"], self._fullest_receive_queue,
            self._longest_receive_delay,
        )
        self.overload: OverloadShedding | None = None
        if overload is not None:
            self.overload, monitor = overload
            monitor.setServiceParent(self)
        self.core.events = self.core.sips.events = self.events
        self.core.admission = self._admission_steps(config, self.pipeline.stages, exempt)
        self.core.ack_checks = _ack_checks(self.pipeline.stages)
        self.tls_context: ServerTLSContext | None = None
        self.admin_tls_context: ServerTLSContext | None = None
        """``[admin.tls]``'s material (the admin API's HTTPS listener), loaded at start."""
        self._bans_loaded = False
        self.listeners: list[SIPListener] = []
        for lc in config.server.listen:
            listener = SIPListener(lc, self.core, config.limits, reactor, events=self.events)
            listener.setServiceParent(self)
            self.listeners.append(listener)
            self.dispatcher.add_listener(listener)
        self._started_at = reactor.seconds()
        self._previous_sighup: Any = None
        self.admin: Any = None
        """The admin API's listener service (None with ``[admin] enabled = false``)."""
        if config.admin.enabled:
            from sipshield.auth._setup import build_admin_clients
            from sipshield.ops import AdminService

            self._admin_clients = build_admin_clients(config)

            tls = None if config.admin.tls is None else (lambda: self.admin_tls_context)
            self.admin = AdminService(reactor, config.admin.host, config.admin.port, self._admin_resource, tls=tls,
                                      tls_port=config.admin.tls_port, tls_resource=lambda: self._admin_resource(certificates=True))
            self.admin.setServiceParent(self)
        from sipshield.ops import AlertEngine, build_notifiers

        self.alerts = AlertEngine(config.alerts, reactor, build_notifiers(config.alerts, reactor), certificate_not_after=self._certificate_not_after)
        """The ``[alerts]`` rules (sipshield/ops/_alerts.py): an observer of the events, and a child service;
        ``alerts.metrics`` (a MetricSource over the metrics registry) is what its ``metric`` rules read."""
        self.events.subscribe(self.alerts)
        self.alerts.setServiceParent(self)
        from sipshield.state import ExpiryLoop

        ExpiryLoop(self.location, reactor).setServiceParent(self)
        self.metrics = self._make_metrics()
        """The ``[metrics]`` HTTP service (None when disabled); ``metrics_registry`` is what it serves."""
        from sipshield.ops._metrics import RegistryMetricSource

        self.alerts.metrics = RegistryMetricSource(self.metrics_registry)  # what the alerts' metric rules read
        self.activity: Any = None
        """The admin API's rates and top talkers (sipshield/ops/_rates.py; None with ``[admin] enabled = false``)."""
        if config.admin.enabled:
            from sipshield.ops import ActivityMonitor, counter_readings

            self.activity = ActivityMonitor(
                reactor, lambda: counter_readings(self.metrics_registry.collect()), self.core.requests_from, self.event_tally.auth_failures_from,
                banned=self._banned_now,
            )
            self.activity.setServiceParent(self)

    def _make_metrics(self) -> Any:
        from sipshield.auth._stages import DigestAuthStage
        from sipshield.ops import MetricSources, MetricsService, SecurityEventTally, metrics_registry

        tally = self.event_tally = SecurityEventTally()
        self.events.subscribe(tally)
        metrics: MetricsService | None = None
        sources = MetricSources(
            core=self.core, events=tally, admission=lambda: self.core.admission, bans=self.bans,
            auth=lambda: next((stage for stage in self.pipeline.stages if isinstance(stage, DigestAuthStage)), None),
            stream_factories=lambda: [listener.factory for listener in self.listeners if listener.factory is not None],
            certificates=self._certificates, contacts=lambda: None if metrics is None else metrics.contacts,
            now=self.reactor.seconds,
        )
        self.metrics_registry = metrics_registry(sources)
        if not self.config.metrics.enabled:
            return None
        metrics = MetricsService(self.config.metrics, self.metrics_registry, self.reactor, self.location.count)
        metrics.setServiceParent(self)
        return metrics

    def _certificates(self) -> list[tuple[str, Any]]:
        """The served TLS certificate's file and notAfter (none before start or without TLS)."""
        if self.tls_context is None:
            return []
        tls = self.config.tls
        path = tls.certificate if tls.certificate is not None else self.config.server.data_dir / SELF_SIGNED_CERT
        return [(str(path), self.tls_context.material.certificate.not_valid_after_utc)]

    def _admission_steps(self, config: Config, stages: Sequence[Any], exempt: Callable[[str, str], bool]) -> tuple[Any, ...]:
        """``ProxyCore.admission`` for *config*: the overload shedding first
        (while overloaded what it sheds costs the least; otherwise one
        attribute test; kept across a reload, its refusal and exemptions
        following ``[ratelimit]``), the shield's cheap refusals next (ACL,
        scanners, rate limits), then the core's refusal of a sips: request that
        came in clear (RFC 5630), then the stages' (the auth stage's challenge)."""
        from sipshield.security import build_admission_steps, overload_refusal

        shield: tuple[Any, ...] = build_admission_steps(config, self.reactor, self.shield_state, self.events, self.bans, exempt)
        if self.overload is not None:
            self.overload.refusal, self.overload.exempt = overload_refusal(config), exempt
            shield = (self.overload, *shield)
        return shield + (self.core.sips,) + tuple(stage for stage in stages if callable(getattr(stage, "admission", None)))

    def _exempt_from_limits(self, config: Config | None = None) -> Callable[[str, str], bool]:
        """Not rate-limited: ``[ratelimit] allowlist`` on every transport, and
        the trusted sources on the transports they are trusted over (one
        matcher for both, with the auth stage's IPv4 fast path)."""
        from sipshield.auth._stages import SourceNetworks

        config = config or self.config

        networks = SourceNetworks(
            [(n, True) for n in config.ratelimit.allowlist] + [(t.network, t.udp) for t in config.auth.trusted_sources]
        )
        if not networks:
            return lambda host, transport: False

        def exempt(host: str, transport: str) -> bool:
            return any(udp or transport != "UDP" for udp in networks.matching(host))

        return exempt

    def _banned(self, key: str) -> None:
        """A source was just banned: its open connections go too (on the next
        turn, once the request that earned the ban has been handled)."""
        def close() -> None:
            for listener in self.listeners:
                if listener.factory is not None:
                    listener.factory.close_refused()

        self.reactor.callLater(0, close)

    def _make_auth(self) -> None:
        """Credential backends behind one Portal; their blocking calls run in
        a thread pool of their own.  The nonce secret is read at start."""
        from twisted.python.threadpool import ThreadPool

        from sipshield.auth import HtdigestUserStore
        from sipshield.auth._checkers import StoreChecker, make_portal
        from sipshield.auth._setup import sql_user_store

        auth = self.config.auth
        self.auth_pool = ThreadPool(minthreads=0, maxthreads=4, name="sipshield-auth")
        self.user_stores: list[Any] = []
        for backend in auth.backends:
            if backend == "sql":
                self.user_stores.append(sql_user_store(self.config))
            elif backend == "file" and auth.file is not None:
                self.user_stores.append(HtdigestUserStore(auth.file))
        from sipshield.auth._setup import build_bearer, build_ldap, build_trunks

        stores = iter(self.user_stores)
        self.ldap = build_ldap(self.config, self.reactor)
        checkers = [
            self.ldap if backend == "ldap" else StoreChecker(next(stores), self.reactor, self.auth_pool, auth.credential_cache)
            for backend in auth.backends
        ]
        self.portal = make_portal(checkers)  # in [auth] backends order
        self.nonces: Any = None
        self._route_secret_loaded = False

        self.trunks = build_trunks(self.config)
        self.bearer = build_bearer(self.config, self.reactor)
        from sipshield.auth._downgrade import DowngradeLock, DowngradeLockStore

        # In the user store's database, a table of its own: see auth/_downgrade.py.
        self.downgrade = DowngradeLock(DowngradeLockStore(self.config.database), self.reactor, self.auth_pool)

    def _prepare_auth(self) -> None:
        from sipshield.auth import NonceManager, load_or_create_secret
        from sipshield.auth._setup import load_nonce_secret

        if self.nonces is None:
            secret = load_nonce_secret(self.config)
            self.nonces = NonceManager(secret, self.reactor, lifetime=self.config.auth.nonce_lifetime, max_failures=self.config.auth.max_nonce_failures)
            self.nonces.shared = self._shared_nonce_counts()
        if not self._route_secret_loaded:
            # Keys the tokens in our Record-Route values (no open relay in
            # dialog); kept so that dialogs outlive a restart.
            from sipshield.proxy import RecordRouteSigner

            self.core.signer = RecordRouteSigner(load_or_create_secret(self.config.server.data_dir / "record-route.secret"))
            self._route_secret_loaded = True

    def _shared_nonce_counts(self) -> SharedNonceCounts | None:
        """With ``[state] backend = "redis"``: the nonce-counts every node sees, on
        the shield state's Redis connection (docs/scaling.md "Nonce counts")."""
        from sipshield.state import RedisNonceCounts, RedisShieldState

        state = self.shield_state
        if not isinstance(state, RedisShieldState):
            return None
        return RedisNonceCounts(self.reactor, state.link, prefix=state.prefix)

    def _make_location_store(self) -> Any:
        from sipshield.state import MemoryLocationStore, SQLLocationStore

        if self.config.registrar.store == "sql":
            return SQLLocationStore(self.config.database, self.reactor)
        if self.config.registrar.store == "redis":
            from sipshield.state._redis_location import redis_location_store

            return redis_location_store(self.config.state.redis_url, self.config.state.key_prefix, self.reactor)
        return MemoryLocationStore(self.reactor)

    def _prepare_data_dir(self) -> None:
        data_dir = self.config.server.data_dir
        if not data_dir.exists():
            data_dir.mkdir(parents=True, mode=0o700)
            self.log.info("created data directory {path}", path=str(data_dir))

    def _prepare_tls(self) -> None:
        if self.admin is not None and self.config.admin.tls is not None and self.admin_tls_context is None:
            self.admin_tls_context = self._admin_tls_context()  # before anything listens: a file that does not load stops the start
        if not any(lc.kind == "tls" for lc in self.config.server.listen):
            return
        cfg = self.config
        material = load_tls_material(cfg.tls, cfg.server.data_dir, source=cfg.source)
        if material is None:
            names = list(cfg.server.domains) + ["localhost"]
            names += sorted({lc.interface for lc in cfg.server.listen if lc.interface not in ("0.0.0.0", "::")})
            cert_path = cfg.server.data_dir / SELF_SIGNED_CERT
            key_path = cfg.server.data_dir / SELF_SIGNED_KEY
            generate_self_signed(cert_path, key_path, names)
            self.log.info("generated a self-signed TLS certificate {path} for {names}", path=str(cert_path), names=", ".join(names))
            material = load_tls_material(cfg.tls, cfg.server.data_dir, source=cfg.source)
        self.tls_context = ServerTLSContext(material) if material is not None else None
        for listener in self.listeners:
            if listener.config.kind == "tls":
                listener.tls_context = self.tls_context

    def _prepare_bans(self) -> None:
        if self.bans is not None and not self._bans_loaded:
            self._bans_loaded = True
            kept = self.bans.load()
            if kept:
                self.log.info("bans: {count} ban(s) of the last run still in force", count=kept)

    def privilegedStartService(self) -> None:
        # twistd calls this (an embedding host or a test calling startService
        # alone keeps its own signal handlers): SIGHUP reloads the config file.
        if self.config.source is not None and self._previous_sighup is None:
            self._previous_sighup = signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self._sighup))
        self._prepare_data_dir()
        self._prepare_auth()
        self._prepare_bans()
        self._prepare_tls()
        super().privilegedStartService()
        for listener in self.listeners:
            if listener.port is not None:
                self.core.add_local_address(*listener.address)

    def startService(self) -> None:
        self._started_at = self.reactor.seconds()
        self.log_outputs.open()  # before the start-up lines below
        for label, text in self.config.posture():
            self.log.info("{label}: {text}", label=label, text=text)
        for warning in self.config.warnings():
            self.log.warn("unsafe configuration: {warning}", warning=warning)
        if not self.listeners or self.listeners[0].port is None:
            # Started without privilegedStartService (some embedding hosts do).
            self._prepare_data_dir()
            self._prepare_auth()
            self._prepare_bans()
            self._prepare_tls()
        # The location store and the user stores share one SQLite file by
        # default: each creates its tables only once the one before it has,
        # so start-up never has two schema writers at once.
        start = getattr(self.location, "start", None)
        ready: Deferred[None] = defer.succeed(None)
        if start is not None:
            # The SQL store opens its engine and thread pool; until it has,
            # REGISTERs get 503 (fail closed) rather than waiting.
            ready = start()
            ready.addCallback(lambda _: self.log.info("location store ready: {store}", store=type(self.location).__name__))
            ready.addErrback(lambda f: self.log.failure("location store failed to start", f))
        self.auth_pool.start()
        for store in self.user_stores:
            create = getattr(store, "create_schema", None)
            if create is not None:
                ready.addCallback(self._create_schema, create)
                ready.addErrback(lambda f: self.log.error("user store unavailable: {why}", why=f.getErrorMessage()))
            if getattr(store, "key_usage", None) is not None:
                ready.addCallback(self._migrate_credentials, store)
        ready.addCallback(self._create_schema, self.downgrade.store.create_schema)
        ready.addErrback(lambda f: self.log.error(
            "MD5 downgrade lock unavailable: {why}; MD5 answers get 503 until it can be read", why=f.getErrorMessage()))
        ready.addCallback(self._report_users)
        if self.metrics is not None:
            ready.addCallback(lambda _: self.metrics.refresh())
        self.schema_ready = ready  # fires once every store has its tables (or has logged why not)
        super().startService()
        for listener in self.listeners:
            self.core.add_local_address(*listener.address)
        self._start_nft_bans()

    def _start_nft_bans(self) -> None:
        """The kernel's copy of the bans, for the ports the listeners got."""
        if self.nft_bans is None:
            return
        from sipshield.security import NftPorts

        udp: list[int] = []
        tcp: list[int] = []
        for listener in self.listeners:
            if listener.port is None:
                continue
            (udp if listener.config.kind == "udp" else tcp).append(listener.address[1])
            if listener.own_port is not None:
                # A worker: every worker's own port, not only this one's (each
                # worker writes the table; the last one's rules are the ones in force).
                if listener.config.port:
                    udp.extend(listener.config.own_port(k) for k in range(self.config.server.workers))
                else:  # an ephemeral listener (tests): the other workers' own ports are not known here
                    udp.append(listener.own_address[1])
        ports = NftPorts(udp=tuple(udp), tcp=tuple(tcp))
        self.nft_bans.start(ports)
        self.log.info("bans: in the kernel too, nftables table inet {table} (sets {set4}, {set6}; UDP ports {udp}, TCP ports {tcp})",
                      table=self.nft_bans.config.table, set4=self.nft_bans.config.set4, set6=self.nft_bans.config.set6,
                      udp=" ".join(map(str, ports.udp)) or "none", tcp=" ".join(map(str, ports.tcp)) or "none")

    # -- the admin API ----------------------------------------------------------------------

    def _admin_resource(self, certificates: bool = False) -> Any:
        """The admin API's resource tree behind its Portal, built when its
        listener starts (the local token is read or made then); the HTTPS
        listener's (*certificates*) takes ``[[admin.clients]]`` certificates too."""
        from sipshield.ops import AdminBackend, admin_resource, load_or_create_token

        config = self.config
        token = load_or_create_token(config.server.data_dir / "admin.token")
        backend = AdminBackend(
            bans=self.bans, location=self.location, status=self.status, seconds=self.reactor.seconds,
            reload_tls=self.reload_tls if self.tls_context is not None or self.admin_tls_context is not None else None, reload=lambda: self._reload_logged("admin API reload"),
            activity=self.activity,
            explain=self.explain,
        )
        clients = self._admin_clients  # [admin] needs a restart: fixed for the service's life

        def permissions(name: str) -> frozenset[str]:
            roles: Sequence[str] = ()
            if name == "local":
                roles = (config.admin.token_role,)
            elif name.startswith("cert:"):
                roles = clients.get(name[5:], ())
            return frozenset(permission for role in roles for permission in self.config.roles.get(role, ()))  # [roles] reloads

        return admin_resource(backend, {"local": token}, permissions, certificates=list(clients) if certificates else None)

    def _admin_tls_context(self) -> ServerTLSContext:
        """``[admin.tls]``'s material, for the API's HTTPS listener."""
        return ServerTLSContext(self._admin_tls_material())

    def _admin_tls_material(self) -> Any:
        """``[admin.tls]``'s files, read (at start, and by :meth:`reload_tls`);
        a file that does not load is a ConfigError naming its ``admin.tls`` key."""
        cfg = self.config
        tls = cfg.admin.tls
        material = None if tls is None else load_tls_material(tls, cfg.server.data_dir, source=cfg.source, section="admin.tls")
        if material is None:
            raise ConfigError("no certificate to load", key="admin.tls.certificate", source=cfg.source)
        return material

    def _banned_now(self) -> Callable[[str], bool]:
        """Whether a host is banned now, asked without counting a drop (the top talkers' ``banned``)."""
        if self.bans is None:
            return lambda host: False
        bans = self.bans
        keys = {ban.key for ban in bans.bans()}
        return lambda host: host in keys or bans.key(host) in keys

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` and ``sipshield status`` show."""
        from sipshield import __version__

        listeners = [{"transport": lc.kind, "host": host, "port": port} for lc, (host, port) in
                     ((listener.config, listener.address) for listener in self.listeners)]
        live, _ = self.transactions.server_load("")
        return {
            "version": __version__, "uptime": round(self.reactor.seconds() - self._started_at, 3), "listeners": listeners,
            "server_transactions": live, "proxied_requests": len(self.core.contexts),
            "bans": 0 if self.bans is None else len(self.bans.bans()), "counters": dict(self.core.counters),
        }

    def explain(self, request_line: str, source: str, user: str | None = None, headers: Sequence[str] = ()) -> Deferred[dict[str, Any]]:
        """What ``POST /v1/explain`` and ``sipshield explain`` show: which step
        of the live admission steps and pipeline would decide what about the
        request *request_line* from *source* (``udp 203.0.113.5:5060``),
        taken as authenticated as *user* (``alice`` or ``alice@domain``,
        with the roles the user stores hold) when given; changes nothing
        (sipshield/proxy/_explain.py).  Raises ValueError, with what is
        wrong, for a request line, source or header it cannot use."""
        from sipshield.message import ParseError
        from sipshield.proxy._explain import ExplainContext, ExplainFlow, explain_request, outcome, parse_source, synthetic_request
        from sipshield.proxy._forward import apply_route_set, route_set

        transport, host, port = parse_source(source)
        local = next((listener.address if listener.port is not None else (listener.config.interface, listener.config.port)
                      for listener in self.listeners if listener.config.kind == transport), ("0.0.0.0", 5060))
        flow = ExplainFlow((host, port), transport, local)
        domains = self.config.server.domains
        assumed: tuple[str, str] | None = None
        if user is not None:
            name, _, domain = user.partition("@")
            if not name or any(c in user for c in ' \t\r\n\0<>"') or len(user) > 256:
                raise ValueError("user: a user name, or user@domain")
            assumed = (name, (domain or (domains[0] if domains else "localhost")).lower())
        from_uri = f"sip:{assumed[0]}@{assumed[1]}" if assumed else f"sip:anonymous@{domains[0] if domains else 'localhost'}"
        request = synthetic_request(request_line, flow, from_uri, headers)
        if request.method in ("ACK", "CANCEL"):
            raise ValueError(f"request: a {request.method} is not admitted as a new request (it follows the INVITE it belongs to)")
        try:
            routed = apply_route_set(request, route_set(request, self.core.is_local, self.core.signer, host))
        except ParseError as e:
            raise ValueError(f"request: {e.reason}") from None
        source_text = f"{transport} [{host}]:{port}" if ":" in host else f"{transport} {host}:{port}"

        async def walk() -> dict[str, Any]:
            roles: tuple[str, ...] = ()
            note = ""
            if assumed is not None:
                from sipshield.auth._checkers import BackendUnavailable
                from sipshield.auth._credentials import ISIPDigestCredentials

                chain: Any = self.portal.checkers[ISIPDigestCredentials]  # the ChainedChecker of make_portal
                lookup = chain.roles_of(*assumed)
                try:
                    where, found = await lookup.addTimeout(self.config.limits.stage_timeout, self.reactor)
                except (BackendUnavailable, defer.TimeoutError) as e:  # a store that is down: explained, not a 500
                    found, note = None, f"the user stores did not answer ({e or 'timeout'}): no roles assumed"
                else:
                    note = f"roles from {where}" if found is not None else f"{assumed[0]}@{assumed[1]} {where} in the user stores: no roles"
                roles = found or ()
            context = ExplainContext(
                request, flow, now=self.reactor.seconds(), route_set=routed, assumed_user=assumed, assumed_roles=frozenset(roles), assumed_note=note,
            )
            steps = await explain_request(
                context, self.core.admission, self.pipeline.stages, fallback=self.pipeline.fallback, caps=self.core.explain_caps,
                source_check=None if self.bans is None else self.bans.explain_source,
            )
            return {
                "request": request_line, "source": source_text, "user": None if assumed is None else f"{assumed[0]}@{assumed[1]}",
                "steps": [step.to_json() for step in steps], "outcome": outcome(steps),
            }

        return defer.ensureDeferred(walk())

    def reload(self, config: Config) -> list[str]:
        """Apply the reloadable sections of *config* (see :data:`RELOADABLE`)
        to the running service; the sections that changed.

        Raises ConfigError, changing nothing, when a section that needs a
        restart differs.  The admission steps are rebuilt (their token
        buckets and failure windows live in the shared ShieldState, so they
        carry over; the scanner filter's table of users probed starts
        again; the overload shedding keeps its state), and so are the
        ``ratelimit``, ``rbac``, ``egress`` and ``routes`` stages,
        in their places: a request already in the pipeline finishes with
        the stages it started with, the next one gets the new ones.
        """
        from dataclasses import fields, replace

        from sipshield.routing import available_stages

        changed = [f.name for f in fields(Config) if f.name != "source" and getattr(self.config, f.name) != getattr(config, f.name)]
        fixed = [name for name in changed if name not in RELOADABLE]
        if fixed:
            raise ConfigError(f"changing {', '.join(fixed)} needs a restart; nothing was reloaded", source=config.source)
        if not changed:
            return []
        exempt = self._exempt_from_limits(config)
        environment = replace(self.environment, config=config, exempt_from_limits=exempt)
        factories = available_stages(config.server.plugins)
        stages = tuple(
            factories[stage.name].build(environment, dict(config.stage_options.get(stage.name, {})))
            if stage.name in _REBUILT_STAGES and stage.name in factories else stage
            for stage in self.pipeline.stages
        )
        self.config = config
        self.environment = environment
        admission = self._admission_steps(config, stages, exempt)
        self.pipeline.stages = stages
        self.core.admission = admission
        self.core.ack_checks = _ack_checks(stages)
        self.log.info("configuration reloaded: {sections}", sections=", ".join(changed))
        return changed

    def reload_from_file(self) -> dict[str, Any]:
        """``SIGHUP``, ``POST /v1/reload``, ``sipshield reload``: read the
        configuration file again, apply its reloadable sections and the TLS
        files; what was reloaded.  Raises ConfigError (logged by the caller),
        keeping everything as it was, when the file is bad or asks for what
        needs a restart."""
        from sipshield.config import load_config

        if self.config.source is None:
            raise ConfigError("started without a configuration file (--config): nothing to reload")
        config = load_config(self.config.source)
        # The TLS files are read before any section is applied, so a bad
        # certificate leaves the sections as they were too.
        loaded = self._load_tls() if self.tls_context is not None or self.admin_tls_context is not None else None
        sections = self.reload(config)
        tls = self._serve_tls(loaded) if loaded is not None else None
        return {"reloaded": sections, "tls": tls}

    def _fullest_receive_queue(self) -> float | None:
        """The share in use of the fullest UDP listener's receive buffer (None: none known)."""
        return max((share for share in (listener.receive_queue() for listener in self.listeners) if share is not None), default=None)

    def _longest_receive_delay(self) -> float | None:
        """How long the first datagram read since the last call waited in a UDP listener's buffer, the longest (None: none read)."""
        return max((delay for delay in (listener.receive_delay() for listener in self.listeners) if delay is not None), default=None)

    def _sighup(self) -> None:
        try:
            self._reload_logged("SIGHUP")
        except ConfigError:
            return

    def _reload_logged(self, by: str) -> dict[str, Any]:
        """:meth:`reload_from_file`, its outcome logged (refused: an error naming
        why, and the ConfigError raised on to the caller)."""
        try:
            done = self.reload_from_file()
        except ConfigError as e:
            self.log.error("{by}: configuration not reloaded, the running one kept: {error}", by=by, error=str(e))
            raise
        self.log.info("{by}: reloaded {sections}", by=by, sections=", ".join(done["reloaded"]) or "no section (none changed)")
        return done

    def reload_tls(self) -> dict[str, Any]:
        """Read the TLS certificate and key files again, the SIP listeners'
        (``[tls]``) and the admin API's (``[admin.tls]``), and serve them on new
        handshakes (connections already up keep theirs); what the SIP listeners
        serve now (the admin API's without SIP TLS).  Raises ConfigError,
        keeping all the material in use, when any of the new files do not load
        (a key that does not match its certificate, a broken PEM): logged, as
        ``POST /v1/tls/reload`` answers it with 409."""
        try:
            loaded = self._load_tls()
        except ConfigError as e:
            self.log.error("TLS certificate not reloaded, the one in use kept: {error}", error=str(e))
            raise
        return self._serve_tls(loaded)

    def _load_tls(self) -> tuple[TLSMaterial | None, TLSMaterial | None]:
        """The SIP listeners' and the admin API's TLS files read and checked
        again, not served yet (both loaded before either is swapped);
        ConfigError when any of them do not load."""
        cfg = self.config
        material = None
        if self.tls_context is not None:
            material = load_tls_material(cfg.tls, cfg.server.data_dir, source=cfg.source)
            if material is None:
                raise ConfigError("no certificate to load", key="tls.certificate", source=cfg.source)
        admin = None if self.admin_tls_context is None else self._admin_tls_material()
        if material is None and admin is None:
            raise ConfigError("no certificate to load", key="tls.certificate", source=cfg.source)
        return material, admin

    def _serve_tls(self, loaded: tuple[TLSMaterial | None, TLSMaterial | None]) -> dict[str, Any]:
        """The material :meth:`_load_tls` read, on every new handshake from now on; what the SIP listeners serve."""
        material, admin = loaded
        if material is not None and self.tls_context is not None:
            self.tls_context.reload(material)
        if admin is not None and self.admin_tls_context is not None:
            self.admin_tls_context.reload(admin)
            served = admin.certificate
            self.log.info("admin API TLS certificate reloaded: {subject}, valid until {not_after}",
                          subject=served.subject.rfc4514_string(), not_after=served.not_valid_after_utc.isoformat())
        shown = material if material is not None else admin
        if shown is None:
            raise ConfigError("no certificate to load", key="tls.certificate", source=self.config.source)
        certificate = shown.certificate
        info = {"subject": certificate.subject.rfc4514_string(), "not_after": certificate.not_valid_after_utc.isoformat()}
        if material is not None:
            self.log.info("TLS certificate reloaded: {subject}, valid until {not_after}", **info)
            self.alerts.check("certificate_expiry")
        return info

    def _certificate_not_after(self) -> float | None:
        """When the certificate served on new TLS handshakes expires (POSIX seconds), None without TLS."""
        if self.tls_context is None:
            return None
        return float(self.tls_context.material.certificate.not_valid_after_utc.timestamp())

    def _create_schema(self, _: object, create: Callable[[], None]) -> Deferred[None]:
        return deferToThreadPool(self.reactor, self.auth_pool, create)

    def _migrate_credentials(self, _: object, store: Any) -> Deferred[None]:
        """A database from before HA1 encryption: its plain-text values are
        encrypted now, once, before the user report (which then has none to
        warn about).  A failure is logged; the values stay readable as they were."""
        from sipshield.auth._setup import migrate_at_start

        def logged(lines: list[str]) -> None:
            for line in lines:
                self.log.info("credentials encrypted at rest: {line}", line=line)

        d = deferToThreadPool(self.reactor, self.auth_pool, migrate_at_start, store)
        done: Deferred[None] = d.addCallback(logged)
        done.addErrback(lambda f: self.log.error("credentials: the plain-text HA1 values could not be encrypted: {why}", why=f.getErrorMessage()))
        return done

    def _report_users(self, _: object) -> Deferred[None]:
        """Log how many users each store holds, and warn about users who
        lack credentials for an enabled algorithm (with the fix)."""
        from sipshield.auth._setup import user_report

        stores = iter(self.user_stores)
        pairs = [(backend, None if backend == "ldap" else next(stores)) for backend in self.config.auth.backends]
        d = deferToThreadPool(self.reactor, self.auth_pool, user_report, self.config, pairs)

        def logged(report: tuple[list[str], list[str]]) -> None:
            lines, warnings = report
            for line in lines:
                self.log.info("users: {line}", line=line)
            for warning in warnings:
                self.log.warn("users: {warning}", warning=warning)

        done: Deferred[None] = d.addCallback(logged)
        done.addErrback(lambda f: self.log.error("users: cannot count them: {why}", why=f.getErrorMessage()))
        return done

    def stopService(self) -> Any:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        self.transactions.stop()
        for rc in list(self.core.contexts.values()):
            rc.stop()
        self.core.contexts.clear()
        if self.bans is not None:
            self.bans.save()
        if self.nft_bans is not None:
            self.nft_bans.stop()
        stopped = super().stopService()
        stopped.addCallback(lambda _: self._stop_auth())
        stop = getattr(self.location, "stop", None)
        if stop is not None:
            stopped.addCallback(lambda _: stop())
        return stopped

    def _stop_auth(self) -> None:
        self.auth_pool.stop()
        self.downgrade.store.close()
        if self.ldap is not None:
            self.ldap.close()
        for store in self.user_stores:
            close = getattr(store, "close", None)
            if close is not None:
                close()

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Bound address of each listener, keyed by kind (first of each kind)."""
        found: dict[str, tuple[str, int]] = {}
        for listener in self.listeners:
            if listener.port is not None:
                found.setdefault(listener.config.kind, listener.address)
        return found


def _ack_checks(stages: Iterable[Any]) -> tuple[Any, ...]:
    """``ProxyCore.ack_checks``: each stage's ``check_ack`` (an AckCheck), in pipeline order."""
    return tuple(stage.check_ack for stage in stages if callable(getattr(stage, "check_ack", None)))


def makeService(config: Config, reactor: Any = None) -> SIPShieldService:
    """Build the sipshield service for ``config`` (an IService / MultiService)."""
    return SIPShieldService(config, reactor)

