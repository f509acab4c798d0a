"""The whole service through its real pipeline, on Clock time, for the tests.

One builder for every test that drives the service ``makeService`` builds
from a real config (the default stages, the auth stage included, users in
the SQL store of data_dir): ``build_service`` for the service itself,
``proxy_service`` for a ``Proxy`` around it with users and the requests a
phone or an attacker sends.  Only the edges are replaced: a recording
dispatcher stands in for the sockets downstream (so "forwarded" or
"relayed" means "the proxy sent it"), a recording flow for the socket
upstream, and the credential look-ups run inline instead of in the auth
thread pool, so an answer is there as soon as ``send`` returns.  A check
removed from the code then shows up as a request forwarded, or an answer
changed, exactly as a phone or an attacker would see it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digest_client import authorization, challenges
from inline_pool import ImmediateReactor, InlinePool
from twisted.internet.task import Clock

from sipshield.auth._credentials import ISIPDigestCredentials
from sipshield.config import parse_config
from sipshield.events import SecurityEvent
from sipshield.message import ParseError, Request, Response, parse_message
from sipshield.service import makeService
from sipshield.state import Binding
from sipshield.transaction import TimerSettings, TransactionLayer
from sipshield.workers import worker_config

REALM = "example.com"
PROXY = ("127.0.0.1", 5060)
PHONE = ("127.0.0.2", 40000)  # alice's phone: not a trusted source
PASSWORD = "alice-secret"


class EventRecorder:
    """A security event observer (subscribe it to ``service.events``): keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []

    def emit(self, event: SecurityEvent) -> None:
        self.events.append(event)


class RecordingFlow:
    """The flow a message came in on: records what the proxy sends back on it."""

    def __init__(self, remote: tuple[str, int] = ("192.0.2.9", 40000), transport: str = "UDP", local: tuple[str, int] = PROXY) -> None:
        self.remote = remote
        self.local = local
        self.transport_name = transport
        self.reliable = transport != "UDP"
        self.secure = transport == "TLS"
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.authenticated = False

    def send(self, data: bytes) -> None:
        self.sent.append((data, self.remote))

    def peer_certificate(self) -> None:
        return None

    def messages(self) -> list[Response]:
        return [parse_message(data) for data, _ in self.sent]  # type: ignore[misc]

    def statuses(self) -> list[int]:
        return [m.status for m in self.messages()]


class RecordingDispatcher:
    """The Sender: records what the proxy sends downstream; a send to a hop
    in ``unreachable`` fails (RFC 3261 17.1.4)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Request | Response, tuple[str, str, int]]] = []
        self.flows: dict[tuple[str, str, int], RecordingFlow] = {}
        self.unreachable: set[tuple[str, str, int]] = set()

    def send(self, data: bytes, destination: Any, flow: Any = None) -> Any:
        if tuple(destination) in self.unreachable:
            return None
        self.sent.append((parse_message(data), destination))
        return flow or self.flows.setdefault(destination, RecordingFlow((destination[1], destination[2]), destination[0]))

    def local_address(self, transport: str, host: str) -> tuple[str, int]:
        return ("127.0.0.1", 5061 if transport == "TLS" else 5060)

    def advertised(self, host: str) -> str:
        return host

    def reached_at(self, flow: Any) -> tuple[str, int]:
        return self.advertised(flow.local[0]), flow.local[1]

    def requests(self, method: str | None = None) -> list[Request]:
        return [m for m, _ in self.sent if isinstance(m, Request) and (method is None or m.method == method)]


class RecordingHandler:
    """The transports' handler (the transaction layer's place): records what they deliver."""

    def __init__(self, banned: tuple[str, ...] = ()) -> None:
        self.banned = banned
        self.messages: list[tuple[object, object]] = []
        self.errors: list[ParseError] = []

    def refuse_source(self, host: str) -> bool:
        return host in self.banned

    def message_received(self, message: Any, flow: Any) -> None:
        self.messages.append((message, flow))

    def bad_message(self, error: ParseError, flow: Any) -> None:
        self.errors.append(error)


def options(call_id: str = "c1", transport: str = "TCP") -> bytes:
    """An OPTIONS to the proxy, as a transport test feeds it."""
    return (
        f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} 192.0.2.1:5060;branch=z9hG4bK{call_id}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def feed(core: Any, data: bytes, flow: RecordingFlow | None = None) -> RecordingFlow:
    """Hand *data* to the core as the transport would (bad input included)."""
    flow = flow or RecordingFlow()
    try:
        message = parse_message(data)
    except ParseError as e:
        core.bad_message(e, flow)
    else:
        core.message_received(message, flow)
    return flow


def build_service(tmp_path: Path, config: Mapping[str, Any] | None = None, *, clock: Clock | None = None,
                  data_dir: str = "data", dispatcher: RecordingDispatcher | None = None, inline_lookups: bool = True,
                  worker: int | None = None) -> Any:
    """The service of *config* (its ``[server]`` table merged into one for
    example.com with data_dir under *tmp_path*), prepared as startService
    would, without listening: data_dir, auth (credential look-ups inline
    unless *inline_lookups* is False: then they wait for the auth thread pool,
    which never starts), the location store started, 127.0.0.1:5060 one of the proxy's own
    addresses.  The clock is an ImmediateReactor at a wall-clock-like now
    unless given (with inline look-ups, a clock must be one too: their
    answers come back through ``callFromThread``).  With a *dispatcher*, it and a fresh transaction layer
    stand in for the sockets downstream.  With *worker*, the configuration
    worker K of ``[server] workers`` runs (``worker_config``)."""
    raw = dict(config or {})
    server = {"data_dir": str(tmp_path / data_dir), "listen": ["udp:0:interface=127.0.0.1"], "domains": [REALM], **raw.pop("server", {})}
    if clock is None:
        clock = ImmediateReactor()
        clock.advance(1_000_000)  # nonces issued at t are then not 'older than the evicted'
    parsed = parse_config({"server": server, **raw})
    service = makeService(parsed if worker is None else worker_config(parsed, worker), clock)
    service._prepare_data_dir()
    service._prepare_auth()
    if inline_lookups:
        for checker in service.portal.checkers[ISIPDigestCredentials].checkers:
            checker.threadpool = InlinePool()
        service.downgrade.threadpool = InlinePool()
    start = getattr(service.location, "start", None)
    if start is not None:
        start()
    core = service.core
    core.add_local_address(*PROXY)
    if dispatcher is not None:
        core.dispatcher = dispatcher
        core.transactions = service.transactions = TransactionLayer(clock, core, dispatcher, TimerSettings())
    return service


@dataclass
class Proxy:
    service: Any
    clock: ImmediateReactor
    dispatcher: RecordingDispatcher
    phone: RecordingFlow = field(default_factory=lambda: RecordingFlow(PHONE, local=PROXY))

    @property
    def core(self) -> Any:
        return self.service.core

    def stop(self) -> None:
        self.service.transactions.stop()
        stop = getattr(self.service.location, "stop", None)
        if stop is not None:
            stop()
        for store in self.service.user_stores:
            close = getattr(store, "close", None)  # an htdigest file has nothing to close
            if close is not None:
                close()

    # -- alice's phone, answering real challenges ---------------------------------------

    def register(self, user: str, contact: str, q: float = 1.0) -> tuple[str, str, int]:
        """Bind *contact* to sip:USER@example.com (as a REGISTER would); returns its hop."""
        self.service.location.put(Binding(f"sip:{user}@example.com", contact, self.clock.seconds() + 3600, q=q))
        uri = contact.split(":", 1)[1].split(";")[0]
        host, _, port = uri.rpartition("@")[2].partition(":")
        return ("UDP", host, int(port or 5060))

    def send(self, data: bytes, flow: RecordingFlow | None = None) -> RecordingFlow:
        flow = flow or self.phone
        self.core.message_received(parse_message(data), flow)
        return flow

    def last(self, flow: RecordingFlow | None = None) -> Response:
        return (flow or self.phone).messages()[-1]

    def forwarded(self, method: str = "INVITE") -> list[tuple[Request, tuple[str, str, int]]]:
        return [(m, hop) for m, hop in self.dispatcher.sent if isinstance(m, Request) and m.method == method]

    def respond(self, forwarded: Request, hop: tuple[str, str, int], status: int, headers: Sequence[tuple[str, str]] = ()) -> None:
        """The downstream element at *hop* answers *forwarded*."""
        response = forwarded.make_response(status, to_tag=f"callee{hop[2]}")
        for name, value in headers:
            response.headers.add(name, value)
        self.core.message_received(parse_message(response.serialise()), self.dispatcher.flows[hop])

    def challenge(self, method: str = "INVITE", uri: str = "sip:bob@example.com", algorithm: str = "SHA-256") -> dict[str, str]:
        """Send *method* without credentials; the challenge for *algorithm* that comes back."""
        self.send(request(method, uri=uri))
        answer = self.phone.sent[-1][0]
        header = "WWW-Authenticate" if method == "REGISTER" else "Proxy-Authenticate"
        (offered,) = [c for c in challenges(answer, header) if c.get("algorithm") == algorithm]
        return offered

    def authorized(self, method: str = "INVITE", uri: str = "sip:bob@example.com", *, digest_uri: str | None = None,
                   algorithm: str = "SHA-256", nonce: str | None = None, extra: str = "", password: str = PASSWORD,
                   offered: str = "SHA-256") -> bytes:
        """*method* from alice, answering a fresh challenge for *offered* (or
        *nonce*) with her password, computed with *algorithm*."""
        challenge = self.challenge(method, uri, offered)
        if nonce is not None:
            challenge = {**challenge, "nonce": nonce}
        auth = authorization(challenge, algorithm, "alice", password, method, digest_uri or uri)
        header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        return request(method, uri=uri, extra=f"{header}: {auth}\r\n{extra}")

    # -- any user from any source, answering a nonce issued to it -----------------------

    def send_request(
        self, method: str, ruri: str, *, from_uri: str, to: str | None = None, credentials: tuple[str, str] | None = None,
        source: tuple[str, int] = PHONE, transport: str = "UDP", contact: str | None = None,
    ) -> Response | None:
        """Send one out-of-dialog request from ``source``; with ``credentials``
        (user, password) it carries a digest answer to a nonce issued to that
        source.  Returns the last response sent back, or None."""
        header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/{transport} {source[0]}:{source[1]};branch=z9hG4bK{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <{from_uri}>;tag={secrets.token_hex(4)}",
            f"To: <{to or ruri}>",
            f"Call-ID: {secrets.token_hex(8)}@test",
            f"CSeq: 1 {method}",
        ]
        if contact:
            lines.append(f"Contact: <{contact}>")
        if credentials:
            lines.append(f"{header}: {self.digest(method, ruri, *credentials, source=source[0])}")
        flow = RecordingFlow(source, transport)
        self.core.message_received(parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()), flow)
        messages = flow.messages()
        return messages[-1] if messages else None

    def digest(self, method: str, uri: str, user: str, password: str, source: str) -> str:
        """An RFC 7616 SHA-256 answer to a nonce issued to *source*, computed here with hashlib alone."""
        nonce = self.service.nonces.issue(REALM, source)
        cnonce = secrets.token_hex(8)
        ha1 = _sha256(f"{user}:{REALM}:{password}")
        response = _sha256(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{_sha256(f'{method}:{uri}')}")
        return (
            f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", response="{response}", '
            f'algorithm=SHA-256, cnonce="{cnonce}", qop=auth, nc=00000001'
        )

    def relayed(self, method: str) -> list[Request]:
        return self.dispatcher.requests(method)

    def bindings(self, aor: str) -> list[str]:
        found: list[Any] = []
        self.service.location.bindings(aor).addBoth(found.append)
        return [b.contact for b in found[0]]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def request(method: str = "INVITE", *, uri: str = "sip:bob@example.com", extra: str = "", call_id: str | None = None) -> bytes:
    """A request from alice's phone (a new transaction each time)."""
    return (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id or secrets.token_hex(6)}@pipeline\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:alice@{PHONE[0]}:{PHONE[1]}>\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def invite_with(extra: str, to_tag: str = "") -> bytes:
    """An INVITE to bob from 192.0.2.9 with the header lines *extra* (and a To *to_tag* such as ";tag=t")."""
    return (
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKx\r\nMax-Forwards: 70\r\n"
        f"From: <sip:a@example.com>;tag=f1\r\nTo: <sip:bob@example.com>{to_tag}\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


ALICE = {"alice": (PASSWORD, ("staff",))}


def stop_sql_location(service: Any) -> None:
    """Stop the SQL location store's thread pool from the test's thread: on
    an ImmediateReactor the store's own stop() would join the pool's thread
    from within it (and a pool left running keeps pytest from exiting)."""
    pool, service.location._pool = service.location._pool, None
    if pool is not None:
        pool.stop()


def proxy_service(tmp_path: Path, users: Mapping[str, tuple[str, Sequence[str]]] = ALICE, *, user_algorithms: tuple[str, ...] | None = None,
                  clock: ImmediateReactor | None = None, worker: int | None = None, **sections: Any) -> Proxy:
    """A Proxy around ``build_service`` for a config of *sections* (``[server]``
    merged), with *users* (name -> (password, roles), in realm example.com;
    by default alice, staff) in its SQL user store, their HA1s stored for
    *user_algorithms* (default: those the config enables), on *clock* if given."""
    dispatcher = RecordingDispatcher()
    service = build_service(tmp_path, sections, clock=clock, dispatcher=dispatcher, worker=worker)
    (store,) = service.user_stores
    store.create_schema()
    writer = store if user_algorithms is None else type(store)(store.url.render_as_string(hide_password=False), algorithms=user_algorithms, keys=store.keys)
    for name, (password, roles) in users.items():
        writer.add(name, REALM, password, roles)
    return Proxy(service, service.reactor, dispatcher)
