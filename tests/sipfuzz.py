"""A seeded mutation fuzzer for sipshield (issue 7: no tracebacks, no 500 for bad input).

Three parts, shared by tests/unit/test_fuzz.py (10^4 messages), the loopback
test in tests/e2e/test_fuzz_loopback.py and bench/fuzz.py (10^5):

- ``seeds(rng, ctx)``: valid requests (REGISTER, INVITE, OPTIONS, BYE, ACK,
  CANCEL, MESSAGE; with and without a digest answer the proxy will accept,
  in dialog with a signed Route), the RFC 4475 torture messages and forged
  responses (100/180/200/401 with several Vias).
- ``Mutator``: byte flips, inserted, deleted and duplicated ranges, duplicated
  header lines, numeric edge values (ports 0, 65535, 65536, 99999999999,
  negative), bad addresses in Via received/rport/maddr, unparseable hosts,
  huge Content-Length, CRLF games, UTF-8 junk, truncation, empty values.
  Everything comes from one ``random.Random(seed)``: a seed replays a run.
- ``FuzzTarget``: the real service (``makeService`` with its default
  pipeline, auth stage included, a SQLite user store with one user) on a
  Clock-driven reactor.  Bytes go into the real ``SIPDatagramProtocol`` and
  ``SIPStreamProtocol`` that its listeners created, as the reactor would
  deliver them; everything the service writes (answers, relayed requests,
  outbound connections) is recorded, nothing leaves the process.

What counts as a failure (a *crash class* is named by the exception type and
the innermost sipshield frame, or by the status and reason):

- an exception escaping a protocol callback or a timer (the reactor would log
  it as "Unhandled Error" with a traceback);
- a log event carrying a failure (``log.failure``: a traceback in the log,
  e.g. "routing failed", or "Unhandled error in Deferred");
- any 5xx, with four exceptions, none of them a reaction to a malformed
  message: 503 (a backend or store is down, fail closed with Retry-After;
  "No route to target"), 502 "Bad Gateway: <why>" (the next hop is no
  address to send to: port 0, broadcast, multicast, no listener of its
  transport or family; an answer about the target), 505 (RFC 3261 21.5.7: the SIP-Version is not
  2.0, an answer about the version, not a failure), and 500 "Server
  Internal Error" while the message's target was out of reach (a name that
  does not resolve, a datagram the socket refused, a connection refused): RFC 3261 16.9 turns the transport error
  into a 503 and 16.7 step 6 the only 503 into a 500.  That 500 is told
  apart by the reactor's ``unreachable`` count moving while the message
  was handled, so a 500 with no such event is still a finding.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import itertools
import random
import re
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inline_pool import call_inline
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, InvalidAddressError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

CORPUS = Path(__file__).parent / "data" / "rfc4475"
ALLOWED_5XX = frozenset({502, 503, 505})
_UNREACHABLE_LOGS = ("cannot resolve", "cannot connect")
USER, PASSWORD, DOMAIN = "alice", "fuzz-secret", "example.com"
ATTACKER = "127.0.0.2"  # unauthenticated
TRUSTED = "127.0.0.3"   # in [auth] trusted_sources
GATEWAY = "127.0.0.9"   # the static route's target

# -- seeds --------------------------------------------------------------------------------------


@dataclass
class SeedContext:
    """What a seed needs to know of the proxy it is aimed at."""

    proxy: tuple[str, int]
    source: tuple[str, int]
    transport: str = "UDP"
    nonce: Callable[[str], str] | None = None
    """realm -> a nonce issued to ``source`` (in process); None: no valid digest answers."""
    route_token: Callable[[str, str, str], str] | None = None
    """(call_id, from_tag, destination host) -> the proxy's Record-Route token
    for a dialog between this source and that host; None: unsigned routes."""


def _digest(method: str, uri: str, nonce: str) -> str:
    ha1 = hashlib.sha256(f"{USER}:{DOMAIN}:{PASSWORD}".encode()).hexdigest()
    ha2 = hashlib.sha256(f"{method}:{uri}".encode()).hexdigest()
    response = hashlib.sha256(f"{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}".encode()).hexdigest()
    return (f'Digest username="{USER}", realm="{DOMAIN}", nonce="{nonce}", uri="{uri}", response="{response}", '
            f'algorithm=SHA-256, cnonce="0a4f113b", qop=auth, nc=00000001')


_SDP = ("v=0\r\no=alice 2890844526 2890844526 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
        "m=audio 49170 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n")


def request_seed(rng: random.Random, ctx: SeedContext, method: str | None = None) -> bytes:
    """One valid request of a random kind (see the module docstring)."""
    ph, pp = ctx.proxy
    sh, sp = ctx.source
    method = method or rng.choice(("REGISTER", "INVITE", "INVITE", "OPTIONS", "OPTIONS", "BYE", "ACK", "CANCEL", "MESSAGE", "SUBSCRIBE"))
    n = rng.getrandbits(40)
    call_id = f"fz{n:x}@{sh}"
    from_tag = f"f{n % 99991}"
    transport = ctx.transport
    in_dialog = method in ("BYE", "ACK") or (method in ("INVITE", "MESSAGE") and rng.random() < 0.3)
    if method == "REGISTER":
        ruri, to = f"sip:{DOMAIN}", f"<sip:{USER}@{DOMAIN}>"
    elif method == "OPTIONS" and rng.random() < 0.5:
        ruri, to = f"sip:{ph}:{pp}", f"<sip:{ph}:{pp}>"
    else:
        callee = rng.choice(("bob", USER, "+15551234", "carol"))
        host = rng.choice((DOMAIN, DOMAIN, f"{sh}:{sp}", "gw.example.net"))
        ruri, to = f"sip:{callee}@{host}", f"<sip:{callee}@{DOMAIN}>"
    if in_dialog:
        to += f";tag=t{n % 7919}"
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {sh}:{sp};branch=z9hG4bK{n:x}" + (";rport" if rng.random() < 0.7 else ""),
        f"Max-Forwards: {rng.choice((70, 70, 1, 0))}",
        f"From: \"Alice\" <sip:{USER}@{DOMAIN}>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {rng.randint(1, 9999)} {method}",
        f"Contact: <sip:{USER}@{sh}:{sp};transport={transport.lower()}>" + (";expires=3600" if method == "REGISTER" else ""),
    ]
    if method == "REGISTER":
        lines.append(f"Expires: {rng.choice((0, 60, 3600))}")
    if in_dialog:
        sign = ctx.route_token is not None and rng.random() < 0.8
        via_gateway = rng.random() < 0.3
        # The token binds the host the request goes to after our Route.
        destination = GATEWAY if via_gateway else ruri.split("@", 1)[-1].rsplit(":", 1)[0] if "@" in ruri else ph
        token = ctx.route_token(call_id, from_tag, destination) if sign and ctx.route_token is not None else "0" * 16
        lines.append(f"Route: <sip:{ph}:{pp};transport={transport.lower()};lr;ss={token}>")
        if via_gateway:
            lines.append(f"Route: <sip:{GATEWAY}:5070;lr>")
    if rng.random() < 0.2:
        lines.append(f"Record-Route: <sip:{sh}:{sp};lr>")
    if ctx.nonce is not None and method not in ("ACK", "CANCEL") and rng.random() < 0.6:
        header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        lines.append(f"{header}: {_digest(method, ruri, ctx.nonce(DOMAIN))}")
    body = ""
    if method == "INVITE":
        body = _SDP
        lines.append("Content-Type: application/sdp")
    elif method == "MESSAGE":
        body = "hello, world"
        lines.append("Content-Type: text/plain")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def response_seed(rng: random.Random, ctx: SeedContext) -> bytes:
    """A forged response: 100/180/200/401, our Via on top (or not), more Vias below."""
    ph, pp = ctx.proxy
    status, reason = rng.choice(((100, "Trying"), (180, "Ringing"), (200, "OK"), (401, "Unauthorized"), (486, "Busy Here")))
    method = rng.choice(("INVITE", "INVITE", "REGISTER", "BYE", "OPTIONS"))
    n = rng.getrandbits(40)
    vias = [f"Via: SIP/2.0/{ctx.transport} {ph}:{pp};branch=z9hG4bK{n:x}" if rng.random() < 0.8
            else f"Via: SIP/2.0/UDP 127.0.0.{rng.randint(4, 8)}:5060;branch=z9hG4bK{n:x}"]
    for i in range(rng.randint(1, 4)):
        vias.append(f"Via: SIP/2.0/{rng.choice(('UDP', 'TCP'))} 127.0.0.{rng.randint(4, 8)}:{5060 + i};branch=z9hG4bKv{i}{n:x};received=127.0.0.{i + 4};rport={40000 + i}")
    lines = [f"SIP/2.0 {status} {reason}", *vias,
             f"From: <sip:{USER}@{DOMAIN}>;tag=f{n % 977}", f"To: <sip:bob@{DOMAIN}>;tag=t{n % 331}",
             f"Call-ID: fzr{n:x}", f"CSeq: 1 {method}"]
    if status == 200 and method == "INVITE":
        lines += [f"Contact: <sip:bob@127.0.0.{rng.randint(4, 8)}:5062>", "Record-Route: <sip:127.0.0.4;lr>"]
    if status == 401:
        lines.append(f'WWW-Authenticate: Digest realm="{DOMAIN}", nonce="abc", algorithm=SHA-256, qop="auth"')
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def rfc4475_messages() -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.glob("*.dat"))]


def seed(rng: random.Random, ctx: SeedContext, torture: list[bytes]) -> bytes:
    pick = rng.random()
    if pick < 0.6:
        return request_seed(rng, ctx)
    if pick < 0.8:
        return response_seed(rng, ctx)
    return rng.choice(torture)


# -- mutations ------------------------------------------------------------------------------------

EDGE_NUMBERS = ("0", "65535", "65536", "99999999999", "-1", "-5060", "4294967296", "2147483648", "18446744073709551616",
                "00000000000000000005060", "1e3", "0x13c4", "", " ", "+5060", "5060.5", "٥٠٦٠")
BAD_ADDRESSES = ("999.1.1.1", "1.2.3", "256.256.256.256", "::::", "[::1", "::1]", "[::1]", "fe80::1%eth0", "", "a b", "127.0.0.1:5060",
                 "0", "-1", "[1:2:3:4:5:6:7:8:9]", "x" * 300, "127.0.0.1/8", "%00", "0x7f.1", "..", "[", "]", "\u00e9",
                 "::ffff:127.0.0.1", "[::ffff:999.0.0.1]", "1.2.3.4.5", "12345678901234567890")
BAD_HOSTS = ("", "[", "[::1", "a..b", "-a", "a_b", "1.2.3.4.5", "[127.0.0.1]", "%41", "@", "\u00e9xample.com", "::1", "[::1]:", ":",
             "a" * 300, "[fe80::1%25eth0]", "host:port", "[v1.x]", "*", "0.0.0.0", "255.255.255.255", "224.0.0.1", "[::]", "localhost",
             "a b", "..", "1.2.3.", "[:::::::]", "[1::2::3]")
JUNK = (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\xf0\x9f\x92\xa9", b"\xe2\x80\xae", b"\x80", b"\xc0\xaf", b"\x1b[2J",
        b"\x7f", b"\xef\xbb\xbf", b"\t", b";", b",", b"<", b">", b"\"", b"\\", b"%", b"%zz", b"=", b"@", b":")
HEADERS = ("Via", "From", "To", "Call-ID", "CSeq", "Contact", "Route", "Record-Route", "Max-Forwards", "Content-Length", "Expires",
           "Authorization", "Proxy-Authorization", "Content-Type", "Proxy-Require", "Require", "Path", "Supported", "v", "f", "t", "i",
           "m", "l", "Reason", "Min-Expires", "Retry-After", "Allow", "Event")
_NUMBER = re.compile(rb"\d+")
_PORT = re.compile(rb":(\d+)")
_HOST = re.compile(rb"(?<=[@ ])(\[[0-9a-fA-F:.]*\]|[A-Za-z0-9.-]+)(?=[:;>\r ,])")
_VIA_LINE = re.compile(rb"^(Via|v):[^\r\n]*", re.M | re.I)
_CL_LINE = re.compile(rb"^(Content-Length|l)[ \t]*:[^\r\n]*", re.M | re.I)
_HEADER_LINE = re.compile(rb"^[A-Za-z-]+[ \t]*:[^\r\n]*", re.M)


class Mutator:
    """Deterministic mutations of SIP messages: same seed, same messages."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ops: list[Callable[[bytearray], bytearray]] = [
            self.flip, self.flip, self.insert, self.delete, self.duplicate, self.duplicate_header, self.edge_number, self.edge_number,
            self.edge_port, self.edge_port, self.via_param, self.via_param, self.bad_host, self.bad_host, self.content_length,
            self.crlf, self.crlf, self.junk, self.truncate, self.empty_value, self.add_header, self.many_values, self.case,
        ]
        self.counts: Counter[str] = Counter()

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5))):
            op = rng.choice(self.ops)
            self.counts[op.__name__] += 1
            buf = op(buf)
            if not buf:
                buf = bytearray(b"\r\n")
        return bytes(buf)

    # -- helpers
    def _span(self, buf: bytearray, most: int = 64) -> tuple[int, int]:
        start = self.rng.randrange(len(buf))
        return start, min(len(buf), start + self.rng.randint(1, most))

    def _sub(self, buf: bytearray, pattern: re.Pattern[bytes], replacement: bytes, group: int = 0) -> bytearray:
        found = list(pattern.finditer(buf))
        if not found:
            return self.flip(buf)
        m = self.rng.choice(found)
        return buf[: m.start(group)] + replacement + buf[m.end(group):]

    def _line(self, buf: bytearray, pattern: re.Pattern[bytes] = _HEADER_LINE) -> re.Match[bytes] | None:
        found = list(pattern.finditer(buf))
        return self.rng.choice(found) if found else None

    # -- operations
    def flip(self, buf: bytearray) -> bytearray:
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(buf))
            buf[i] = buf[i] ^ (1 << self.rng.randrange(8)) if self.rng.random() < 0.7 else self.rng.getrandbits(8)
        return buf

    def insert(self, buf: bytearray) -> bytearray:
        i = self.rng.randrange(len(buf) + 1)
        if self.rng.random() < 0.5:
            chunk = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 16)))
        else:
            s, e = self._span(buf)
            chunk = bytes(buf[s:e])
        return buf[:i] + chunk + buf[i:]

    def delete(self, buf: bytearray) -> bytearray:
        s, e = self._span(buf)
        return buf[:s] + buf[e:]

    def duplicate(self, buf: bytearray) -> bytearray:
        s, e = self._span(buf)
        return buf[:e] + buf[s:e] * self.rng.randint(1, 8) + buf[e:]

    def duplicate_header(self, buf: bytearray) -> bytearray:
        m = self._line(buf)
        if m is None:
            return self.flip(buf)
        line = m.group(0) + b"\r\n"
        return buf[: m.start()] + line * self.rng.choice((2, 2, 3, 10, 70)) + buf[m.start():]

    def edge_number(self, buf: bytearray) -> bytearray:
        return self._sub(buf, _NUMBER, self.rng.choice(EDGE_NUMBERS).encode())

    def edge_port(self, buf: bytearray) -> bytearray:
        return self._sub(buf, _PORT, self.rng.choice(EDGE_NUMBERS).encode(), group=1)

    def via_param(self, buf: bytearray) -> bytearray:
        m = self._line(buf, _VIA_LINE)
        if m is None:
            return self.flip(buf)
        name = self.rng.choice((b"received", b"rport", b"maddr", b"ttl", b"branch", b"received", b"rport"))
        value = self.rng.choice(BAD_ADDRESSES + EDGE_NUMBERS).encode("utf-8")
        param = b";" + name if self.rng.random() < 0.1 else b";" + name + b"=" + value
        return buf[: m.end()] + param + buf[m.end():]

    def bad_host(self, buf: bytearray) -> bytearray:
        return self._sub(buf, _HOST, self.rng.choice(BAD_HOSTS).encode("utf-8"), group=1)

    def content_length(self, buf: bytearray) -> bytearray:
        value = self.rng.choice(("2147483647", "2147483648", "99999999999999999999", "-1", "65536", "1 2", "0x10", "", "4294967295",
                                 "10", "0", "00000000000000000000000000001")).encode()
        m = self._line(buf, _CL_LINE)
        if m is None:
            return buf + b"Content-Length: " + value + b"\r\n"
        return buf[: m.start()] + b"Content-Length: " + value + buf[m.end():]

    def crlf(self, buf: bytearray) -> bytearray:
        rng = self.rng
        choice = rng.randrange(8)
        if choice == 0:
            return buf.replace(b"\r\n", b"\n")
        if choice == 1:
            return buf.replace(b"\r\n", b"\r", rng.randint(1, 5))
        if choice == 2:
            return bytearray(b"\r\n" * rng.randint(1, 6)) + buf
        if choice == 3:
            return buf.replace(b"\r\n\r\n", b"\r\n", 1)
        if choice == 4:
            i = buf.find(b"\r\n", rng.randrange(len(buf)))
            return buf if i < 0 else buf[:i] + b"\r\n\r\n" + buf[i + 2:]
        if choice == 5:
            i = buf.find(b"\r\n", rng.randrange(len(buf)))
            return buf if i < 0 else buf[:i] + b"\r\n " + buf[i + 2:]  # fold the next line into this one
        if choice == 6:
            i = rng.randrange(len(buf) + 1)
            return buf[:i] + rng.choice((b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\r")) + buf[i:]
        return buf + b"\r\n" * rng.randint(1, 3)

    def junk(self, buf: bytearray) -> bytearray:
        i = self.rng.randrange(len(buf) + 1)
        return buf[:i] + self.rng.choice(JUNK) * self.rng.randint(1, 3) + buf[i:]

    def truncate(self, buf: bytearray) -> bytearray:
        return buf[: self.rng.randrange(1, len(buf) + 1)]

    def empty_value(self, buf: bytearray) -> bytearray:
        m = self._line(buf)
        if m is None:
            return self.flip(buf)
        colon = buf.index(b":", m.start())
        return buf[: colon + 1] + self.rng.choice((b"", b" ", b"\t", b" ,", b" ;", b" <>", b" <sip:>")) + buf[m.end():]

    def add_header(self, buf: bytearray) -> bytearray:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return self.flip(buf)
        rng = self.rng
        name = rng.choice(HEADERS).encode()
        host = rng.choice(BAD_HOSTS + ("127.0.0.4",)).encode("utf-8")
        port = rng.choice(EDGE_NUMBERS + ("5060",)).encode("utf-8")
        value = rng.choice((b"<sip:u@" + host + b":" + port + b";lr>", b"SIP/2.0/UDP " + host + b":" + port + b";branch=z9hG4bKx",
                            b"<sip:" + host + b";maddr=" + host + b">", port, host, b"Digest realm=\"example.com\", nonce=,", b"*"))
        return buf[:end] + b"\r\n" + name + b": " + value + buf[end:]

    def many_values(self, buf: bytearray) -> bytearray:
        m = self._line(buf)
        if m is None:
            return self.flip(buf)
        colon = buf.index(b":", m.start())
        value = bytes(buf[colon + 1: m.end()]).strip()
        return buf[: m.end()] + (b"," + value) * self.rng.choice((1, 2, 5, 40, 200)) + buf[m.end():]

    def case(self, buf: bytearray) -> bytearray:
        s, e = self._span(buf, 200)
        return buf[:s] + (buf[s:e].upper() if self.rng.random() < 0.5 else buf[s:e].lower()) + buf[e:]


def messages(seed_value: int, ctx: SeedContext, mutate_rate: float = 0.9) -> Iterator[bytes]:
    """An endless, deterministic stream: seeds, most of them mutated."""
    rng = random.Random(seed_value)
    mutator = Mutator(rng)
    torture = rfc4475_messages()
    while True:
        data = seed(rng, ctx, torture)
        yield mutator.mutate(data) if rng.random() < mutate_rate else data


# -- outcomes ------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One crash class: what went wrong, how often, and the first input that did it."""

    key: str
    count: int = 0
    first: bytes = b""
    detail: str = ""


@dataclass
class Report:
    sent: int = 0
    answers: Counter[int] = field(default_factory=Counter)
    findings: dict[str, Finding] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, key: str, data: bytes, detail: str) -> None:
        finding = self.findings.get(key)
        if finding is None:
            finding = self.findings[key] = Finding(key, first=data, detail=detail)
        finding.count += 1

    def summary(self) -> str:
        lines = [f"{self.sent} messages, {len(self.findings)} crash classes"]
        for f in sorted(self.findings.values(), key=lambda f: -f.count):
            lines.append(f"  {f.count:6d}  {f.key}\n          first input: {f.first[:300]!r}\n          {f.detail[-600:]}")
        return "\n".join(lines)


def crash_key(exc: BaseException, tb: Any = None) -> str:
    """Exception type plus the innermost frame in sipshield (where the fix goes)."""
    frames = traceback.extract_tb(tb if tb is not None else exc.__traceback__)
    ours = [f for f in frames if "/sipshield/" in f.filename]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    place = f"{where.filename.rsplit('/sipshield/', 1)[-1]}:{where.lineno} {where.name}" if where else "?"
    return f"{type(exc).__name__} at {place}"


def _frames(data: bytes) -> list[bytes]:
    """The messages the service wrote on one connection (its own framing, RFC 3261 18.3)."""
    from sipshield.message import KEEPALIVE, StreamFramer

    framer = StreamFramer(max_message_bytes=1 << 24, max_headers=1 << 16)
    framer.feed(data)
    found = []
    while (event := framer.next_event()) is not None:
        if event is not KEEPALIVE:
            found.append(bytes(event))  # type: ignore[arg-type]
    return found


def status_of(data: bytes) -> tuple[int, str] | None:
    if not data.startswith(b"SIP/2.0 "):
        return None
    line = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    parts = line.split(" ", 2)
    try:
        return int(parts[1]), parts[2] if len(parts) > 2 else ""
    except ValueError:
        return None


# -- the in-process target -------------------------------------------------------------------------


class _UDPPort:
    def __init__(self, reactor: FuzzReactor, host: str, port: int) -> None:
        self.reactor = reactor
        self._host = IPv4Address("UDP", host, port)

    def getHost(self) -> IPv4Address:
        return self._host

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        """Refuse what twisted.internet.udp.Port.write and sendto(2) on Linux refuse."""
        host, port = addr
        self.reactor.unreachable += 1  # until the checks below pass
        if not isIPAddress(host):
            raise InvalidAddressError(host, "IPv6 address on an IPv4 port" if isIPv6Address(host) else "write() only accepts IP addresses")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise OverflowError("sendto(): port must be 0-65535.")
        if port == 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        if host in ("255.255.255.255", "127.255.255.255"):
            raise PermissionError(errno.EACCES, "Permission denied")
        self.reactor.unreachable -= 1
        self.reactor.written.append(("UDP", data, addr))

    def stopListening(self) -> None:
        return None


class _TCPPort:
    def __init__(self, host: str, port: int, factory: Any) -> None:
        self._host = IPv4Address("TCP", host, port)
        self.factory = factory

    def getHost(self) -> IPv4Address:
        return self._host

    def stopListening(self) -> None:
        return None


class _Connector:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def stopConnecting(self) -> None:
        return None

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, self.port)


class FuzzReactor(Clock):
    """Clock time plus what the listeners and the dispatcher ask of a reactor.

    Listening ports are objects that record what is written; outbound
    connections are refused after their timeout; every name fails to
    resolve (the fuzzer's host names are not in any DNS, and a fuzzer must
    not ask the network).  Thread-pool results are delivered at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.written: list[tuple[str, bytes, tuple[str, int]]] = []
        self.udp: list[tuple[_UDPPort, Any]] = []
        self.tcp: list[_TCPPort] = []
        self.connects: list[tuple[str, int]] = []
        self.unreachable = 0
        self.names: dict[str, str] = {}
        """What ``resolve`` knows; every other name fails."""
        """Datagrams refused, names not resolved, connections refused: targets out of reach."""
        self._ports = itertools.count(30000)

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> _UDPPort:
        p = _UDPPort(self, interface, port or next(self._ports))
        protocol.makeConnection(p)
        self.udp.append((p, protocol))
        return p

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> _TCPPort:
        p = _TCPPort(interface, port or next(self._ports), factory)
        self.tcp.append(p)
        return p

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> _Connector:
        connector = _Connector(host, port)
        self.connects.append((host, port))
        self.callLater(timeout, self._refuse, factory, connector)
        return connector

    def _refuse(self, factory: Any, connector: _Connector) -> None:
        self.unreachable += 1
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError(connector.host)))

    def connectSSL(self, host: str, port: int, factory: Any, contextFactory: Any, timeout: float = 30, bindAddress: Any = None) -> _Connector:
        return self.connectTCP(host, port, factory, timeout)

    def resolve(self, name: str, timeout: Any = (1, 3, 11, 45)) -> defer.Deferred[str]:
        address = self.names.get(name)
        if address is not None:
            return defer.succeed(address)
        self.unreachable += 1
        return defer.fail(DNSLookupError(name))


def fuzz_config(data_dir: Path) -> dict[str, Any]:
    return {
        "server": {"data_dir": str(data_dir), "domains": [DOMAIN], "listen": ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]},
        # Trusted over UDP too, so the fuzzed UDP traffic also reaches the relaying paths.
        "auth": {"trusted_sources": [{"network": f"{TRUSTED}/32", "udp": True}], "trusted_role": "admin"},
        "routes": [{"match_domain": "gw.example.net", "target": f"sip:{GATEWAY}:5070;transport=udp", "external": True}],
    }


class FuzzTarget:
    """The real service in process; ``send_udp`` / ``send_tcp`` feed its real protocols."""

    def __init__(self, data_dir: Path, report: Report | None = None) -> None:
        from sipshield.config import parse_config
        from sipshield.service import makeService

        self.reactor = FuzzReactor()
        self.reactor.advance(1_000_000)  # a wall-clock-like now
        self.report = report or Report()
        self.service = svc = makeService(parse_config(fuzz_config(data_dir)), self.reactor)
        # Credential lookups run inline (the SQLite store is local and fast).
        svc.auth_pool.callInThreadWithCallback = call_inline  # type: ignore[method-assign]
        self._current = b""
        self._unreachable = False
        self._unreachable_mark = 0
        self._unreachable_500s: set[bytes] = set()
        self.sent: list[tuple[str, bytes, tuple[str, int]]] = []
        """What the service wrote in answer to the last ``send_*`` (kind, bytes, address)."""
        globalLogPublisher.addObserver(self._observe)
        svc.privilegedStartService()
        svc.startService()
        svc.user_stores[0].add(USER, DOMAIN, PASSWORD, roles=("admin",))
        self.udp_protocol = self.reactor.udp[0][1]
        self.tcp_port = self.reactor.tcp[0]
        self.proxy = {"UDP": self.reactor.udp[0][0].getHost().port, "TCP": self.tcp_port.getHost().port}
        self._connection: Any = None
        self._connection_left = 0
        self._source_ports = itertools.count(20000)

    def context(self, transport: str, source: str) -> SeedContext:
        from sipshield.proxy import endpoints

        svc = self.service
        return SeedContext(
            proxy=("127.0.0.1", self.proxy[transport]), source=(source, 5062 if transport == "UDP" else 20000), transport=transport,
            nonce=lambda realm: svc.nonces.issue(realm, source),
            route_token=lambda call_id, tag, destination: svc.core.signer.token(call_id, tag, endpoints(source, destination)),
        )

    def close(self) -> None:
        self._drop_connection()
        try:
            self.service.stopService()
        finally:
            globalLogPublisher.removeObserver(self._observe)

    # -- feeding
    def send_udp(self, data: bytes, source: tuple[str, int]) -> None:
        self._current = data
        self.sent = []
        self._guard(self.udp_protocol.datagramReceived, data, source)
        self._collect()

    def send_tcp(self, data: bytes, source: str) -> None:
        """Write on the current connection from ``source``; a new one every few messages or after a close."""
        self._current = data
        self.sent = []
        if (self._connection is None or self._connection_left <= 0 or self._connection[1].disconnecting
                or self._connection[0].remote[0] != source):
            self._drop_connection()
            self._open_connection(source)
        proto, transport = self._connection
        self._connection_left -= 1
        self._guard(proto.dataReceived, data)
        self._collect()

    def advance(self, seconds: float) -> None:
        """Let time pass: retransmissions, Timer C, idle timeouts, refused connections."""
        self._current = b"(timers)"
        step = 0.5
        while seconds > 0:
            self._guard(self.reactor.advance, min(step, seconds))
            seconds -= step
            step = min(step * 2, 32)
        self._collect()

    def finish(self) -> Report:
        """Close the connection, let every timer run out and collect what is left."""
        self._drop_connection()
        self.advance(400)
        gc.collect()  # "Unhandled error in Deferred" is logged when the Deferred is collected
        self._collect()
        # Every transaction ends, whatever was wrong with its request (issue 7).
        left = {kind: n for kind, n in self.service.transactions.counts().items() if n}
        for kind, n in left.items():
            self.report.add(f"{kind} transactions never ended", b"(all timers run out)", f"{n} left")
        if self.service.core.contexts:
            self.report.add("response contexts never ended", b"(all timers run out)", f"{len(self.service.core.contexts)} left")
        return self.report

    def _open_connection(self, source: str) -> None:
        factory = self.tcp_port.factory
        peer = IPv4Address("TCP", source, next(self._source_ports))
        proto = factory.buildProtocol(peer)
        transport = StringTransport(hostAddress=self.tcp_port.getHost(), peerAddress=peer)
        self._guard(proto.makeConnection, transport)
        self._connection = (proto, transport)
        self._connection_left = self.reactor_rng.randint(1, 8)

    reactor_rng = random.Random(0)  # connection lengths only; reseeded by run()

    def _drop_connection(self) -> None:
        if self._connection is None:
            return
        proto, transport = self._connection
        self._connection = None
        self._collect()
        self._guard(proto.connectionLost, Failure(ConnectionRefusedError("closed")))

    def _guard(self, f: Callable[..., Any], *args: Any) -> None:
        try:
            f(*args)
        except Exception as e:  # what the reactor would log as "Unhandled Error"
            self.report.add(crash_key(e), self._current, "".join(traceback.format_exception(e)))

    def _observe(self, event: dict[str, Any]) -> None:
        if str(event.get("log_format", "")).startswith(_UNREACHABLE_LOGS):
            self._unreachable = True
        failure = event.get("log_failure")
        if failure is not None:
            key = crash_key(failure.value, failure.getTracebackObject()) + f" (logged: {event.get('log_format', '')[:40]})"
            self.report.add(key, self._current, failure.getTraceback())

    def _collect(self) -> None:
        written = self.reactor.written
        if self._connection is not None:
            transport = self._connection[1]
            out = transport.value()
            if out:
                transport.clear()
                written += [("TCP", message, ("", 0)) for message in _frames(out)]
        self.sent += written
        for _kind, data, _where in written:
            status = status_of(data)
            if status is None:
                continue
            code, reason = status
            self.report.answers[code] += 1
            if not 500 <= code < 600 or code in ALLOWED_5XX:
                continue
            if code == 500 and (self._unreachable or self.reactor.unreachable != self._unreachable_mark or data in self._unreachable_500s):
                self._unreachable_500s.add(data)  # its retransmissions (Timer G) are allowed too
                continue
            self.report.add(f"{code} {reason}", self._current, data.decode("utf-8", "replace"))
        written.clear()
        self._unreachable = False
        self._unreachable_mark = self.reactor.unreachable


def run(target: FuzzTarget, count: int, seed_value: int, udp_share: float = 0.5) -> Report:
    """Send ``count`` messages (``udp_share`` of them over UDP, the rest over TCP) from
    an unauthenticated source, a trusted one and one answering digest challenges."""
    import time

    report = target.report
    FuzzTarget.reactor_rng = random.Random(seed_value)
    rng = random.Random(seed_value ^ 0x5eed)
    streams = {(t, s): messages(seed_value * 7 + i, target.context(t, s))
               for i, (t, s) in enumerate(itertools.product(("UDP", "TCP"), (ATTACKER, TRUSTED)))}
    started = time.perf_counter()
    for i in range(count):
        transport = "UDP" if rng.random() < udp_share else "TCP"
        source = TRUSTED if rng.random() < 0.4 else ATTACKER
        data = next(streams[(transport, source)])
        if transport == "UDP":
            target.send_udp(data, (source, 5062))
        else:
            target.send_tcp(data, source)
        report.sent += 1
        if i % 500 == 499:
            target.advance(40)
    target.finish()
    report.seconds = time.perf_counter() - started
    return report
