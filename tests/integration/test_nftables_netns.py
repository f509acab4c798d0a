"""The kernel set's scripts against the real nft, in a network namespace the
test creates (skipped with the reason where that is not allowed, failing
under CI=true): NftBanSet and NftProcess on the real reactor, through
``ip netns exec NS nft`` (the command the config's ``nft`` would be).
The whole proxy in a namespace is tests/e2e/test_bans_nftables.py's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from netns_support import network_namespace, rule_counters, run_in, set_elements
from twisted.internet import reactor, task

from sipshield.config import NftablesConfig
from sipshield.security import BanPolicy, NftBanSet, NftPorts, NftProcess

PORTS = NftPorts(udp=(5060,), tcp=(5060, 5061))


@pytest.fixture
def namespace() -> Iterator[str]:
    with network_namespace() as name:
        yield name


def kernel_set(namespace: str, config: NftablesConfig | None = None) -> tuple[BanPolicy, NftBanSet]:
    policy = BanPolicy(reactor, ban_time=900)
    bans = NftBanSet(reactor, config or NftablesConfig(nft=Path("/usr/sbin/nft")), NftProcess(reactor, ("ip", "netns", "exec", namespace, "nft")), policy.bans)
    policy.observers.append(bans)
    return policy, bans


@pytest_twisted.inlineCallbacks
def test_the_real_nft_takes_the_setup_bans_unbans_and_a_second_start(namespace: str) -> Iterator:
    policy, bans = kernel_set(namespace)
    policy.ban("198.51.100.7", "first, before the table exists: the start writes it")
    bans.start(PORTS)
    yield bans.idle
    assert bans.failures == 0 and bans.runs == 1
    assert set(rule_counters(namespace, "sipshield", "input")) == {"ip udp", "ip tcp", "ip6 udp", "ip6 tcp"}
    assert set(set_elements(namespace, "sipshield", "banned4")) == {"198.51.100.7"}
    # A burst of bans (IPv4 hosts, IPv6 /64s and a link-local host), one unban, one re-ban for longer.
    for n in range(1, 51):
        policy.ban(f"192.0.2.{n}", "burst")
    policy.ban("2001:db8:0:7::/64", "v6", duration=120)
    policy.ban("fe80::1", "link-local host")
    policy.unban("198.51.100.7")
    yield bans.idle
    policy.ban("192.0.2.1", "longer", duration=5000)
    policy.unban("192.0.2.2")
    policy.unban("192.0.2.3")
    policy.ban("192.0.2.3", "again")
    yield bans.idle
    assert bans.failures == 0 and bans.runs <= 4
    v4 = set_elements(namespace, "sipshield", "banned4")
    assert "198.51.100.7" not in v4 and "192.0.2.2" not in v4 and len(v4) == 49
    assert 4990 <= v4["192.0.2.1"] <= 5000 and 890 <= v4["192.0.2.3"] <= 900
    assert set_elements(namespace, "sipshield", "banned6") == {"2001:db8:0:7::/64": 120, "fe80::1": 900}
    # A second start (a restart: the table is there) takes it over and writes the bans in force again.
    again, second = kernel_set(namespace)
    again.ban("203.0.113.9", "the only one of this run")
    second.start(NftPorts(udp=(5070,)))
    yield second.idle
    assert second.failures == 0
    assert set(set_elements(namespace, "sipshield", "banned4")) == {"203.0.113.9"}
    assert set(rule_counters(namespace, "sipshield", "input")) == {"ip udp", "ip6 udp"}
    listed = run_in(namespace, "nft", "list", "chain", "inet", "sipshield", "input").stdout
    assert "dport 5070" in listed and "5060" not in listed and "priority filter - 10" in listed


@pytest_twisted.inlineCallbacks
def test_a_refused_script_is_a_counted_failure_and_the_retry_heals_the_table(namespace: str) -> Iterator:
    policy, bans = kernel_set(namespace)
    bans.start(PORTS)
    yield bans.idle
    run_in(namespace, "nft", "delete", "table", "inet", "sipshield")  # someone removed it by hand
    policy.ban("192.0.2.77", "into a table that is gone")
    yield bans.idle
    assert bans.failures == 1 and policy.refuse_source("192.0.2.77")
    assert bans._retry_call is not None and bans._retry_call.active()
    bans._retry_call.reset(0)  # its back-off (1 s) ends now, not a second later: no waiting in a test
    yield task.deferLater(reactor, 0, lambda: None)  # the retry runs, and starts the batch of the whole table
    yield bans.idle
    assert bans.failures == 1 and bans.runs == 3
    assert set(set_elements(namespace, "sipshield", "banned4")) == {"192.0.2.77"}
