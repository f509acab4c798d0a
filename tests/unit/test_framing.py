"""Stream framing for SIP over TCP/TLS (RFC 3261 18.3, RFC 5626 3.5.1)."""

from __future__ import annotations

import pytest

from sipshield.message import KEEPALIVE, FramingError, StreamFramer, parse_message


def _message(n: int, body: bytes = b"hello") -> bytes:
    return (
        f"MESSAGE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP h.example.com;branch=z9hG4bK{n}\r\n"
        f"From: <sip:a@example.com>;tag={n}\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: c{n}\r\nCSeq: {n} MESSAGE\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _drain(framer: StreamFramer) -> list[object]:
    events = []
    while (event := framer.next_event()) is not None:
        events.append(event)
    return events


def test_partial_reads_wait_for_the_body() -> None:
    framer = StreamFramer()
    data = _message(1)
    framer.feed(data[:30])
    assert framer.next_event() is None
    framer.feed(data[30:-2])
    assert framer.next_event() is None
    framer.feed(data[-2:])
    assert framer.next_event() == data
    assert framer.next_event() is None
    assert framer.buffered == 0


def test_byte_at_a_time() -> None:
    framer = StreamFramer()
    stream = _message(1) + b"\r\n\r\n" + _message(2, b"") + b"\r\n" + _message(3)
    events: list[object] = []
    for i in range(len(stream)):
        framer.feed(stream[i : i + 1])
        events.extend(_drain(framer))
    assert events == [_message(1), KEEPALIVE, _message(2, b""), _message(3)]


def test_several_messages_in_one_read_and_parse() -> None:
    framer = StreamFramer()
    framer.feed(b"".join(_message(i) for i in range(50)))
    events = _drain(framer)
    assert len(events) == 50
    msgs = [parse_message(e, datagram=False) for e in events if isinstance(e, bytes)]
    assert [m.cseq.seq for m in msgs] == list(range(50))


def test_keepalive_ping_and_lone_crlf() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n")
    assert framer.next_event() is KEEPALIVE
    framer.feed(b"\r\n")
    assert framer.next_event() is None  # could still become a ping
    framer.feed(_message(1))
    assert framer.next_event() == _message(1)
    framer.feed(b"\r\n\r\n\r\n\r\n")
    assert _drain(framer) == [KEEPALIVE, KEEPALIVE]


def test_missing_content_length_raises() -> None:
    framer = StreamFramer()
    framer.feed(_message(1).replace(b"Content-Length: 5\r\n", b""))
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert info.value.status == 400
    assert info.value.reason == "Content-Length: required on stream transports"
    with pytest.raises(FramingError):
        framer.next_event()  # sticky: the stream cannot be resynchronised


def test_compact_content_length_is_used() -> None:
    framer = StreamFramer()
    data = _message(1).replace(b"Content-Length: 5", b"l:5")
    framer.feed(data + _message(2))
    assert _drain(framer) == [data, _message(2)]


@pytest.mark.parametrize("value", [b"-1", b"abc", b"99999999999", b""])
def test_bad_content_length_raises_400(value: bytes) -> None:
    framer = StreamFramer()
    framer.feed(_message(1).replace(b"Content-Length: 5", b"Content-Length: " + value))
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert info.value.status in (400, 413)


def test_duplicate_content_length_raises() -> None:
    framer = StreamFramer()
    framer.feed(_message(1).replace(b"Content-Length: 5", b"Content-Length: 5\r\nl: 7"))
    with pytest.raises(FramingError, match="more than once"):
        framer.next_event()


def test_header_section_too_large_without_terminator() -> None:
    framer = StreamFramer(max_message_bytes=1000)
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X-Pad: " + b"a" * 2000)
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert info.value.status == 413


def test_message_larger_than_limit_is_413() -> None:
    framer = StreamFramer(max_message_bytes=500)
    data = _message(1, b"x" * 1000)
    framer.feed(data[:100])
    assert framer.next_event() is None
    framer.feed(data[100:300])  # the header section is complete: rejected before the body arrives
    with pytest.raises(FramingError) as info:
        framer.next_event()
    assert (info.value.status, info.value.reason) == (413, "Message too large")


def test_too_many_header_lines() -> None:
    framer = StreamFramer(max_headers=10)
    framer.feed(_message(1).replace(b"Content-Length", b"X-A: 1\r\n" * 20 + b"Content-Length"))
    with pytest.raises(FramingError, match="Too many header lines"):
        framer.next_event()


def test_large_stream_is_linear() -> None:
    """Thousands of messages fed in small chunks: no re-scan from the start (a quadratic buffer would time out)."""
    framer = StreamFramer()
    stream = b"".join(_message(i % 1000, b"x" * 200) for i in range(5000))
    count = 0
    for i in range(0, len(stream), 1400):
        framer.feed(stream[i : i + 1400])
        count += len(_drain(framer))
    assert count == 5000
    assert framer.buffered == 0
