"""Nonce-counts shared between nodes (issue 11): a nonce issued by node A is
accepted by node B (one secret, ``[auth] nonce_secret_file``) and its
replay refused on both; only an authenticated request asks the shared
counts; while they do not answer, digest answers get 503 (fail closed).

Two whole services through their real pipelines (pipeline_support) share a
Python model of the Lua script (the script itself runs against a real
redis-server in tests/integration/test_redis_nonces.py); RedisNonceCounts'
batching, deadline and logging with a fake link on task.Clock.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from digest_client import authorization, challenges
from pipeline_support import PASSWORD, Proxy, proxy_service, request
from test_core import RecordingFlow
from twisted.internet import defer
from twisted.internet.task import Clock

from sipshield.auth._nonce import NO_QOP, SKEW_MS, NonceManager
from sipshield.config import ConfigError, parse_config
from sipshield.state import RedisNonceCounts
from sipshield.tap import build_config

BOB = ("UDP", "127.0.0.5", 5070)


class ScriptModel:
    """What the nonce-counts' Lua script keeps: key -> highest nc (-1: used without qop)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.ttls: dict[str, int] = {}

    def run(self, lines: str) -> str:
        out = []
        for line in lines.split("\n"):
            key, nc_text, ttl = line.split("\t")
            nc, last = int(nc_text), self.counts.get(key)
            if last is not None and (nc < 0 or last < 0 or last >= nc):
                out.append("r")
            else:
                self.counts[key], self.ttls[key] = nc, int(ttl)
                out.append("a")
        return "".join(out)


class FakeLink:
    where = "fake:6379/0"
    subscriptions = 1

    def __init__(self, script: ScriptModel) -> None:
        self.script = script
        self.is_up = True
        self.hold = False
        self.fail = False
        self.rounds: list[list[tuple[Any, ...]]] = []
        self.held: list[tuple[defer.Deferred[list[Any]], list[Any]]] = []

    def up(self) -> bool:
        return self.is_up

    def send(self, commands: Sequence[tuple[Any, ...]]) -> defer.Deferred[list[Any]]:
        self.rounds.append(list(commands))
        if self.fail:
            return defer.fail(ConnectionError("Lost connection"))
        replies: list[Any] = [self.script.run(c[3]) for c in commands]
        if self.hold:
            d: defer.Deferred[list[Any]] = defer.Deferred()
            self.held.append((d, replies))
            return d
        return defer.succeed(replies)


class Recorded:
    """A SharedNonceCounts that answers what the test says and records what it was asked."""

    def __init__(self, answer: str = "fresh") -> None:
        self.answer = answer
        self.asked: list[tuple[str, int, int]] = []
        self.later: list[defer.Deferred[str]] = []

    def use(self, nonce: str, nc: int, ttl_ms: int) -> defer.Deferred[str]:
        self.asked.append((nonce, nc, ttl_ms))
        if self.answer == "later":
            d: defer.Deferred[str] = defer.Deferred()
            self.later.append(d)
            return d
        return defer.succeed(self.answer)


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "nonce.secret"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def node(tmp_path: Path, name: str, secret: Path, shared: Any) -> Proxy:
    proxy = proxy_service(tmp_path / name, auth={"nonce_secret_file": str(secret)}, bans={"enabled": False})
    proxy.register("bob", "sip:bob@127.0.0.5:5070")
    proxy.service.nonces.shared = shared
    return proxy


def two_nodes(tmp_path: Path) -> tuple[Proxy, Proxy, ScriptModel]:
    """Two services, one nonce secret file, one shared Redis (the script model behind a fake link each)."""
    secret, script = secret_file(tmp_path), ScriptModel()
    proxies = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        proxies.append(node(tmp_path, name, secret, None))
    for proxy in proxies:
        proxy.service.nonces.shared = RedisNonceCounts(proxy.clock, FakeLink(script), prefix="t:")
    return proxies[0], proxies[1], script


def answer(proxy: Proxy, auth: str, flow: RecordingFlow | None = None) -> tuple[int, dict[str, str], Any]:
    """An INVITE carrying *auth*, sent to *proxy*: the final status, its SHA-256 challenge (if any), the response."""
    flow = flow or proxy.phone
    before = len(flow.sent)
    proxy.send(request("INVITE", extra=f"Proxy-Authorization: {auth}\r\n"), flow)
    proxy.clock.advance(0)  # RedisNonceCounts sends what one reactor turn asked
    finals = [m for m in flow.messages()[before:] if m.status >= 200]
    if not finals:
        return 0, {}, None
    offered = [c for c in challenges(flow.sent[-1][0], "Proxy-Authenticate") if c.get("algorithm") == "SHA-256"]
    return finals[-1].status, (offered[0] if offered else {}), finals[-1]


def credentials(challenge: dict[str, str], password: str = PASSWORD, nc: int = 1) -> str:
    return authorization(challenge, "SHA-256", "alice", password, "INVITE", "sip:bob@example.com", nc=f"{nc:08x}")


def test_a_nonce_issued_by_a_is_accepted_by_b_and_its_replay_refused_on_both(tmp_path: Path) -> None:
    a, b, script = two_nodes(tmp_path)
    challenge = a.challenge()
    auth = credentials(challenge)
    assert answer(b, auth)[0] == 0  # no final: forwarded by B
    assert len(b.forwarded()) == 1 and b.forwarded()[0][1] == BOB
    assert list(script.counts.values()) == [1]
    for proxy in (a, b):  # the same Authorization again, to either node
        status, fresh, _ = answer(proxy, auth)
        assert status == 407 and fresh.get("stale") == "true" and fresh["nonce"] != challenge["nonce"]
    assert len(a.forwarded()) == 0 and len(b.forwarded()) == 1
    # A growing nc is the phone's next use of the nonce (RFC 7616 3.4): on A now.
    assert answer(a, credentials(challenge, nc=2))[0] == 0
    assert len(a.forwarded()) == 1
    assert answer(b, credentials(challenge, nc=2))[0] == 407  # and nc 2 is then spent on B too


def test_the_key_expires_when_the_nonce_would_be_stale_on_every_node(tmp_path: Path) -> None:
    a, b, script = two_nodes(tmp_path)
    challenge = a.challenge()
    a.clock.advance(100)
    b.clock.advance(100)
    answer(b, credentials(challenge))
    ((key, ttl),) = script.ttls.items()
    assert key == f"t:nonce:{challenge['nonce']}"
    assert ttl == 300_000 - 100_000 + SKEW_MS  # [auth] nonce_lifetime from its issue, plus the clocks' skew


def test_nodes_with_their_own_secret_challenge_each_others_nonces(tmp_path: Path) -> None:
    """Without [auth] nonce_secret_file every node signs under its own data_dir/nonce.secret."""
    a = proxy_service(tmp_path / "a", bans={"enabled": False})
    b = proxy_service(tmp_path / "b", bans={"enabled": False})
    status, fresh, _ = answer(b, credentials(a.challenge()))
    assert status == 407 and fresh.get("stale", "false") == "false"


def test_only_a_verified_answer_asks_the_shared_counts(tmp_path: Path) -> None:
    """Unauthenticated traffic writes nothing to Redis: no credentials, a
    forged or re-signed nonce, a wrong password, a local replay."""
    shared = Recorded()
    proxy = node(tmp_path, "a", secret_file(tmp_path), shared)
    challenge = proxy.challenge()  # no credentials
    raw = bytearray(base64.urlsafe_b64decode(challenge["nonce"]))
    raw[-1] ^= 1
    forged = {**challenge, "nonce": base64.urlsafe_b64encode(bytes(raw)).decode()}
    assert answer(proxy, credentials(forged))[0] == 407
    assert answer(proxy, credentials(challenge, password="guess"))[0] == 407
    assert shared.asked == []
    auth = credentials(challenge)
    assert answer(proxy, auth)[0] == 0
    assert answer(proxy, auth)[0] == 407  # replayed to this node: refused by its own table first
    ((nonce, nc, ttl),) = shared.asked
    assert nonce == challenge["nonce"] and nc == 1 and 0 < ttl <= 300_000 + SKEW_MS


@pytest.mark.parametrize("use, status", [("replayed", 407), ("unavailable", 503)])
def test_what_the_shared_counts_refuse_is_not_forwarded(tmp_path: Path, use: str, status: int) -> None:
    proxy = node(tmp_path, "a", secret_file(tmp_path), Recorded(use))
    code, challenge, response = answer(proxy, credentials(proxy.challenge()))
    assert code == status
    assert proxy.forwarded() == []
    if use == "replayed":
        assert challenge.get("stale") == "true"
    else:  # fail closed: a replay on another node could not be refused
        assert response.headers.get("Retry-After") == "30"
        assert response.reason == "Authentication Backend Unavailable"


def test_a_request_waits_for_the_shared_answer_without_blocking(tmp_path: Path) -> None:
    shared = Recorded("later")
    proxy = node(tmp_path, "a", secret_file(tmp_path), shared)
    other = RecordingFlow(("127.0.0.2", 40002), local=("127.0.0.1", 5060))
    assert answer(proxy, credentials(proxy.challenge()))[0] == 0
    assert proxy.forwarded() == []
    assert answer(proxy, credentials(proxy.challenge(), nc=1), other)[0] == 0  # the reactor carries on meanwhile
    assert len(shared.later) == 2
    shared.later[0].callback("fresh")
    assert len(proxy.forwarded()) == 1
    shared.later[1].callback("replayed")
    assert len(proxy.forwarded()) == 1 and other.messages()[-1].status == 407


# -- RedisNonceCounts ---------------------------------------------------------------------


def counts(**kwargs: Any) -> tuple[RedisNonceCounts, FakeLink, Clock]:
    clock = Clock()
    link = FakeLink(ScriptModel())
    return RedisNonceCounts(clock, link, prefix="p:", **kwargs), link, clock


def results(ds: list[defer.Deferred[str]]) -> list[Any]:
    out: list[Any] = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_the_uses_of_one_reactor_turn_go_in_one_script_call() -> None:
    shared, link, clock = counts()
    ds = [shared.use("n1", 1, 5000), shared.use("n2", NO_QOP, 5000), shared.use("n1", 1, 5000), shared.use("n1", 2, 5000),
          shared.use("n2", 1, 5000), shared.use("n3", 7, 5000)]
    assert link.rounds == []  # nothing sent before the turn ends
    clock.advance(0)
    ((command,),) = link.rounds
    assert command[0] == "EVAL" and command[2] == 0 and command[3].split("\n")[0] == "p:nonce:n1\t1\t5000"
    assert results(ds) == ["fresh", "fresh", "replayed", "fresh", "replayed", "fresh"]  # nothing after a use without qop
    assert clock.getDelayedCalls() == []  # the deadline cancelled


def test_down_it_answers_unavailable_at_once_and_logs_once(log_lines: list[str]) -> None:
    shared, link, clock = counts()
    link.is_up = False
    assert results([shared.use("n1", 1, 5000), shared.use("n2", 1, 5000)]) == ["unavailable", "unavailable"]
    assert link.rounds == [] and clock.getDelayedCalls() == []
    link.is_up = True
    d = shared.use("n1", 1, 5000)
    clock.advance(0)
    assert results([d]) == ["fresh"]
    logged = [line for line in log_lines if "nonce counts" in line]
    assert len(logged) == 2
    assert "unavailable (not connected): digest answers get 503" in logged[0] and "answer again" in logged[1]
    assert shared.unavailable == 2


def test_a_lost_connection_or_no_reply_in_time_is_unavailable() -> None:
    shared, link, clock = counts(timeout=2.0)
    link.fail = True
    d = shared.use("n1", 1, 5000)
    clock.advance(0)
    assert results([d]) == ["unavailable"]
    link.fail, link.hold = False, True
    late = shared.use("n2", 1, 5000)
    clock.advance(0)
    clock.advance(1.9)
    assert not late.called
    clock.advance(0.1)
    assert results([late]) == ["unavailable"]
    held, replies = link.held[0]
    held.callback(replies)  # the reply that came too late changes nothing
    assert clock.getDelayedCalls() == []


def test_an_unexpected_reply_is_unavailable() -> None:
    shared, link, clock = counts()
    link.send = lambda commands: defer.succeed(["OK"])  # type: ignore[method-assign]
    ds = [shared.use("n1", 1, 5000), shared.use("n2", 1, 5000)]
    clock.advance(0)
    assert results(ds) == ["unavailable", "unavailable"]


# -- the nonce manager and the configuration -----------------------------------------------


def test_a_nonce_from_a_node_whose_clock_is_a_little_ahead_is_valid() -> None:
    secret = b"s" * 32
    ahead, here = Clock(), Clock()
    ahead.advance(1_700_000_000.9)
    here.advance(1_700_000_000)
    nonce = NonceManager(secret, ahead).issue("example.com", "192.0.2.1")
    nonces = NonceManager(secret, here)
    assert nonces.check(nonce, "example.com", "192.0.2.1") == "valid"
    assert nonces.use(nonce, "00000001")
    ahead.advance(0.2)
    assert nonces.check(NonceManager(secret, ahead).issue("example.com", "192.0.2.1"), "example.com", "192.0.2.1") == "invalid"


def config_file(tmp_path: Path, secret: Path) -> Path:
    path = tmp_path / "sipshield.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\nlisten = ["udp:0:interface=127.0.0.1"]\n'
                    f'[auth]\nnonce_secret_file = "{secret.name}"\n')
    return path


def test_the_shared_secret_file_is_checked_with_the_config(tmp_path: Path) -> None:
    secret = tmp_path / "shared.secret"
    path = config_file(tmp_path, secret)
    with pytest.raises(ConfigError, match=r"auth\.nonce_secret_file.*does not exist: make one .*copy it to every node"):
        build_config(str(path))
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match=r"auth\.nonce_secret_file.*accessible to group or others \(mode 0640\); chmod 600 it"):
        build_config(str(path))
    secret.chmod(0o600)
    secret.write_bytes(b"short")
    with pytest.raises(ConfigError, match=r"auth\.nonce_secret_file.*shorter than 16 bytes"):
        build_config(str(path))
    secret.write_bytes(os.urandom(32))
    config = build_config(str(path))
    assert config.nonce_secret_file == (secret, True)  # relative to the config file
    assert not (tmp_path / "data").exists()  # nothing created in data_dir by the check
    assert dict(config.posture())["nonces"].startswith(f"signed under {secret} (auth.nonce_secret_file: the same file on every node)")


def test_without_the_key_the_secret_is_this_nodes_own() -> None:
    config = parse_config({})
    path, configured = config.nonce_secret_file
    assert path == config.server.data_dir / "nonce.secret" and not configured
    assert "this node's own" in dict(config.posture())["nonces"]
