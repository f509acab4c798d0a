"""Bans in the kernel ([bans.nftables]): the nft scripts written for a ban,
an unban, the bans loaded at start and bans ending, on Clock time; the names
checked as nft identifiers and the keys as addresses (nothing else reaches a
script); one nft at a time, with the changes meanwhile coalesced; a failing
nft logged once and retried while the in-process ban holds.

Here nft is a recording stand-in (the batching is what is tested); the real
nft, in a network namespace, is tests/e2e/test_bans_nftables.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_support import build_service, proxy_service, stop_sql_location
from test_bans import ATTACKER, wrong_password
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from sipshield.config import ConfigError, NftablesConfig, parse_config
from sipshield.security import BanFile, BanPolicy, NftBanSet, NftPorts, NftResult
from sipshield.security._nftables import ban_network, element_script, setup_script
from sipshield.state import Ban

PORTS = NftPorts(udp=(5060,), tcp=(5060, 5061))
SET4 = "inet sipshield banned4"
SET6 = "inet sipshield banned6"


class RecordingNft:
    """Takes each script nft would read; each run ends when the test says."""

    def __init__(self) -> None:
        self.scripts: list[list[str]] = []
        self.running: list[Deferred[NftResult]] = []

    def __call__(self, script: str) -> Deferred[NftResult]:
        assert script.endswith("\n")
        self.scripts.append(script.splitlines())
        d: Deferred[NftResult] = Deferred()
        self.running.append(d)
        return d

    def finish(self, code: int = 0, stderr: str = "") -> None:
        self.running.pop(0).callback(NftResult(code, stderr))


def kernel_set(clock: Clock, **kwargs: Any) -> tuple[BanPolicy, NftBanSet, RecordingNft]:
    policy = BanPolicy(clock, **kwargs)
    nft = RecordingNft()
    bans = NftBanSet(clock, NftablesConfig(), nft, policy.bans)
    policy.observers.append(bans)
    return policy, bans, nft


def started(clock: Clock, **kwargs: Any) -> tuple[BanPolicy, NftBanSet, RecordingNft]:
    policy, bans, nft = kernel_set(clock, **kwargs)
    bans.start(PORTS)
    clock.advance(0)
    nft.finish()
    nft.scripts.clear()
    return policy, bans, nft


def update(element: str, where: str = SET4, timeout: int | None = None) -> list[str]:
    lines = [f"add element {where} {{ {element} timeout 1s }}", f"delete element {where} {{ {element} }}"]
    return lines + ([f"add element {where} {{ {element} timeout {timeout}s }}"] if timeout is not None else [])


# -- the scripts ----------------------------------------------------------------------------


def test_setup_creates_its_own_table_sets_and_chain_dropping_banned_sources_to_the_sip_ports_only() -> None:
    lines = setup_script(NftablesConfig(), PORTS)
    assert lines == [
        "add table inet sipshield",
        "add set inet sipshield banned4 { type ipv4_addr; flags interval, timeout; }",
        "add set inet sipshield banned6 { type ipv6_addr; flags interval, timeout; }",
        "add chain inet sipshield input { type filter hook input priority filter - 10; policy accept; }",
        "flush chain inet sipshield input",
        "flush set inet sipshield banned4",
        "flush set inet sipshield banned6",
        "add rule inet sipshield input ip saddr @banned4 udp dport { 5060 } counter drop",
        "add rule inet sipshield input ip saddr @banned4 tcp dport { 5060, 5061 } counter drop",
        "add rule inet sipshield input ip6 saddr @banned6 udp dport { 5060 } counter drop",
        "add rule inet sipshield input ip6 saddr @banned6 tcp dport { 5060, 5061 } counter drop",
    ]
    # No rule for a protocol without a listener (and none that drops anything else: SSH stays open).
    tls_only = setup_script(NftablesConfig(table="edge", set4="b4", set6="b6", chain="sip"), NftPorts(tcp=(5061,)))
    assert [line for line in tls_only if "rule" in line] == [
        "add rule inet edge sip ip saddr @b4 tcp dport { 5061 } counter drop",
        "add rule inet edge sip ip6 saddr @b6 tcp dport { 5061 } counter drop",
    ]


def test_keys_become_elements_only_through_ipaddress() -> None:
    assert str(ban_network("192.0.2.7")) == "192.0.2.7/32"
    assert str(ban_network("2001:db8:1:2::/64")) == "2001:db8:1:2::/64"
    assert str(ban_network("fe80::1%eth0")) == "fe80::1/128"
    for hostile in ("host.example.com", "1.2.3.4 }; flush ruleset; add element x {", "10.0.0.1/8", "", "::1/129"):
        assert ban_network(hostile) is None, hostile
    network = ban_network("2001:db8::/64")
    assert network is not None
    assert element_script(NftablesConfig(), network, 5) == update("2001:db8::/64", SET6, 5)


def test_names_are_nft_identifiers_and_the_binary_must_exist(tmp_path: Path) -> None:
    assert parse_config({}).bans.nftables is None
    assert parse_config({"bans": {"nftables": {"enabled": False, "nft": "/no/such/nft"}}}).bans.nftables is None
    fake = tmp_path / "nft"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    parsed = parse_config({"bans": {"nftables": {"enabled": True, "nft": str(fake), "table": "edge_1"}}})
    assert parsed.bans.nftables == NftablesConfig(nft=fake, table="edge_1")
    assert f"in the kernel too: nftables table inet edge_1, sets banned4 and banned6, through {fake}" in dict(parsed.posture())["bans"]
    for key, value in (("table", "sipshield; flush ruleset"), ("set4", "a b"), ("set6", "x}"), ("chain", "1input"), ("table", "t" * 33), ("set4", "")):
        with pytest.raises(ConfigError, match=rf"bans\.nftables\.{key}: .* is not an nft name"):
            parse_config({"bans": {"nftables": {"enabled": True, "nft": str(fake), key: value}}})
    with pytest.raises(ConfigError, match=r"bans\.nftables\.set6: must differ from set4"):
        parse_config({"bans": {"nftables": {"nft": str(fake), "set6": "banned4"}}})
    with pytest.raises(ConfigError, match=r"bans\.nftables\.nft: '/no/such/nft' is not an executable \(apt-get install nftables"):
        parse_config({"bans": {"nftables": {"enabled": True, "nft": "/no/such/nft"}}})
    with pytest.raises(ConfigError, match=r"bans\.nftables: unknown key\(s\): family"):
        parse_config({"bans": {"nftables": {"family": "ip"}}})


# -- ban, unban, load, expiry on Clock time ---------------------------------------------------


def test_start_writes_the_loaded_bans_with_the_time_they_have_left(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(10_000)
    store = BanFile(tmp_path / "bans.json")
    store.save([Ban("192.0.2.7", 10_900.0, "r"), Ban("2001:db8:0:1::/64", 10_030.5, "r"), Ban("192.0.2.8", 9_000.0, "over"), Ban("not-an-ip", 20_000.0, "r")])
    policy, bans, nft = kernel_set(clock, store=store)
    assert policy.load() == 3
    bans.banned(Ban("192.0.2.9", 10_100.0, "before start"))  # the start writes everything anyway
    bans.start(PORTS)
    clock.advance(0)
    (script,) = nft.scripts
    assert script[:7] == setup_script(NftablesConfig(), PORTS)[:7]
    assert script[-2:] == [f"add element {SET4} {{ 192.0.2.7 timeout 900s }}", f"add element {SET6} {{ 2001:db8:0:1::/64 timeout 31s }}"]
    assert not any("not-an-ip" in line or "192.0.2.8" in line or "192.0.2.9" in line for line in script)


def test_ban_unban_and_a_longer_ban_each_update_the_element() -> None:
    clock = Clock()
    policy, bans, nft = started(clock, ban_time=900)
    policy.ban("192.0.2.7", "test")
    assert nft.scripts == []  # on the next turn, with whatever else this one bans
    clock.advance(0)
    assert nft.scripts == [update("192.0.2.7", timeout=900)]
    nft.finish()
    clock.advance(100)
    policy.ban("192.0.2.7", "again", duration=2000)  # longer: the kernel's timeout follows
    policy.ban("192.0.2.7", "shorter", duration=10)  # shorter than held: nothing changes
    clock.advance(0)
    assert nft.scripts[-1] == update("192.0.2.7", timeout=2000)
    nft.finish()
    assert policy.unban("192.0.2.7")
    clock.advance(0)
    assert nft.scripts[-1] == update("192.0.2.7")
    nft.finish()
    assert not policy.unban("192.0.2.7")  # nothing held: no nft run
    clock.advance(0)
    assert len(nft.scripts) == 3 and bans.runs == 4


def test_expiry_is_the_kernels_timeout_and_a_ban_ended_before_its_batch_is_removed() -> None:
    clock = Clock()
    policy, bans, nft = started(clock, ban_time=60)
    policy.ban("192.0.2.7", "test")
    policy.ban("192.0.2.8", "test", duration=0.5)
    clock.advance(0)
    assert nft.scripts == [update("192.0.2.7", timeout=60) + update("192.0.2.8", timeout=1)]
    # While that nft runs (slowly), 192.0.2.9's ban ends before its own batch starts.
    policy.ban("192.0.2.9", "test", duration=1)
    clock.advance(2)
    nft.finish()
    clock.advance(0)
    assert nft.scripts[-1] == update("192.0.2.9")
    nft.finish()
    # Past 192.0.2.7's end nothing is written: the kernel let the element go when its timeout ran out.
    clock.advance(100)
    assert len(nft.scripts) == 2 and not policy.refuse_source("192.0.2.7")


def test_one_nft_at_a_time_and_the_changes_meanwhile_coalesce_into_one_batch() -> None:
    clock = Clock()
    policy, bans, nft = started(clock, ban_time=900)
    for n in range(1, 101):
        policy.ban(f"192.0.2.{n}", "burst")
    clock.advance(0)
    assert len(nft.scripts) == 1 and len(nft.scripts[0]) == 300  # a hundred bans, one process
    # While it runs: more bans, an unban, a ban then an unban of one key: one batch after, its last word each.
    policy.ban("198.51.100.1", "while running")
    policy.ban("198.51.100.2", "while running")
    policy.unban("198.51.100.2")
    policy.unban("192.0.2.1")
    policy.ban("2001:db8::5", "v6", duration=30)
    clock.advance(0)
    assert len(nft.running) == 1  # still the first one
    nft.finish()
    clock.advance(0)
    assert nft.scripts[1] == update("198.51.100.1", timeout=900) + update("198.51.100.2") + update("192.0.2.1") + update("2001:db8::5", SET6, 30)
    nft.finish()
    clock.advance(0)
    assert len(nft.scripts) == 2 and bans.idle is None
    # Stopped with a change waiting: it is dropped (the next start writes the ban file's bans), and nothing waits on it.
    policy.ban("198.51.100.9", "at stop")
    waiting = bans.idle
    bans.stop()
    clock.advance(0)
    assert len(nft.scripts) == 2 and waiting is not None and waiting.called and bans.idle is None


def test_resync_never_writes_overlapping_elements() -> None:
    clock = Clock()
    policy, bans, nft = started(clock)
    policy.ban("2001:db8:0:1::7", "host, next to an allowlisted address once", duration=500)
    policy.ban("2001:db8:0:1::/64", "its network", duration=100)
    policy.ban("2001:db8:0:2::/64", "another", duration=100)
    clock.advance(0)
    nft.finish()
    bans.resync()
    clock.advance(0)
    elements = [line for line in nft.scripts[-1] if line.startswith("add element")]
    assert elements == [f"add element {SET6} {{ 2001:db8:0:1::/64 timeout 100s }}", f"add element {SET6} {{ 2001:db8:0:2::/64 timeout 100s }}"]


def test_a_failing_nft_is_logged_once_retried_with_backoff_and_the_process_still_refuses() -> None:
    clock = Clock()
    policy, bans, nft = started(clock)
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        policy.ban("192.0.2.7", "test")
        clock.advance(0)
        nft.finish(1, "Error: Could not process rule: Operation not permitted\n")
        assert policy.refuse_source("192.0.2.7")  # fail closed: the in-process ban holds
        policy.ban("192.0.2.8", "during the back-off")  # waits for the retry, which writes everything
        clock.advance(0.9)
        assert len(nft.scripts) == 1
        clock.advance(0.1)
        assert len(nft.scripts) == 2 and nft.scripts[1][0] == "add table inet sipshield"
        assert {line.split(" {")[0] for line in nft.scripts[1] if "element" in line} == {f"add element {SET4}"}
        assert sum("192.0.2." in line for line in nft.scripts[1]) == 2
        nft.finish(1, "Error: again\n")
        clock.advance(2)  # the second back-off: 2 s
        assert len(nft.scripts) == 3
        nft.finish(0)
        policy.ban("192.0.2.9", "healed")
        clock.advance(0)
        assert nft.scripts[-1] == update("192.0.2.9", timeout=900)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    failures = [e for e in logged if e.get("log_kind") == "nft"]
    assert len(failures) == 1 and failures[0]["log_level"] == LogLevel.warn  # two failures, one line a minute
    assert "Operation not permitted" in failures[0]["why"] and bans.failures == 2


def test_an_nft_that_cannot_start_counts_as_failed() -> None:
    clock = Clock()
    policy = BanPolicy(clock)

    def broken(script: str) -> Deferred[NftResult]:
        raise OSError(2, "No such file or directory")

    bans = NftBanSet(clock, NftablesConfig(), broken, policy.bans)
    bans.start(PORTS)
    clock.advance(0)
    assert bans.failures == 1 and bans.idle is None


# -- through the service ---------------------------------------------------------------------


def test_three_wrong_passwords_through_the_service_put_the_guesser_in_the_kernel_set(tmp_path: Path) -> None:
    proxy = proxy_service(tmp_path, bans={"nftables": {"enabled": True, "nft": "/bin/true"}})
    try:
        service = proxy.service
        assert service.nft_bans is not None and service.nft_bans in service.bans.observers
        nft = RecordingNft()
        service.nft_bans.run = nft
        service._start_nft_bans()
        proxy.clock.advance(0)
        nft.finish()
        assert [wrong_password(proxy, ATTACKER) for _ in range(3)] == [401, 401, None]
        proxy.clock.advance(0)
        assert nft.scripts[-1] == update(ATTACKER[0], timeout=900)
    finally:
        proxy.stop()


def test_without_nftables_the_service_has_no_kernel_set(tmp_path: Path) -> None:
    assert build_service(tmp_path).nft_bans is None
    assert build_service(tmp_path, {"bans": {"enabled": False, "nftables": {"enabled": True, "nft": "/bin/true"}}}).nft_bans is None


def test_a_resync_of_thousands_of_bans_is_linear_and_still_never_overlaps() -> None:
    """attack/nft_many_bans.py: comparing each network with every kept one
    took a minute for 8000 bans, on the reactor; an attacker with a /48 has
    65536 /64s to earn bans from."""
    import time

    clock = Clock()
    policy, bans, nft = started(clock)
    for i in range(10_000):
        policy.ban(f"2001:db8:{i >> 8:x}:{i & 255:x}::/64", "guessed", duration=100)
    policy.ban("2001:db8:1::/48", "a wider one holds 256 of them", duration=100)
    policy.ban("2001:db8:2:5::9", "a host inside a banned /64", duration=100)
    clock.advance(0)
    nft.finish()
    bans.resync()
    began = time.perf_counter()
    clock.advance(0)
    took = time.perf_counter() - began
    elements = [line for line in nft.scripts[-1] if line.startswith("add element")]
    assert len(elements) == 10_000 - 256 + 1
    assert f"add element {SET6} {{ 2001:db8:1::/48 timeout 100s }}" in elements
    assert not any(("2001:db8:1:" in line and "/48" not in line) or "2001:db8:2:5::9" in line for line in elements)
    assert took < 15, took  # quadratic: well over a minute


def test_a_workers_table_drops_banned_sources_on_every_workers_own_port_too(tmp_path: Path) -> None:
    """With ``[server] workers = 3``, worker 1 writes the rules: its UDP
    listener's shared port 5070, and the own ports of workers 0, 1 and 2
    (5071-5073), where every dialog a worker record-routed comes back; the
    TCP listener's port. Each worker writes the same rules, so whichever
    wrote last, no worker's own port is left open to a banned source."""
    proxy = proxy_service(tmp_path, server={"listen": ["udp:5070", "tcp:5070"], "workers": 3},
                          registrar={"store": "sql"}, bans={"nftables": {"enabled": True, "nft": "/bin/true"}})

    class Port:
        def __init__(self, port: int) -> None:
            self.port = port

        def getHost(self) -> Any:
            return type("Host", (), {"host": "127.0.0.1", "port": self.port})()

    try:
        service = proxy.service
        udp, tcp = service.listeners
        udp.port, udp.own_port, tcp.port = Port(5070), Port(5072), Port(5070)
        nft = RecordingNft()
        assert service.nft_bans is not None
        service.nft_bans.run = nft
        service._start_nft_bans()
        proxy.clock.advance(0)
        script = "\n".join(line for lines in nft.scripts for line in lines)
        assert "udp dport { 5070, 5071, 5072, 5073 } counter drop" in script, script
        assert "tcp dport { 5070 } counter drop" in script, script
    finally:
        udp.port = udp.own_port = tcp.port = None
        stop_sql_location(service)
        proxy.stop()
