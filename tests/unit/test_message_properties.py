"""Hypothesis properties: serialise/parse round trips and fuzzing (RFC 3261 7, 25)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipshield.message import Address, Message, ParseError, Request, Response, Via, parse_message

CORPUS = Path(__file__).resolve().parent.parent / "data" / "rfc4475"

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.lists(st.integers(0, 0xFFFF).map(lambda n: f"{n:x}"), min_size=8, max_size=8).map(lambda p: "[" + ":".join(p) + "]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.one_of(st.none(), st.integers(1, 65535))
user_chars = "abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/"
users = st.one_of(
    st.none(), st.text(user_chars, min_size=1, max_size=10), st.text("abc%2012", min_size=1, max_size=6).filter(lambda u: "%" not in u or u.endswith("%20"))
)
param_values = st.one_of(st.none(), st.text(TOKEN_CHARS, min_size=1, max_size=8))
params = st.dictionaries(labels, param_values, max_size=3)
methods = st.one_of(st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE"]), tokens)


@st.composite
def sip_uris(draw: st.DrawFn, bracketed: bool = True) -> str:
    scheme = draw(st.sampled_from(["sip", "sips"]))
    user = draw(users)
    host = draw(hosts)
    port = draw(ports)
    text = f"{scheme}:" + (f"{user}@" if user else "") + host + (f":{port}" if port else "")
    if bracketed:
        for name, value in draw(params).items():
            text += f";{name}" if value is None else f";{name}={value}"
    return text


display_names = st.one_of(
    st.none(),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=15),
    st.text(st.characters(min_codepoint=0xA0, max_codepoint=0x2FF), max_size=5),
)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    addr = Address(draw(sip_uris()), draw(display_names), draw(params))
    return str(addr)


@st.composite
def vias(draw: st.DrawFn) -> str:
    p = {"branch": "z9hG4bK" + draw(tokens)}
    p.update(draw(params))
    return str(Via(draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"])), draw(hosts), draw(ports), p))


unknown_headers = st.lists(
    st.tuples(st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=8).map(lambda s: "X-" + s), st.text(TOKEN_CHARS + " ", max_size=20).map(str.strip)),
    max_size=4,
)
bodies = st.binary(max_size=200)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    method = draw(methods)
    headers = [("Via", v) for v in draw(st.lists(vias(), min_size=1, max_size=3))]
    headers += [
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
        ("From", draw(addresses()) + ";tag=" + draw(tokens)),
        ("To", draw(addresses())),
        ("Call-ID", draw(tokens) + "@" + draw(hostnames)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    headers += [("Contact", c) for c in draw(st.lists(addresses(), max_size=2))]
    headers += draw(unknown_headers)
    order = draw(st.permutations(range(len(headers))))
    headers = [headers[i] for i in order]
    body = draw(bodies)
    if draw(st.booleans()):
        return Request(method, draw(sip_uris()), headers, body)
    status = draw(st.integers(100, 699))
    reason = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20))
    return Response(status, reason, headers, body)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_serialise_parse_round_trip(msg: Message) -> None:
    data = msg.serialise()
    parsed = parse_message(data)
    assert parsed == msg
    assert parsed.serialise() == data
    assert parse_message(data, datagram=False) == msg
    # Typed access works on what we generated.
    assert parsed.top_via.branch is not None
    assert parsed.from_.tag is not None
    parsed.to  # noqa: B018
    parsed.contacts  # noqa: B018


@settings(max_examples=200)
@given(messages(), st.sampled_from(["prepend", "remove_first", "set", "add"]))
def test_edited_message_round_trip(msg: Message, op: str) -> None:
    msg.serialise()
    if op == "prepend":
        msg.headers.prepend("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKx")
    elif op == "remove_first":
        msg.headers.prepend("Via", "SIP/2.0/UDP a.example.com;branch=z9hG4bKa, SIP/2.0/UDP b.example.com;branch=z9hG4bKb")
        msg.headers.remove_first("Via")
    elif op == "set":
        msg.headers.set("Max-Forwards", "1")
    else:
        msg.headers.add("X-Added", "yes")
    data = msg.serialise()
    assert parse_message(data) == msg
    assert parse_message(data).serialise() == data


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        parse_message(data)
    except ParseError:
        pass


CORPUS_FILES = sorted(p.read_bytes() for p in CORPUS.glob("*.dat"))


def _exercise(msg: Message) -> None:
    """Typed accessors may raise ParseError on bad values, and nothing else."""
    for name in ("vias", "top_via", "call_id", "cseq", "from_", "to", "max_forwards", "contacts", "routes", "record_routes", "content_length"):
        try:
            getattr(msg, name)
        except ParseError:
            pass
    if isinstance(msg, Request):
        try:
            msg.uri  # noqa: B018
        except ParseError:
            pass
        msg.make_response(400, to_tag="x").serialise()
    msg.serialise()


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(CORPUS_FILES),
    st.lists(st.tuples(st.integers(0, 2000), st.sampled_from([0, 1, 2]), st.binary(min_size=0, max_size=4)), min_size=1, max_size=6),
)
def test_mutated_corpus_only_raises_parse_error(data: bytes, mutations: list[tuple[int, int, bytes]]) -> None:
    buf = bytearray(data)
    for pos, kind, chunk in mutations:
        pos = pos % (len(buf) + 1)
        if kind == 0:
            buf[pos:pos] = chunk
        elif kind == 1:
            del buf[pos : pos + len(chunk) + 1]
        else:
            buf[pos : pos + len(chunk)] = chunk
    for datagram in (True, False):
        try:
            msg = parse_message(bytes(buf), datagram=datagram)
        except ParseError as exc:
            assert exc.reason.isascii() and exc.reason.isprintable()
            if isinstance(exc.message, Request):
                exc.message.make_response(exc.status, exc.reason).serialise()
            continue
        _exercise(msg)


@settings(max_examples=300)
@given(st.one_of(addresses(), vias(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)))
def test_fast_path_regexes_accept_a_subset_of_the_grammar(text: str) -> None:
    from sipshield.message import _grammar as g

    if g.FAST_ADDRESS_RE.fullmatch(text):
        assert g.ADDRESS_RE.fullmatch(text)
        assert g.CONTACTS_RE.fullmatch(text)
    if g.FAST_VIA_RE.fullmatch(text):
        assert g.VIAS_RE.fullmatch(text)
