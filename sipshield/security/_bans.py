"""Bans after failed logins: fail2ban's rule, inside the proxy.

:class:`BanPolicy` observes the security events: ``max_failures``
``auth-failure`` events from one source within ``find_time`` seconds ban
that source for ``ban_time`` seconds (and, with ``max_handshake_failures``
set, so do that many ``tls-handshake-failure`` events).  The transports ask it
(:meth:`BanPolicy.refuse_source`) before they parse a datagram or accept a
connection, so a banned source's traffic costs one dictionary look-up.

Why a forged source address cannot get its victim banned: the auth stage
emits ``auth-failure`` only for a digest answer to a nonce that this proxy
issued to that very address (the nonce is an HMAC over it), and a sender
that forges the address never receives the challenge.  Over TCP and TLS
the handshake proves the address anyway.

An IPv6 source is banned with its /``ipv6_prefix`` network (64 by default):
a host holds a whole /64 and takes a new address from it at will.  An
IPv4-mapped IPv6 address counts as the IPv4 address it maps.

Bans survive a restart: :class:`BanFile` keeps them in data_dir, written
(atomically, mode 0600) at most once a second after a change and at stop.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sipshield.config import Config
from sipshield.events import AUTH_FAILURE, BAN, TLS_HANDSHAKE_FAILURE, UNBAN, SecurityEvent, SecurityEvents, printable
from sipshield.proxy import DROP
from sipshield.proxy._explain import Explanation
from sipshield.state import Ban, MemoryShieldState, ShieldState

__all__ = ["BanFile", "BanObserver", "BanPolicy", "ban_key", "build_ban_policy", "host_key"]


_MAPPED = b"\0" * 10 + b"\xff\xff"


def _packed_v6(host: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
    except OSError:
        return None


def _canonical(host: str) -> tuple[str, bytes | None]:
    """The key of *host* alone (the IPv4 address as written, an IPv6 address
    in its canonical text form, an IPv4-mapped one as its IPv4), and the
    packed IPv6 address (None when it is not one)."""
    if ":" not in host:
        return host, None
    packed = _packed_v6(host)
    if packed is None:
        return host, None
    if packed[:12] == _MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:]), None
    return socket.inet_ntop(socket.AF_INET6, packed), packed


def host_key(host: str) -> str:
    """The key of *host* alone (see :func:`ban_key`)."""
    return _canonical(host)[0]


def ban_key(host: str, ipv6_prefix: int = 64) -> str:
    """The key a source is banned under: the IPv4 address as written, an
    IPv6 address's network of *ipv6_prefix* bits (``2001:db8::/64``), an
    IPv4-mapped IPv6 address's IPv4 address, a link-local IPv6 address
    itself (fe80::/10 is every host's own link: one host must not ban its
    neighbours).  Not an address: as given.  Computed with inet_pton and
    integer masks: it is asked for every IPv6 datagram while bans are held."""
    key, packed = _canonical(host)
    if packed is None or (packed[0] == 0xFE and packed[1] & 0xC0 == 0x80):
        return key
    network = int.from_bytes(packed, "big") & ~((1 << (128 - ipv6_prefix)) - 1)
    return socket.inet_ntop(socket.AF_INET6, network.to_bytes(16, "big")) + f"/{ipv6_prefix}"


class BanFile:
    """The bans kept in data_dir between runs (JSON, written atomically).

    A worker of ``[server] workers`` writes a file of its own
    (``bans.worker-K.json`` beside ``bans.json``: the bans it holds, which
    with the memory backend are those of the traffic it saw), and every
    process reads them all at start, so each worker has every worker's bans
    after a restart, whichever wrote last."""

    log = Logger()

    def __init__(self, path: Path, worker: int | None = None) -> None:
        self.base = path
        self.path = path if worker is None else path.with_name(f"{path.stem}.worker-{worker}{path.suffix}")

    def files(self) -> list[Path]:
        """The ban files read at start: this one's, and the workers'."""
        return [self.base, *sorted(self.base.parent.glob(f"{self.base.stem}.worker-*{self.base.suffix}"))]

    def load(self) -> list[Ban]:
        """The bans saved last, in every file (the longest ban of a key kept);
        an unreadable file is moved aside (and logged), so that start-up
        goes on without its bans rather than failing."""
        found: dict[str, Ban] = {}
        for path in self.files():
            for ban in self._read(path):
                known = found.get(ban.key)
                if known is None or ban.until > known.until:
                    found[ban.key] = ban
        return list(found.values())

    def _read(self, path: Path) -> list[Ban]:
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            data = json.loads(raw)
            return [Ban(str(b["key"]), float(b["until"]), str(b["reason"]), float(b.get("since", 0.0))) for b in data["bans"]]
        except (ValueError, KeyError, TypeError) as e:
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            self.log.error("bans: {path} is unreadable ({why}); moved to {aside}, starting without its bans", path=str(path), why=str(e), aside=str(aside))
            return []

    def save(self, bans: Sequence[Ban]) -> None:
        data = {"version": 1, "bans": [{"key": b.key, "until": b.until, "since": b.since, "reason": b.reason} for b in bans]}
        fd, tmp = tempfile.mkstemp(prefix=".bans.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)  # mkstemp made it 0600
        except BaseException:
            os.unlink(tmp)
            raise


class BanObserver(Protocol):
    """Told of every change to the bans (the kernel's nftables set, say:
    sipshield/security/_nftables.py).  Called on the reactor thread, it must
    return at once; bans put back by :meth:`BanPolicy.load` are not told
    one by one (an observer reads :meth:`BanPolicy.bans` when it starts)."""

    def banned(self, ban: Ban) -> None:
        """*ban* is new, or lasts longer than before."""

    def unbanned(self, key: str) -> None:
        """The ban of *key* was lifted before its end."""


class BanPolicy:
    """Counts failed logins per source and bans; answers the transports'
    ``refuse_source``.  A :class:`~sipshield.events.SecurityEvents` observer
    (subscribe it to the service's event bus); it reports each ban on
    *events* (the same bus: its own events are not counted)."""

    log = Logger()

    def __init__(
        self, reactor: IReactorTime, *, state: ShieldState | None = None, events: SecurityEvents | None = None,
        max_failures: int = 3, find_time: float = 60.0, ban_time: float = 900.0, allowlist: Iterable[str] = (),
        ipv6_prefix: int = 64, store: BanFile | None = None, on_ban: Callable[[str], None] | None = None,
        save_delay: float = 1.0, max_handshake_failures: int = 0,
    ) -> None:
        self.reactor = reactor
        self.state: ShieldState = state if state is not None else MemoryShieldState()
        self.events = events
        self.max_failures = max_failures
        self.max_handshake_failures = max_handshake_failures
        """Failed TLS handshakes from one source within ``find_time`` that ban it (0: never)."""
        self.find_time = find_time
        self.ban_time = ban_time
        self.allowlist = tuple(ipaddress.ip_network(n, strict=False) for n in allowlist)
        self.ipv6_prefix = ipv6_prefix
        self.store = store
        self.on_ban = on_ban
        """Called with each newly banned key (the service closes that source's connections)."""
        self.save_delay = save_delay
        self._save_call: IDelayedCall | None = None
        self.dropped = 0
        """Datagrams and connections refused because their source is banned."""
        self.observers: list[BanObserver] = []
        """Told of each ban and unban (see :class:`BanObserver`)."""

    def key(self, host: str) -> str:
        """The key *host* is banned under: :func:`ban_key` with
        ``ipv6_prefix``, or the host alone when that network holds an
        allowlisted address (a neighbour must not get it banned)."""
        key = ban_key(host, self.ipv6_prefix)
        if "/" in key and self._allowlist_overlaps(ipaddress.ip_network(key)):
            return host_key(host)
        return key

    def _allowlist_overlaps(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        return any(network.overlaps(allowed) for allowed in self.allowlist)

    # -- the transports' question, for every datagram and connection --------------------

    def refuse_source(self, host: str) -> bool:
        state = self.state
        if not state.holds_bans():
            return False
        now = self.reactor.seconds()
        if ":" not in host:
            banned = state.banned(host, now) is not None
        else:
            banned = any(state.banned(key, now) is not None for key in self._keys(host))
        if banned:
            self.dropped += 1
        return banned

    def _keys(self, host: str) -> tuple[str, ...]:
        """The keys a ban on *host* may be held under: an IPv6 host is banned
        with its network, or alone (next to an allowlisted address)."""
        return (host,) if ":" not in host else (ban_key(host, self.ipv6_prefix), host_key(host))

    def explain_source(self, host: str) -> Explanation:
        """The transports' check for ``sipshield explain``: the ban in force on *host*, read only."""
        now = self.reactor.seconds()
        for key in self._keys(host):
            ban = self.state.ban_in_force(key, now)
            if ban is not None:
                return Explanation.of("bans", DROP, f"{key} is banned for {ban.until - now:.0f} s more: {ban.reason} (datagrams dropped unparsed, connections refused)")
        if self._allowed(host):
            return Explanation.passes("bans", f"{host} is in [bans] allowlist: never banned")
        return Explanation.passes("bans", f"{host} is not banned")

    # -- observing the security events ------------------------------------------------------

    def emit(self, event: SecurityEvent) -> None:
        if event.kind == AUTH_FAILURE:
            self._count(event, "auth:", self.max_failures, f"failed logins in {self.find_time:g} s (last: user {printable(event.user or '', 64)})")
        elif event.kind == TLS_HANDSHAKE_FAILURE and self.max_handshake_failures:
            # Over TCP: the source completed the TCP handshake, so it is its own address.
            self._count(event, "tls:", self.max_handshake_failures, f"failed TLS handshakes in {self.find_time:g} s (last: {printable(event.reason, 64)})")

    def _count(self, event: SecurityEvent, prefix: str, limit: int, what: str) -> None:
        """One more failure of *event*'s source under *prefix*; *limit* of them within ``find_time`` ban it."""
        if self._allowed(event.source):
            return
        key = self.key(event.source)
        now = self.reactor.seconds()
        if self.state.banned(key, now) is not None:
            return  # a guess verified after the ban landed: the ban stands, nothing to redo
        failures = self.state.hit(prefix + key, self.find_time, now, limit)
        if failures >= limit:
            self.state.forget(prefix + key)
            self.ban(key, f"{failures} {what}", transport=event.transport, user=event.user)

    def allowlisted(self, host: str) -> bool:
        """Is *host* in ``allowlist`` (never banned)?"""
        return self._allowed(host)

    def _allowed(self, host: str) -> bool:
        if not self.allowlist:
            return False
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allowlist)

    # -- bans ------------------------------------------------------------------------------

    def ban(self, key: str, reason: str, duration: float | None = None, *, transport: str = "", user: str | None = None) -> Ban:
        """Ban *key* (a host, or an IPv6 network from :func:`ban_key`) for
        *duration* seconds (``ban_time`` by default); logged as a ``ban``
        event and kept in the ban file."""
        now = self.reactor.seconds()
        until = now + (self.ban_time if duration is None else duration)
        held = self.state.banned(key, now)
        if held is not None and held.until >= until:
            return held  # already banned at least as long: no event, no connection scan, no write
        ban = Ban(key, until, reason[:200], now)
        self.state.ban(ban)
        if self.events is not None:
            self.events.emit(SecurityEvent(BAN, key, transport, user, f"banned for {ban.until - now:g} s: {reason}"))
        if self.on_ban is not None:
            self.on_ban(key)
        for observer in self.observers:
            observer.banned(ban)
        self._changed()
        return ban

    def unban(self, key: str) -> bool:
        lifted = self.state.unban(key)
        if lifted:
            if self.events is not None:
                self.events.emit(SecurityEvent(UNBAN, key, "", None, "ban lifted"))
            for observer in self.observers:
                observer.unbanned(key)
            self._changed()
        return lifted

    # -- bans made on another node (sipshield/state/_redis.py: a RemoteBanListener) ---------

    def remote_banned(self, ban: Ban) -> None:
        """Another node banned ``ban.key`` (already in the shared state):
        logged, that source's connections closed, the observers told and the
        ban file written, as for a ban made here; never published again."""
        if self.events is not None:
            now = self.reactor.seconds()
            self.events.emit(SecurityEvent(BAN, ban.key, "redis", None, f"banned for {ban.until - now:.0f} s on another node: {ban.reason}"))
        if self.on_ban is not None:
            self.on_ban(ban.key)
        for observer in self.observers:
            observer.banned(ban)
        self._changed()

    def remote_unbanned(self, key: str) -> None:
        """Another node lifted the ban on *key* (already gone from the shared state)."""
        if self.events is not None:
            self.events.emit(SecurityEvent(UNBAN, key, "redis", None, "ban lifted on another node"))
        for observer in self.observers:
            observer.unbanned(key)
        self._changed()

    def bans(self) -> list[Ban]:
        """Every ban in force, soonest to end first."""
        return self.state.bans(self.reactor.seconds())

    # -- keeping them between runs ----------------------------------------------------

    def load(self) -> int:
        """Put back the bans of the last run still in force; how many."""
        if self.store is None:
            return 0
        now = self.reactor.seconds()
        kept = [b for b in self.store.load() if b.until > now]
        for ban in kept:
            self.state.ban(ban)
        return len(kept)

    def save(self) -> None:
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
        self._save_call = None
        if self.store is not None:
            try:
                self.store.save(self.bans())
            except OSError as e:
                self.log.error("bans: cannot write {path}: {why}", path=str(self.store.path), why=e.strerror or str(e))

    def _changed(self) -> None:
        if self.store is not None and self._save_call is None:
            # The file is written whole: with many bans, less often (a second
            # more per thousand bans), so that a flood of bans cannot keep the
            # reactor writing.
            delay = self.save_delay + len(self.state.bans(self.reactor.seconds())) / 1000
            self._save_call = self.reactor.callLater(delay, self.save)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<BanPolicy {self.max_failures} in {self.find_time:g} s -> {self.ban_time:g} s>"


def build_ban_policy(
    config: Config, reactor: IReactorTime, events: SecurityEvents, on_ban: Callable[[str], None] | None = None, state: ShieldState | None = None,
) -> BanPolicy | None:
    """The policy ``[bans]`` asks for (None when disabled), kept in
    data_dir/bans.json.  Never banned: the allowlist and the trusted
    sources (a peer proxy or PBX there carries many users: one of them
    failing must not cut off all)."""
    bans = config.bans
    allowlist = tuple(dict.fromkeys((*bans.allowlist, *(t.network for t in config.auth.trusted_sources))))
    if not bans.enabled:
        return None
    return BanPolicy(
        reactor, state=state if state is not None else MemoryShieldState(max_bans=bans.max_bans), events=events, max_failures=bans.max_failures,
        find_time=bans.find_time, ban_time=bans.ban_time, allowlist=allowlist, ipv6_prefix=bans.ipv6_prefix,
        store=BanFile(config.server.data_dir / "bans.json", config.server.worker), on_ban=on_ban, max_handshake_failures=bans.max_handshake_failures,
    )
