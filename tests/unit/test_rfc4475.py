"""Every row of the RFC 4475 torture-test corpus (tests/data/rfc4475/EXPECTED.tsv)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sipshield.message import URI, ParseError, Request, Response, parse_message

CORPUS = Path(__file__).resolve().parent.parent / "data" / "rfc4475"


def _rows() -> list[tuple[str, str, str, str]]:
    rows = []
    with open(CORPUS / "EXPECTED.tsv", newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            if not row or row[0].startswith("#"):
                continue
            rows.append((row[0], row[1], row[2], row[3]))
    return rows


ROWS = _rows()
# Semantic rows the message layer itself must reject (RFC 3261 8.1.1, 7.3.1, 20.14).
SEMANTIC_ERRORS = {"insuf.dat", "multi01.dat", "mcl01.dat"}
# A proxy need not parse Date (RFC 4475 3.1.2.12): this "malformed" message parses.
PARSES_DESPITE_MALFORMED = {"baddate.dat"}


def _load(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def test_corpus_is_complete_and_uses_crlf() -> None:
    files = {p.name for p in CORPUS.glob("*.dat")}
    assert len(files) == 49
    assert files == {row[0] for row in ROWS}
    for name in files:
        data = _load(name)
        head = data.split(b"\r\n\r\n", 1)[0]
        assert b"\n" not in head.replace(b"\r\n", b""), name


@pytest.mark.parametrize(("name", "section", "kind", "verdict"), ROWS, ids=[r[0] for r in ROWS])
def test_rfc4475_row(name: str, section: str, kind: str, verdict: str) -> None:
    data = _load(name)
    expected_type = Request if kind == "request" else Response
    must_fail = (verdict == "malformed" and name not in PARSES_DESPITE_MALFORMED) or name in SEMANTIC_ERRORS
    if must_fail:
        with pytest.raises(ParseError) as info:
            parse_message(data)
        err = info.value
        assert err.status == (505 if name == "badvers.dat" else 400)
        assert err.reason == str(err)
        assert err.reason.isascii() and err.reason.isprintable() and len(err.reason) <= 100
        return
    msg = parse_message(data)
    assert isinstance(msg, expected_type)
    again = parse_message(msg.serialise())
    assert again == msg
    assert again.serialise() == msg.serialise()
    # Typed access to what a proxy needs works on every accepted message.
    assert msg.top_via.protocol == "SIP/2.0"
    assert msg.call_id
    msg.cseq  # noqa: B018
    msg.from_  # noqa: B018
    msg.to  # noqa: B018


def _parse(name: str) -> Request | Response:
    return parse_message(_load(name))


def _request(name: str) -> Request:
    msg = _parse(name)
    assert isinstance(msg, Request)
    return msg


def test_baddate_keeps_date_unchanged() -> None:
    msg = _request("baddate.dat")
    assert msg.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    assert b"Date: Fri, 01 Jan 2010 16:00:00 EST\r\n" in msg.serialise()


def test_insuf_reports_missing_header_with_partial_message() -> None:
    with pytest.raises(ParseError) as info:
        _parse("insuf.dat")
    assert info.value.reason.startswith("Missing header")
    partial = info.value.message
    assert isinstance(partial, Request)
    response = partial.make_response(400, info.value.reason)
    assert response.headers.get_all("Via") == ["SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf"]


def test_multi01_and_mcl01_reject_repeated_single_value_headers() -> None:
    for name in ("multi01.dat", "mcl01.dat"):
        with pytest.raises(ParseError) as info:
            _parse(name)
        assert "more than once" in info.value.reason


def test_badvers_is_505_with_partial_message() -> None:
    with pytest.raises(ParseError) as info:
        _parse("badvers.dat")
    assert info.value.status == 505
    assert info.value.message is not None
    assert info.value.message.headers.get("Call-ID") == "badvers.31417@c.example.com"


def test_mismatch_reason() -> None:
    with pytest.raises(ParseError, match="CSeq: method does not match request method"):
        _parse("mismatch01.dat")


def test_cparam01_param_belongs_to_header() -> None:
    contact = _request("cparam01.dat").contacts[0]
    assert "unknownparam" in contact.params
    assert "unknownparam" not in contact.uri.params


def test_cparam02_param_belongs_to_uri() -> None:
    contact = _request("cparam02.dat").contacts[0]
    assert "unknownparam" not in contact.params
    assert "unknownparam" in contact.uri.params


def test_esc01_escaped_and_unescaped_uris_compare_equal() -> None:
    msg = _request("esc01.dat")
    assert str(msg.uri) == "sip:sips%3Auser%40example.com@example.net"
    assert msg.uri.user == "sips%3Auser%40example.com"
    assert msg.to.uri == URI.parse("sip:user@example.com")
    assert msg.from_.uri.user == "I%20have%20spaces"
    contact = msg.contacts[0].uri
    # v%61lue%25%34%31 unescapes to "value%41" (the %25 is a literal percent sign).
    assert contact == URI.parse("sip:caller@host5.example.net;lr;name=value%2541")
    assert contact != URI.parse("sip:caller@host5.example.net;lr;name=valueA")


def test_escnull_keeps_escaped_nul() -> None:
    msg = _request("escnull.dat")
    assert msg.to.uri.user == "null-%00-null"
    assert [c.uri.user for c in msg.contacts] == ["%00", "%00%00"]
    assert msg.to.uri == URI.parse("sip:null-%00-null@example.com")


def test_esc02_method_is_literal_token() -> None:
    msg = _request("esc02.dat")
    assert msg.method == "RE%47IST%45R"
    assert msg.cseq.method == "RE%47IST%45R"
    assert "C%6Fntact" in msg.headers
    assert len(msg.contacts) == 2


@pytest.mark.parametrize(("name", "scheme"), [("unkscm.dat", "nobodyknowsthisscheme"), ("novelsc.dat", "soap.beep")])
def test_unusual_request_uri_schemes_parse(name: str, scheme: str) -> None:
    msg = _request(name)
    assert msg.uri.scheme == scheme
    assert not msg.uri.is_sip
    assert msg.uri.opaque


def test_unksm2_unknown_schemes_in_address_headers() -> None:
    msg = _request("unksm2.dat")
    assert msg.to.uri.scheme == "isbn"
    assert msg.from_.uri.scheme == "http"
    assert msg.contacts[0].uri.scheme == "name"


def test_inv2543_has_no_branch() -> None:
    msg = _request("inv2543.dat")
    assert msg.top_via.branch is None
    assert msg.max_forwards is None


def test_badbranch_branch_is_only_the_cookie() -> None:
    assert _request("badbranch.dat").top_via.branch == "z9hG4bK"


def test_bext01_proxy_require_is_kept() -> None:
    msg = _request("bext01.dat")
    assert msg.headers.get_values("Proxy-Require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


def test_dblreq_body_length_is_content_length() -> None:
    msg = _request("dblreq.dat")
    assert msg.method == "REGISTER"
    assert len(msg.body) == msg.content_length == 0


def test_mpart01_body_is_byte_exact() -> None:
    data = _load("mpart01.dat")
    msg = _request("mpart01.dat")
    assert msg.body == data[data.index(b"\r\n\r\n") + 4 :]
    assert len(msg.body) == 553
    assert msg.serialise() == data


def test_zeromf_max_forwards_zero() -> None:
    assert _request("zeromf.dat").max_forwards == 0


def test_bcast_received_param() -> None:
    msg = _parse("bcast.dat")
    assert isinstance(msg, Response)
    assert msg.vias[1].host == "255.255.255.255"
    assert msg.vias[1].received is None


def test_scalarlg_response_rejected() -> None:
    with pytest.raises(ParseError):
        _parse("scalarlg.dat")


def test_wsinv_values() -> None:
    msg = _request("wsinv.dat")
    assert msg.max_forwards == 68
    assert (msg.cseq.seq, msg.cseq.method) == (9, "INVITE")
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert [v.transport for v in msg.vias] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in msg.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.contacts[0].q == 0.33
    assert msg.contacts[0].display_name == 'Quoted string ""'
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("Subject") == ""
    assert msg.routes[0].uri.lr


def test_transports_unknown_transport_token() -> None:
    assert [v.transport for v in _parse("transports.dat").vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_unreason_and_noreason() -> None:
    unreason = _parse("unreason.dat")
    assert isinstance(unreason, Response)
    assert unreason.status == 200
    assert unreason.reason.startswith("= 2**3 * 5**2 но сто")
    noreason = _parse("noreason.dat")
    assert isinstance(noreason, Response)
    assert (noreason.status, noreason.reason) == (100, "")


def test_intmeth_and_semiuri() -> None:
    msg = _request("intmeth.dat")
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.tag == "_token~1'+`*%!-."
    semi = _request("semiuri.dat")
    assert semi.uri.user == "user;par=u%40example.net"
    assert semi.uri.host == "example.com"
    assert semi.uri.params == {}


def test_longreq_many_vias() -> None:
    msg = _request("longreq.dat")
    assert len(msg.vias) == 34
    assert msg.to.uri.port == 6000


def test_regaut01_unknown_auth_scheme() -> None:
    from sipshield.message import parse_auth

    auth = parse_auth(_request("regaut01.dat").headers.get("Authorization") or "")
    assert auth.scheme == "NoOneKnowsThisScheme"
    assert auth.params == {"opaque-data": "here"}


def test_regescrt_contact_headers_kept() -> None:
    assert _request("regescrt.dat").contacts[0].uri.headers == "Route=%3Csip:sip.example.com%3E"
