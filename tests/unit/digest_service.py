"""The whole service with digest users, on Clock time, for identity and RBAC tests.

Built from a real config (the default pipeline: auth and rbac included),
with users in its real SQL user store; the credential look-ups and the SQL
location store run inline instead of in thread pools, so a request's answer
is there as soon as ``send`` returns.  A recording dispatcher stands in for
the sockets downstream: "relayed" means "the proxy sent it on".
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inline_pool import ImmediateReactor, InlinePool
from test_core import RecordingDispatcher, RecordingFlow

from sipshield.auth._credentials import ISIPDigestCredentials
from sipshield.config import parse_config
from sipshield.message import Request, Response, parse_message
from sipshield.service import makeService
from sipshield.transaction import TimerSettings, TransactionLayer

REALM = "example.com"
PROXY = ("127.0.0.1", 5060)


class DigestService:
    """``users`` maps a user name to ``(password, roles)``; ``config`` is
    merged into the minimal ``[server]`` table's config."""

    def __init__(self, tmp_path: Path, users: Mapping[str, tuple[str, Sequence[str]]], config: Mapping[str, Any] | None = None) -> None:
        raw: dict[str, Any] = {"server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"], "domains": [REALM]}}
        raw.update(config or {})
        self.clock = ImmediateReactor()
        self.clock.advance(1_000_000)
        svc = self.service = makeService(parse_config(raw), self.clock)
        svc._prepare_data_dir()
        svc._prepare_auth()
        for checker in svc.portal.checkers[ISIPDigestCredentials].checkers:
            checker.threadpool = InlinePool()
        store = svc.user_stores[0]
        store.create_schema()
        for name, (password, roles) in users.items():
            store.add(name, REALM, password, roles)
        start = getattr(svc.location, "start", None)
        if start is not None:
            start()
        core = svc.core
        core.add_local_address(*PROXY)
        self.dispatcher = RecordingDispatcher()
        core.dispatcher = self.dispatcher
        svc.transactions = core.transactions = TransactionLayer(self.clock, core, self.dispatcher, TimerSettings())

    def stop(self) -> None:
        self.service.transactions.stop()
        stop = getattr(self.service.location, "stop", None)
        if stop is not None:
            stop()
        for store in self.service.user_stores:
            store.close()

    def send(
        self, method: str, ruri: str, *, from_uri: str, to: str | None = None, credentials: tuple[str, str] | None = None,
        source: tuple[str, int] = ("127.0.0.2", 40000), transport: str = "UDP", contact: str | None = None,
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
        self.service.core.message_received(parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()), flow)
        messages = flow.messages()
        return messages[-1] if messages else None

    def digest(self, method: str, uri: str, user: str, password: str, source: str) -> str:
        """An RFC 7616 SHA-256 answer, computed here with hashlib alone."""
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
