"""Bans in the kernel: an nftables set the kernel drops banned sources by.

With ``[bans.nftables] enabled = true`` the service keeps a table of its
own (family ``inet``, ``sipshield`` by default) holding two sets, one for
IPv4 and one for IPv6 (``flags interval, timeout``: an IPv6 /64 ban is one
element, and the kernel lets each element go when its ban ends), and one
chain hooked at input (priority filter - 10) that drops packets from those
sets to the SIP listeners' ports, UDP and TCP, and nothing else: a banned
address keeps its SSH and everything else on the host.

:class:`NftBanSet` observes the :class:`~sipshield.security.BanPolicy`
(``banned``/``unbanned``) and writes each change into those sets.  It never
blocks the reactor: every change goes into a batch script that one ``nft -f
-`` process reads on its stdin (:class:`NftProcess`, spawned through the
reactor), one process at a time; the changes made while one runs are
coalesced into the next.  Only what :mod:`ipaddress` parsed is written into
a script (a ban key that is not an address or network is left to the
in-process check), and the names come from the config, where they were
checked as nft identifiers: nothing a remote party sends reaches the script
as text.

Fail closed: the process-level drop (``BanPolicy.refuse_source``) holds
whatever nft does.  A failing nft is logged (throttled: one line a minute,
with a count of the failures held back), and the whole table is written
again (:meth:`NftBanSet.resync`) after a back-off, 1 s doubling up to 5
minutes.

At start the table, sets and chain are created if missing, the chain's rules
replaced (the listeners' ports may have changed) and both sets flushed and
filled with the bans in force (the ban file's): one nft transaction, so
there is no moment without them.  At stop the table is left in place: the
kernel keeps dropping banned sources across a restart, and each element
ends with its ban; the next start writes it again from the ban file.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twisted.internet import defer, error, protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipshield._ratelog import ThrottledLog
from sipshield.config import NftablesConfig
from sipshield.security._bans import BanPolicy
from sipshield.state import Ban

__all__ = ["NftBanSet", "NftPorts", "NftProcess", "NftResult", "ban_network", "build_nft_ban_set", "element_script", "setup_script"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_BACKOFF = 300.0


@dataclass(frozen=True)
class NftPorts:
    """The SIP listeners' ports the chain drops banned sources on."""

    udp: tuple[int, ...] = ()
    tcp: tuple[int, ...] = ()
    """TCP and TLS listeners."""


@dataclass(frozen=True)
class NftResult:
    """How one nft run ended: its exit code (None: it could not be run) and what it wrote on stderr."""

    code: int | None
    stderr: str


def ban_network(key: str) -> Network | None:
    """The network a ban *key* stands for (a host is its /32 or /128), as
    :mod:`ipaddress` parsed it; None for a key that is no address (that one
    stays an in-process ban only)."""
    try:
        network = ipaddress.ip_network(key.split("%", 1)[0], strict=True)
    except ValueError:
        return None
    return network


def _element(network: Network) -> str:
    full = network.prefixlen == network.max_prefixlen
    return str(network.network_address) if full else str(network)


def _set_name(config: NftablesConfig, network: Network) -> str:
    return config.set4 if network.version == 4 else config.set6


def _timeout(until: float, now: float) -> int:
    """Whole seconds left (at least 1: nft refuses 0)."""
    return max(1, math.ceil(until - now))


def setup_script(config: NftablesConfig, ports: NftPorts) -> list[str]:
    """The table, its two sets and its chain, created if missing; the
    chain's rules replaced; both sets emptied (the caller adds the bans in
    force after these lines, in the same transaction)."""
    table = f"inet {config.table}"
    lines = [
        f"add table {table}",
        f"add set {table} {config.set4} {{ type ipv4_addr; flags interval, timeout; }}",
        f"add set {table} {config.set6} {{ type ipv6_addr; flags interval, timeout; }}",
        f"add chain {table} {config.chain} {{ type filter hook input priority filter - 10; policy accept; }}",
        f"flush chain {table} {config.chain}",
        f"flush set {table} {config.set4}",
        f"flush set {table} {config.set6}",
    ]
    for family, set_name in (("ip", config.set4), ("ip6", config.set6)):
        for proto, numbers in (("udp", ports.udp), ("tcp", ports.tcp)):
            if numbers:
                listed = ", ".join(str(port) for port in sorted(set(numbers)))
                lines.append(f"add rule {table} {config.chain} {family} saddr @{set_name} {proto} dport {{ {listed} }} counter drop")
    return lines


def element_script(config: NftablesConfig, network: Network, timeout: int | None) -> list[str]:
    """Lines that leave *network* in its set with *timeout* seconds to go
    (None: not in it), whether it was there before or not.  nft applies a
    script as one transaction and a delete of a missing element would fail
    it whole, so the element is added (a no-op when present) before it is
    deleted; then added again with its new timeout (``add`` alone keeps an
    existing element's old one)."""
    where = f"inet {config.table} {_set_name(config, network)}"
    element = _element(network)
    lines = [f"add element {where} {{ {element} timeout 1s }}", f"delete element {where} {{ {element} }}"]
    if timeout is not None:
        lines.append(f"add element {where} {{ {element} timeout {timeout}s }}")
    return lines


def _disjoint(bans: Iterable[Ban]) -> list[tuple[Network, float]]:
    """The networks of *bans*, none inside another (an interval set refuses
    overlapping elements): a network inside a wider banned one is left to
    the wider one (and to the in-process check after the wider one ends)."""
    networks: dict[Network, float] = {}
    for ban in bans:
        network = ban_network(ban.key)
        if network is not None:
            networks[network] = max(ban.until, networks.get(network, 0.0))
    kept: list[tuple[Network, float]] = []
    for version in (4, 6):
        widest_first = sorted((n for n in networks if n.version == version), key=lambda n: (n.prefixlen, n.network_address))
        # Linear in the bans (times the prefix lengths held, at most 129):
        # comparing each with every kept one took a minute for 8000 bans,
        # on the reactor, and an attacker with a /48 can earn that many.
        held: set[Network] = set()
        lengths: list[int] = []
        for network in widest_first:
            if not any(network.supernet(new_prefix=length) in held for length in lengths):
                held.add(network)
                if not lengths or lengths[-1] != network.prefixlen:
                    lengths.append(network.prefixlen)
                kept.append((network, networks[network]))
    return kept


class NftProcess:
    """Runs ``nft -f -`` (*argv*, then ``-f -``) with a script on its stdin,
    through the reactor (never blocking it)."""

    def __init__(self, reactor: IReactorProcess, argv: Sequence[str]) -> None:
        self.reactor = reactor
        self.argv = (*argv, "-f", "-")

    def __call__(self, script: str) -> Deferred[NftResult]:
        done: Deferred[NftResult] = Deferred()
        proto = _NftProtocol(script.encode("ascii"), done)
        try:
            self.reactor.spawnProcess(proto, self.argv[0], list(self.argv), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except OSError as e:
            return defer.succeed(NftResult(None, f"cannot run {self.argv[0]}: {e.strerror or e}"))
        return done


class _NftProtocol(protocol.ProcessProtocol):
    def __init__(self, script: bytes, done: Deferred[NftResult]) -> None:
        self.script = script
        self.done = done
        self.stderr: list[bytes] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.script)
        self.transport.closeStdin()

    def errReceived(self, data: bytes) -> None:
        if sum(map(len, self.stderr)) < 4096:
            self.stderr.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(error.ProcessDone) else getattr(reason.value, "exitCode", None)
        self.done.callback(NftResult(code, b"".join(self.stderr).decode("utf-8", "replace")[:4096]))


class NftBanSet:
    """The bans of a :class:`~sipshield.security.BanPolicy` in an nftables
    set (a ``BanObserver``): see the module's docstring.  *run* takes a
    script and fires with its :class:`NftResult` (:class:`NftProcess`; a
    test may pass its own); *current* gives the bans in force (the policy's
    ``bans``), which :meth:`resync` writes whole."""

    log = Logger()

    def __init__(
        self, reactor: IReactorTime, config: NftablesConfig, run: Callable[[str], Deferred[NftResult]], current: Callable[[], Sequence[Ban]],
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.run = run
        self.current = current
        self.ports = NftPorts()
        self.started = False
        self.runs = 0
        """nft processes run."""
        self.failures = 0
        """nft runs that failed."""
        self._changes: dict[Network, float | None] = {}  # network -> until (None: unbanned), coalesced
        self._resync = False
        self._busy = False
        self._flush_call: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        self._backoff = 1.0
        self._failure_log = ThrottledLog(self.log, reactor, per_kind=1)
        self.idle: Deferred[None] | None = None
        """While changes wait or nft runs: fires once all is written (or has failed)."""

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, ports: NftPorts) -> None:
        """Create (or take over) the table for *ports* and write the bans in force."""
        self.ports = ports
        self.started = True
        self.resync()

    def stop(self) -> None:
        """No more writes (the table stays: see the module's docstring)."""
        self.started = False
        for call in (self._flush_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._retry_call = None
        self._changes.clear()
        self._resync = False
        if not self._busy:
            self._idle()

    def resync(self) -> None:
        """Write the whole table again (at start, and after nft failed)."""
        self._resync = True
        self._changes.clear()
        self._schedule()

    # -- the BanPolicy's observer --------------------------------------------------------

    def banned(self, ban: Ban) -> None:
        network = ban_network(ban.key)
        if network is not None and self.started:
            self._changes[network] = ban.until
            self._schedule()

    def unbanned(self, key: str) -> None:
        network = ban_network(key)
        if network is not None and self.started:
            self._changes[network] = None
            self._schedule()

    # -- batches ---------------------------------------------------------------------------

    def script(self) -> list[str]:
        """The lines the next batch would run (and, for a resync, the setup)."""
        now = self.reactor.seconds()
        lines: list[str] = []
        if self._resync:
            lines += setup_script(self.config, self.ports)
            for network, until in _disjoint(self.current()):
                if until > now:
                    where = f"inet {self.config.table} {_set_name(self.config, network)}"
                    lines.append(f"add element {where} {{ {_element(network)} timeout {_timeout(until, now)}s }}")
            return lines
        for network, ends in self._changes.items():
            lines += element_script(self.config, network, None if ends is None or ends <= now else _timeout(ends, now))
        return lines

    def _schedule(self) -> None:
        if self.idle is None:
            self.idle = Deferred()
        retrying = self._retry_call is not None and self._retry_call.active()
        if not self._busy and self._flush_call is None and not retrying:  # a retry writes everything anyway
            # On the next turn: the changes of this one (a burst of bans) go in one batch.
            self._flush_call = self.reactor.callLater(0, self._flush)  # type: ignore[attr-defined]

    def _flush(self) -> None:
        self._flush_call = None
        if not self.started or self._busy:
            return
        if not self._resync and not self._changes:
            self._idle()
            return
        lines = self.script()
        whole = self._resync
        self._resync = False
        self._changes.clear()
        self._busy = True
        self.runs += 1
        d = defer.maybeDeferred(self.run, "\n".join(lines) + "\n")
        d.addErrback(lambda f: NftResult(None, f.getErrorMessage()))
        d.addCallback(self._ran, sum(line.startswith("add element") for line in lines) if whole else None)

    def _ran(self, result: NftResult, written: int | None) -> None:
        """*written*: for a whole table, how many bans it holds."""
        self._busy = False
        if result.code != 0:
            self.failures += 1
            why = " ".join(result.stderr.split())[:300] or f"exit code {result.code}"
            self._failure_log.warn(
                "nft", "nft", "bans: nft failed ({why}); the bans still hold in the process, the kernel table is written again in {delay:g} s",
                why=why, delay=self._backoff,
            )
            if self.started and self._retry_call is None:
                self._retry_call = self.reactor.callLater(self._backoff, self._retry)  # type: ignore[attr-defined]
                self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            self._idle()
            return
        self._backoff = 1.0
        if written is not None:
            self.log.info("bans: nftables table inet {table} written, {count} ban(s) in the kernel", table=self.config.table, count=written)
        if self._resync or self._changes:
            self._schedule()
        else:
            self._idle()

    def _retry(self) -> None:
        self._retry_call = None
        if self.started:
            self.resync()

    def _idle(self) -> None:
        idle, self.idle = self.idle, None
        if idle is not None:
            idle.callback(None)

    def __repr__(self) -> str:
        return f"<NftBanSet inet {self.config.table} {self.config.set4}/{self.config.set6}>"


def build_nft_ban_set(config: NftablesConfig | None, reactor: IReactorTime, policy: BanPolicy | None) -> NftBanSet | None:
    """The kernel set ``[bans.nftables]`` asks for, observing *policy*
    (None when either is off); started by the service once its listeners
    are bound (their ports go into the chain's rules)."""
    if config is None or policy is None:
        return None
    nft = NftBanSet(reactor, config, NftProcess(reactor, (str(config.nft),)), policy.bans)  # type: ignore[arg-type]
    policy.observers.append(nft)
    return nft
