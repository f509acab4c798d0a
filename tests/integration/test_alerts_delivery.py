"""Alert notifiers against real receivers on loopback: a twisted.web Site
taking the webhook's POSTs and a twisted.mail ESMTP server taking its mail,
both in the test on 127.0.0.1:0; a refusing, a hanging and a missing
receiver are failures within the timeout, never an exception into the
caller; a service built by makeService sends its rules' alerts to both."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import CramMD5Credentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.mail import smtp
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from sipshield.config import EmailNotifierConfig, WebhookNotifierConfig, parse_config
from sipshield.events import AUTH_FAILURE, SecurityEvent
from sipshield.ops import Alert
from sipshield.ops._alerts import EmailNotifier, WebhookError, WebhookNotifier
from sipshield.service import makeService

ALERT = Alert("surge", "firing", "more than 5 auth-failure events in 30 s", 6.0, 1_700_000_000.0, 1_700_000_000.0)


class Arrivals:
    """Deferreds a test waits on, each fired by the next arrival after it asked."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred[None]] = []

    def arrived(self) -> None:
        if self.waiting:
            self.waiting.pop(0).callback(None)

    def next(self) -> defer.Deferred[None]:
        self.waiting.append(defer.Deferred())
        return self.waiting[-1]


class Hook(Resource):
    """Records each POST (headers, JSON body); answers *status*, or never (status 0)."""

    isLeaf = True

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self.posts: list[tuple[dict[str, str], Any]] = []
        self.arrivals = Arrivals()

    def render_POST(self, request: Request) -> Any:
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.posts.append((headers, json.loads(request.content.read())))
        self.arrivals.arrived()
        if self.status == 0:
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return b"ok"


@pytest.fixture
def hook() -> Any:
    resource = Hook()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}/hooks/ops"  # type: ignore[attr-defined]
    yield resource
    port.stopListening()


@implementer(smtp.IMessage)
class _Mail:
    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[None]:
        self.box.mails.append(b"\n".join(self.lines).decode())
        self.box.arrivals.arrived()
        return defer.succeed(None)

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class Mailbox:
    """A local mail server's delivery: every message kept, with its envelope."""

    def __init__(self) -> None:
        self.mails: list[str] = []
        self.envelopes: list[tuple[str, str]] = []
        self.arrivals = Arrivals()

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: by the test"

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        return origin

    def validateTo(self, user: smtp.User) -> Any:
        self.envelopes.append((str(user.orig), str(user.dest)))
        return lambda: _Mail(self)


def _smtp_server(box: Mailbox, portal: Portal | None = None) -> Any:
    """An ESMTP server on 127.0.0.1:0 delivering into *box*; with *portal*, AUTH (CRAM-MD5, LOGIN) is
    offered and only an authenticated client may send (its avatar is the box)."""

    class ServerFactory(smtp.SMTPFactory):
        def buildProtocol(self, addr: Any) -> smtp.ESMTP:
            protocol = smtp.ESMTP({b"CRAM-MD5": CramMD5Credentials, b"LOGIN": smtp.LOGINCredentials})
            protocol.factory = self
            if portal is None:
                protocol.delivery = box
            else:
                protocol.portal = portal
            return protocol

    port = reactor.listenTCP(0, ServerFactory(), interface="127.0.0.1")
    box.port = port.getHost().port  # type: ignore[attr-defined]
    return port


@pytest.fixture
def mailbox() -> Any:
    box = Mailbox()
    port = _smtp_server(box)
    yield box
    port.stopListening()


@implementer(IRealm)
class _MailRealm:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        return smtp.IMessageDelivery, self.box, lambda: None


@pytest.fixture
def auth_mailbox() -> Any:
    box = Mailbox()
    port = _smtp_server(box, Portal(_MailRealm(box), [InMemoryUsernamePasswordDatabaseDontUse(sipshield=b"smtp-pass-1")]))
    yield box
    port.stopListening()


@pytest_twisted.inlineCallbacks
def test_webhook_posts_slack_compatible_json_with_its_headers(hook: Any) -> Any:
    config = WebhookNotifierConfig(name="ops", url=hook.url, headers=(("Authorization", "Bearer t0ken"),), timeout=5)
    yield WebhookNotifier(config, reactor).notify(ALERT)
    ((headers, body),) = hook.posts
    assert headers["authorization"] == "Bearer t0ken" and headers["content-type"].startswith("application/json")
    assert body == {
        "text": "[FIRING] surge: more than 5 auth-failure events in 30 s (now 6)",
        "alert": {"rule": "surge", "state": "firing", "condition": "more than 5 auth-failure events in 30 s", "value": 6.0,
                  "since": "2023-11-14T22:13:20+00:00", "at": "2023-11-14T22:13:20+00:00"},
    }


@pytest_twisted.inlineCallbacks
def test_webhook_answering_500_is_a_failure(hook: Any) -> Any:
    hook.status = 500
    with pytest.raises(WebhookError, match="HTTP 500") as raised:
        yield WebhookNotifier(WebhookNotifierConfig(name="ops", url=hook.url, timeout=5), reactor).notify(ALERT)
    assert "/hooks/ops" not in str(raised.value)  # the path (a Slack URL's secret) is not in the message logged


@pytest_twisted.inlineCallbacks
def test_webhook_that_never_answers_fails_within_its_timeout(hook: Any) -> Any:
    hook.status = 0
    started = reactor.seconds()
    with pytest.raises(defer.TimeoutError) as raised:
        yield WebhookNotifier(WebhookNotifierConfig(name="ops", url=hook.url, timeout=0.5), reactor).notify(ALERT)
    assert "/hooks/ops" not in str(raised.value) and "within 0.5 s" in str(raised.value)
    assert reactor.seconds() - started < 3


@pytest_twisted.inlineCallbacks
def test_webhook_with_nobody_listening_is_a_failure() -> Any:
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/"
    yield port.stopListening()
    with pytest.raises(Exception) as raised:
        yield WebhookNotifier(WebhookNotifierConfig(name="ops", url=url, timeout=5), reactor).notify(ALERT)
    assert "refused" in str(raised.value).lower() or "connect" in type(raised.value).__name__.lower()


@pytest_twisted.inlineCallbacks
def test_email_goes_through_a_real_smtp_server(mailbox: Any) -> Any:
    config = EmailNotifierConfig(name="sec", host="127.0.0.1", port=mailbox.port, sender="sipshield@example.com",
                                 to=("security@example.com", "oncall@example.com"), timeout=5)
    yield EmailNotifier(config, reactor).notify(ALERT)
    assert [to for _, to in mailbox.envelopes] == ["security@example.com", "oncall@example.com"]
    mail, copy = mailbox.mails  # one message a recipient, as the server's delivery makes them
    assert mail == copy
    message = email.message_from_string(mail, policy=email.policy.default)
    assert message["Subject"] == "sipshield alert: [FIRING] surge: more than 5 auth-failure events in 30 s (now 6)"
    assert message["From"] == "sipshield@example.com"
    body = message.get_content()  # type: ignore[attr-defined]
    assert body.startswith("[FIRING] surge: ") and "rule: surge\n" in body and "state: firing\n" in body


@pytest_twisted.inlineCallbacks
def test_email_authenticates_with_the_password_from_its_file(auth_mailbox: Any, tmp_path: Path) -> Any:
    (tmp_path / "smtp.password").write_text("smtp-pass-1\n")
    notifiers = {"sec": {"type": "email", "host": "127.0.0.1", "port": auth_mailbox.port, "from": "s@example.com", "to": ["t@example.com"],
                         "username": "sipshield", "password_file": "smtp.password", "timeout": 5}}
    (config,) = parse_config({"alerts": {"notifiers": notifiers}}, base_dir=tmp_path).alerts.notifiers
    assert isinstance(config, EmailNotifierConfig)
    yield EmailNotifier(config, reactor).notify(ALERT)
    assert len(auth_mailbox.mails) == 1 and "[FIRING] surge" in auth_mailbox.mails[0]
    wrong = EmailNotifierConfig(**{**config.__dict__, "password": "not-it"})
    with pytest.raises(smtp.SMTPClientError):
        yield EmailNotifier(wrong, reactor).notify(ALERT)
    assert len(auth_mailbox.mails) == 1


@pytest_twisted.inlineCallbacks
def test_email_with_starttls_required_is_not_sent_in_clear_to_a_server_without_it(mailbox: Any) -> Any:
    config = EmailNotifierConfig(name="sec", host="127.0.0.1", port=mailbox.port, sender="sipshield@example.com",
                                 to=("security@example.com",), starttls=True, timeout=5)
    with pytest.raises(smtp.SMTPClientError):
        yield EmailNotifier(config, reactor).notify(ALERT)
    assert mailbox.mails == []


@pytest_twisted.inlineCallbacks
def test_a_service_sends_its_rules_alerts_to_webhook_email_and_log(hook: Any, mailbox: Any, tmp_path: Path, security_log: Any) -> Any:
    from twisted.logger import globalLogPublisher

    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    config = parse_config({
        "server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"]},
        "admin": {"enabled": False},
        "alerts": {
            "notifiers": {"ops": {"type": "webhook", "url": hook.url},
                          "security": {"type": "email", "host": "127.0.0.1", "port": mailbox.port, "from": "s@example.com", "to": ["t@example.com"]}},
            "rules": [{"name": "surge", "kind": "event_rate", "event": "auth-failure", "more_than": 2, "window": 30,
                       "notify": ["webhook:ops", "email:security", "log"]}],
        },
    })  # fmt: skip
    service = makeService(config, reactor)
    service.startService()
    try:
        posted, mailed = hook.arrivals.next(), mailbox.arrivals.next()
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            service.events.emit(SecurityEvent(AUTH_FAILURE, host, "UDP", "alice", "wrong password"))
        yield defer.gatherResults([posted, mailed])
        assert [body["alert"]["state"] for _, body in hook.posts] == ["firing"]
        assert len(mailbox.mails) == 1
        assert [e["alert_rule"] for e in logged if e.get("log_namespace") == "sipshield.alerts" and "alert_rule" in e] == ["surge"]
    finally:
        globalLogPublisher.removeObserver(logged.append)
        yield service.stopService()
