"""The auth and rbac stages with twisted.cred on Clock time: chained
backends, fail-closed 503, trusted sources, and RBAC decisions."""

from __future__ import annotations

import hashlib

import pytest
from inline_pool import ImmediateReactor, InlinePool
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from sipshield.auth import NonceManager
from sipshield.auth._checkers import BackendUnavailable, ChainedChecker, StoreChecker, UnknownUser, make_portal
from sipshield.auth._stages import DigestAuthStage, DomainMap, RBACStage
from sipshield.auth._users import CredentialStoreError
from sipshield.config import TrustedSource
from sipshield.message import parse_message
from sipshield.routing import CONTINUE, RequestContext


class Flow:
    transport_name = "UDP"
    local = ("127.0.0.1", 5060)

    def __init__(self, host: str = "192.0.2.9") -> None:
        self.remote = (host, 5060)


class DictStore:
    def __init__(self, users: dict[str, tuple[str, tuple[str, ...]]], down: bool = False) -> None:
        self.users = users
        self.down = down

    def ha1(self, username, domain, algorithm):
        if self.down:
            raise CredentialStoreError("database is down")
        entry = self.users.get(username)
        return None if entry is None else hashlib.sha256(f"{username}:{domain}:{entry[0]}".encode()).hexdigest()

    def roles(self, username, domain):
        entry = self.users.get(username)
        return None if entry is None else entry[1]


def is_local(host, port):
    return host in ("127.0.0.1", "example.com")


def ctx(method: str = "REGISTER", user: str = "alice", source: str = "192.0.2.9", auth: str = "", to: str | None = None) -> RequestContext:
    header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
    to = to or f"sip:{user}@example.com"
    data = (
        f"{method} sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {source};branch=z9hG4bKa\r\nMax-Forwards: 70\r\n"
        f"From: <sip:{user}@example.com>;tag=1\r\nTo: <{to}>\r\nCall-ID: x\r\nCSeq: 1 {method}\r\n"
        + (f"{header}: {auth}\r\n" if auth else "") + "Content-Length: 0\r\n\r\n"
    ).encode()
    return RequestContext(parse_message(data), Flow(source))  # type: ignore[arg-type]


def make_stage(*stores, trusted=(), trusted_role=None):
    reactor = ImmediateReactor()
    checkers = [StoreChecker(store, reactor, InlinePool()) for store in stores]
    nonces = NonceManager(b"k" * 32, reactor)
    stage = DigestAuthStage(make_portal(checkers), lambda: nonces, DomainMap(["example.com"], is_local), ["SHA-256"], trusted, trusted_role)
    return stage, nonces


def answer(stage, nonces, user: str, password: str, method: str = "REGISTER") -> RequestContext:
    nonce = nonces.issue("example.com", "192.0.2.9")
    ha1 = hashlib.sha256(f"{user}:example.com:{password}".encode()).hexdigest()
    ha2 = hashlib.sha256(f"{method}:sip:example.com".encode()).hexdigest()
    response = hashlib.sha256(f"{ha1}:{nonce}:00000001:c:auth:{ha2}".encode()).hexdigest()
    auth = f'Digest username="{user}", realm="example.com", nonce="{nonce}", uri="sip:example.com", response="{response}", algorithm=SHA-256, cnonce="c", qop=auth, nc=00000001'
    return ctx(method, user, auth=auth)


def test_no_credentials_gets_401_challenge() -> None:
    stage, _ = make_stage(DictStore({}))
    decision = stage.process(ctx())
    assert decision.status == 401 and dict(decision.headers)["WWW-Authenticate"].startswith('Digest realm="example.com"')
    assert stage.process(ctx("INVITE")).status == 407


def test_second_backend_is_asked_for_unknown_users_only() -> None:
    stage, nonces = make_stage(DictStore({"bob": ("b", ("staff",))}), DictStore({"alice": ("a", ("admin",))}))
    context = answer(stage, nonces, "alice", "a")
    assert stage.process(context).result is CONTINUE
    assert context.identity == "sip:alice@example.com" and context.roles == frozenset({"admin"})
    # A wrong password in the first backend stops the chain (no oracle).
    stage, nonces = make_stage(DictStore({"alice": ("x", ("staff",))}), DictStore({"alice": ("a", ("admin",))}))
    assert stage.process(answer(stage, nonces, "alice", "a")).result.status == 401


def test_backend_down_fails_closed_with_503() -> None:
    stage, nonces = make_stage(DictStore({"alice": ("a", ())}, down=True))
    decision = stage.process(answer(stage, nonces, "alice", "a")).result
    assert decision.status == 503 and dict(decision.headers)["Retry-After"] == "30"


def test_trusted_source_acts_with_trusted_role() -> None:
    stage, _ = make_stage(DictStore({}), trusted=[TrustedSource("192.0.2.0/24", udp=True)], trusted_role="trunk")
    context = ctx("INVITE")
    assert stage.process(context) is CONTINUE and context.roles == frozenset({"trunk"})


@defer.inlineCallbacks
def _chain(checkers, creds):
    return (yield ChainedChecker(checkers).requestAvatarId(creds))


def test_chain_raises_unauthorized_when_nobody_knows_the_user() -> None:
    class Nobody:
        def requestAvatarId(self, credentials):
            return defer.fail(UnknownUser())

    d = _chain([Nobody(), Nobody()], object())
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(UnauthorizedLogin) and not failure[0].check(UnknownUser)
    assert BackendUnavailable  # exported for the stage's fail-closed branch


ROLES = {"agent": ("register",), "staff": ("register", "call"), "trunk": ("call", "call:external")}


def rbac_ctx(method: str, roles: set[str], user=("alice", "example.com"), to: str | None = None, trusted=False) -> RequestContext:
    context = ctx(method, "alice", to=to)
    context.roles = frozenset(roles)
    if user:
        context.user = user
    if trusted:
        context.trusted = True
    return context


@pytest.mark.parametrize(
    "method, roles, to, status",
    [
        ("REGISTER", {"agent"}, None, None),
        ("REGISTER", {"agent"}, "sip:bob@example.com", "403 Forbidden: may only register your own address"),
        ("REGISTER", {"trunk"}, None, "403 Forbidden: missing permission register"),
        ("INVITE", {"agent"}, None, "403 Forbidden: missing permission call"),
        ("INVITE", {"staff"}, None, None),
    ],
)
def test_rbac_decisions(method: str, roles: set[str], to: str | None, status: str | None) -> None:
    stage = RBACStage(ROLES, DomainMap(["example.com"], is_local))
    decision = stage.process(rbac_ctx(method, roles, to=to))
    got = None if decision is CONTINUE else f"{decision.status} {decision.reason}"
    assert got == status


def test_rbac_external_routes_need_call_external_and_unauthenticated_is_refused() -> None:
    stage = RBACStage(ROLES, DomainMap(["example.com"], is_local), is_external=lambda request: True)
    assert stage.process(rbac_ctx("INVITE", {"staff"})).reason == "Forbidden: missing permission call:external"
    assert stage.process(rbac_ctx("INVITE", {"trunk"}, user=None, trusted=True)) is CONTINUE
    assert stage.process(rbac_ctx("INVITE", {"staff", "trunk"}, user=None)).reason == "Forbidden: not authenticated"


def test_a_request_that_passed_auth_marks_its_flow_authenticated() -> None:
    # Read by the stream transport when it must close a connection to admit a new one.
    stage, nonces = make_stage(DictStore({"alice": ("a", ("staff",))}))
    context = answer(stage, nonces, "alice", "a")
    assert stage.process(context).result is CONTINUE
    assert context.flow.authenticated is True
    trusted_stage, _ = make_stage(DictStore({}), trusted=[TrustedSource("192.0.2.0/24", udp=True)], trusted_role="trunk")
    trusted = ctx("INVITE")
    assert trusted_stage.process(trusted) is CONTINUE and trusted.flow.authenticated is True


def test_challenged_or_refused_requests_leave_the_flow_unauthenticated() -> None:
    stage, nonces = make_stage(DictStore({"alice": ("a", ("staff",))}))
    challenged = ctx()
    assert stage.process(challenged).status == 401
    refused = answer(stage, nonces, "alice", "wrong")
    assert stage.process(refused).result.status == 401
    assert not getattr(challenged.flow, "authenticated", False) and not getattr(refused.flow, "authenticated", False)


def test_admission_verdict_is_reused_by_process_for_that_request_only() -> None:
    stage, nonces = make_stage(DictStore({"alice": ("secret", ("staff",))}))
    checks = []
    check = nonces.check
    nonces.check = lambda *args: checks.append(args) or check(*args)  # type: ignore[method-assign]
    good = answer(stage, nonces, "alice", "secret")
    assert stage.admission(good.request, good.flow) is None
    assert stage.process(good).result == CONTINUE and good.user == ("alice", "example.com")
    assert len(checks) == 1  # the nonce was checked (and the credentials parsed) once, at admission
    # Admission of one request never vouches for another one processed after it.
    admitted = answer(stage, nonces, "alice", "secret")
    assert stage.admission(admitted.request, admitted.flow) is None
    forged = answer(stage, nonces, "alice", "wrong")
    decision = stage.process(forged).result
    assert decision.status == 401 and forged.user is None
