"""Configuration: TOML in, plain typed objects out.

The file is read once, validated completely and turned into frozen
dataclasses that are passed down to the services that need them.  Nothing
below this module reads the environment or the file again.  Every error is a
:class:`ConfigError` whose message names the file and the key at fault, so an
operator sees one clear line instead of a traceback.

Each section has its own parser, ``_server`` for ``[server]`` and so on,
placed right after the dataclass it builds; :func:`parse_config` calls them in
order and keeps only the checks that span sections.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "AlertRuleConfig",
    "AlertsConfig",
    "AlgorithmProfile",
    "EmailNotifierConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "ListenerConfig",
    "NftablesConfig",
    "ServerConfig",
    "TLSConfig",
    "TrustedSource",
    "WebhookNotifierConfig",
    "default_config",
    "load_config",
    "parse_config",
    "parse_listener",
]

DEFAULT_DATA_DIR = "./sipshield-data"
DEFAULT_LISTEN = (
    "udp:5060:interface=127.0.0.1",
    "tcp:5060:interface=127.0.0.1",
    "tls:5061:interface=127.0.0.1",
)
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
LISTENER_KINDS = ("udp", "tcp", "tls")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and file."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        self.key = key
        self.source = source
        prefix = "".join(f"{part}: " for part in (source, key) if part)
        super().__init__(f"{prefix}{message}")


class _Section:
    """Reads typed keys out of one TOML table and refuses unknown ones."""

    def __init__(self, name: str, table: Any, source: str | None) -> None:
        if not isinstance(table, dict):
            raise ConfigError("must be a table", key=name, source=source)
        self.name = name
        self.table = dict(table)
        self.source = source

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=f"{self.name}.{key}", source=self.source)

    def take(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.table:
            return default
        value = self.table.pop(key)
        # bool is an int subclass; a boolean is never a valid number here.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(key, f"expected {_type_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {_type_name(kind)}, got {type(value).__name__} {value!r}")
        return value

    def take_str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.take(key, list, None)
        if value is None:
            return default
        for item in value:
            if not isinstance(item, str):
                raise self.error(key, f"expected a list of strings, found {item!r}")
        return tuple(value)

    def take_number(self, key: str, default: float, minimum: float, maximum: float, integer: bool) -> Any:
        value = self.take(key, int if integer else (int, float), default)
        if not minimum <= value <= maximum:
            raise self.error(key, f"{value} is out of range ({minimum}..{maximum})")
        return value

    def finish(self) -> None:
        if self.table:
            unknown = ", ".join(sorted(self.table))
            raise ConfigError(f"unknown key(s): {unknown}", key=self.name, source=self.source)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", bool: "a boolean", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _path(section: _Section, key: str, default: str | None, base: Path) -> Path | None:
    """A path setting of *section*: ``~`` expanded, relative to *base*."""
    value = section.take(key, str, default)
    if value is None:
        return None
    if not value:
        raise section.error(key, "must not be empty")
    return _resolve(value, base)


def _resolve(value: str, base: Path) -> Path:
    """*value* with ``~`` expanded; relative to *base* (the config file's
    directory, or the working directory when there is no file)."""
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)


def _networks(section: _Section, key: str) -> tuple[str, ...]:
    """A list of CIDR networks (IPv4 or IPv6), each checked."""
    networks = section.take_str_list(key, ())
    for index, network in enumerate(networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise section.error(f"{key}[{index}]", f"{network!r} is not an address or network") from None
    return networks


@dataclass(frozen=True)
class ListenerConfig:
    """One listening socket: ``udp``, ``tcp`` or ``tls`` on an interface and port."""

    kind: str
    port: int
    interface: str = "127.0.0.1"

    @property
    def description(self) -> str:
        host = f"[{self.interface}]" if ":" in self.interface else self.interface
        return f"{self.kind}:{host}:{self.port}"

    def own_port(self, worker: int) -> int:
        """The UDP port of worker *worker*'s own for this listener (``[server]
        workers``, sipshield/workers.py): P + 1 + K, 0 (ephemeral) for port 0."""
        return self.port + 1 + worker if self.port else 0


def _split_unescaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` except where backslash-escaped (Twisted endpoint-string style)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current.append(nxt)
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_listener(description: str) -> ListenerConfig:
    """Parse ``KIND:PORT[:interface=ADDR]`` (Twisted's endpoint-string style).

    ``KIND`` is ``udp``, ``tcp`` or ``tls``; colons inside an IPv6 address are
    escaped with a backslash (``interface=\\:\\:1``).  Raises ValueError.
    """
    parts = _split_unescaped(description, ":")
    kind = parts[0].strip().lower()
    if kind not in LISTENER_KINDS:
        raise ValueError(f"unknown listener kind {parts[0]!r} in {description!r} (use udp, tcp or tls)")
    port: int | None = None
    interface = "127.0.0.1"
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq:
            if port is not None:
                raise ValueError(f"more than one port in {description!r}")
            key, value = "port", key
        key = key.strip()
        if key == "port":
            try:
                port = int(value)
            except ValueError:
                raise ValueError(f"port {value!r} is not a number in {description!r}") from None
            if not 0 <= port <= 65535:
                raise ValueError(f"port {port} out of range in {description!r}")
        elif key == "interface":
            interface = value.strip().strip("[]")
            try:
                ipaddress.ip_address(interface)
            except ValueError:
                raise ValueError(f"interface {value!r} is not an IP address in {description!r}") from None
        else:
            raise ValueError(f"unknown listener option {key!r} in {description!r} (known: port, interface)")
    if port is None:
        raise ValueError(f"no port in {description!r}")
    return ListenerConfig(kind=kind, port=port, interface=interface)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    listen: tuple[ListenerConfig, ...] = ()
    domains: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    advertise: str | None = None
    """Host put in Via and Record-Route for listeners bound to 0.0.0.0 or ::
    (default: the first domain)."""
    workers: int = 1
    """Worker processes sharing the listeners (SO_REUSEPORT, sipshield/workers.py);
    1 runs the proxy in the twistd process itself, as always."""
    worker: int | None = None
    """Which of the workers this process is (set by the supervisor's
    ``worker_config``, never read from the file): None in a single process."""


def _server(data: Any, source: str | None, base: Path) -> ServerConfig:
    """``[server]``."""
    s = _Section("server", data, source)
    data_dir = _path(s, "data_dir", DEFAULT_DATA_DIR, base) or Path(DEFAULT_DATA_DIR)
    listen_raw = s.take_str_list("listen", DEFAULT_LISTEN)
    listeners = []
    for item in listen_raw:
        try:
            listeners.append(parse_listener(item))
        except ValueError as e:
            raise s.error("listen", str(e)) from None
    if not listeners:
        raise s.error("listen", "at least one listener is needed")
    seen = set()
    for lc in listeners:
        ident = (lc.kind, lc.interface, lc.port)
        if lc.port and ident in seen:
            raise s.error("listen", f"{lc.description} is listed twice")
        seen.add(ident)
    domains = tuple(d.lower() for d in s.take_str_list("domains", ()))
    for d in domains:
        if not d or any(c in d for c in " ;:@<>/"):
            raise s.error("domains", f"{d!r} is not a domain name")
    plugins = s.take_str_list("plugins", ())
    advertise = s.take("advertise", str, None)
    if advertise is not None and (not advertise or any(c in advertise for c in " ;@<>/")):
        raise s.error("advertise", f"{advertise!r} is not a host name or address")
    workers = _workers(s, listeners)
    s.finish()
    if advertise is None and any(lc.interface in ("0.0.0.0", "::") for lc in listeners) and not domains:
        raise s.error("advertise", "listeners on 0.0.0.0 or :: need [server] advertise (or domains) for Via and Record-Route")
    return ServerConfig(data_dir=data_dir, listen=tuple(listeners), domains=domains, plugins=plugins, advertise=advertise, workers=workers)


MAX_WORKERS = 256


def _workers(s: _Section, listeners: list[ListenerConfig]) -> int:
    """``[server] workers``: an integer 1..MAX_WORKERS or ``"auto"`` (the
    number of cores).  With more than one, worker K of a UDP listener on a
    fixed port P also binds P + 1 + K (its own port, in its Via and
    Record-Route): those ports must not be another UDP listener's."""
    value = s.take("workers", (int, str), 1)
    if isinstance(value, str):
        if value != "auto":
            raise s.error("workers", f"expected an integer or \"auto\", got {value!r}")
        value = os.cpu_count() or 1
    if not 1 <= value <= MAX_WORKERS:
        raise s.error("workers", f"{value} is out of range (1..{MAX_WORKERS})")
    if value > 1:
        udp = {(lc.interface, lc.port): lc for lc in listeners if lc.kind == "udp"}
        for lc in udp.values():
            if not lc.port:
                continue  # ephemeral worker ports
            last = lc.port + value
            if last > 65535:
                raise s.error("workers", f"{value} workers need UDP ports {lc.port + 1}..{last} next to {lc.description}: past 65535")
            for other in udp.values():
                if other is not lc and other.interface == lc.interface and lc.port < other.port <= last:
                    raise s.error("workers", f"{value} workers need UDP ports {lc.port + 1}..{last} next to {lc.description}, "
                                  f"which holds {other.description}")
    return int(value)


@dataclass(frozen=True)
class TLSConfig:
    """TLS material.  With neither certificate nor private_key, a self-signed
    pair is generated in the data directory on first start."""

    certificate: Path | None = None
    private_key: Path | None = None
    client_ca: Path | None = None
    minimum_version: str = "TLSv1.2"
    maximum_version: str | None = None


def _tls(data: Any, source: str | None, base: Path, name: str = "tls") -> TLSConfig:
    """``[tls]`` (and ``[admin.tls]``, the same keys: *name* is the section errors name)."""
    t = _Section(name, data, source)
    certificate = _path(t, "certificate", None, base)
    private_key = _path(t, "private_key", None, base)
    client_ca = _path(t, "client_ca", None, base)
    minimum_version = t.take("minimum_version", str, "TLSv1.2")
    if minimum_version not in TLS_VERSIONS:
        raise t.error("minimum_version", f"{minimum_version!r} is not one of {', '.join(TLS_VERSIONS)}")
    maximum_version = t.take("maximum_version", str, None)
    if maximum_version is not None:
        if maximum_version not in TLS_VERSIONS:
            raise t.error("maximum_version", f"{maximum_version!r} is not one of {', '.join(TLS_VERSIONS)}")
        if TLS_VERSIONS.index(maximum_version) < TLS_VERSIONS.index(minimum_version):
            raise t.error("maximum_version", f"{maximum_version} is below minimum_version {minimum_version}")
    if (certificate is None) != (private_key is None):
        missing = "private_key" if private_key is None else "certificate"
        raise t.error(missing, "certificate and private_key must be given together")
    t.finish()
    return TLSConfig(
        certificate=certificate, private_key=private_key, client_ca=client_ca, minimum_version=minimum_version, maximum_version=maximum_version
    )


@dataclass(frozen=True)
class LimitsConfig:
    """Limits that protect the transports (RFC 3261 18.3 framing and beyond)."""

    max_message_bytes: int = 65535
    max_headers: int = 256
    max_header_values: int = 64
    """Values of one header name (lines and comma-separated values): above, 400."""
    idle_timeout: float = 300.0
    max_connections_per_source: int = 64
    max_connections: int = 10000
    udp_buffer_bytes: int = 4 * 1024 * 1024
    max_transactions: int = 100000
    """Live server transactions in all: above, a new request gets a
    stateless 503 with Retry-After.  One lives up to 64*T1 (32 s) after its
    answer over UDP, so this holds about 3000 new transactions a second
    (1500 calls/s)."""
    max_transactions_per_source: int = 1000
    """Live server transactions from one source IP (about 30 a second; a
    NAT of a few hundred phones): above, 503 as for max_transactions.
    Sources the auth stage vouches for at admission (trusted networks,
    trunk certificates, authenticated connections) are held to the global
    cap only."""
    stage_timeout: float = 10.0
    """Seconds a pipeline stage's Deferred (a credential backend, a store) or
    a next hop's DNS lookup may take: past it, 500 (or 503 on that branch)
    and the request's state is freed."""
    overload_lag: float = 0.05
    """Seconds the reactor may fall behind its timers, or a datagram wait in
    a UDP receive buffer before it is read (both measured every 0.1 s),
    before the proxy is overloaded and sheds new out-of-dialog requests by
    source, the busiest first, and admits new calls at a rate (0: never).
    Saturated, the reactor runs about 0.1 s behind (it reads 256 KB of
    datagrams at a time), while the kernel's buffer fills: 0.2 s was seen
    only once the buffer overflowed, too late to stop the retransmissions."""
    overload_recover: float = 5.0
    """Seconds the lag must stay below ``overload_lag`` to leave overload."""
    overload_queue: float = 0.25
    """Share of a UDP listener's receive buffer in use (the kernel's count,
    read every 0.1 s; Linux) above which the proxy is overloaded too, however
    little the reactor lags (0: not asked)."""
    overload_min_share: int = 20
    """While overloaded, a source may send this many new out-of-dialog
    requests a second (or its fair share, if larger) before it is shed."""


def _limits(data: Any, source: str | None) -> LimitsConfig:
    """``[limits]``."""
    lim = _Section("limits", data, source)
    limits = LimitsConfig(
        max_message_bytes=lim.take_number("max_message_bytes", 65535, 1024, 1 << 20, True),
        max_headers=lim.take_number("max_headers", 256, 16, 4096, True),
        max_header_values=lim.take_number("max_header_values", 64, 8, 4096, True),
        idle_timeout=float(lim.take_number("idle_timeout", 300.0, 1, 86400, False)),
        max_connections_per_source=lim.take_number("max_connections_per_source", 64, 1, 100000, True),
        max_connections=lim.take_number("max_connections", 10000, 1, 1000000, True),
        udp_buffer_bytes=lim.take_number("udp_buffer_bytes", 4 * 1024 * 1024, 65536, 1 << 30, True),
        max_transactions=lim.take_number("max_transactions", 100000, 1, 10_000_000, True),
        max_transactions_per_source=lim.take_number("max_transactions_per_source", 1000, 1, 10_000_000, True),
        stage_timeout=float(lim.take_number("stage_timeout", 10.0, 0.1, 600, False)),
        overload_lag=float(lim.take_number("overload_lag", 0.05, 0, 60, False)),
        overload_recover=float(lim.take_number("overload_recover", 5.0, 0.1, 3600, False)),
        overload_queue=float(lim.take_number("overload_queue", 0.25, 0, 1, False)),
        overload_min_share=lim.take_number("overload_min_share", 20, 1, 1_000_000, True),
    )
    lim.finish()
    return limits


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[routes]]`` entry."""

    target: str
    match_domain: str | None = None
    match_user_prefix: str | None = None
    external: bool = False


def _routes(data: Any, source: str | None) -> tuple[RouteConfig, ...]:
    """``[[routes]]``."""
    if not isinstance(data, list):
        raise ConfigError("must be an array of tables ([[routes]])", key="routes", source=source)
    routes = []
    for index, entry in enumerate(data):
        r = _Section(f"routes[{index}]", entry, source)
        target = r.take("target", str, None)
        if target is None:
            raise r.error("target", "is required")
        if not target.startswith(("sip:", "sips:")):
            raise r.error("target", f"{target!r} is not a sip: or sips: URI")
        match_domain = r.take("match_domain", str, None)
        match_user_prefix = r.take("match_user_prefix", str, None)
        if match_domain is None and match_user_prefix is None:
            raise r.error("match_domain", "give match_domain, match_user_prefix or both")
        external = r.take("external", bool, False)
        r.finish()
        routes.append(RouteConfig(target, match_domain.lower() if match_domain else None, match_user_prefix, external))
    return tuple(routes)


@dataclass(frozen=True)
class RegistrarConfig:
    store: str = "memory"
    """"memory", "sql" or "redis" (``[state] redis_url`` and ``key_prefix``);
    not given: "redis" when ``[state] backend = "redis"``, else "memory"."""
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_bindings: int = 16
    """Bindings one AOR may hold (a REGISTER adding more gets 403 Too Many Contacts)."""
    max_bindings_per_identity: int = 32
    """Bindings one authenticated identity may hold across all its AORs
    (a REGISTER adding more gets 403 Too Many Registrations)."""


def _registrar(data: Any, source: str | None) -> RegistrarConfig:
    """``[registrar]``."""
    reg = _Section("registrar", data, source)
    store = reg.take("store", str, "")
    if store not in ("", "memory", "sql", "redis"):
        raise reg.error("store", f"{store!r} is not one of memory, sql, redis")
    registrar = RegistrarConfig(
        store=store,
        min_expires=reg.take_number("min_expires", 60, 1, 86400, True),
        max_expires=reg.take_number("max_expires", 3600, 1, 7 * 86400, True),
        default_expires=reg.take_number("default_expires", 3600, 1, 7 * 86400, True),
        max_bindings=reg.take_number("max_bindings", 16, 1, 10000, True),
        max_bindings_per_identity=reg.take_number("max_bindings_per_identity", 32, 1, 100000, True),
    )
    if not registrar.min_expires <= registrar.default_expires <= registrar.max_expires:
        raise reg.error("default_expires", "must lie between min_expires and max_expires")
    reg.finish()
    return registrar


@dataclass(frozen=True)
class TimerConfig:
    """RFC 3261 17 T1/T2/T4 and the proxy's timer C (16.6 step 11), seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0


def _timers(data: Any, source: str | None) -> TimerConfig:
    """``[timers]``."""
    tm = _Section("timers", data, source)
    timers = TimerConfig(
        t1=float(tm.take_number("t1", 0.5, 0.01, 60, False)),
        t2=float(tm.take_number("t2", 4.0, 0.1, 600, False)),
        t4=float(tm.take_number("t4", 5.0, 0.1, 600, False)),
        timer_c=float(tm.take_number("timer_c", 180.0, 1, 3600, False)),
    )
    tm.finish()
    return timers


# auth before options: its admission step marks a trusted source's connection
# authenticated (kept when the table is full) before options answers the
# OPTIONS to the proxy statelessly, ending admission.
# media after auth and rbac: only authenticated callers, trusted sources and
# requests on our own verified route sets get their SDP read (an unauthenticated
# sender gets the challenge, and costs no SDP parsing); before dialog, so that
# re-INVITEs and UPDATEs inside a dialog are checked too.
DEFAULT_STAGES = ("sanity", "auth", "ratelimit", "options", "rbac", "egress", "media", "dialog", "registrar", "location", "routes", "final")
AUTH_ALGORITHMS = ("SHA-512-256", "SHA-256", "MD5")
DEFAULT_ROLES: dict[str, tuple[str, ...]] = {
    "agent": ("register",),
    "staff": ("register", "call"),
    "admin": ("register", "call", "call:external", "manage"),
    "trunk": ("call", "call:external"),
}
PERMISSIONS = ("register", "call", "call:external", "manage")


def _pipeline(data: Any, source: str | None) -> tuple[str, ...]:
    """``[pipeline]``: the stage names, in order."""
    pl = _Section("pipeline", data, source)
    stages = pl.take_str_list("stages", DEFAULT_STAGES)
    if not stages:
        raise pl.error("stages", "at least one stage is needed")
    pl.finish()
    return stages


def _stage_options(data: Any, source: str | None) -> dict[str, dict[str, Any]]:
    """``[stage.NAME]`` tables as given; each stage checks its own when it is built."""
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError("must hold one table per stage ([stage.NAME])", key="stage", source=source)
    return {k: dict(v) for k, v in data.items()}


def _roles(data: Any, source: str | None) -> dict[str, tuple[str, ...]]:
    """A given ``[roles]``: it replaces DEFAULT_ROLES as a whole."""
    ro = _Section("roles", data, source)
    roles = {}
    for role in list(ro.table):
        perms = ro.take_str_list(role, ())
        for perm in perms:
            if perm not in PERMISSIONS:
                raise ro.error(role, f"unknown permission {perm!r} (known: {', '.join(PERMISSIONS)})")
        roles[role] = perms
    ro.finish()
    return roles


@dataclass(frozen=True)
class TrustedSource:
    """One ``[auth] trusted_sources`` entry: requests from ``network`` are
    not challenged and act with ``trusted_role``.

    Over TCP and TLS only, unless ``udp``: a TCP source has completed a
    handshake from its address, a UDP source address is forged with one
    datagram, so trusting it over UDP is an explicit choice that
    :meth:`Config.warnings` reports (a string entry never trusts UDP).
    """

    network: str
    udp: bool = False


def _trusted_source(auth: _Section, index: int, entry: Any) -> TrustedSource:
    """A string ``"10.0.0.0/8"`` (TCP and TLS) or a table ``{network =
    "192.0.2.10/32", udp = true}``."""
    key = f"trusted_sources[{index}]"
    if isinstance(entry, str):
        network, udp = entry, False
    elif isinstance(entry, dict):
        table = _Section(f"auth.{key}", entry, auth.source)
        network = table.take("network", str, None)
        if network is None:
            raise table.error("network", "is required")
        udp = table.take("udp", bool, False)
        table.finish()
        key += ".network"
    else:
        raise auth.error(key, f"expected a network string or a table {{network = ..., udp = ...}}, got {entry!r}")
    try:
        ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise auth.error(key, f"{network!r} is not an address or network") from None
    return TrustedSource(network, udp)


@dataclass(frozen=True)
class AlgorithmProfile:
    """One ``[[auth.profiles]]`` entry: sources in ``networks`` are
    challenged with ``algorithms`` (in this order) instead of ``[auth]
    algorithms``, and only those are accepted from them (the "legacy phones
    VLAN": MD5-only phones on a network of their own)."""

    networks: tuple[str, ...]
    algorithms: tuple[str, ...]
    name: str | None = None

    @property
    def label(self) -> str:
        """The name, or the networks when there is none (logs, check-config)."""
        return self.name or ", ".join(self.networks)


def _algorithms(section: _Section, default: tuple[str, ...] | None) -> tuple[str, ...]:
    """``algorithms`` of *section*: known names, at least one, in the order
    given (the challenges list them in that order, the operator's
    preference, RFC 8760 2.3, and a phone that answers only the first
    challenge, linphone, uses the first one it can), duplicates dropped."""
    if default is None and "algorithms" not in section.table:
        raise section.error("algorithms", "is required")
    algorithms = section.take_str_list("algorithms", default or ())
    if not algorithms:
        raise section.error("algorithms", "at least one algorithm is needed")
    for algorithm in algorithms:
        if algorithm not in AUTH_ALGORITHMS:
            raise section.error("algorithms", f"unknown algorithm {algorithm!r} (known: {', '.join(AUTH_ALGORITHMS)})")
    return tuple(dict.fromkeys(algorithms))


def _profiles(auth: _Section) -> tuple[AlgorithmProfile, ...]:
    """``[[auth.profiles]]``: networks (CIDRs, IPv4 and IPv6) and the
    algorithms their sources are challenged with; an optional unique name."""
    entries = auth.take("profiles", list, [])
    profiles: list[AlgorithmProfile] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        section = _Section(f"auth.profiles[{index}]", entry, auth.source)
        name = section.take("name", str, None)
        if name is not None:
            if not name.strip() or any(not c.isprintable() for c in name):
                raise section.error("name", f"{name!r} is not a usable name (printable, not empty)")
            if name in names:
                raise section.error("name", f"{name!r} is the name of an earlier profile")
            names.add(name)
        if "networks" not in section.table:
            raise section.error("networks", "is required (source networks, such as \"10.20.0.0/16\")")
        networks = section.take_str_list("networks", ())
        if not networks:
            raise section.error("networks", "at least one network is needed")
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise section.error("networks", f"{network!r} is not an address or network") from None
        algorithms = _algorithms(section, None)
        section.finish()
        profiles.append(AlgorithmProfile(networks=tuple(dict.fromkeys(networks)), algorithms=algorithms, name=name))
    return tuple(profiles)


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: digest backends and who is trusted without a challenge."""

    backends: tuple[str, ...] = ("sql",)
    algorithms: tuple[str, ...] = ("SHA-256", "SHA-512-256")
    """The default profile: what a source in no ``profiles`` network is challenged with, in order."""
    profiles: tuple[AlgorithmProfile, ...] = ()
    """``[[auth.profiles]]`` in config order: the first whose networks hold the source wins."""
    trusted_sources: tuple[TrustedSource, ...] = ()
    trusted_role: str | None = None
    nonce_lifetime: float = 300.0
    max_nonce_failures: int = 3
    """Failed digest responses one nonce serves before it is invalidated (a fresh challenge)."""
    credential_cache: float = 0.0
    """Seconds a digest login's lookup (HA1 and roles, or no such user) is kept (0: off): sipshield.auth._checkers.StoreChecker."""
    file: Path | None = None
    key_file: Path | None = None
    """``[auth] key_file``: the key file the SQL store's HA1 values are encrypted under (default: data_dir/credential.keys)."""
    nonce_secret_file: Path | None = None
    """``[auth] nonce_secret_file``: the secret nonces are signed under, one file copied to every node
    (default: data_dir/nonce.secret, created on first start)."""
    trunks: tuple[tuple[str, str, str | None, tuple[str, ...]], ...] = ()
    """``[[auth.tls.trunks]]``: (identity, name, domain, roles) for mutual-TLS trunks."""
    bearer: dict[str, Any] | None = None
    """``[auth.bearer]`` as given (paths resolved); checked when the service is built."""

    @property
    def enabled_algorithms(self) -> tuple[str, ...]:
        """Every algorithm some source is challenged with: ``algorithms``
        and those of every profile, in that order.  What a user store keeps
        an HA1 for; MD5 counts as enabled only when one of them lists it."""
        found = list(self.algorithms)
        for profile in self.profiles:
            found += profile.algorithms
        return tuple(dict.fromkeys(found))


def _auth(data: Any, source: str | None, base: Path, roles: dict[str, tuple[str, ...]], client_ca: Path | None) -> AuthConfig:
    """``[auth]``: its roles must be in *roles*, its mutual-TLS trunks need
    ``[tls] client_ca``."""
    au = _Section("auth", data, source)
    backends = au.take_str_list("backends", ("sql",))
    for backend in backends:
        if backend not in ("sql", "file", "ldap"):
            raise au.error("backends", f"unknown backend {backend!r} (known: sql, file, ldap)")
    algorithms = _algorithms(au, ("SHA-256", "SHA-512-256"))
    profiles = _profiles(au)
    if "file" in backends and "MD5" not in {*algorithms, *(a for p in profiles for a in p.algorithms)}:
        raise au.error("backends", "the file (htdigest) backend holds MD5 only: add \"MD5\" to auth.algorithms or to a [[auth.profiles]] entry")
    trusted = tuple(_trusted_source(au, index, entry) for index, entry in enumerate(au.take("trusted_sources", list, [])))
    trusted_role = au.take("trusted_role", str, None)
    if trusted_role is not None and trusted_role not in roles:
        raise au.error("trusted_role", f"{trusted_role!r} is not a role in [roles] (known: {', '.join(sorted(roles))})")
    trunks = _trunks(au, roles)
    if trunks and client_ca is None:
        raise ConfigError("mutual-TLS trunks need [tls] client_ca (the CA their certificates chain to)", key="auth.tls.trunks", source=source)
    bearer = au.take("bearer", dict, None)
    if bearer is not None:
        bearer = dict(bearer)
        if isinstance(bearer.get("keys"), str):
            bearer["keys"] = _resolve(bearer["keys"], base)
    auth = AuthConfig(
        backends=backends, algorithms=algorithms, profiles=profiles, trusted_sources=trusted, trusted_role=trusted_role,
        nonce_lifetime=float(au.take_number("nonce_lifetime", 300.0, 10, 3600, False)),
        max_nonce_failures=au.take_number("max_nonce_failures", 3, 1, 1000, True),
        credential_cache=float(au.take_number("credential_cache", 0.0, 0, 60, False)),
        file=_path(au, "file", None, base), key_file=_path(au, "key_file", None, base), nonce_secret_file=_path(au, "nonce_secret_file", None, base),
        trunks=trunks, bearer=bearer,
    )
    if "file" in backends and auth.file is None:
        raise au.error("file", "the file backend needs auth.file (an htdigest file)")
    au.finish()
    return auth


def _trunks(auth: _Section, roles: dict[str, tuple[str, ...]]) -> tuple[tuple[str, str, str | None, tuple[str, ...]], ...]:
    """``[[auth.tls.trunks]]``: identity, name, optional domain and roles (in *roles*)."""
    trunks = []
    tls_table = auth.take("tls", dict, None)
    if tls_table is not None:
        tt = _Section("auth.tls", tls_table, auth.source)
        entries = tt.take("trunks", list, [])
        tt.finish()
        for index, entry in enumerate(entries):
            tr = _Section(f"auth.tls.trunks[{index}]", entry, auth.source)
            identity = tr.take("identity", str, None)
            name = tr.take("name", str, None)
            if identity is None or name is None:
                raise tr.error("identity" if identity is None else "name", "is required")
            trunk_roles = tr.take_str_list("roles", ("trunk",))
            for role in trunk_roles:
                if role not in roles:
                    raise tr.error("roles", f"{role!r} is not a role in [roles]")
            trunks.append((identity, name, tr.take("domain", str, None), trunk_roles))
            tr.finish()
    return tuple(trunks)


def _ldap(data: Any, source: str | None, base: Path) -> dict[str, Any] | None:
    """``[ldap]`` as given, its ``bind_password_file`` read into ``bind_password``."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError("must be a table", key="ldap", source=source)
    ldap = dict(data)
    secret_file = ldap.pop("bind_password_file", None)
    if secret_file is not None:
        secret_path = _resolve(str(secret_file), base)
        try:
            ldap["bind_password"] = secret_path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read {secret_path}: {e.strerror}", key="ldap.bind_password_file", source=source) from None
    return ldap


def _database(data: Any, source: str | None) -> str | None:
    """``[database] url``."""
    db = _Section("database", data, source)
    url = db.take("url", str, None)
    if url is not None and "://" not in url:
        raise db.error("url", f"{url!r} is not a database URL (postgresql://... or sqlite:///...)")
    db.finish()
    return url


@dataclass(frozen=True)
class SecurityConfig:
    """``[security]``: running without the protections, only on purpose."""

    allow_unauthenticated: bool = False
    """Start even when :func:`unsafe_posture` finds something (a pipeline
    without ``auth`` or ``rbac`` before the stages that register or relay,
    trusted networks covering every address); each finding is then a
    warning logged at every start."""


def _security(data: Any, source: str | None) -> SecurityConfig:
    """``[security]``."""
    section = _Section("security", data, source)
    security = SecurityConfig(allow_unauthenticated=section.take("allow_unauthenticated", bool, False))
    section.finish()
    return security


@dataclass(frozen=True)
class BansConfig:
    """``[bans]``: fail2ban's rule inside the proxy.

    ``max_failures`` failed authentications from one source within
    ``find_time`` seconds ban it for ``ban_time`` seconds.  Only failures of
    a source that proved its return path count (the auth stage reports a
    failure only for an answer to a nonce this proxy issued to that very
    address), so a forged-source flood cannot get its victim banned.
    """

    enabled: bool = True
    max_failures: int = 3
    find_time: float = 60.0
    ban_time: float = 900.0
    allowlist: tuple[str, ...] = ()
    """Networks (CIDR, IPv4 or IPv6) never banned: the operators' own."""
    ipv6_prefix: int = 64
    """An IPv6 source is banned with its /64 (one subscriber's usual
    allocation: its other addresses are a rotation away)."""
    max_bans: int = 100_000
    """Bans held at once; when full, the one ending soonest makes room."""
    max_handshake_failures: int = 0
    """Failed TLS handshakes (``tls-handshake-failure`` events) from one source within
    ``find_time`` that ban it too; 0 (the default): they never do.  A TCP source proved its
    address, but a phone with an expired client certificate, or one that does not trust a newly
    rotated server certificate, fails every handshake as well."""
    nftables: NftablesConfig | None = None
    """``[bans.nftables]`` with ``enabled = true``: bans enforced in the kernel too (None: off)."""


NFT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}\Z")
"""A name sipshield writes into an nft script: an nft identifier, nothing an
nft script could read as more (no spaces, quotes, braces, semicolons)."""


@dataclass(frozen=True)
class NftablesConfig:
    """``[bans.nftables]``: the bans written into an nftables set too, so that
    the kernel drops a banned source's packets to the SIP listeners' ports
    before they reach the process (sipshield/security/_nftables.py).  The
    table (family ``inet``) is sipshield's own; ``nft`` must be able to change
    the ruleset (CAP_NET_ADMIN)."""

    nft: Path = Path("/usr/sbin/nft")
    """The nft executable (Debian package nftables), or a wrapper taking the same arguments."""
    table: str = "sipshield"
    set4: str = "banned4"
    set6: str = "banned6"
    chain: str = "input"


def _nftables(data: Any, source: str | None) -> NftablesConfig | None:
    """``[bans.nftables]``: names checked as nft identifiers; when enabled,
    the nft executable must exist."""
    section = _Section("bans.nftables", data, source)
    enabled = section.take("enabled", bool, False)
    names = {}
    for key, default in (("table", "sipshield"), ("set4", "banned4"), ("set6", "banned6"), ("chain", "input")):
        name = section.take(key, str, default)
        if not NFT_NAME.match(name):
            raise section.error(key, f"{name!r} is not an nft name (a letter, then up to 31 letters, digits or _)")
        names[key] = name
    if names["set4"] == names["set6"]:
        raise section.error("set6", f"must differ from set4 ({names['set4']!r})")
    nft = section.take("nft", str, "/usr/sbin/nft")
    section.finish()
    if not enabled:
        return None
    found = shutil.which(nft)
    if found is None:
        raise section.error("nft", f"{nft!r} is not an executable (apt-get install nftables, or set the path)")
    return NftablesConfig(nft=Path(found), **names)


def _bans(data: Any, source: str | None) -> BansConfig:
    """``[bans]``."""
    section = _Section("bans", data, source)
    allowlist = _networks(section, "allowlist")
    nftables = _nftables(section.take("nftables", dict, {}), source)
    bans = BansConfig(
        enabled=section.take("enabled", bool, True),
        max_failures=section.take_number("max_failures", 3, 1, 1000, True),
        find_time=float(section.take_number("find_time", 60, 1, 86400, False)),
        ban_time=float(section.take_number("ban_time", 900, 1, 365 * 86400, False)),
        allowlist=allowlist,
        ipv6_prefix=section.take_number("ipv6_prefix", 64, 16, 128, True),
        max_bans=section.take_number("max_bans", 100_000, 1, 10_000_000, True),
        max_handshake_failures=section.take_number("max_handshake_failures", 0, 0, 1000, True),
        nftables=nftables,
    )
    section.finish()
    return bans


DEFAULT_METHOD_RATES: dict[str, tuple[float, float]] = {
    "INVITE": (5.0, 20.0), "REGISTER": (5.0, 20.0), "OPTIONS": (5.0, 20.0), "MESSAGE": (10.0, 30.0), "SUBSCRIBE": (5.0, 20.0),
}


@dataclass(frozen=True)
class RateLimitConfig:
    """``[ratelimit]``: token buckets per source, and per source and method,
    in the admission step (before any state or challenge)."""

    enabled: bool = True
    per_source: tuple[float, float] | None = (50.0, 100.0)
    """(rate per second, burst) of new requests from one address, any method."""
    methods: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_METHOD_RATES))
    action: str = "503"
    """``"503"`` (stateless, with Retry-After) or ``"drop"``."""
    retry_after: int = 5
    ban_after: int = 20
    """A TCP/TLS source over a limit this many times within ``ban_window`` is banned (0: never)."""
    ban_window: float = 60.0
    allowlist: tuple[str, ...] = ()
    """Networks never limited (the trusted sources are not either)."""
    per_user: tuple[float, float] | None = (20.0, 60.0)
    """(rate per second, burst) of new requests one authenticated user makes,
    any method, from any source (the ``ratelimit`` stage, after ``auth``)."""
    per_user_methods: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per authenticated user and method (none by default)."""


def _bucket(section: _Section, key: str, value: Any) -> tuple[float, float]:
    """``{rate = R, burst = B}``: R requests per second, B at once (B >= 1)."""
    table = _Section(f"{section.name}.{key}", value, section.source)
    if "rate" not in value:
        raise table.error("rate", "is required (requests per second)")
    rate = float(table.take_number("rate", 1, 0.001, 1e6, False))
    burst = float(table.take_number("burst", max(1.0, rate * 2), 1, 1e7, False))
    table.finish()
    return rate, burst


def _optional_bucket(section: _Section, key: str, default: tuple[float, float] | None) -> tuple[float, float] | None:
    """A bucket key that ``false`` turns off (absent: *default*)."""
    raw = section.take(key, (dict, bool), None)
    if raw is True:
        raise section.error(key, "a table {rate = R, burst = B}, or false to turn it off")
    return default if raw is None else None if raw is False else _bucket(section, key, raw)


def _method_buckets(section: _Section, key: str, default: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """``KEY.METHOD = {rate = R, burst = B}`` tables (absent: *default*)."""
    raw = section.take(key, dict, None)
    if raw is None:
        return dict(default)
    buckets = {}
    for method, value in raw.items():
        if not isinstance(method, str) or not method.isalpha():
            raise section.error(f"{key}.{method}", "a SIP method name")
        buckets[method.upper()] = _bucket(section, f"{key}.{method}", value)
    return buckets


def _ratelimit(data: Any, source: str | None) -> RateLimitConfig:
    """``[ratelimit]``."""
    section = _Section("ratelimit", data, source)
    per_source = _optional_bucket(section, "per_source", RateLimitConfig.per_source)
    methods = _method_buckets(section, "methods", DEFAULT_METHOD_RATES)
    per_user = _optional_bucket(section, "per_user", RateLimitConfig.per_user)
    per_user_methods = _method_buckets(section, "per_user_methods", {})
    action = section.take("action", str, "503")
    if action not in ("503", "drop"):
        raise section.error("action", f'{action!r} is not one of "503", "drop"')
    limits = RateLimitConfig(
        enabled=section.take("enabled", bool, True), per_source=per_source, methods=methods, action=action,
        retry_after=section.take_number("retry_after", 5, 1, 3600, True), ban_after=section.take_number("ban_after", 20, 0, 100000, True),
        ban_window=float(section.take_number("ban_window", 60, 1, 86400, False)), allowlist=_networks(section, "allowlist"),
        per_user=per_user, per_user_methods=per_user_methods,
    )
    section.finish()
    return limits


@dataclass(frozen=True)
class ScannersConfig:
    """``[scanners]``: drop scanners by User-Agent, ban proven ones and proven probers."""

    enabled: bool = True
    user_agents: tuple[str, ...] | None = None
    """User-Agent substrings (without case); None: the built-in list (sipshield.security.SCANNER_USER_AGENTS)."""
    max_users: int = 20
    """A TCP/TLS source naming more distinct To users than this within ``window`` seconds is banned."""
    window: float = 60.0


def _scanners(data: Any, source: str | None) -> ScannersConfig:
    """``[scanners]``."""
    section = _Section("scanners", data, source)
    user_agents = section.take("user_agents", list, None)
    if user_agents is not None and not all(isinstance(ua, str) and ua for ua in user_agents):
        raise section.error("user_agents", "a list of non-empty strings")
    scanners = ScannersConfig(
        enabled=section.take("enabled", bool, True), user_agents=None if user_agents is None else tuple(user_agents),
        max_users=section.take_number("max_users", 20, 1, 100000, True), window=float(section.take_number("window", 60, 1, 86400, False)),
    )
    section.finish()
    return scanners


@dataclass(frozen=True)
class EgressConfig:
    """``[egress]``: the toll-fraud policy of the ``egress`` stage."""

    max_calls_per_minute: int = 10
    """External call attempts one user may make within 60 s (0: no limit)."""
    max_concurrent_calls: int = 4
    """External calls one user may have up at once, from the INVITE relayed
    to its final non-2xx answer or the BYE after its 2xx (0: no limit)."""
    max_call_duration: float = 4 * 3600.0
    """Seconds after which a call still counted is counted no more (a lost BYE)."""
    roles: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    """``[egress.roles.NAME]``: role -> (allow prefixes, deny prefixes) of the dialled number."""


def _egress(data: Any, source: str | None, roles: Mapping[str, Any]) -> EgressConfig:
    """``[egress]`` and its ``[egress.roles.NAME]`` tables (NAME a role of ``[roles]``)."""
    section = _Section("egress", data, source)
    limit = section.take_number("max_calls_per_minute", 10, 0, 100000, True)
    concurrent = section.take_number("max_concurrent_calls", 4, 0, 100000, True)
    duration = float(section.take_number("max_call_duration", 4 * 3600, 60, 7 * 86400, False))
    raw_roles = section.take("roles", dict, {})
    section.finish()
    prefixes = {}
    for role, table in raw_roles.items():
        entry = _Section(f"egress.roles.{role}", table, source)
        if role not in roles:
            raise ConfigError(f"{role!r} is not a role of [roles] ({', '.join(sorted(roles))})", key=f"egress.roles.{role}", source=source)
        allow, deny = entry.take_str_list("allow", ()), entry.take_str_list("deny", ())
        for key, values in (("allow", allow), ("deny", deny)):
            for value in values:
                if not value or any(c.isspace() for c in value):
                    raise entry.error(key, f"{value!r} is not a number prefix")
        entry.finish()
        prefixes[role] = (allow, deny)
    return EgressConfig(limit, concurrent, duration, prefixes)


SRTP_MODES = ("off", "prefer", "mandatory")


@dataclass(frozen=True)
class MediaConfig:
    """``[media]``: the SRTP policy of the ``media`` stage (sipshield.security._media)."""

    srtp: str = "prefer"
    """``off`` (SDP not read), ``prefer`` (plain RTP let through, reported as srtp-plain events) or
    ``mandatory`` (SRTP with SDES over TLS or DTLS-SRTP only; anything else refused with 488)."""


def _media(data: Any, source: str | None) -> MediaConfig:
    """``[media]``."""
    section = _Section("media", data, source)
    srtp = section.take("srtp", str, "prefer")
    if srtp not in SRTP_MODES:
        raise section.error("srtp", f"{srtp!r} is not one of {', '.join(SRTP_MODES)}")
    section.finish()
    return MediaConfig(srtp)


@dataclass(frozen=True)
class ACLRuleConfig:
    """One ``[[acl.rules]]`` entry."""

    allow: bool
    networks: tuple[str, ...] = ()
    """Source CIDRs (IPv4, IPv6); empty: any source."""
    methods: tuple[str, ...] = ()
    """SIP methods; empty: any."""
    listeners: tuple[tuple[str, int | None], ...] = ()
    """(``UDP``/``TCP``/``TLS``, port or None) from ``"tls"`` or ``"udp:5060"``; empty: any."""


@dataclass(frozen=True)
class ACLConfig:
    """``[acl]``: CIDR allow/deny rules, first match wins (an admission step)."""

    rules: tuple[ACLRuleConfig, ...] = ()
    default_allow: bool = True
    """What a request no rule matches gets (``default = "allow"`` or ``"deny"``)."""
    action: str = "403"
    """For a denied request: ``"403"`` (stateless) or ``"drop"``."""


def _acl(data: Any, source: str | None) -> ACLConfig:
    """``[acl]`` and its ``[[acl.rules]]``."""
    section = _Section("acl", data, source)
    default = section.take("default", str, "allow")
    if default not in ("allow", "deny"):
        raise section.error("default", f'{default!r} is not one of "allow", "deny"')
    action = section.take("action", str, "403")
    if action not in ("403", "drop"):
        raise section.error("action", f'{action!r} is not one of "403", "drop"')
    raw_rules = section.take("rules", list, [])
    section.finish()
    rules = []
    for index, entry in enumerate(raw_rules):
        rule = _Section(f"acl.rules[{index}]", entry, source)
        verdict = rule.take("action", str, None)
        if verdict not in ("allow", "deny"):
            raise rule.error("action", f'is required: "allow" or "deny" (got {verdict!r})')
        networks = _networks(rule, "networks")
        methods = rule.take_str_list("methods", ())
        for method in methods:
            if not method.isalpha():
                raise rule.error("methods", f"{method!r} is not a SIP method")
        listeners = []
        for text in rule.take_str_list("listeners", ()):
            kind, _, port = text.partition(":")
            if kind.lower() not in ("udp", "tcp", "tls") or (port and not (port.isdigit() and 0 < int(port) < 65536)):
                raise rule.error("listeners", f'{text!r} is not "udp", "tcp" or "tls", with an optional ":PORT"')
            listeners.append((kind.upper(), int(port) if port else None))
        rule.finish()
        rules.append(ACLRuleConfig(verdict == "allow", networks, tuple(m.upper() for m in methods), tuple(listeners)))
    return ACLConfig(tuple(rules), default == "allow", action)


SECURED_STAGES = ("registrar", "location", "routes")
"""Built-in stages that bind contacts or relay: "auth" and "rbac" must run before them."""


LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8, "cron": 9,
    "authpriv": 10, "ftp": 11, "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21,
    "local6": 22, "local7": 23,
}  # fmt: skip
"""RFC 5424 6.2.1 facility names (as syslog.conf spells them) -> codes."""


@dataclass(frozen=True)
class SyslogConfig:
    """``[logging.syslog]``: RFC 5424 messages to a collector."""

    address: str = "unix:/dev/log"
    """``udp:HOST:PORT`` (RFC 5426), ``tcp:HOST:PORT`` (RFC 6587 octet counting) or ``unix:PATH``."""
    facility: str = "local0"
    app_name: str = "sipshield"


def _syslog(section: _Section, data: Any) -> SyslogConfig:
    """``[logging.syslog]``."""
    table = _Section("logging.syslog", data, section.source)
    address = table.take("address", str, "unix:/dev/log")
    scheme, _, rest = address.partition(":")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise table.error("address", "unix: takes an absolute path, e.g. unix:/dev/log")
    elif scheme in ("udp", "tcp"):
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise table.error("address", f"{scheme}: takes HOST:PORT, e.g. {scheme}:127.0.0.1:514 ([::1]:514 for IPv6)")
    else:
        raise table.error("address", "udp:HOST:PORT, tcp:HOST:PORT or unix:PATH")
    facility = table.take("facility", str, "local0")
    if facility not in SYSLOG_FACILITIES:
        raise table.error("facility", f"one of {', '.join(SYSLOG_FACILITIES)}")
    app_name = table.take("app_name", str, "sipshield")
    if not app_name or len(app_name) > 48 or not all("!" <= c <= "~" for c in app_name):
        raise table.error("app_name", "1 to 48 printable ASCII characters, no spaces (RFC 5424 APP-NAME)")
    table.finish()
    return SyslogConfig(address=address, facility=facility, app_name=app_name)


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: where log events go besides twistd's own log (standard
    output with ``-n``, else ``--logfile``, which stays the human-readable one)."""

    level: str = "info"
    """The lowest level the outputs below write."""
    json_file: Path | None = None
    """Every event as one JSON object per line (twisted.logger's format)."""
    syslog: SyslogConfig | None = None


def _logging(data: Any, source: str | None, base: Path) -> LoggingConfig:
    """``[logging]`` and ``[logging.syslog]``."""
    section = _Section("logging", data, source)
    level = section.take("level", str, "info")
    if level not in LOG_LEVELS:
        raise section.error("level", f"one of {', '.join(LOG_LEVELS)}")
    json_file = _path(section, "json_file", None, base)
    syslog_table = section.take("syslog", dict, None)
    logging = LoggingConfig(level=level, json_file=json_file, syslog=None if syslog_table is None else _syslog(section, syslog_table))
    section.finish()
    return logging


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the JSON admin API (docs/operations/admin-api.md)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9061
    """0: any free port (logged); the API is plain HTTP, so it listens on loopback unless told otherwise."""
    token_role: str = "admin"
    """The role the local token (data_dir/admin.token) acts with; it must grant
    ``manage`` (a config error when set explicitly; a warning at start when the
    default ``admin`` role of a custom [roles] does not)."""
    tls: TLSConfig | None = None
    """``[admin.tls]`` (the keys of ``[tls]``): a second listener of the API on
    ``host:tls_port`` over HTTPS; None: plain HTTP only.  With ``client_ca``,
    client certificates chaining to it are credentials too."""
    tls_port: int = 9062
    clients: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """``[[admin.clients]]``: (certificate identity, roles), the operators a
    verified client certificate logs in as (identities named as mutual-TLS
    trunks are: a subjectAltName ``sip:`` URI or DNS name, else the CN)."""


def _admin_clients(section: _Section, roles: Mapping[str, Sequence[str]], tls: TLSConfig | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``[[admin.clients]]``: identity and roles (in *roles*); they need
    ``[admin.tls] client_ca``.  The identities are checked when the service
    is built (sipshield/auth/_setup.py ``build_admin_clients``, as trunks' are)."""
    clients: list[tuple[str, tuple[str, ...]]] = []
    for index, entry in enumerate(section.take("clients", list, [])):
        client = _Section(f"admin.clients[{index}]", entry, section.source)
        identity = client.take("identity", str, None)
        if identity is None:
            raise client.error("identity", "is required")
        client_roles = client.take_str_list("roles", ("admin",))
        for role in client_roles:
            if role not in roles:
                raise client.error("roles", f"{role!r} is not a role in [roles] (known: {', '.join(sorted(roles))})")
        client.finish()
        clients.append((identity, client_roles))
    if clients and (tls is None or tls.client_ca is None):
        raise section.error("clients", "client certificates need [admin.tls] client_ca (the CA they chain to)")
    return tuple(clients)


def _admin(data: Any, source: str | None, roles: Mapping[str, Sequence[str]], base: Path | None = None) -> AdminConfig:
    """``[admin]``, its ``[admin.tls]`` and ``[[admin.clients]]``."""
    section = _Section("admin", data, source)
    tls_table = section.take("tls", dict, None)
    tls = None if tls_table is None else _tls(tls_table, source, base if base is not None else Path.cwd(), "admin.tls")
    if tls is not None and tls.certificate is None:
        raise ConfigError("certificate and private_key are required (no self-signed certificate is made for the admin API)",
                          key="admin.tls.certificate", source=source)
    tls_port = section.take_number("tls_port", 9062, 0, 65535, True)
    clients = _admin_clients(section, roles, tls)
    host = section.take("host", str, "127.0.0.1")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise section.error("host", f"an IP address to listen on, not {host!r}") from None
    explicit = "token_role" in section.table
    token_role = section.take("token_role", str, "admin")
    if explicit and "manage" not in roles.get(token_role, ()):
        raise section.error("token_role", f"the role {token_role!r} must exist in [roles] and grant manage, or the admin API locks everyone out")
    admin = AdminConfig(
        enabled=section.take("enabled", bool, True), host=host, port=section.take_number("port", 9061, 0, 65535, True), token_role=token_role,
        tls=tls, tls_port=tls_port, clients=clients,
    )
    section.finish()
    return admin


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: Prometheus metrics over HTTP (docs/operations/metrics.md)."""

    enabled: bool = True
    listen: ListenerConfig = field(default_factory=lambda: ListenerConfig(kind="tcp", port=9060, interface="127.0.0.1"))
    """A ``tcp:PORT:interface=ADDR`` endpoint; loopback by default (the metrics
    tell traffic patterns: a non-loopback address is a start-up warning)."""
    refresh: float = 15.0
    """Seconds between two readings of the values a store answers asynchronously
    (registered contacts); a scrape serves the last reading and never waits."""

    @property
    def exposed(self) -> bool:
        """Served on an address other hosts can reach."""
        return self.enabled and not ipaddress.ip_address(self.listen.interface).is_loopback


def _metrics(data: Any, source: str | None) -> MetricsConfig:
    """``[metrics]``."""
    section = _Section("metrics", data, source)
    enabled = section.take("enabled", bool, True)
    listen = MetricsConfig().listen
    description = section.take("listen", str, None)
    if description is not None:
        try:
            listen = parse_listener(description)
        except ValueError as e:
            raise section.error("listen", str(e)) from None
        if listen.kind != "tcp":
            raise section.error("listen", f"metrics are served over HTTP: a tcp:PORT:interface=ADDR endpoint, not {listen.kind}")
    refresh = section.take_number("refresh", 15.0, 1.0, 3600.0, integer=False)
    section.finish()
    return MetricsConfig(enabled=enabled, listen=listen, refresh=float(refresh))
@dataclass(frozen=True)
class StateConfig:
    """``[state]``: where the shield's counters, buckets and bans live
    (docs/scaling.md): this process's memory, or Redis shared by several nodes."""

    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "sipshield:"
    redis_url_given: bool = False
    """Whether ``redis_url`` was written in the file (``[registrar] store = "redis"`` needs it)."""

    @property
    def redis(self) -> RedisAddress:
        """``redis_url`` taken apart (checked when the config was parsed)."""
        return parse_redis_url(self.redis_url)


@dataclass(frozen=True)
class RedisAddress:
    """A ``redis://[[user]:password@]host[:port][/db]`` URL, taken apart."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> RedisAddress:
    """The parts of a ``redis://`` URL; ValueError (no password in it) when it is not one."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"expected redis://[[user]:password@]host[:port][/db], got scheme {parts.scheme or '(none)'!r} (rediss:// is not supported)")
    try:
        port = 6379 if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError("the port is not a number from 1 to 65535")
    if not parts.hostname:
        raise ValueError("no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database is a number (/0), not {path!r}")
    if parts.query or parts.fragment:
        raise ValueError("no query or fragment is understood")
    return RedisAddress(parts.hostname, port, int(path or 0), parts.username or None, parts.password)


def _state(data: Any, source: str | None) -> StateConfig:
    """``[state]``."""
    section = _Section("state", data, source)
    backend = section.take("backend", str, "memory")
    if backend not in ("memory", "redis"):
        raise section.error("backend", f'"memory" or "redis", not {backend!r}')
    given = "redis_url" in section.table
    url = section.take("redis_url", str, StateConfig.redis_url)
    try:
        parse_redis_url(url)
    except ValueError as e:
        raise section.error("redis_url", f"{mask_url(url)}: {e}") from None
    prefix = section.take("key_prefix", str, StateConfig.key_prefix)
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix):
        raise section.error("key_prefix", "1 to 64 letters, digits or _.:-")
    section.finish()
    return StateConfig(backend=backend, redis_url=url, key_prefix=prefix, redis_url_given=given)


ALERT_KINDS = ("event_rate", "metric", "certificate_expiry")
ALERT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
"""A rule's or notifier's name: it goes into alert texts, mail subjects and log lines as it is."""


@dataclass(frozen=True)
class AlertRuleConfig:
    """One ``[[alerts.rules]]`` entry (docs/operations/alerts.md).

    ``event_rate``: more than ``more_than`` security events of kind ``event``
    (on ``transport``, if given) within the last ``window`` seconds.
    ``metric``: the metric ``metric`` with ``labels`` (its per-second rate over
    ``window`` when ``rate = true``, for counters) ``above`` or ``below`` a
    threshold, sampled every ``interval`` seconds.  ``certificate_expiry``: the
    days until the served TLS certificate expires ``below`` a threshold, checked
    every ``interval`` seconds and at each reload.

    The condition must hold ``for`` seconds before the rule fires; a firing rule
    resolves once the condition has been false for ``resolve_after`` seconds, so
    a condition that flaps within that time stays one incident (one alert, one
    resolve message)."""

    name: str
    kind: str
    notify: tuple[str, ...] = ("log",)
    """``log``, ``webhook:NAME``, ``email:NAME`` (NAME a notifier of that type)."""
    event: str | None = None
    transport: str | None = None
    metric: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    rate: bool = False
    more_than: int = 0
    above: float | None = None
    below: float | None = None
    window: float = 60.0
    interval: float = 10.0
    for_: float = 0.0
    """The ``for`` key."""
    resolve_after: float = 60.0


@dataclass(frozen=True)
class WebhookNotifierConfig:
    """``[alerts.notifiers.NAME]`` with ``type = "webhook"``: Slack-compatible JSON posted to ``url``."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0


@dataclass(frozen=True)
class EmailNotifierConfig:
    """``[alerts.notifiers.NAME]`` with ``type = "email"``: one mail per alert through an SMTP relay."""

    name: str
    host: str
    sender: str
    """The ``from`` key."""
    to: tuple[str, ...]
    port: int = 25
    starttls: bool = False
    """Require STARTTLS (the relay's certificate checked against the system's CAs and ``host``)."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    """Read from ``password_file``."""
    timeout: float = 30.0


@dataclass(frozen=True)
class AlertsConfig:
    """``[alerts]``: rules and the notifiers they send to (none by default)."""

    rules: tuple[AlertRuleConfig, ...] = ()
    notifiers: tuple[WebhookNotifierConfig | EmailNotifierConfig, ...] = ()


_MAIL_ADDRESS = re.compile(r"[^\s@<>,;\"]+@[^\s@<>,;\"]+\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def _notifier(name: str, data: Any, source: str | None, base: Path) -> WebhookNotifierConfig | EmailNotifierConfig:
    section = _Section(f"alerts.notifiers.{name}", data, source)
    if not ALERT_NAME.match(name):
        raise ConfigError("a notifier name is a letter or digit, then up to 63 letters, digits, '_', '.' or '-'", key=section.name, source=source)
    kind = section.take("type", str, None)
    timeout = float(section.take_number("timeout", 10 if kind == "webhook" else 30, 1, 300, False))
    notifier: WebhookNotifierConfig | EmailNotifierConfig
    if kind == "webhook":
        url = section.take("url", str, None)
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise section.error("url", f"an http:// or https:// URL with a host, not {url!r}")
        headers = section.take("headers", dict, {})
        for key, value in headers.items():
            if not _HEADER_NAME.match(key) or not isinstance(value, str) or not value.isprintable():
                raise section.error(f"headers.{key}", "a header name (token characters) with a printable string value")
        notifier = WebhookNotifierConfig(name=name, url=url or "", headers=tuple(headers.items()), timeout=timeout)
    elif kind == "email":
        host = section.take("host", str, None)
        if not host:
            raise section.error("host", "the SMTP relay's host name or address is required")
        sender = section.take("from", str, None)
        if sender is None or not _MAIL_ADDRESS.match(sender):
            raise section.error("from", f"one mail address (user@domain), not {sender!r}")
        to = section.take_str_list("to", ())
        if not to:
            raise section.error("to", "at least one mail address")
        for index, address in enumerate(to):
            if not _MAIL_ADDRESS.match(address):
                raise section.error(f"to[{index}]", f"one mail address (user@domain), not {address!r}")
        username = section.take("username", str, None)
        password_path = _path(section, "password_file", None, base)
        if (username is None) != (password_path is None):
            raise section.error("password_file" if username is not None else "username", "username and password_file go together")
        password = None
        if password_path is not None:
            try:
                password = password_path.read_text().strip()
            except OSError as e:
                raise section.error("password_file", f"cannot read {password_path}: {e.strerror}") from None
        notifier = EmailNotifierConfig(
            name=name, host=host, sender=sender, to=to, port=section.take_number("port", 25, 1, 65535, True),
            starttls=section.take("starttls", bool, False), username=username, password=password, timeout=timeout,
        )
    else:
        raise section.error("type", f'"webhook" or "email", not {kind!r} (the log notifier is built in: notify = ["log"])')
    section.finish()
    return notifier


def _alert_rule(index: int, data: Any, source: str | None, notifiers: Mapping[str, str]) -> AlertRuleConfig:
    from sipshield.events import KINDS

    section = _Section(f"alerts.rules[{index}]", data, source)
    name = section.take("name", str, None)
    if name is None or not ALERT_NAME.match(name):
        raise section.error("name", f"a letter or digit, then up to 63 letters, digits, '_', '.' or '-', not {name!r}")
    kind = section.take("kind", str, None)
    if kind not in ALERT_KINDS:
        raise section.error("kind", f"one of {', '.join(ALERT_KINDS)}, not {kind!r}")
    notify = section.take_str_list("notify", ("log",))
    for target in notify:
        if target != "log" and notifiers.get(target.partition(":")[2]) != target.partition(":")[0]:
            known = ", ".join(["log", *(f"{t}:{n}" for n, t in notifiers.items())])
            raise section.error("notify", f"{target!r} is no notifier (known: {known})")
    if not notify:
        raise section.error("notify", "at least one notifier (\"log\" is built in)")
    fields: dict[str, Any] = {
        "for_": float(section.take_number("for", 0, 0, 86400, False)),
        "resolve_after": float(section.take_number("resolve_after", 60, 0, 86400, False)),
    }
    if kind == "event_rate":
        event = section.take("event", str, None)
        if event not in KINDS:
            raise section.error("event", f"a security event kind: one of {', '.join(sorted(KINDS))}, not {event!r}")
        transport = section.take("transport", str, None)
        if transport is not None and transport not in ("UDP", "TCP", "TLS"):
            raise section.error("transport", f'"UDP", "TCP" or "TLS", not {transport!r}')
        if "more_than" not in section.table:
            raise section.error("more_than", "required: the number of events in the window above which the rule fires")
        fields.update(event=event, transport=transport, more_than=section.take_number("more_than", 0, 0, 100_000, True),
                      window=float(section.take_number("window", 60, 1, 86400, False)))
    elif kind == "metric":
        metric = section.take("metric", str, None)
        if metric is None or not re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z", metric):
            raise section.error("metric", f"a Prometheus metric name, not {metric!r}")
        labels = section.take("labels", dict, {})
        for key, value in labels.items():
            if not isinstance(value, str):
                raise section.error(f"labels.{key}", f"a string, not {value!r}")
        above, below = section.take("above", (int, float), None), section.take("below", (int, float), None)
        if (above is None) == (below is None):
            raise section.error("above", "one of above or below is required (not both)")
        fields.update(metric=metric, labels=tuple(sorted(labels.items())), rate=section.take("rate", bool, False),
                      above=None if above is None else float(above), below=None if below is None else float(below),
                      window=float(section.take_number("window", 60, 1, 86400, False)),
                      interval=float(section.take_number("interval", 10, 1, 86400, False)))
    else:
        below = section.take("below", (int, float), None)
        if below is None or below <= 0:
            raise section.error("below", "required: the days before expiry under which the rule fires (e.g. 14)")
        fields.update(below=float(below), interval=float(section.take_number("interval", 3600, 60, 86400, False)))
    section.finish()
    return AlertRuleConfig(name=name, kind=kind, notify=notify, **fields)


def _alerts(data: Any, source: str | None, base: Path) -> AlertsConfig:
    """``[alerts]``: ``[alerts.notifiers.NAME]`` first, then the ``[[alerts.rules]]`` that name them."""
    section = _Section("alerts", data, source)
    notifier_tables = section.take("notifiers", dict, {})
    rule_tables = section.take("rules", list, [])
    section.finish()
    notifiers = tuple(_notifier(name, table, source, base) for name, table in notifier_tables.items())
    types = {n.name: "webhook" if isinstance(n, WebhookNotifierConfig) else "email" for n in notifiers}
    rules = tuple(_alert_rule(index, table, source, types) for index, table in enumerate(rule_tables))
    names = [rule.name for rule in rules]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(f"a second rule named {name!r}", key=f"alerts.rules[{index}].name", source=source)
    return AlertsConfig(rules=rules, notifiers=notifiers)


def unsafe_posture(stages: Sequence[str], trusted: Sequence[TrustedSource]) -> list[tuple[str, str]]:
    """What in a pipeline and a trust list serves strangers unauthenticated:
    ``(key, why)`` pairs, none for a safe configuration."""
    found: list[tuple[str, str]] = []
    for stage, does in (("auth", "authenticated"), ("rbac", "checked against its role")):
        if stage not in stages:
            found.append(("pipeline.stages", f'no "{stage}" stage: no request would be {does}'))
            continue
        first = next((other for other in stages if other in SECURED_STAGES), None)
        if first is not None and stages.index(first) < stages.index(stage):
            found.append(("pipeline.stages", f'"{stage}" comes after "{first}": {first} would serve requests before they are {does}'))
    networks = [ipaddress.ip_network(t.network, strict=False) for t in trusted]
    v4 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv6Network))
    for version, everything, collapsed in ((4, "0.0.0.0/0", v4), (6, "::/0", v6)):
        if any(n.prefixlen == 0 for n in collapsed):
            found.append(("auth.trusted_sources", f"the trusted networks cover every IPv{version} address ({everything}): nobody would be challenged"))
    return found


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    routes: tuple[RouteConfig, ...] = ()
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    timers: TimerConfig = field(default_factory=TimerConfig)
    stages: tuple[str, ...] = DEFAULT_STAGES
    stage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    database_url: str | None = None
    auth: AuthConfig = field(default_factory=AuthConfig)
    roles: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    ldap: dict[str, Any] | None = None
    """``[ldap]`` as given (bind_password_file read); checked when the service is built."""
    security: SecurityConfig = field(default_factory=SecurityConfig)
    bans: BansConfig = field(default_factory=BansConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    scanners: ScannersConfig = field(default_factory=ScannersConfig)
    acl: ACLConfig = field(default_factory=ACLConfig)
    egress: EgressConfig = field(default_factory=EgressConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    source: str | None = None

    def warnings(self) -> list[str]:
        """The unsafe settings this configuration asks for explicitly, one
        line each: logged when the service starts and printed by
        ``sipshield check-config``."""
        unsafe = [
            f"{key}: {why} (allowed by security.allow_unauthenticated)" for key, why in unsafe_posture(self.stages, self.auth.trusted_sources)
        ]
        return unsafe + [
            f"auth.trusted_sources: {t.network} is trusted over UDP (udp = true): anyone who can send one datagram "
            "with a forged source address in it acts as trusted_role, unchallenged"
            for t in self.auth.trusted_sources
            if t.udp
        ] + ([
            f"metrics.listen: metrics are served on {self.metrics.listen.interface}, not loopback: anyone who reaches it "
            "reads the traffic patterns (call rates, failed logins, bans); keep it behind a firewall"
        ] if self.metrics.exposed else [])

    def posture(self) -> list[tuple[str, str]]:
        """What this configuration exposes and how it is protected, as
        (label, text) lines, for ``sipshield check-config`` and the start-up
        log (no secret: passwords in URLs are masked)."""
        auth = self.auth
        tls = "self-signed certificate, generated in data_dir on first start" if self.tls.certificate is None else str(self.tls.certificate)
        if self.tls.client_ca is not None:
            tls += f"; client certificates checked against {self.tls.client_ca}"
        trusted = [
            f"{t.network} over TCP/TLS{'/UDP' if t.udp else ''}" for t in auth.trusted_sources
        ]
        stores = {"sql": f"sql ({mask_url(self.database)})", "file": f"file ({auth.file})", "ldap": f"ldap ({mask_url(str((self.ldap or {}).get('url', '?')))})"}
        locations = {
            "sql": f"sql ({mask_url(self.database)})",
            "redis": f"redis ({mask_url(self.state.redis_url)}, keys {self.state.key_prefix}loc:*): shared by every node and worker; "
                     "REGISTERs and lookups get 503 while it is down",
        }.get(self.registrar.store, "memory (lost on restart)")
        workers = []
        if self.server.workers > 1:
            n = self.server.workers
            own = [f"{lc.port + 1}-{lc.port + n}" if lc.port else "ephemeral" for lc in self.server.listen if lc.kind == "udp"]
            workers = [("workers", f"{n} processes sharing the listeners (SO_REUSEPORT); their own UDP ports: {', '.join(own) or 'none'}; "
                        "admin API and metrics in worker 0; bans and limits per worker"
                        + ("; a phone registered over TCP/TLS is reached only through the worker holding its connection"
                           if any(lc.kind != "udp" for lc in self.server.listen) else ""))]
        return [
            ("listeners", ", ".join(lc.description for lc in self.server.listen) or "(none)"),
            *workers,
            ("domains", ", ".join(self.server.domains) or "(none: answers for its own addresses)"),
            ("pipeline", " -> ".join(self.stages)),
            ("digest algorithms", ", ".join(auth.algorithms) + " (challenged in this order)" + (" to sources in no profile" if auth.profiles else "")),
            *(
                (f"digest profile {p.label}", f"{', '.join(p.algorithms)} (challenged in this order) to {', '.join(p.networks)}")
                for p in auth.profiles
            ),
            ("trusted sources", (", ".join(trusted) + f"; acting as role {auth.trusted_role or '(none)'}") if trusted else "(none)"),
            ("bans", self._bans_posture()),
            ("rate limits", self._rates_posture()),
            ("overload", f"new requests shed by source, the busiest first, when the reactor is over {self.limits.overload_lag:g} s behind"
                         if self.limits.overload_lag else "off (never shed on reactor lag)"),
            ("egress", self._egress_posture()),
            ("acl", f"{len(self.acl.rules)} rule(s), first match wins; otherwise {'allow' if self.acl.default_allow else 'deny'}; "
                    f"denied: {'403' if self.acl.action == '403' else 'dropped'}" if self.acl.rules or not self.acl.default_allow else "(none)"),
            ("media", self._media_posture()),
            ("users", ", ".join(stores[b] for b in auth.backends)),
            ("locations", locations),
            ("shield state", self._state_posture()),
            ("nonces", self._nonce_posture()),
            ("tls", tls),
            ("metrics", f"http://{self.metrics.listen.interface}:{self.metrics.listen.port}/metrics" if self.metrics.enabled else "off"),
            *((("alerts", self._alerts_posture()),) if self.alerts.rules else ()),
            ("data_dir", str(self.server.data_dir)),
        ]

    def _state_posture(self) -> str:
        state = self.state
        if state.backend == "memory":
            return "memory (this process only)"
        return (f"redis ({mask_url(state.redis_url)}, keys {state.key_prefix}*): bans shared within a second, "
                "rate limits and failure counts within one flush; served from local state while Redis is down")

    def _nonce_posture(self) -> str:
        path, configured = self.nonce_secret_file
        signed = f"signed under {path} (auth.nonce_secret_file: the same file on every node)" if configured else \
            f"signed under {path} (this node's own; set auth.nonce_secret_file to share it with other nodes)"
        if self.state.backend == "redis":
            return signed + "; nonce-counts shared in Redis (a replay to any node refused; digest answers get 503 while Redis is down)"
        return signed + "; nonce-counts in this process"

    def _media_posture(self) -> str:
        srtp = self.media.srtp
        if srtp == "off" or "media" not in self.stages:
            return "SDP not checked" + ("" if srtp == "off" else ' (no "media" stage in the pipeline)')
        if srtp == "prefer":
            return "srtp prefer: plain RTP let through, reported as srtp-plain events"
        return "srtp mandatory: SDES (a=crypto) over TLS hops only, or DTLS-SRTP (a=fingerprint); anything else 488"

    def _rates_posture(self) -> str:
        rates = self.ratelimit
        if not rates.enabled:
            return "off"
        per_source = "off" if rates.per_source is None else f"{rates.per_source[0]:g}/s (burst {rates.per_source[1]:g})"
        text = f"per source {per_source}, per source and method: {', '.join(sorted(rates.methods)) or '(none)'}"
        if "ratelimit" not in self.stages:
            return text + '; per user: none (no "ratelimit" stage in the pipeline)'
        per_user = "off" if rates.per_user is None else f"{rates.per_user[0]:g}/s (burst {rates.per_user[1]:g})"
        return text + f"; per user {per_user}" + (f", per user and method: {', '.join(sorted(rates.per_user_methods))}" if rates.per_user_methods else "")

    def _egress_posture(self) -> str:
        egress = self.egress
        if "egress" not in self.stages:
            return 'none (no "egress" stage in the pipeline: external calls are not limited)'
        return (f"per user {egress.max_calls_per_minute or 'unlimited'} external calls a minute, {egress.max_concurrent_calls or 'unlimited'} at once"
                f"; number prefixes for {len(egress.roles)} role(s)")
    def _alerts_posture(self) -> str:
        # Hosts only: a webhook URL's path is often its secret (Slack's are).
        where = {"log": "log"}
        for n in self.alerts.notifiers:
            if isinstance(n, WebhookNotifierConfig):
                where[f"webhook:{n.name}"] = f"webhook:{n.name} ({urlsplit(n.url).hostname})"
            else:
                where[f"email:{n.name}"] = f"email:{n.name} (via {n.host}, to {', '.join(n.to)})"
        used = sorted({where[target] for rule in self.alerts.rules for target in rule.notify})
        return f"{len(self.alerts.rules)} rule(s) ({', '.join(rule.name for rule in self.alerts.rules)}), sent to {', '.join(used)}"

    def _bans_posture(self) -> str:
        bans = self.bans
        if not bans.enabled:
            return "off"
        text = f"{bans.max_failures} failed logins in {bans.find_time:g} s ban a source for {bans.ban_time:g} s (IPv6 by /{bans.ipv6_prefix})"
        if bans.max_handshake_failures:
            text += f", and so do {bans.max_handshake_failures} failed TLS handshakes"
        text += f"; never banned: {', '.join(bans.allowlist)}" if bans.allowlist else ""
        nft = bans.nftables
        if nft is not None:
            text += f"; in the kernel too: nftables table inet {nft.table}, sets {nft.set4} and {nft.set6}, through {nft.nft}"
        return text

    @property
    def credential_key_file(self) -> tuple[Path, str]:
        """The key file the SQL user store encrypts HA1 values under, and the
        setting it comes from (for messages): ``[auth] key_file``, else
        ``credential.keys`` in data_dir."""
        if self.auth.key_file is not None:
            return self.auth.key_file, "auth.key_file"
        return self.server.data_dir / "credential.keys", "server.data_dir; [auth] key_file moves it"

    @property
    def nonce_secret_file(self) -> tuple[Path, bool]:
        """The secret digest nonces are signed under, and whether it is
        configured (``[auth] nonce_secret_file``: it must exist, the same
        file on every node) rather than ``nonce.secret`` in data_dir
        (created on first start, this node's own)."""
        if self.auth.nonce_secret_file is not None:
            return self.auth.nonce_secret_file, True
        return self.server.data_dir / "nonce.secret", False

    @property
    def database(self) -> str:
        """The SQLAlchemy URL for users and the SQL location store: PostgreSQL
        when ``[database] url`` is set, else a SQLite file in data_dir."""
        url = self.database_url or f"sqlite:///{self.server.data_dir / 'sipshield.db'}"
        if url.startswith(("postgresql://", "postgres://")):
            # psycopg 3 is the driver sipshield installs ([postgres] extra).
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url


def mask_url(url: str) -> str:
    """*url* with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_config(data: dict[str, Any], *, source: str | None = None, base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document and build a :class:`Config`.

    Relative paths are resolved against ``base_dir`` (the config file's
    directory), or the working directory when there is no file.  Each
    section is parsed by the function next to its dataclass; what spans
    sections is checked here.
    """
    base = base_dir if base_dir is not None else Path.cwd()
    known = {"server", "tls", "limits", "routes", "registrar", "timers", "pipeline", "stage", "database", "auth", "roles", "ldap", "security", "bans", "ratelimit", "scanners", "acl", "egress", "logging", "admin", "media", "metrics", "alerts", "state"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown section(s) or key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})", source=source)
    server = _server(data.get("server", {}), source, base)
    tls = _tls(data.get("tls", {}), source, base)
    limits = _limits(data.get("limits", {}), source)
    routes = _routes(data.get("routes", []), source)
    registrar = _registrar(data.get("registrar", {}), source)
    timers = _timers(data.get("timers", {}), source)
    stages = _pipeline(data.get("pipeline", {}), source)
    stage_options = _stage_options(data.get("stage", {}), source)
    database_url = _database(data.get("database", {}), source)
    roles = _roles(data["roles"], source) if "roles" in data else dict(DEFAULT_ROLES)
    auth = _auth(data.get("auth", {}), source, base, roles, tls.client_ca)
    ldap = _ldap(data.get("ldap"), source, base)
    if "ldap" in auth.backends and ldap is None:
        raise ConfigError("the ldap backend needs an [ldap] section (url, base_dn...)", key="auth.backends", source=source)
    security = _security(data.get("security", {}), source)
    media = _media(data.get("media", {}), source)
    if media.srtp == "mandatory" and "media" not in stages:
        raise ConfigError('srtp = "mandatory" needs the "media" stage in [pipeline] stages (it is in the default pipeline)', key="media.srtp", source=source)
    state = _state(data.get("state", {}), source)
    if not registrar.store:
        # Nodes that share the shield's state share their registrations too, unless told otherwise.
        registrar = replace(registrar, store="redis" if state.backend == "redis" else "memory")
    if registrar.store == "redis" and not state.redis_url_given:
        raise ConfigError('[registrar] store = "redis" needs [state] redis_url (redis://host:port/db)', key="state.redis_url", source=source)
    if server.workers > 1 and registrar.store == "memory":
        # Each worker's memory store would hold only the phones that registered through it.
        raise ConfigError(f'{server.workers} workers need a location store they share: [registrar] store = "sql" or "redis"', key="server.workers", source=source)
    if not security.allow_unauthenticated:
        for key, why in unsafe_posture(stages, auth.trusted_sources):
            raise ConfigError(f"{why}; refused (set [security] allow_unauthenticated = true to run like this on purpose)", key=key, source=source)
    return Config(
        server=server, tls=tls, limits=limits, routes=routes, registrar=registrar, timers=timers,
        stages=stages, stage_options=stage_options, database_url=database_url, source=source,
        auth=auth, roles=roles, ldap=ldap, security=security, bans=_bans(data.get("bans", {}), source),
        ratelimit=_ratelimit(data.get("ratelimit", {}), source), scanners=_scanners(data.get("scanners", {}), source),
        acl=_acl(data.get("acl", {}), source), egress=_egress(data.get("egress", {}), source, roles),
        logging=_logging(data.get("logging", {}), source, base), admin=_admin(data.get("admin", {}), source, roles, base), media=media,
        metrics=_metrics(data.get("metrics", {}), source),
        alerts=_alerts(data.get("alerts", {}), source, base), state=state,
    )


def default_config(data_dir: str | None = None) -> Config:
    """The embedded default: loopback listeners, self-signed TLS, ./sipshield-data."""
    server: dict[str, Any] = {}
    if data_dir is not None:
        server["data_dir"] = data_dir
    return parse_config({"server": server})


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file; raises :class:`ConfigError` on any problem."""
    p = Path(path)
    source = str(p)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", source=source) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", source=source) from None
    return parse_config(data, source=source, base_dir=p.resolve().parent)
