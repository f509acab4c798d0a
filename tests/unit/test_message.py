"""Parsing, typed headers, URIs, editing and serialisation of SIP messages (RFC 3261 7, 19, 20)."""

from __future__ import annotations

import pytest

from sipshield.message import (
    URI,
    Address,
    Contact,
    CSeq,
    Headers,
    ParseError,
    Request,
    Response,
    Via,
    format_auth,
    parse_auth,
    parse_message,
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Via: SIP/2.0/TCP [2001:db8::10]:5070;branch=z9hG4bKabc;received=2001:db8::9;rport=5070\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice \\"A\\"" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>;expires=60;q=0.5, sip:alice@[2001:db8::1]:5062\r\n"
    b"Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\r\n"
    b"X-Custom-Header: some value\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"v=0\r\n"
)


def _invite() -> Request:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    return msg


# -- parsing -----------------------------------------------------------------------


def test_parse_request_line_and_typed_headers() -> None:
    msg = _invite()
    assert msg.method == "INVITE"
    assert msg.version == "SIP/2.0"
    assert msg.uri.user == "bob" and msg.uri.host == "biloxi.example.com"
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.max_forwards == 70
    assert msg.from_.display_name == 'Alice "A"'
    assert msg.from_.tag == "1928301774"
    assert msg.to.tag is None
    assert msg.content_length == 5
    assert msg.content_type == "application/sdp"
    assert msg.body == b"v=0\r\n"


def test_vias_ipv6_and_params() -> None:
    msg = _invite()
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    second = msg.vias[1]
    assert (second.transport, second.host, second.port) == ("TCP", "[2001:db8::10]", 5070)
    assert second.received == "2001:db8::9"
    assert second.rport == "5070"
    assert msg.top_via.rport is None
    assert Via.parse("SIP/2.0/UDP h;rport").rport == ""


def test_contacts_routes_and_record_routes() -> None:
    msg = _invite()
    first, second = msg.contacts
    assert first.expires == 60 and first.q == 0.5
    assert second.uri.host == "[2001:db8::1]" and second.uri.port == 5062
    assert [r.uri.host for r in msg.record_routes] == ["p2.example.com", "p1.example.com"]
    assert all(r.uri.lr for r in msg.record_routes)
    assert msg.routes == []


def test_compact_forms_case_and_whitespace_around_colon() -> None:
    data = (
        b"OPTIONS sip:a@b.example SIP/2.0\r\n"
        b"v : SIP/2.0/UDP h.example;branch=z9hG4bK1\r\n"
        b"f:<sip:x@y.example>;tag=1\r\n"
        b"T:   sip:a@b.example\r\n"
        b"i: abc\r\n"
        b"cSeQ: 1 OPTIONS\r\n"
        b"m: <sip:x@10.0.0.1>\r\n"
        b"k: timer\r\n"
        b"l: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.headers.get("Via") == "SIP/2.0/UDP h.example;branch=z9hG4bK1"
    assert msg.headers.get("v") == msg.headers.get("VIA")
    assert msg.headers.get("Supported") == "timer"
    assert msg.call_id == "abc"
    assert [name for name, _ in msg.headers][:6] == ["Via", "From", "To", "Call-ID", "CSeq", "Contact"]


def test_header_folding_is_unfolded_and_raw_text_kept() -> None:
    data = (
        b"OPTIONS sip:a@b.example SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP h.example\r\n ;branch=z9hG4bK1\r\n"
        b"From: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: abc\r\nCSeq: 1 OPTIONS\r\n"
        b"Subject: first\r\n\tsecond\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.headers.get("Subject") == "first second"
    assert msg.top_via.branch == "z9hG4bK1"
    assert msg.serialise() == data


def test_leading_crlfs_are_ignored() -> None:
    assert parse_message(b"\r\n\r\n" + INVITE) == _invite()


def test_quoted_strings_with_escapes_and_params_without_values() -> None:
    addr = Address.parse('"a \\\\ b \\"c\\"" <sip:u@h.example;lr>;tag=x;flag;q="0.5"')
    assert addr.display_name == 'a \\ b "c"'
    assert addr.params == {"tag": "x", "flag": None, "q": '"0.5"'}
    assert addr.uri.params == {"lr": None}
    assert Address.parse(str(addr)) == addr


def test_name_addr_versus_addr_spec_param_ownership() -> None:
    bare = Address.parse("sip:u@h.example;tag=1")
    assert bare.params == {"tag": "1"} and bare.uri.params == {}
    bracketed = Address.parse("<sip:u@h.example;tag=1>")
    assert bracketed.params == {} and bracketed.uri.params == {"tag": "1"}
    assert str(bare) == "<sip:u@h.example>;tag=1"


@pytest.mark.parametrize(
    "text",
    ["< sip:u@h.example>", "Bell, Alexander <sip:u@h.example>", '"unterminated <sip:u@h.example>', "sip:u@h.example?x=y", "<sip:u@h.example"],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ParseError):
        Address.parse(text)


def test_contact_star() -> None:
    star = Contact.parse("*")
    assert star.is_star and str(star) == "*"


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505, "SIP version not supported"),
        (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), 400, "CSeq: method does not match request method"),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), 400, "Max-Forwards: value out of range"),
        (INVITE.replace(b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n", b""), 400, "Missing header: Call-ID"),
        (INVITE.replace(b";branch=z9hG4bK776asdhds", b";;"), 400, "Via: malformed value"),
        (INVITE.replace(b"Content-Length: 5", b"Content-Length: 40"), 400, "Content-Length: larger than the message body"),
        (INVITE.replace(b"Content-Length: 5", b"Content-Length: 99999999999999999999"), 400, "Content-Length: invalid value"),
        (INVITE.replace(b"To: Bob", b"To: Bob\r\nTo: Bob"), 400, "To: header appears more than once"),
        (INVITE.replace(b"INVITE sip:bob@biloxi.example.com", b"INVITE sip:bob@biloxi.example.com?x=y", 1), 400, "Request-URI: escaped headers not allowed"),
    ],
)
def test_parse_errors_carry_status_reason_and_partial_message(data: bytes, status: int, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(data)
    err = info.value
    assert (err.status, err.reason, str(err)) == (status, reason, reason)
    assert isinstance(err.message, Request)


def test_error_reason_is_clean_ascii() -> None:
    err = ParseError("bad \u00e9\r\nthing" + "x" * 200)
    assert err.reason.isascii() and err.reason.isprintable() and len(err.reason) <= 100


def test_status_line_parsing() -> None:
    resp = parse_message(
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (180, "Ringing")
    for bad in (b"SIP/2.0 99 Low", b"SIP/2.0 700 High", b"SIP/2.0 2000 Long", b"SIP/2.0 abc Text"):
        with pytest.raises(ParseError):
            parse_message(bad + b"\r\nVia: SIP/2.0/UDP h\r\n\r\n")


def test_stream_requires_content_length_and_datagram_takes_rest() -> None:
    data = INVITE.replace(b"Content-Length: 5\r\n", b"")
    assert parse_message(data).body == b"v=0\r\n"
    with pytest.raises(ParseError, match="required on stream"):
        parse_message(data, datagram=False)


def test_too_many_headers() -> None:
    data = INVITE.replace(b"X-Custom-Header: some value\r\n", b"X-A: 1\r\n" * 300)
    with pytest.raises(ParseError, match="Too many header lines") as raised:
        parse_message(data)
    assert raised.value.status == 400 and raised.value.message is not None  # enough to address the 400
    assert parse_message(data, max_headers=400).headers.get("X-A") == "1"


def test_far_too_many_headers_are_refused_unread() -> None:
    """Past 4 times the limit the header lines are not split at all."""
    data = INVITE.replace(b"X-Custom-Header: some value\r\n", b"X-A: 1\r\n" * 41)
    with pytest.raises(ParseError, match="Too many header lines") as raised:
        parse_message(data, max_headers=10)
    assert raised.value.message is None


def test_unknown_headers_are_not_parsed_and_keep_their_spelling() -> None:
    msg = _invite()
    assert ("X-Custom-Header", "some value") in list(msg.headers)
    assert msg.headers.get("x-custom-header") == "some value"


# -- URIs ---------------------------------------------------------------------------


def test_uri_components() -> None:
    uri = URI.parse("sips:Alice:secret@EXAMPLE.com:5061;transport=TCP;lr;maddr=239.1.1.1?subject=hi%20there&x=y")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("sips", "Alice", "secret", "example.com", 5061)
    assert uri.params == {"transport": "TCP", "lr": None, "maddr": "239.1.1.1"}
    assert uri.transport == "tcp" and uri.lr and uri.maddr == "239.1.1.1"
    assert uri.headers == "subject=hi%20there&x=y"
    assert str(uri) == "sips:Alice:secret@EXAMPLE.com:5061;transport=TCP;lr;maddr=239.1.1.1?subject=hi%20there&x=y"
    uri.params["lr"] = None
    uri.port = 5062
    assert str(uri) == "sips:Alice:secret@example.com:5062;transport=TCP;lr;maddr=239.1.1.1?subject=hi%20there&x=y"


def test_uri_ipv6_and_escapes() -> None:
    uri = URI.parse("sip:%61lice@[2001:db8::10]:5070")
    assert (uri.user, uri.host, uri.port) == ("%61lice", "[2001:db8::10]", 5070)
    assert str(uri) == "sip:%61lice@[2001:db8::10]:5070"
    assert uri == URI.parse("sip:alice@[2001:DB8::10]:5070")
    assert uri.canonical_user == "alice" and URI.parse("sip:Al%69ce%2561@example.com").canonical_user == "Alice%61"
    assert URI.parse("sip:example.com").canonical_user is None


def test_tel_and_other_schemes() -> None:
    tel = URI.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (tel.scheme, tel.user, tel.host) == ("tel", "+1-201-555-0123", None)
    assert tel.params == {"phone-context": "example.com"}
    other = URI.parse("urn:service:sos")
    assert (other.scheme, other.opaque) == ("urn", "service:sos")
    assert str(other) == "urn:service:sos"


@pytest.mark.parametrize("text", ["sip:", "sip:user@", "sip:host:99999", "sip:ho st", "nocolon", "sip:a@b;;", "sip:[::1", "1sip:a@b"])
def test_invalid_uris(text: str) -> None:
    with pytest.raises(ParseError):
        URI.parse(text)


# RFC 3261 19.1.4, the examples given in the RFC.
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com", "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent", "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
]
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_rfc3261_uri_equal_examples(a: str, b: str) -> None:
    ua, ub = URI.parse(a), URI.parse(b)
    assert ua == ub and ub == ua
    assert hash(ua) == hash(ub)


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_rfc3261_uri_not_equal_examples(a: str, b: str) -> None:
    assert URI.parse(a) != URI.parse(b)
    assert URI.parse(b) != URI.parse(a)


# -- Headers mutation -----------------------------------------------------------------


def test_headers_mutation_api() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2"), ("Route", "<sip:r1;lr>"), ("X-A", "1")])
    headers.prepend("v", "SIP/2.0/UDP p;branch=z9hG4bKp")
    assert headers.get_all("Via")[0] == "SIP/2.0/UDP p;branch=z9hG4bKp"
    assert headers.remove_first("Via") == "SIP/2.0/UDP p;branch=z9hG4bKp"
    assert headers.remove_first("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert headers.get_all("Via") == ["SIP/2.0/UDP b;branch=z9hG4bK2"]
    headers.add("X-A", "2")
    assert headers.get_all("x-a") == ["1", "2"]
    headers.set("X-A", "3")
    assert headers.get_all("X-A") == ["3"]
    headers.remove("route")
    assert "Route" not in headers and "X-A" in headers
    assert headers.remove_first("Route") is None
    with pytest.raises(ValueError):
        headers.add("X-Bad", "a\r\nInjected: yes")
    with pytest.raises(ValueError):
        headers.add("Bad Name", "x")


def test_prepend_via_without_existing_goes_to_top() -> None:
    headers = Headers([("To", "<sip:a@b>")])
    headers.prepend("Via", "SIP/2.0/UDP h")
    headers.prepend("Route", "<sip:r;lr>")
    assert [name for name, _ in headers] == ["Via", "To", "Route"]


def test_typed_cache_invalidated_on_change() -> None:
    msg = _invite()
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert len(msg.vias) == 2
    msg.headers.prepend("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy")
    assert msg.top_via.branch == "z9hG4bKproxy"
    assert len(msg.vias) == 3
    assert msg.max_forwards == 70
    msg.headers.set("Max-Forwards", "69")
    assert msg.max_forwards == 69
    msg.headers.remove_first("Via")
    assert msg.top_via.branch == "z9hG4bK776asdhds"


def test_typed_values_from_the_fast_path_are_dropped_when_the_header_changes() -> None:
    msg = _invite()
    msg.headers.set("To", "Carol <sip:carol@chicago.example.com>;tag=99")
    msg.headers.set("From", "<sip:dave@example.com>;tag=7")
    msg.headers.set("CSeq", "7 INVITE")
    assert (msg.to.display_name, msg.to.uri.user, msg.to.tag) == ("Carol", "carol", "99")
    assert (msg.from_.display_name, msg.from_.uri.user) == (None, "dave")
    assert msg.cseq == CSeq(7, "INVITE")


def test_fast_path_accessors_keep_the_full_parsers_errors_and_types() -> None:
    data = INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", b"To: Bob <sip:bob@biloxi.example.com:70000>")
    msg = parse_message(data)  # the port is only checked when the URI is parsed
    with pytest.raises(ParseError) as info:
        msg.to  # noqa: B018
    with pytest.raises(ParseError) as full:
        Address.parse("Bob <sip:bob@biloxi.example.com:70000>")
    assert info.value.reason == full.value.reason
    via = parse_message(INVITE.replace(b"pc33.atlanta.example.com;", b"pc33.atlanta.example.com:99999;"))
    with pytest.raises(ParseError, match="Via: port out of range"):
        via.top_via  # noqa: B018
    contacts = parse_message(INVITE.replace(b", sip:alice@[2001:db8::1]:5062", b"")).contacts
    assert [(type(c), c.is_star, c.expires, c.q) for c in contacts] == [(Contact, False, 60, 0.5)]
    assert type(parse_message(INVITE).to) is Address


def test_proxy_edit_serialises_and_round_trips() -> None:
    msg = _invite()
    msg.headers.prepend("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy")
    msg.headers.set("Max-Forwards", str((msg.max_forwards or 70) - 1))
    msg.uri = URI.parse("sip:bob@192.0.2.4:5060")
    data = msg.serialise()
    assert data.startswith(b"INVITE sip:bob@192.0.2.4:5060 SIP/2.0\r\nVia: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy\r\n")
    assert b"Max-Forwards: 69\r\n" in data
    assert b"X-Custom-Header: some value\r\n" in data
    again = parse_message(data)
    assert again == msg
    assert again.serialise() == data


def test_unmodified_message_serialises_byte_for_byte() -> None:
    assert _invite().serialise() == INVITE


def test_content_length_follows_body() -> None:
    msg = _invite()
    msg.body = b"longer body"
    data = msg.serialise()
    assert data.count(b"Content-Length") == 1
    assert data.endswith(b"Content-Length: 11\r\n\r\nlonger body")


# -- building messages and responses ------------------------------------------------


def test_build_request_from_scratch() -> None:
    req = Request(
        "OPTIONS",
        "sip:bob@example.com",
        [
            ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
            ("From", "<sip:a@example.com>;tag=1"),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 OPTIONS"),
        ],
    )
    data = req.serialise()
    assert data.endswith(b"Content-Length: 0\r\n\r\n")
    assert parse_message(data) == req
    assert req.uri.user == "bob"


def test_make_response_copies_headers() -> None:
    req = _invite()
    resp = req.make_response(486, to_tag="abc")
    assert (resp.status, resp.reason) == (486, "Busy Here")
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.to.tag == "abc"
    assert resp.from_ == req.from_ and resp.call_id == req.call_id and resp.cseq == req.cseq
    assert resp.headers.get("Content-Length") == "0"
    assert "Contact" not in resp.headers
    parsed = parse_message(resp.serialise())
    assert parsed == resp


def test_make_response_100_never_adds_tag_and_existing_tag_kept() -> None:
    req = _invite()
    assert req.make_response(100, to_tag="abc").to.tag is None
    req.headers.set("To", "<sip:bob@biloxi.example.com>;tag=old")
    assert req.make_response(200, to_tag="new").to.tag == "old"
    assert req.make_response(200, "Fine").reason == "Fine"
    assert req.make_response(299).reason == "Successful"


def test_make_response_on_partial_message_with_broken_from() -> None:
    data = INVITE.replace(b'From: "Alice \\"A\\"" <sip', b"From: Alice, Smith <sip")
    with pytest.raises(ParseError) as info:
        parse_message(data)
    partial = info.value.message
    assert isinstance(partial, Request)
    resp = partial.make_response(info.value.status, info.value.reason, to_tag="t1")
    out = resp.serialise()
    assert out.startswith(b"SIP/2.0 400 From: malformed name-addr or addr-spec\r\n")
    assert b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n" in out
    assert b"From: Alice, Smith <sip:alice@atlanta.example.com>;tag=1928301774\r\n" in out
    assert b"To: Bob <sip:bob@biloxi.example.com>;tag=t1\r\n" in out


# -- auth ----------------------------------------------------------------------------


def test_parse_and_format_auth() -> None:
    value = 'Digest username="bob", realm="biloxi.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="sip:bob@biloxi.com", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41", algorithm=MD5'
    auth = parse_auth(value)
    assert auth.scheme == "Digest"
    assert auth.params["username"] == "bob" and auth.params["qop"] == "auth" and auth.params["nc"] == "00000001"
    again = parse_auth(format_auth(auth.scheme, auth.params))
    assert again == auth
    rendered = format_auth("Digest", {"realm": 'a "b"', "algorithm": "SHA-256"})
    assert rendered == 'Digest realm="a \\"b\\"", algorithm=SHA-256'
    assert parse_auth(rendered).params["realm"] == 'a "b"'
    with pytest.raises(ParseError):
        parse_auth('Digest realm="unterminated')


def test_release_parsed_drops_the_cached_values_and_they_read_the_same_again() -> None:
    """What the proxy does to a call's request it keeps for late 2xx answers:
    the typed values go, the text stays, and every accessor says the same."""
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    before = (req.uri, req.top_via, req.vias, req.from_, req.to, req.cseq, req.serialise())
    cached = (req.uri, req.top_via, req.from_)
    req.release_parsed()
    after = (req.uri, req.top_via, req.vias, req.from_, req.to, req.cseq, req.serialise())
    assert after == before
    assert all(new is not old for new, old in zip((req.uri, req.top_via, req.from_), cached, strict=True))  # read again, not kept
    assert req.make_response(488).headers.get("Call-ID") == "a84b4c76e66710@pc33.atlanta.example.com"


def test_release_parsed_keeps_a_request_uri_changed_in_place() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    req.uri.params["transport"] = "tcp"  # edited on the parsed value, not written back as text
    req.release_parsed()
    assert req.uri.params["transport"] == "tcp" and b";transport=tcp SIP/2.0" in req.serialise()
