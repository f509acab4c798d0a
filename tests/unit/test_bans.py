"""Bans after failed logins ([bans]): the counting on Clock time, the
return-path rule (a forged source never gets its victim banned), the drop
before parsing for UDP and at TCP accept, and bans kept across a restart,
through the real service and its real UDP/TCP protocols (no sockets)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import ALICE, PASSWORD, Proxy, build_service, options, proxy_service, stop_sql_location
from test_transport import connect, udp_protocol
from twisted.internet.task import Clock

from sipshield.config import ConfigError, parse_config
from sipshield.events import AUTH_FAILURE, BAN, SecurityEvent, SecurityEventBus
from sipshield.security import BanFile, BanPolicy, ban_key
from sipshield.state import Ban, MemoryShieldState
from sipshield.transport import SIPStreamFactory

ATTACKER = ("127.0.0.5", 5070)
RUOTE = "sip:example.com"


class Recorder:
    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []

    def emit(self, event: SecurityEvent) -> None:
        self.events.append(event)


def failure(source: str, user: str = "alice", transport: str = "UDP") -> SecurityEvent:
    return SecurityEvent(AUTH_FAILURE, source, transport, user, "credentials refused")


def policy(clock: Clock, **kwargs: Any) -> tuple[BanPolicy, Recorder]:
    recorder = Recorder()
    bus = SecurityEventBus([recorder])
    bans = BanPolicy(clock, events=bus, **kwargs)
    bus.subscribe(bans)
    return bans, recorder


# -- the state: windows, buckets, bans, all bounded ------------------------------------------


def test_failure_window_counts_only_the_last_window_seconds() -> None:
    state = MemoryShieldState()
    assert [state.hit("k", 60, t, 3) for t in (0, 10, 20)] == [1, 2, 3]
    assert state.hit("k", 60, 75, 3) == 2  # 0 and 10 fell out; 20 and 75 remain
    state.forget("k")
    assert state.hit("k", 60, 76, 3) == 1


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    state = MemoryShieldState()
    assert [state.take("b", 1.0, 2, 0) for _ in range(3)] == [True, True, False]
    assert state.take("b", 1.0, 2, 1.0) is True
    assert state.take("b", 1.0, 2, 1.0) is False
    assert [state.take("b", 1.0, 2, 100.0) for _ in range(3)] == [True, True, False]  # capped at the burst


def test_tables_are_bounded_and_count_what_they_forget() -> None:
    state = MemoryShieldState(max_keys=2, max_bans=2)
    for n in range(5):
        state.hit(f"k{n}", 60, 0, 3)
    assert state.evicted == 3 and state.hit("k4", 60, 1, 3) == 2
    state.ban(Ban("a", 100, "x"))
    state.ban(Ban("b", 50, "x"))
    state.ban(Ban("c", 200, "x"))  # full: "b" ends soonest and makes room
    assert [b.key for b in state.bans(0)] == ["a", "c"]
    assert state.banned("a", 100) is None and [b.key for b in state.bans(100)] == ["c"]  # expired


def test_counted_calls_are_bounded_per_owner_and_in_all_and_expire() -> None:
    state = MemoryShieldState(max_keys=3)
    assert [state.open_call("alice", f"c{n}", 2, 100.0, 0) for n in range(3)] == [True, True, False]
    assert not state.open_call("bob", "c0", 2, 100.0, 0)  # a key already counted
    assert state.open_call("bob", "b0", 2, 100.0, 0)
    assert state.open_call("carol", "x0", 2, 100.0, 0)  # full: the oldest (alice's c0) is forgotten
    assert state.evicted == 1
    state.answer_call("c1", "t1")
    assert not state.close_call("c1", "other") and state.close_call("c1", "t1") and not state.close_call("c1")
    assert state.open_call("alice", "c2", 2, 100.0, 0) and state.open_call("alice", "c3", 2, 100.0, 0)
    assert not state.open_call("alice", "c4", 2, 200.0, 99.0)
    assert state.open_call("alice", "c4", 2, 200.0, 100.0)  # both of alice's ended at 100


def test_ipv6_sources_are_banned_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    assert ban_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert ban_key("2001:db8:1:2:aaaa::1", 48) == "2001:db8:1::/48"
    assert ban_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert ban_key("192.0.2.7") == "192.0.2.7"


# -- the policy, on Clock time -----------------------------------------------------------------


def test_three_failures_within_the_window_ban_for_ban_time_then_it_ends() -> None:
    clock = Clock()
    clock.advance(1000)
    bans, recorder = policy(clock, max_failures=3, find_time=60, ban_time=900)
    for _ in range(2):
        bans.emit(failure("192.0.2.9"))
        clock.advance(20)
    assert not bans.refuse_source("192.0.2.9")
    bans.emit(failure("192.0.2.9"))
    assert bans.refuse_source("192.0.2.9") and not bans.refuse_source("192.0.2.10")
    (ban,) = [e for e in recorder.events if e.kind == BAN]
    assert ban.source == "192.0.2.9" and "3 failed logins in 60 s" in ban.reason and ban.user == "alice"
    clock.advance(899)
    assert bans.refuse_source("192.0.2.9")
    clock.advance(1)
    assert not bans.refuse_source("192.0.2.9")
    assert bans.dropped == 2


def test_failures_spread_wider_than_the_window_never_ban() -> None:
    clock = Clock()
    bans, _ = policy(clock, max_failures=3, find_time=60)
    for _ in range(10):
        bans.emit(failure("192.0.2.9"))
        clock.advance(31)  # two within any 60 s, never three
    assert not bans.refuse_source("192.0.2.9") and bans.bans() == []


def test_the_allowlist_is_never_banned_and_other_events_do_not_count() -> None:
    clock = Clock()
    bans, _ = policy(clock, allowlist=["192.0.2.0/24", "2001:db8::/32"])
    for _ in range(5):
        bans.emit(failure("192.0.2.9"))
        bans.emit(failure("::ffff:192.0.2.9"))
        bans.emit(failure("2001:db8::5"))
        bans.emit(SecurityEvent("acl-deny", "198.51.100.1", "UDP", None, "x"))
    assert bans.bans() == []


def test_an_ipv6_guesser_rotating_addresses_in_its_64_is_banned_whole() -> None:
    clock = Clock()
    bans, _ = policy(clock)
    for n in range(3):
        bans.emit(failure(f"2001:db8:0:7::{n + 1}"))
    assert bans.refuse_source("2001:db8:0:7::beef") and not bans.refuse_source("2001:db8:0:8::1")


def test_config_section_and_its_errors_name_the_key() -> None:
    config = parse_config({"bans": {"max_failures": 5, "find_time": 30, "ban_time": 3600, "allowlist": ["10.0.0.0/8"]}})
    assert (config.bans.max_failures, config.bans.find_time, config.bans.ban_time) == (5, 30.0, 3600.0)
    with pytest.raises(ConfigError, match=r"bans\.allowlist\[1\]"):
        parse_config({"bans": {"allowlist": ["10.0.0.0/8", "nonsense"]}})
    with pytest.raises(ConfigError, match=r"bans\.max_failures"):
        parse_config({"bans": {"max_failures": 0}})
    with pytest.raises(ConfigError, match=r"bans: unknown key\(s\): maxretry"):
        parse_config({"bans": {"maxretry": 3}})


# -- through the real service: the return-path rule and the drop before parsing -------------


def wrong_password(proxy: Proxy, source: tuple[str, int], transport: str = "UDP") -> int | None:
    answer = proxy.send_request("REGISTER", RUOTE, from_uri="sip:alice@example.com", to="sip:alice@example.com",
                                credentials=("alice", "not-" + PASSWORD), source=source, transport=transport)
    return None if answer is None else answer.status


def test_three_wrong_passwords_ban_the_guesser_and_its_datagrams_are_dropped_unparsed(tmp_path: Path) -> None:
    proxy = proxy_service(tmp_path)
    try:
        # The third failure bans: its own answer is dropped too (the source is refused from then on).
        assert [wrong_password(proxy, ATTACKER) for _ in range(3)] == [401, 401, None]
        assert proxy.core.refuse_source(ATTACKER[0])
        # The real UDP protocol, with the service's core as its handler: nothing is parsed or answered.
        proto, writer = udp_protocol(proxy.core)
        requests = proxy.core.counters["requests"]
        proto.datagramReceived(options("after-ban", "UDP"), ATTACKER)
        proto.datagramReceived(b"not even SIP", ATTACKER)
        assert writer.written == [] and proxy.core.counters["requests"] == requests
        proto.datagramReceived(options("bystander", "UDP"), ("127.0.0.6", 5070))
        assert len(writer.written) == 1  # everyone else is still answered
        # At TCP accept too, and open connections from it are closed.
        factory = SIPStreamFactory(proxy.core, proxy.service.config.limits, proxy.clock, "TCP")
        assert connect(factory, ATTACKER[0]) == (None, None)
        assert connect(factory, "127.0.0.6")[0] is not None
    finally:
        proxy.stop()


def test_a_forged_source_flood_never_bans_the_address_it_claims(tmp_path: Path) -> None:
    """The attacker at 127.0.0.5 gets nonces for itself and sends wrong answers
    with the victim's address as source: each is challenged again (the nonce was
    not issued to the victim), none is a failure of the victim's."""
    proxy = proxy_service(tmp_path, ratelimit={"enabled": False})  # 50 REGISTERs at one instant: over any rate
    victim = ("127.0.0.9", 5060)
    try:
        service = proxy.service
        real_issue = service.nonces.issue
        service.nonces.issue = lambda realm, source: real_issue(realm, ATTACKER[0])  # nonces the attacker could get
        statuses = {wrong_password(proxy, victim) for _ in range(50)}
        service.nonces.issue = real_issue
        assert statuses == {401}
        assert not proxy.core.refuse_source(victim[0]) and proxy.service.bans.bans() == []
        # The same flood with the attacker's own address bans the attacker.
        for _ in range(3):
            wrong_password(proxy, ATTACKER)
        assert proxy.core.refuse_source(ATTACKER[0]) and not proxy.core.refuse_source(victim[0])
    finally:
        proxy.stop()


def test_a_right_password_after_failures_is_no_ban_and_tcp_connections_of_the_banned_close(tmp_path: Path) -> None:
    proxy = proxy_service(tmp_path)
    try:
        factory = SIPStreamFactory(proxy.core, proxy.service.config.limits, proxy.clock, "TCP")
        open_proto, open_transport = connect(factory, ATTACKER[0])
        for listener in proxy.service.listeners:
            listener.factory = factory  # the service closes what its listeners hold
        wrong_password(proxy, ATTACKER)
        wrong_password(proxy, ATTACKER)
        ok = proxy.send_request("REGISTER", RUOTE, from_uri="sip:alice@example.com", to="sip:alice@example.com",
                                credentials=("alice", PASSWORD), source=ATTACKER, contact="sip:alice@127.0.0.5:5070")
        assert ok is not None and ok.status == 200 and not proxy.core.refuse_source(ATTACKER[0])
        wrong_password(proxy, ATTACKER, transport="TCP")
        assert proxy.core.refuse_source(ATTACKER[0])
        assert not open_transport.disconnecting
        proxy.clock.advance(0)
        assert open_proto.transport is not None and factory.connections == {}
    finally:
        proxy.stop()


def test_bans_survive_a_restart_and_an_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    proxy = proxy_service(tmp_path)
    for _ in range(3):
        wrong_password(proxy, ATTACKER)
    proxy.clock.advance(2)  # the write after a change (a second, and a second more per thousand bans)
    path = proxy.service.config.server.data_dir / "bans.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    (saved,) = json.loads(path.read_text())["bans"]
    assert saved["key"] == ATTACKER[0]
    proxy.stop()
    again = build_service(tmp_path)
    again._prepare_bans()
    assert again.core.refuse_source(ATTACKER[0])
    path.write_text("{not json")
    third = build_service(tmp_path)
    third._prepare_bans()
    assert not third.core.refuse_source(ATTACKER[0])
    assert path.with_name("bans.json.unreadable").exists()
    assert BanFile(path).load() == []


def test_each_worker_keeps_its_bans_in_a_file_of_its_own_and_every_worker_starts_with_all_of_them(tmp_path: Path) -> None:
    """``[server] workers = 2`` with the memory backend: each worker bans what
    it saw; both save into one data_dir, neither over the other's bans, and a
    worker started again refuses the sources either had banned."""
    workers = {"server": {"workers": 2}, "registrar": {"store": "sql"}}
    data_dir = tmp_path / "data"
    other = ("192.0.2.77", 5060)
    for worker, source in ((0, ATTACKER), (1, other)):
        proxy = proxy_service(tmp_path, {} if worker else ALICE, worker=worker, **workers)  # alice is in the user store once
        try:
            for _ in range(3):
                wrong_password(proxy, source)
            proxy.clock.advance(2)
        finally:
            stop_sql_location(proxy.service)
            proxy.stop()
    assert [b["key"] for b in json.loads((data_dir / "bans.worker-0.json").read_text())["bans"]] == [ATTACKER[0]]
    assert [b["key"] for b in json.loads((data_dir / "bans.worker-1.json").read_text())["bans"]] == [other[0]]
    assert not (data_dir / "bans.json").exists()
    for worker in (0, 1):
        again = build_service(tmp_path, workers, worker=worker)
        stop_sql_location(again)
        again._prepare_bans()
        assert again.core.refuse_source(ATTACKER[0]) and again.core.refuse_source(other[0])
    single = build_service(tmp_path)  # back to one process: it reads the workers' files too
    single._prepare_bans()
    assert single.core.refuse_source(ATTACKER[0]) and single.core.refuse_source(other[0])


def test_bans_off_means_no_policy_and_no_filter(tmp_path: Path) -> None:
    service = build_service(tmp_path, {"bans": {"enabled": False}})
    assert service.bans is None and service.core.source_filter is None and not service.core.refuse_source("127.0.0.5")


def test_ban_list_prints_the_bans_the_server_saved(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sipshield.cli import main

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "sipshield.toml"
    config.write_text(f'[server]\ndata_dir = "{data_dir}"\n')
    BanFile(data_dir / "bans.json").save([Ban("192.0.2.9", 4e9, "3 failed logins in 60 s (last: user alice)"), Ban("192.0.2.10", 1.0, "long over")])
    assert main(["ban", "list", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("192.0.2.9\tuntil 2096-") and "last: user alice" in out and "192.0.2.10" not in out
    assert "1 ban(s) in force" in err


def test_a_right_guess_still_in_flight_when_the_ban_lands_is_never_confirmed(tmp_path: Path) -> None:
    """A burst of guesses sent before the first failure is known: the backend
    verifies them one after the other; once the third failure bans the source,
    the right password among them gets no answer and binds nothing."""
    from inline_pool import QueuedPool
    from pipeline_support import PHONE
    from test_registration_cap_service import registration

    from sipshield.auth._credentials import ISIPDigestCredentials

    proxy = proxy_service(tmp_path)
    try:
        pool = QueuedPool()
        for checker in proxy.service.portal.checkers[ISIPDigestCredentials].checkers:
            checker.threadpool = pool
        burst = [registration(proxy, f"sip:alice@{PHONE[0]}:{5000 + n}", "wrong") for n in range(3)]
        burst.append(registration(proxy, f"sip:alice@{PHONE[0]}:5999"))
        for data, flow in burst:
            proxy.send(data, flow)
        assert all(flow.sent == [] for _, flow in burst) and pool.run_queued() == 4
        assert proxy.core.refuse_source(PHONE[0])
        right = burst[-1][1]
        assert right.sent == [] and proxy.bindings("sip:alice@example.com") == []
        assert proxy.core.transactions.counts()["sources"] == 0  # each dropped transaction ended
    finally:
        proxy.stop()


def test_a_full_ban_table_makes_room_in_log_time_and_its_heap_does_not_grow_with_replacements() -> None:
    state = MemoryShieldState(max_bans=1000)
    for n in range(1000):
        state.ban(Ban(f"10.0.{n >> 8}.{n & 255}", 1000.0 + n, "x"))
    state.ban(Ban("192.0.2.1", 5000.0, "x"))  # evicts the soonest to end, 10.0.0.0
    assert state.banned("10.0.0.0", 0) is None and state.banned("10.0.0.1", 0) is not None and state.evicted == 1
    for n in range(5000):
        state.ban(Ban("192.0.2.1", 6000.0 + n, "longer"))  # each a replacement
    assert len(state._ending) <= 2 * 1000 + 64
    assert [b.key for b in state.bans(1999.5)][:1] == ["192.0.2.1"] and len(state.bans(1999.5)) == 1


def test_an_allowlisted_ipv6_host_is_not_banned_with_its_neighbours_nor_link_local_hosts_together() -> None:
    clock = Clock()
    bans, _ = policy(clock, allowlist=["2001:db8:0:7::10/128"])
    for _ in range(3):
        bans.emit(failure("2001:db8:0:7::66"))  # a neighbour of the allowlisted host
    assert bans.refuse_source("2001:db8:0:7::66") and not bans.refuse_source("2001:db8:0:7::10")
    assert not bans.refuse_source("2001:db8:0:7::67")  # the host alone was banned, not its /64
    for _ in range(3):
        bans.emit(failure("fe80::1%eth0"))
    assert bans.refuse_source("fe80::1") and not bans.refuse_source("fe80::2")
    assert ban_key("2001:DB8:0:7:0:0:0:66") == "2001:db8:0:7::/64" and ban_key("fe80::1%eth0") == "fe80::1"


def test_guesses_verified_after_the_ban_ban_nothing_again_and_reasons_are_cleaned() -> None:
    clock = Clock()
    bans, recorder = policy(clock)
    closed: list[str] = []
    bans.on_ban = closed.append
    for _ in range(10):
        bans.emit(failure("192.0.2.9", user="al\x1b[2Jice\n" + "x" * 500))
    assert closed == ["192.0.2.9"] and sum(e.kind == BAN for e in recorder.events) == 1
    (ban,) = bans.bans()
    assert "\x1b" not in ban.reason and "\n" not in ban.reason and len(ban.reason) <= 200


def test_trusted_sources_are_never_banned(tmp_path: Path) -> None:
    service = build_service(tmp_path, {"auth": {"trusted_sources": ["127.0.0.0/24"], "trusted_role": "staff"}})
    assert service.bans is not None
    for _ in range(5):
        service.bans.emit(failure("127.0.0.7"))  # over UDP, where a TCP-trusted network is challenged
    assert not service.core.refuse_source("127.0.0.7")


def test_a_banned_source_gets_no_tls_handshake_at_accept(tmp_path: Path) -> None:
    """listenSSL's wrapper would wrap the refused source's None and handshake;
    the listener's RefusingTLSFactory closes it at accept, as TCP does."""
    from twisted.internet.address import IPv4Address

    from sipshield.config import TLSConfig
    from sipshield.transport import ServerTLSContext, generate_self_signed, load_tls_material
    from sipshield.transport._listen import RefusingTLSFactory
    from sipshield.transport._tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY

    proxy = proxy_service(tmp_path)
    try:
        generate_self_signed(tmp_path / SELF_SIGNED_CERT, tmp_path / SELF_SIGNED_KEY, ["example.com"])
        material = load_tls_material(TLSConfig(), tmp_path)
        assert material is not None
        factory = SIPStreamFactory(proxy.core, proxy.service.config.limits, proxy.clock, "TLS")
        tls = RefusingTLSFactory(ServerTLSContext(material), False, factory)
        tls.doStart()
        assert tls.buildProtocol(IPv4Address("TCP", "127.0.0.6", 40000)) is not None
        proxy.service.bans.ban(ATTACKER[0], "test")
        assert tls.buildProtocol(IPv4Address("TCP", ATTACKER[0], 40000)) is None
    finally:
        proxy.stop()
