"""No open relay in dialog: a Route naming this proxy is followed only when it
is a Record-Route the proxy signed for that dialog (issue 7).

The service is built from a real config (the default stages, digest auth
included, a secret in data_dir) on Clock time; a recording dispatcher stands
in for the sockets, so "relayed" means "something was sent to the victim".
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pipeline_support import RecordingDispatcher, RecordingFlow, build_service, feed, proxy_service

from sipshield.proxy import RecordRouteSigner, endpoints

VICTIM = "127.0.0.5"
ATTACKER = ("127.0.0.2", 40000)
IN_DIALOG = ["BYE", "INFO", "MESSAGE", "INVITE", "NOTIFY", "REFER", "UPDATE", "PRACK"]


def make_service(tmp_path: Path):
    dispatcher = RecordingDispatcher()
    return build_service(tmp_path, dispatcher=dispatcher), dispatcher


def in_dialog(method: str, uri: str = f"sip:victim@{VICTIM}", route: str = "<sip:127.0.0.1:5060;lr>", call_id: str = "c1@example.com",
              from_tag: str = "f1", to_tag: str = "forged") -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {ATTACKER[0]}:{ATTACKER[1]};branch=z9hG4bK{method}{abs(hash(call_id))}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:mallory@example.com>;tag={from_tag}\r\nTo: <sip:victim@{VICTIM}>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 2 {method}\r\n" + (f"Route: {route}\r\n" if route else "") + "Content-Length: 0\r\n\r\n"
    ).encode()


def to_victim(dispatcher: RecordingDispatcher) -> list:
    return [(m, hop) for m, hop in dispatcher.sent if hop[1] == VICTIM]


def signed(service, call_id: str = "c1@example.com", tag: str = "f1", pair: tuple[str, str] = endpoints(ATTACKER[0], VICTIM)) -> str:
    """Our Record-Route for a dialog between *pair* (by default the sender and the victim)."""
    return f"<sip:127.0.0.1:5060;transport=udp;lr;ss={service.core.signer.token(call_id, tag, pair)}>"


@pytest.mark.parametrize("method", IN_DIALOG)
def test_forged_to_tag_and_plain_route_to_us_is_challenged_not_relayed(tmp_path: Path, method: str) -> None:
    service, dispatcher = make_service(tmp_path)
    flow = feed(service.core, in_dialog(method), RecordingFlow(ATTACKER))
    assert to_victim(dispatcher) == []
    assert flow.statuses()[-1] == 407


def test_forged_ack_for_2xx_with_plain_route_is_not_forwarded(tmp_path: Path) -> None:
    service, dispatcher = make_service(tmp_path)
    flow = feed(service.core, in_dialog("ACK"), RecordingFlow(ATTACKER))
    assert flow.sent == [] and dispatcher.sent == []


@pytest.mark.parametrize("method", ["BYE", "INVITE", "ACK"])
def test_token_of_another_call_is_not_honoured(tmp_path: Path, method: str) -> None:
    service, dispatcher = make_service(tmp_path)
    stolen = signed(service, call_id="other-call@example.com")
    flow = feed(service.core, in_dialog(method, route=stolen), RecordingFlow(ATTACKER))
    assert to_victim(dispatcher) == []
    assert flow.statuses()[-1:] == ([] if method == "ACK" else [407])


def test_garbage_or_stripped_token_is_not_honoured(tmp_path: Path) -> None:
    service, dispatcher = make_service(tmp_path)
    for n, route in enumerate(["<sip:127.0.0.1:5060;lr;ss=00>", "<sip:127.0.0.1:5060;lr;ss>", "<sip:127.0.0.1:5060;lr;ss=" + "0" * 32 + ">"]):
        flow = feed(service.core, in_dialog("BYE", route=route, call_id=f"g{n}"), RecordingFlow(ATTACKER))
        assert flow.statuses()[-1] == 407
    assert to_victim(dispatcher) == []


def test_strict_routing_rewrite_needs_a_token_in_the_request_uri(tmp_path: Path) -> None:
    service, dispatcher = make_service(tmp_path)
    forged = in_dialog("BYE", uri="sip:127.0.0.1:5060;lr", route=f"<sip:victim@{VICTIM}>")
    flow = feed(service.core, forged, RecordingFlow(ATTACKER))
    assert flow.statuses()[-1] == 407 and to_victim(dispatcher) == []
    other = service.core.signer.token("other-call@example.com", "f1", endpoints(ATTACKER[0], VICTIM))
    forged = in_dialog("BYE", uri=f"sip:127.0.0.1:5060;lr;ss={other}", route=f"<sip:victim@{VICTIM}>", call_id="c2")
    flow = feed(service.core, forged, RecordingFlow(ATTACKER))
    assert flow.statuses()[-1] == 407 and to_victim(dispatcher) == []
    uri = f"sip:127.0.0.1:5060;lr;ss={service.core.signer.token('c3', 'f1', endpoints(ATTACKER[0], VICTIM))}"
    feed(service.core, in_dialog("BYE", uri=uri, route=f"<sip:victim@{VICTIM}>", call_id="c3"), RecordingFlow(ATTACKER))
    ((fwd, hop),) = to_victim(dispatcher)
    assert str(fwd.uri) == f"sip:victim@{VICTIM}" and hop == ("UDP", VICTIM, 5060)


def test_a_strict_routed_request_is_checked_again_for_its_real_request_uri(tmp_path: Path) -> None:
    """Admission checked the Request-URI a strict router put there (our
    signed Record-Route); the one it gives back, the last Route, is checked
    again by the stages (mutant request_received 40, 41: the 16.3 checks
    skipped as passed at admission): one that is not SIP gets 416, nothing is sent."""
    service, dispatcher = make_service(tmp_path)
    real = "<mailto:victim@127.0.0.5>"
    token = service.core.signer.token("c3", "f1", endpoints(ATTACKER[0], ""))  # a mailto: URI has no host to go to
    flow = feed(service.core, in_dialog("BYE", uri=f"sip:127.0.0.1:5060;lr;ss={token}", route=real, call_id="c3"), RecordingFlow(ATTACKER))
    assert flow.statuses() == [416] and dispatcher.sent == []


@pytest.mark.parametrize("from_tag, to_tag", [("f1", "callee"), ("callee", "f1")], ids=["caller", "callee"])
def test_our_signed_route_is_followed_from_either_side_without_a_challenge(tmp_path: Path, from_tag: str, to_tag: str) -> None:
    service, dispatcher = make_service(tmp_path)
    flow = feed(service.core, in_dialog("BYE", route=signed(service), from_tag=from_tag, to_tag=to_tag), RecordingFlow(ATTACKER))
    assert 407 not in flow.statuses()
    ((fwd, hop),) = to_victim(dispatcher)
    assert fwd.method == "BYE" and hop == ("UDP", VICTIM, 5060) and "Route" not in fwd.headers


def test_record_route_secret_is_created_0600_in_data_dir_and_reused(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path)
    path = tmp_path / "data" / "record-route.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, _ = make_service(tmp_path)
    pair = endpoints("192.0.2.1", "192.0.2.2")
    assert again.core.signer.token("c", "t", pair) == service.core.signer.token("c", "t", pair)
    assert RecordRouteSigner().token("c", "t", pair) != service.core.signer.token("c", "t", pair)


@pytest.mark.parametrize("method", ["BYE", "MESSAGE", "INVITE", "OPTIONS"])
def test_a_token_seen_on_the_wire_relays_nothing_for_a_third_host(tmp_path: Path, method: str) -> None:
    """The token of a real dialog between a caller and a callee, replayed by
    anyone else (toward the victim or the callee itself), is challenged."""
    service, dispatcher = make_service(tmp_path)
    callee = "192.0.2.20"
    stolen = signed(service, pair=endpoints("127.0.0.9", callee))
    for uri in [f"sip:victim@{VICTIM}", f"sip:bob@{callee}"]:
        flow = feed(service.core, in_dialog(method, uri=uri, route=stolen, call_id="c1@example.com"), RecordingFlow(ATTACKER))
        assert flow.statuses()[-1] == 407, (uri, flow.statuses())
    assert dispatcher.sent == []


# -- where a signed route set leads (hop_for, next_hop: mutmut survivors) -------------------

def _follow(tmp_path: Path, method: str, next_route: str, destination: str) -> list:
    """*method* in a dialog whose route set is our signed Record-Route (for
    the sender and *destination*) then *next_route*; what was sent, and where."""
    service, dispatcher = make_service(tmp_path)
    route = signed(service, pair=endpoints(ATTACKER[0], destination)) + ", " + next_route
    flow = feed(service.core, in_dialog(method, route=route), RecordingFlow(ATTACKER))
    assert 407 not in flow.statuses()
    return dispatcher.sent


@pytest.mark.parametrize("method", ["BYE", "ACK"])
def test_a_strict_router_next_gets_the_request_uri_and_the_old_one_goes_last(tmp_path: Path, method: str) -> None:
    """RFC 3261 16.12: a next Route without ``lr`` is a strict router: it
    becomes the Request-URI and the Request-URI the last Route."""
    ((fwd, hop),) = _follow(tmp_path, method, "<sip:127.0.0.6:5070>, <sip:127.0.0.7;lr>", "127.0.0.6")
    assert hop == ("UDP", "127.0.0.6", 5070)
    assert str(fwd.uri) == "sip:127.0.0.6:5070"
    assert fwd.headers.get_values("Route") == ["<sip:127.0.0.7;lr>", f"<sip:victim@{VICTIM}>"]


@pytest.mark.parametrize("max_forwards, sent", [(5, "4"), (1, "0"), (0, None), (None, "69")])
def test_an_ack_for_a_2xx_goes_on_with_max_forwards_one_less(tmp_path: Path, max_forwards: int | None, sent: str | None) -> None:
    """RFC 3261 16.6 step 3 for the ACK we forward statelessly: one less (70
    less one when it has none), and none left means not forwarded, so an ACK
    looping between proxies ends (mutants stray_ack 28 to 31: one more, 69
    at every hop, or a TypeError for an ACK without Max-Forwards)."""
    service, dispatcher = make_service(tmp_path)
    header = b"" if max_forwards is None else f"Max-Forwards: {max_forwards}\r\n".encode()
    ack = in_dialog("ACK", route=signed(service)).replace(b"Max-Forwards: 70\r\n", header)
    feed(service.core, ack, RecordingFlow(ATTACKER))
    assert [fwd.headers.get("Max-Forwards") for fwd, _ in to_victim(dispatcher)] == ([] if sent is None else [sent])


def test_a_loose_router_next_leaves_the_request_uri_alone(tmp_path: Path) -> None:
    ((fwd, hop),) = _follow(tmp_path, "BYE", "<sip:127.0.0.6:5070;lr>", "127.0.0.6")
    assert hop == ("UDP", "127.0.0.6", 5070)
    assert str(fwd.uri) == f"sip:victim@{VICTIM}" and fwd.headers.get_values("Route") == ["<sip:127.0.0.6:5070;lr>"]


@pytest.mark.parametrize(
    "next_route, destination, hop",
    [
        ("<sip:edge.example.net;lr;maddr=127.0.0.7>", "127.0.0.7", ("UDP", "127.0.0.7", 5060)),
        ("<sip:edge.example.net:5080;lr;maddr=[::1]>", "::1", ("UDP", "::1", 5080)),
        ("<sips:127.0.0.8;lr>", "127.0.0.8", ("TLS", "127.0.0.8", 5061)),
        ("<sip:127.0.0.8;transport=tcp;lr>", "127.0.0.8", ("TCP", "127.0.0.8", 5060)),
        ("<sips:127.0.0.8;transport=tcp;lr>", "127.0.0.8", ("TLS", "127.0.0.8", 5061)),
    ],
    ids=["maddr", "maddr-ipv6-port", "sips", "transport-tcp", "sips-over-tcp-param"],
)
def test_the_next_hop_is_maddr_over_host_and_sips_is_always_tls(tmp_path: Path, next_route: str, destination: str, hop: tuple) -> None:
    """RFC 3261 19.1.1 / RFC 3263: ``maddr`` names the host to send to (and
    the route token must be for it); ``sips`` is TLS whatever the transport
    parameter says (a downgrade otherwise), with 5061 as its default port."""
    ((_, sent_to),) = _follow(tmp_path, "BYE", next_route, destination)
    assert sent_to == hop


def test_a_route_token_for_the_named_host_does_not_cover_its_maddr(tmp_path: Path) -> None:
    """The token binds the dialog to the host the request really goes to:
    signed for edge.example.net, it does not let a Route aim it at a maddr."""
    service, dispatcher = make_service(tmp_path)
    route = signed(service, pair=endpoints(ATTACKER[0], "edge.example.net")) + f", <sip:edge.example.net;lr;maddr={VICTIM}>"
    flow = feed(service.core, in_dialog("BYE", route=route), RecordingFlow(ATTACKER))
    assert flow.statuses()[-1] == 407 and dispatcher.sent == []


# -- which Route names us (ProxyCore.is_local, add_local_address: mutmut survivors) ------------

def _invite_bob_via(tmp_path: Path, route: str, listening: tuple[str, int] | None = None) -> tuple[list, tuple[str, str, int]]:
    """alice's authenticated INVITE to bob (registered at 127.0.0.3:5062)
    with the preloaded *route*; with *listening*, the proxy knows that address
    only (a listener on 0.0.0.0, say) instead of 127.0.0.1:5060.  Where it went."""
    proxy = proxy_service(tmp_path)
    try:
        if listening is not None:
            proxy.core.local_hosts.clear()
            proxy.core.local_ports.clear()
            proxy.core.add_local_address(*listening)
        bob = proxy.register("bob", "sip:bob@127.0.0.3:5062")
        proxy.send(proxy.authorized(extra=f"Route: {route}\r\n"))
        return [(fwd.headers.get_values("Route"), hop) for fwd, hop in proxy.forwarded()], bob
    finally:
        proxy.stop()


def test_a_route_naming_our_domain_at_our_port_is_ours_and_one_at_another_port_is_not(tmp_path: Path) -> None:
    """A domain we serve names us on the ports we listen on only: its Route is
    ours (removed, the request goes on to bob's phone), not a next hop to send
    the request back to ourselves (mutant is_local 6: our port taken for
    another's, and another server of the domain taken for us)."""
    sent, bob = _invite_bob_via(tmp_path / "ours", "<sip:example.com:5060;lr>")
    assert sent == [([], bob)]
    sent, _ = _invite_bob_via(tmp_path / "theirs", "<sip:example.com:5099;lr>")
    assert [routes for routes, _ in sent] in ([], [["<sip:example.com:5099;lr>"]]) and all(hop[2] == 5099 for _, hop in sent)


@pytest.mark.parametrize(
    "listening, route",
    [(("0.0.0.0", 5060), "<sip:127.0.0.1:5060;lr>"), (("0.0.0.0", 5060), "<sip:[::1]:5060;lr>"), (("2001:DB8::A", 5060), "<sip:[2001:db8::a]:5060;lr>")],
    ids=["any-ipv4-loopback", "any-ipv6-loopback", "ipv6-upper-case"],
)
def test_with_a_listener_on_every_address_a_loopback_route_is_ours(tmp_path: Path, listening: tuple[str, int], route: str) -> None:
    """Listening on 0.0.0.0, the loopback addresses are ours too
    (add_local_address 11, 13), and an address we listen on is ours in any
    case (2: lower-cased): their Route is removed, not followed back to us."""
    sent, bob = _invite_bob_via(tmp_path, route, listening=listening)
    assert sent == [([], bob)]
