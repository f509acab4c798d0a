"""What an unauthenticated sender can make the SDP reader cost: microseconds per KB of body for
the worst bodies found (run: PYTHONPATH=. python attack/sdp_cost.py). The media stage reads the
body of every INVITE/UPDATE/PRACK that reaches it."""
import time

from sipshield.message import parse_message
from sipshield.security import srtp_refusal

HEAD = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
SIZE = 60_000


def message(content_type: str, body: str) -> bytes:
    head = ("INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:5060;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
            "From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\n")
    return (head + f"Content-Type: {content_type}\r\nContent-Length: {len(body.encode())}\r\n\r\n" + body).encode()


BODIES = {
    "plain SDP, 512 a= lines": ("application/sdp", HEAD + "m=audio 1 RTP/SAVP 0\r\n" + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 80 + "\r\n" * 1 * 0 + ("a=x:" + "y" * 100 + "\r\n") * 500),
    "SDP, one 60 KB line": ("application/sdp", HEAD + "a=" + "x" * SIZE + "\r\n"),
    "multipart, 60 KB of '--b' not at line starts": ("multipart/mixed;boundary=b", "x--b" * (SIZE // 4) + "\r\n--b--\r\n"),
    "multipart, 16 parts of 4 KB": ("multipart/mixed;boundary=b", ("--b\r\nContent-Type: application/sdp\r\n\r\n" + HEAD + ("a=x:" + "y" * 100 + "\r\n") * 30 + "\r\n") * 16 + "--b--\r\n"),
    "multipart, nested to the depth": ("multipart/mixed;boundary=a", "--a\r\nContent-Type: multipart/mixed;boundary=b\r\n\r\n--b\r\nContent-Type: multipart/mixed;boundary=c\r\n\r\n--c\r\nContent-Type: application/sdp\r\n\r\n" + HEAD + "m=audio 0 RTP/AVP 0\r\n" * 32 + "\r\n--c--\r\n\r\n--b--\r\n\r\n--a--\r\n"),
    "multipart, 60 KB part header": ("multipart/mixed;boundary=b", "--b\r\nX: " + "y" * SIZE + "\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n"),
    "multipart, 60 KB of folded header lines": ("multipart/mixed;boundary=b", "--b\r\nX: y\r\n" + " z\r\n" * (SIZE // 4) + "\r\nhi\r\n--b--\r\n"),
}
for name, (content_type, body) in BODIES.items():
    parsed = parse_message(message(content_type, body))
    runs = 50
    began = time.perf_counter()
    for _ in range(runs):
        verdict = srtp_refusal(parsed, None)
    took = (time.perf_counter() - began) / runs
    kb = len(parsed.body) / 1024
    print(f"{took * 1e6 / kb:8.1f} us/KB  {took * 1e3:7.2f} ms  {kb:6.1f} KB  {name}: {'pass' if verdict is None else verdict.text[:50]}")
