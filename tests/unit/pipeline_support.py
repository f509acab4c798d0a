"""The whole service through its real pipeline, for the tests of security checks.

``proxy_service`` builds the service from a real config (the default stages,
the auth stage included, users in the SQL store of data_dir) on Clock time.
Only the edges are replaced: a recording dispatcher stands in for the
sockets (so "forwarded" means "the proxy sent it"), and the credential
lookups run inline instead of in the auth thread pool (as in
digest_service.py, which tests identity and RBAC; this one adds failing
hops, bound contacts and HA1s for other algorithms than the config's).  A check removed
from the code then shows up as a request forwarded, or an answer changed,
exactly as a phone or an attacker would see it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digest_client import authorization, challenges
from inline_pool import ImmediateReactor, InlinePool
from test_core import RecordingDispatcher, RecordingFlow

from sipshield.auth._credentials import ISIPDigestCredentials
from sipshield.config import parse_config
from sipshield.message import Request, Response, parse_message
from sipshield.service import makeService
from sipshield.state import Binding
from sipshield.transaction import TimerSettings, TransactionLayer

PROXY = ("127.0.0.1", 5060)
PHONE = ("127.0.0.2", 40000)  # alice's phone: not a trusted source
PASSWORD = "alice-secret"


class Dispatcher(RecordingDispatcher):
    """Records what the proxy sends; a send to an ``unreachable`` hop fails (RFC 3261 17.1.4)."""

    def __init__(self) -> None:
        super().__init__()
        self.unreachable: set[tuple[str, str, int]] = set()

    def send(self, data: bytes, destination: Any, flow: Any = None) -> Any:
        if tuple(destination) in self.unreachable:
            return None
        return super().send(data, destination, flow)


@dataclass
class Proxy:
    service: Any
    clock: ImmediateReactor
    dispatcher: Dispatcher
    phone: RecordingFlow = field(default_factory=lambda: RecordingFlow(PHONE, local=PROXY))

    @property
    def core(self) -> Any:
        return self.service.core

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

    def respond(self, forwarded: Request, hop: tuple[str, str, int], status: int, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        """The downstream element at *hop* answers *forwarded*."""
        response = forwarded.make_response(status, to_tag=f"callee{hop[2]}")
        for name, value in headers:
            response.headers.add(name, value)
        self.core.message_received(parse_message(response.serialise()), self.dispatcher.flows[hop])

    def challenge(self, method: str = "INVITE", uri: str = "sip:bob@example.com") -> dict[str, str]:
        """Send *method* without credentials; the SHA-256 challenge that comes back."""
        self.send(request(method, uri=uri))
        answer = self.phone.sent[-1][0]
        header = "WWW-Authenticate" if method == "REGISTER" else "Proxy-Authenticate"
        (sha256,) = [c for c in challenges(answer, header) if c.get("algorithm") == "SHA-256"]
        return sha256

    def authorized(self, method: str = "INVITE", uri: str = "sip:bob@example.com", *, digest_uri: str | None = None,
                   algorithm: str = "SHA-256", nonce: str | None = None, extra: str = "", password: str = PASSWORD) -> bytes:
        """*method* from alice, answering a fresh challenge (or *nonce*) with her password."""
        challenge = self.challenge(method, uri)
        if nonce is not None:
            challenge = {**challenge, "nonce": nonce}
        auth = authorization(challenge, algorithm, "alice", password, method, digest_uri or uri)
        header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        return request(method, uri=uri, extra=f"{header}: {auth}\r\n{extra}")


def request(method: str = "INVITE", *, uri: str = "sip:bob@example.com", extra: str = "", call_id: str | None = None) -> bytes:
    """A request from alice's phone (a new transaction each time)."""
    return (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id or secrets.token_hex(6)}@pipeline\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:alice@{PHONE[0]}:{PHONE[1]}>\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def proxy_service(tmp_path: Path, *, roles: tuple[str, ...] = ("staff",), user_algorithms: tuple[str, ...] | None = None,
                  **sections: dict[str, Any]) -> Proxy:
    """The service of a config with [server] for example.com plus *sections*,
    and one user, alice, with *roles*; her HA1s are stored for
    *user_algorithms* (default: those the config enables)."""
    server = {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"], "domains": ["example.com"], **sections.pop("server", {})}
    config = parse_config({"server": server, **sections})
    clock = ImmediateReactor()
    clock.advance(1_000_000)  # a wall-clock-like now
    service = makeService(config, clock)
    service._prepare_data_dir()
    service._prepare_auth()
    (store,) = service.user_stores
    store.create_schema()
    writer = store if user_algorithms is None else type(store)(store.url.render_as_string(hide_password=False), algorithms=user_algorithms)
    writer.add("alice", "example.com", PASSWORD, roles)
    for checker in service.portal.checkers[ISIPDigestCredentials].checkers:
        checker.threadpool = InlinePool()
    core = service.core
    core.add_local_address(*PROXY)
    dispatcher = Dispatcher()
    core.dispatcher = dispatcher
    core.transactions = service.transactions = TransactionLayer(clock, core, dispatcher, TimerSettings())
    return Proxy(service, clock, dispatcher)
