"""Transport protocols driven without sockets: framing into the handler,
keep-alives, limits, idle timeout on Clock time."""

from __future__ import annotations

from pipeline_support import RecordingHandler, options
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from sipshield.config import LimitsConfig, TLSConfig
from sipshield.message import Request
from sipshield.transport import SIPDatagramProtocol, SIPStreamFactory
from sipshield.transport._dispatch import TransportDispatcher


def connect(factory: SIPStreamFactory, host: str = "192.0.2.1", port: int = 40000):
    proto = factory.buildProtocol(IPv4Address("TCP", host, port))
    if proto is None:
        return None, None
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port), hostAddress=IPv4Address("TCP", "127.0.0.1", 5060))
    proto.makeConnection(transport)
    return proto, transport


def make_factory(handler: RecordingHandler, **limits) -> tuple[SIPStreamFactory, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    return SIPStreamFactory(handler, LimitsConfig(**limits), reactor, "TCP"), reactor


def test_stream_byte_at_a_time_and_pipelined_messages_reach_the_handler() -> None:
    handler = RecordingHandler()
    factory, _ = make_factory(handler)
    proto, _ = connect(factory)
    for byte in options("one"):
        proto.dataReceived(bytes([byte]))
    proto.dataReceived(options("two") + options("three"))
    assert [m.call_id for m, _ in handler.messages] == ["one", "two", "three"]
    assert all(isinstance(m, Request) and flow is proto for m, flow in handler.messages)
    assert proto.transport_name == "TCP" and proto.reliable and proto.remote == ("192.0.2.1", 40000)


def test_double_crlf_ping_gets_crlf_pong() -> None:
    factory, _ = make_factory(RecordingHandler())
    proto, transport = connect(factory)
    proto.dataReceived(b"\r\n\r\n")
    assert transport.value() == b"\r\n"


def test_framing_error_is_reported_and_connection_closed() -> None:
    handler = RecordingHandler()
    factory, _ = make_factory(handler)
    proto, transport = connect(factory)
    proto.dataReceived(options().replace(b"Content-Length: 0\r\n", b""))
    assert handler.errors and handler.errors[0].status == 400
    assert transport.disconnecting


def test_oversized_message_closes_connection_with_413() -> None:
    handler = RecordingHandler()
    factory, _ = make_factory(handler, max_message_bytes=1024)
    proto, transport = connect(factory)
    proto.dataReceived(options().replace(b"Content-Length", b"X-Pad: " + b"a" * 2000 + b"\r\nContent-Length"))
    assert [e.status for e in handler.errors] == [413]
    assert transport.disconnecting


def test_connections_per_source_limit_and_release() -> None:
    factory, _ = make_factory(RecordingHandler(), max_connections_per_source=2)
    first, _ = connect(factory, port=1)
    connect(factory, port=2)
    third, third_transport = connect(factory, port=3)
    assert third_transport.disconnected or third_transport.disconnecting
    assert len(factory.connections) == 2
    first.connectionLost(None)
    fourth, fourth_transport = connect(factory, port=4)
    assert not fourth_transport.disconnecting
    assert set(factory.connections) == {("192.0.2.1", 2), ("192.0.2.1", 4)}


def test_idle_connection_closes_after_timeout_on_clock_time() -> None:
    factory, reactor = make_factory(RecordingHandler(), idle_timeout=30)
    proto, transport = connect(factory)
    _, silent = connect(factory, port=40001)  # idle flood: the timer starts at accept, not at a first byte
    assert not proto.secure  # plain TCP: nothing above may take it for TLS
    reactor.advance(29)
    proto.dataReceived(b"\r\n\r\n")  # traffic resets the timer
    reactor.advance(2)
    assert silent.disconnecting and not transport.disconnecting
    reactor.advance(27)
    assert not transport.disconnecting
    reactor.advance(2)
    assert transport.disconnecting


def test_banned_source_gets_no_protocol() -> None:
    factory, _ = make_factory(RecordingHandler(banned=("192.0.2.66",)))
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.66", 1)) is None


class _UDPWriter:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))

    def getHost(self):
        return IPv4Address("UDP", "127.0.0.1", 5060)


def udp_protocol(handler: RecordingHandler) -> tuple[SIPDatagramProtocol, _UDPWriter]:
    proto = SIPDatagramProtocol(handler, 65535)
    writer = _UDPWriter()
    proto.makeConnection(writer)  # type: ignore[arg-type]
    return proto, writer


def test_udp_datagrams_keepalives_and_stun_are_filtered() -> None:
    handler = RecordingHandler(banned=("192.0.2.66",))
    proto, writer = udp_protocol(handler)
    proto.datagramReceived(b"\r\n\r\n", ("192.0.2.1", 5060))
    proto.datagramReceived(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"x" * 12, ("192.0.2.1", 5060))
    proto.datagramReceived(options("banned", "UDP"), ("192.0.2.66", 5060))
    proto.datagramReceived(options("ok", "UDP"), ("192.0.2.1", 5060))
    proto.datagramReceived(b"garbage\r\n\r\n", ("192.0.2.1", 5060))
    assert [m.call_id for m, _ in handler.messages] == ["ok"]
    (message, flow) = handler.messages[0]
    assert flow.remote == ("192.0.2.1", 5060) and flow.transport_name == "UDP" and not flow.reliable
    flow.send(b"x")
    assert writer.written == [(b"x", ("192.0.2.1", 5060))]
    assert len(handler.errors) == 1


def test_dispatcher_advertises_a_name_for_wildcard_listeners() -> None:
    from sipshield.transport._dispatch import TransportDispatcher

    dispatcher = TransportDispatcher(MemoryReactorClock(), advertise="sip.example.com")
    assert dispatcher.advertised("0.0.0.0") == "sip.example.com"
    assert dispatcher.advertised("::") == "sip.example.com"
    assert dispatcher.advertised("192.0.2.1") == "192.0.2.1"


def test_trickled_bytes_do_not_keep_an_incomplete_message_alive() -> None:
    # Slowloris: one byte every 10 s never completes a message; the deadline
    # runs from the first byte and further bytes do not move it.
    factory, reactor = make_factory(RecordingHandler(), idle_timeout=30)
    proto, transport = connect(factory)
    data = options()
    for n in range(3):
        proto.dataReceived(data[n : n + 1])
        reactor.advance(9.9)
    assert not transport.disconnecting
    reactor.advance(0.4)
    assert transport.disconnecting


def test_a_completed_message_ends_the_deadline_and_its_leftover_starts_the_next() -> None:
    handler = RecordingHandler()
    factory, reactor = make_factory(handler, idle_timeout=30)
    proto, transport = connect(factory)
    data = options("one")
    proto.dataReceived(data[:10])
    reactor.advance(25)
    proto.dataReceived(data[10:] + options("two")[:10])  # completes one, starts two
    reactor.advance(25)
    assert [m.call_id for m, _ in handler.messages] == ["one"] and not transport.disconnecting
    reactor.advance(6)
    assert transport.disconnecting  # two had 30 s from its first bytes


def test_after_a_complete_message_the_idle_timer_runs_again() -> None:
    factory, reactor = make_factory(RecordingHandler(), idle_timeout=30)
    proto, transport = connect(factory)
    data = options()
    proto.dataReceived(data[:10])
    reactor.advance(20)
    proto.dataReceived(data[10:])
    reactor.advance(29)
    assert not transport.disconnecting
    reactor.advance(2)
    assert transport.disconnecting


def _fill_table(factory: SIPStreamFactory, count: int) -> list:
    return [connect(factory, host=f"192.0.2.{n + 1}") for n in range(count)]


def test_near_the_cap_a_new_connection_closes_the_oldest_idle_unauthenticated_one() -> None:
    factory, reactor = make_factory(RecordingHandler(), max_connections=10)
    conns = _fill_table(factory, 9)  # 9 of 10: within 10% of the cap
    conns[0][0].authenticated = True  # carried an authenticated request
    reactor.advance(1)
    conns[1][0].dataReceived(options("busy"))  # active just now
    new, new_transport = connect(factory, host="198.51.100.1")
    assert not new_transport.disconnecting
    evicted = [n for n, (_, t) in enumerate(conns) if t.disconnecting or t.disconnected]
    assert evicted == [2]  # not 0 (authenticated), not 1 (recently active)
    connect(factory, host="198.51.100.2")
    assert [n for n, (_, t) in enumerate(conns) if t.disconnecting or t.disconnected] == [2, 3]
    assert len(factory.connections) == 9 and conns[0][0].remote in factory.connections


def test_at_the_cap_with_only_authenticated_connections_the_new_one_is_refused() -> None:
    factory, _ = make_factory(RecordingHandler(), max_connections=3)
    conns = _fill_table(factory, 3)
    for proto, _ in conns:
        proto.authenticated = True
    _, refused = connect(factory, host="198.51.100.1")
    assert refused.disconnecting or refused.disconnected
    assert not any(t.disconnecting for _, t in conns) and len(factory.connections) == 3


def test_the_per_source_cap_still_holds_near_the_global_cap() -> None:
    factory, _ = make_factory(RecordingHandler(), max_connections=10, max_connections_per_source=2)
    conns = _fill_table(factory, 9)
    connect(factory, host="198.51.100.1", port=1)
    connect(factory, host="198.51.100.1", port=2)
    _, third = connect(factory, host="198.51.100.1", port=3)
    assert third.disconnecting or third.disconnected
    assert sum(1 for _, t in conns if t.disconnecting or t.disconnected) == 2  # one per admitted newcomer, none for the refused


def test_outbound_connections_are_never_evicted() -> None:
    from sipshield.transport._stream import SIPStreamProtocol

    factory, _ = make_factory(RecordingHandler(), max_connections=2)
    outbound = SIPStreamProtocol(factory, ("203.0.113.5", 5060))
    out_transport = StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.5", 5060), hostAddress=IPv4Address("TCP", "127.0.0.1", 5060))
    outbound.makeConnection(out_transport)
    _, inbound = connect(factory, host="192.0.2.1")
    _, newcomer = connect(factory, host="192.0.2.2")
    assert inbound.disconnecting or inbound.disconnected  # the inbound one made room
    assert not out_transport.disconnecting and not newcomer.disconnecting


def test_an_evicted_connection_delivers_nothing_more_and_its_close_frees_no_other_slot() -> None:
    """Eviction ends the connection for good: bytes still in flight on it
    reach no handler, and its late connectionLost leaves the newcomer's slot."""
    handler = RecordingHandler()
    factory, _ = make_factory(handler, max_connections=2, max_connections_per_source=1)
    evicted, evicted_transport = connect(factory, host="192.0.2.1")
    connect(factory, host="192.0.2.2")
    _, newcomer = connect(factory, host="192.0.2.3")
    assert evicted_transport.disconnecting or evicted_transport.disconnected
    evicted.dataReceived(options("late"))
    assert handler.messages == [] and handler.errors == []
    evicted.connectionLost(None)
    assert set(factory.connections) == {("192.0.2.2", 40000), ("192.0.2.3", 40000)} and not newcomer.disconnecting
    _, again = connect(factory, host="192.0.2.3", port=40001)
    assert again.disconnecting or again.disconnected  # the per-source count of 192.0.2.3 still holds


def test_a_connection_closed_for_an_incomplete_message_gives_its_slot_back() -> None:
    factory, reactor = make_factory(RecordingHandler(), idle_timeout=30, max_connections_per_source=1)
    proto, transport = connect(factory)
    proto.dataReceived(options()[:20])
    reactor.advance(31)
    assert transport.disconnecting
    proto.connectionLost(None)
    assert factory.connections == {} and reactor.getDelayedCalls() == []
    _, again = connect(factory, port=40001)
    assert not again.disconnecting


def test_per_source_counts_follow_every_close_and_are_forgotten_at_zero() -> None:
    """The per-source cap counts live connections: each close gives back
    exactly one, and a source with none left holds no table entry (a key
    per address an attacker ever used would be state that outlives them)."""
    factory, _ = make_factory(RecordingHandler(), max_connections_per_source=2)
    first, _ = connect(factory, port=1)
    second, _ = connect(factory, port=2)
    first.connectionLost(None)
    connect(factory, port=3)
    _, refused = connect(factory, port=4)
    assert refused.disconnecting or refused.disconnected  # 2 and 3 are live: still at the cap
    for proto in list(factory.connections.values()):
        proto.connectionLost(None)
    assert factory.connections == {} and factory._per_source == {}
    opened = [connect(factory, port=n)[1] for n in (5, 6, 7)]
    assert [t.disconnecting or t.disconnected for t in opened] == [False, False, True]


def test_a_closed_connection_handles_and_sends_nothing_more() -> None:
    """After the idle timeout closes it (the peer may still be sending while
    the close completes) and after it is lost, nothing is delivered or written."""
    handler = RecordingHandler()
    factory, reactor = make_factory(handler, idle_timeout=30)
    proto, transport = connect(factory)
    reactor.advance(31)
    assert transport.disconnecting
    proto.dataReceived(options("late"))
    proto.send(b"late answer")
    assert handler.messages == [] and transport.value() == b""
    other, other_transport = connect(factory, port=40001)
    other.connectionLost(None)
    other.send(b"after the loss")
    assert other_transport.value() == b""


def _tls_dispatcher(tmp_path) -> tuple[TransportDispatcher, MemoryReactorClock]:
    from sipshield.config import ListenerConfig
    from sipshield.transport import ServerTLSContext, SIPListener, generate_self_signed, load_tls_material

    generate_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", ["127.0.0.1"])
    material = load_tls_material(TLSConfig(certificate=tmp_path / "c.pem", private_key=tmp_path / "k.pem"), tmp_path)
    assert material is not None
    reactor = MemoryReactorClock()
    dispatcher = TransportDispatcher(reactor)
    for kind in ("tcp", "tls"):
        listener = SIPListener(ListenerConfig(kind, 0), RecordingHandler(), LimitsConfig(), reactor, ServerTLSContext(material))
        listener.listen()
        dispatcher.add_listener(listener)
    return dispatcher, reactor


def test_a_tls_hop_gets_a_verified_tls_connection_never_plain_tcp(tmp_path) -> None:
    """Downgrade: a request for a TLS hop (sips:, transport=tls) goes out on a
    TLS connection that checks the peer's name, within a connect deadline;
    what was sent before the connection was up is written once it is."""
    dispatcher, reactor = _tls_dispatcher(tmp_path)
    flow = dispatcher.send(b"INVITE", ("TLS", "192.0.2.7", 5061))
    assert reactor.tcpClients == []
    ((host, port, factory, options_, timeout, _),) = reactor.sslClients
    assert (host, port) == ("192.0.2.7", 5061) and 0 < timeout <= 10
    assert options_._hostnameASCII == "192.0.2.7"
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port), hostAddress=IPv4Address("TCP", "127.0.0.1", 5061))
    proto = factory.buildProtocol(IPv4Address("TCP", host, port))
    assert proto is flow and proto.secure
    proto.makeConnection(transport)
    assert transport.value() == b"INVITE"
    dispatcher.send(b"BYE", ("TCP", "192.0.2.8", 5060))
    ((tcp_host, tcp_port, _, tcp_timeout, _),) = reactor.tcpClients
    assert (tcp_host, tcp_port) == ("192.0.2.8", 5060) and 0 < tcp_timeout <= 10 and len(reactor.sslClients) == 1


def test_a_failed_outbound_connection_is_not_written_to_again(tmp_path) -> None:
    """A connection that could not be made is closed for good: the next
    request of the same transaction opens a new one instead of queueing
    bytes for ever on the dead one."""
    dispatcher, reactor = _tls_dispatcher(tmp_path)
    flow = dispatcher.send(b"INVITE", ("TCP", "192.0.2.8", 5060))
    ((_, _, factory, _, _),) = reactor.tcpClients
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))
    again = dispatcher.send(b"CANCEL", ("TCP", "192.0.2.8", 5060), flow)
    assert again is not flow and len(reactor.tcpClients) == 2


def _with_headers(data: bytes, extra: int) -> bytes:
    return data.replace(b"Content-Length", b"".join(b"X-%d: v\r\n" % n for n in range(extra)) + b"Content-Length")


def test_udp_holds_max_headers_and_max_message_bytes_as_tcp_does() -> None:
    """``[limits] max_headers`` and ``max_message_bytes`` on UDP: a request
    one line over gets 400 Too many header lines, one byte over 413 (both
    answered, never delivered); exactly at each limit it is served."""
    handler = RecordingHandler()
    base = options("h", "UDP")
    lines = base.count(b"\r\n") - 2  # header lines, not the request line or the blank one
    proto = SIPDatagramProtocol(handler, len(base) + 64, max_headers=lines + 4)
    proto.makeConnection(_UDPWriter())  # type: ignore[arg-type]
    proto.datagramReceived(_with_headers(base, 4), ("192.0.2.1", 5060))
    proto.datagramReceived(_with_headers(base, 5), ("192.0.2.1", 5060))
    big = base.replace(b"Content-Length", b"X-Pad: " + b"a" * (64 - 9) + b"\r\nContent-Length")
    assert len(big) == len(base) + 64
    proto.datagramReceived(big, ("192.0.2.1", 5060))
    proto.datagramReceived(big.replace(b"X-Pad: ", b"X-Pad: a"), ("192.0.2.1", 5060))
    assert len(handler.messages) == 2
    assert [(e.status, e.reason) for e in handler.errors] == [(400, "Too many header lines"), (413, "Message too large")]
    assert all(e.message is not None for e in handler.errors)  # parsed enough to be answered


def test_a_refused_connection_delivers_nothing() -> None:
    handler = RecordingHandler()
    factory, _ = make_factory(handler, max_connections_per_source=1)
    connect(factory, port=1)
    refused, transport = connect(factory, port=2)
    assert transport.disconnecting or transport.disconnected
    refused.dataReceived(options("inflight"))
    assert handler.messages == [] and handler.errors == []


def test_no_connection_is_attempted_to_an_unusable_destination(tmp_path) -> None:
    """Relay to ourselves or to a group: a hop at 0.0.0.0 (this host, for
    Linux), multicast, broadcast or port 0 (from a Route or a Contact) gets no
    connection attempt even though a listener of that transport exists."""
    dispatcher, reactor = _tls_dispatcher(tmp_path)
    for hop in [("TCP", "0.0.0.0", 5060), ("TCP", "224.0.0.1", 5060), ("TLS", "255.255.255.255", 5061), ("TCP", "192.0.2.8", 0), ("TCP", "[::]", 5060)]:
        assert dispatcher.send(b"INVITE", hop) is None, hop
    assert reactor.tcpClients == [] and reactor.sslClients == []
