"""The sans-IO SDP reader: media sections of application/sdp and multipart
bodies, a=crypto / a=fingerprint, the bounds, and garbage that raises only SDPError."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipshield.message import MediaSection, SDPError, media_sections, parse_content_type
from sipshield.message._sdp import MAX_DEPTH, MAX_MEDIA, MAX_PARTS, MAX_SDP_LINES

KEY = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
FP = "sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF"


def sdp(*media: str, session: str = "") -> bytes:
    head = f"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n{session}"
    return (head + "".join(media)).encode()


PLAIN = "m=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
SDES = f"m=audio 49170 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY}\r\n"
DTLS = f"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:{FP}\r\na=setup:actpass\r\na=ice-ufrag:abcd\r\n"


def test_application_sdp_gives_each_media_section() -> None:
    body = sdp(PLAIN, SDES, "m=video 0 RTP/AVP 31\r\n", DTLS)
    assert media_sections(body, "application/sdp") == (
        MediaSection("audio", 49170, "RTP/AVP", False, False),
        MediaSection("audio", 49170, "RTP/SAVP", True, False),
        MediaSection("video", 0, "RTP/AVP", False, False),
        MediaSection("audio", 9, "UDP/TLS/RTP/SAVPF", False, True),
    )


def test_content_type_case_and_parameters_are_understood() -> None:
    assert media_sections(sdp(PLAIN), "Application/SDP ; charset=UTF-8")[0].proto == "RTP/AVP"  # type: ignore[index]
    assert parse_content_type('multipart/Mixed; Boundary="a b;c"; x=1') == ("multipart/mixed", {"boundary": "a b;c", "x": "1"})
    with pytest.raises(SDPError):
        parse_content_type("sdp")
    with pytest.raises(SDPError):
        parse_content_type('multipart/mixed; boundary="open')


def test_no_body_or_another_type_is_no_sdp() -> None:
    assert media_sections(b"", "application/sdp") is None
    assert media_sections(b"hello", "text/plain") is None
    assert media_sections(b"<x/>", "application/pidf+xml") is None


def test_a_body_without_content_type_or_with_an_encoding_cannot_be_inspected() -> None:
    with pytest.raises(SDPError, match="without Content-Type"):
        media_sections(sdp(PLAIN), None)
    with pytest.raises(SDPError, match="Content-Encoding"):
        media_sections(sdp(PLAIN), "application/sdp", "gzip")
    assert media_sections(sdp(PLAIN), "application/sdp", "identity") is not None


def test_session_level_fingerprint_counts_for_every_section_crypto_only_at_media_level() -> None:
    body = sdp("m=audio 9 UDP/TLS/RTP/SAVP 0\r\n", "m=video 9 UDP/TLS/RTP/SAVP 96\r\n", session=f"a=fingerprint:{FP}\r\n")
    assert [s.fingerprint for s in media_sections(body, "application/sdp") or ()] == [True, True]
    body = sdp("m=audio 4000 RTP/SAVP 0\r\n", session=f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY}\r\n")
    assert [s.crypto for s in media_sections(body, "application/sdp") or ()] == [False]


@pytest.mark.parametrize("line", [
    "a=crypto:1 NULL_HMAC_SHA1_80 " + KEY,
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 " + KEY + " UNENCRYPTED_SRTP",
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 " + KEY + " UNAUTHENTICATED_SRTP",
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80",
    "a=crypto:",
])
def test_a_crypto_line_that_protects_nothing_is_no_key(line: str) -> None:
    (section,) = media_sections(sdp(f"m=audio 4000 RTP/SAVP 0\r\n{line}\r\n"), "application/sdp") or ()
    assert section.crypto is False


def test_every_sdp_part_of_a_multipart_body_is_read_nested_too() -> None:
    inner = b"--in\r\nContent-Type: application/sdp\r\n\r\n" + sdp(DTLS) + b"\r\n--in--\r\n"
    body = (
        b"preamble\r\n--outer\r\nContent-Type: application/sdp\r\n\r\n" + sdp(SDES)
        + b"\r\n--outer\r\nContent-Type: application/pidf+xml\r\n\r\n<presence/>\r\n"
        + b"--outer\r\nContent-Type: multipart/alternative;\r\n boundary=in\r\n\r\n" + inner
        + b"\r\n--outer--\r\nepilogue"
    )
    found = media_sections(body, 'multipart/mixed; boundary="outer"')
    assert [(s.proto, s.crypto, s.fingerprint) for s in found or ()] == [("RTP/SAVP", True, False), ("UDP/TLS/RTP/SAVPF", False, True)]


def test_a_multipart_without_sdp_is_no_sdp_and_bare_lf_is_taken() -> None:
    body = b"--b\nContent-Type: text/plain\n\nhi\n--b--\n"
    assert media_sections(body, "multipart/mixed;boundary=b") is None
    body = b"--b\nContent-Type: application/sdp\n\n" + sdp(PLAIN).replace(b"\r\n", b"\n") + b"\n--b--\n"
    assert media_sections(body, "multipart/mixed;boundary=b") == (MediaSection("audio", 49170, "RTP/AVP", False, False),)


@pytest.mark.parametrize(("body", "content_type", "why"), [
    (b"--b\r\n\r\nx", "multipart/mixed; boundary=b", "closing delimiter"),
    (b"--b--", "multipart/mixed", "boundary"),
    (b"--b\r\nContent-Type: application/sdp\r\nContent-Transfer-Encoding: base64\r\n\r\ndj0w\r\n--b--", "multipart/mixed; boundary=b", "Transfer-Encoding"),
    (b"o=x\r\n", "application/sdp", "v=0"),
    (b"v=0\r\nm=audio x RTP/AVP 0\r\n", "application/sdp", "port"),
    (b"v=0\r\nm=audio 99999 RTP/AVP 0\r\n", "application/sdp", "port"),
    (b"v=0\r\nm=audio 4000\r\n", "application/sdp", "m= line"),
    (b"v=0\r\nthis is not sdp\r\n", "application/sdp", "type=value"),
])
def test_bodies_that_cannot_be_read_raise_sdp_error(body: bytes, content_type: str, why: str) -> None:
    with pytest.raises(SDPError, match=why):
        media_sections(body, content_type)


def test_the_work_is_bounded() -> None:
    with pytest.raises(SDPError, match="media sections"):
        media_sections(sdp(*["m=audio 0 RTP/AVP 0\r\n"] * (MAX_MEDIA + 1)), "application/sdp")
    with pytest.raises(SDPError, match="lines"):
        media_sections(sdp(PLAIN, "a=x\r\n" * MAX_SDP_LINES), "application/sdp")
    many = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(MAX_PARTS + 1)) + b"--b--"
    with pytest.raises(SDPError, match="parts"):
        media_sections(many, "multipart/mixed; boundary=b")
    body = sdp(PLAIN)
    content_type = "application/sdp"
    for level in range(MAX_DEPTH + 1):
        body = f"--b{level}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body + f"\r\n--b{level}--".encode()
        content_type = f"multipart/mixed; boundary=b{level}"
    with pytest.raises(SDPError, match="nested"):
        media_sections(body, content_type)


def test_exactly_the_lines_bound_is_read_and_a_trailing_newline_is_not_a_line() -> None:
    exact = sdp(PLAIN) + b"a=x\r\n" * (MAX_SDP_LINES - 7)
    assert exact.count(b"\n") == MAX_SDP_LINES and media_sections(exact, "application/sdp") is not None
    with pytest.raises(SDPError, match="lines"):
        media_sections(exact + b"a=y", "application/sdp")


SAMPLES = [sdp(PLAIN, SDES, DTLS), b"--b\r\nContent-Type: application/sdp\r\n\r\n" + sdp(SDES) + b"\r\n--b--\r\n"]
TYPES = ["application/sdp", "multipart/mixed; boundary=b", "multipart/related;boundary=\"b\"", "application/SDP;x", "multipart/x"]


def test_seeded_mutations_raise_nothing_but_sdp_error() -> None:
    rng = random.Random(4568)
    for _ in range(3000):
        data = bytearray(rng.choice(SAMPLES))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(4)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[at : at + rng.randint(1, 20)]
            elif op == 1:
                data[at:at] = rng.choice([b"\r\n", b"--b", b"--b--", b"m=", b"a=crypto:", b"=", b"\x00", b"\xff", b"/", b" "])
            elif op == 2 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            else:
                data[at:at] = data[: rng.randint(0, 40)]
        try:
            media_sections(bytes(data), rng.choice(TYPES))
        except SDPError:
            pass


@settings(max_examples=300)
@given(st.binary(max_size=600), st.text(max_size=60))
def test_arbitrary_bytes_and_content_types_raise_nothing_but_sdp_error(body: bytes, content_type: str) -> None:
    try:
        media_sections(body, content_type)
    except SDPError:
        pass
