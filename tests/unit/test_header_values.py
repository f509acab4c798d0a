"""One datagram with thousands of Route or Via values must not freeze the
reactor (issue 7, "No single-packet DoS"): ``[limits] max_header_values``
caps the values of one header name, and a request above it gets
``400 Too Many <Name> Values`` before any work that walks the values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_support import RecordingFlow, feed
from pipeline_support import invite_with as message
from test_core import make_core

from sipshield.config import ConfigError, parse_config
from sipshield.message import Headers, ParseError, check_header_values, parse_message
from sipshield.message._grammar import count_values, split_commas

# -- the check (message layer, sans-IO) ---------------------------------------

def test_comma_values_and_repeated_lines_count_together() -> None:
    msg = parse_message(message("Route: <sip:a;lr>, <sip:b;lr>\r\nRoute: <sip:c;lr>\r\n"))
    check_header_values(msg, 3)
    with pytest.raises(ParseError) as err:
        check_header_values(msg, 2)
    assert (err.value.status, err.value.reason, err.value.message) == (400, "Too Many Route Values", msg)


def test_commas_inside_quotes_brackets_or_non_list_headers_are_not_values() -> None:
    msg = parse_message(message('Route: "a, b, c" <sip:x;lr>, <sip:y;lr;p=1,2>\r\nSubject: a, b, c, d\r\n'
                                'Proxy-Authorization: Digest a=1, b=2, c=3, d=4\r\n'))
    check_header_values(msg, 2)
    with pytest.raises(ParseError, match="Too Many Route Values"):
        check_header_values(msg, 1)


def test_repeated_lines_of_any_header_count() -> None:
    msg = parse_message(message("X-Note: 1\r\nX-Note: 2\r\nx-note: 3\r\n"))
    check_header_values(msg, 3)
    with pytest.raises(ParseError, match="(?i)Too Many X-Note Values"):
        check_header_values(msg, 2)


@pytest.mark.parametrize("value", ["a,b,c", '"x,y", <a,b>, c', "<<a,>,b>,c", '"unterminated, \\" , x', "", ",,,", "<a>," * 700])
def test_count_values_agrees_with_split_commas_up_to_the_stop(value: str) -> None:
    for stop in (1, 2, 3, 65, 10_000):
        assert count_values(value, stop) == min(len(split_commas(value)), stop)


def test_remove_first_values_removes_across_lines_and_keeps_the_rest() -> None:
    headers = Headers([("Route", "<sip:a;lr>, <sip:b;lr>"), ("Via", "SIP/2.0/UDP h"), ("Route", "<sip:c;lr>, <sip:d;lr>")])
    headers.remove_first_values("Route", 3)
    assert list(headers) == [("Via", "SIP/2.0/UDP h"), ("Route", "<sip:d;lr>")]


# -- config --------------------------------------------------------------------

def test_max_header_values_defaults_to_64_and_is_checked() -> None:
    assert parse_config({}).limits.max_header_values == 64
    assert parse_config({"limits": {"max_header_values": 200}}).limits.max_header_values == 200
    with pytest.raises(ConfigError, match="limits.max_header_values: 2 is out of range"):
        parse_config({"limits": {"max_header_values": 2}})


def test_example_configuration_sets_max_header_values() -> None:
    from sipshield.config import load_config

    assert load_config(Path(__file__).parent.parent.parent / "examples" / "sipshield.toml").limits.max_header_values == 64


# -- the core: first thing done with a message ---------------------------------

def test_request_over_the_cap_gets_400_and_no_transaction() -> None:
    core, dispatcher, _ = make_core()
    flow = feed(core, message("Route: " + ", ".join(["<sip:127.0.0.1:5060;lr>"] * 65) + "\r\n", to_tag=";tag=t"))
    ((data, _),) = flow.sent
    assert data.startswith(b"SIP/2.0 400 Too Many Route Values\r\n")
    assert dispatcher.sent == [] and sum(core.transactions.counts().values()) == 0


def test_request_at_the_cap_is_processed() -> None:
    core, _, _ = make_core()
    flow = feed(core, message("Supported: " + ",".join(["timer"] * 64) + "\r\n"))
    assert all(b"Too Many" not in data for data, _ in flow.sent) and flow.sent


def test_response_over_the_cap_is_dropped() -> None:
    core, dispatcher, _ = make_core()
    vias = ", ".join(["SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa"] * 65)
    data = (f"SIP/2.0 200 OK\r\nVia: {vias}\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
            "Call-ID: r1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    flow = feed(core, data, RecordingFlow())
    assert flow.sent == [] and dispatcher.sent == []
    assert core.counters["malformed"] == 1 and core.counters["responses"] == 0
