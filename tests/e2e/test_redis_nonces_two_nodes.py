"""Two real twistd sipshield nodes on the test's own redis-server ([state]
backend = "redis") and one nonce secret file ([auth] nonce_secret_file):
a phone (the RFC 7616 client of tests/digest_client.py) gets its nonce from
node A and registers with it on node B; the same Authorization again, to
either node, is a replay (401 stale=true); with redis-server stopped, a
digest answer gets 503 Retry-After (fail closed), and registers again once
it is back on the same port.  Both nodes see the phone at one source
address (the nonce is bound to it), as behind one SIP address."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import RunningServer, ephemeral_config
from digest_client import authorization, challenges
from redis_support import RedisServer
from test_auth import Client, add_user
from waiting import wait_until

pytestmark = pytest.mark.e2e


def register(client: Client, node: RunningServer, auth: str | None = None) -> tuple[int, str, bytes]:
    client.server = node.addresses["udp"]
    return client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com", auth)


def test_a_nonce_from_node_a_registers_on_node_b_and_its_replay_is_refused_on_both(tmp_path: Path, redis_server: RedisServer) -> None:
    secret = tmp_path / "nonce.secret"  # distributed to both nodes as a TLS key would be
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    extra = (f'[state]\nbackend = "redis"\nredis_url = "{redis_server.url}"\nkey_prefix = "e2e:"\n'
             f'[auth]\nnonce_secret_file = "{secret}"\n')
    nodes: list[RunningServer] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            node = RunningServer(tmp_path / name, ephemeral_config(extra=extra, trusted=False), ())
            nodes.append(node)
            node.wait_listening(3)
            node.wait_for(r"state: Redis at 127\.0\.0\.1:\d+/0 connected")
            node.wait_for(r"nonces: signed under .*nonce\.secret \(auth\.nonce_secret_file: the same file on every node\); nonce-counts shared in Redis")
            add_user(tmp_path / name, "alice", "alice-secret", "staff")
        a, b = nodes
        client = Client(a.addresses["udp"])

        status, _, first = register(client, a)
        assert status == 401
        challenge = challenges(first, "WWW-Authenticate")[0]
        auth = authorization(challenge, challenge["algorithm"], "alice", "alice-secret", "REGISTER", "sip:example.com")
        status, line, _ = register(client, b, auth)
        assert status == 200, f"node B refused node A's nonce: {line}"

        for node in (a, b):  # the same nonce and nc again
            status, _, answer = register(client, node, auth)
            assert status == 401
            assert challenges(answer, "WWW-Authenticate")[0].get("stale") == "true"
        nc2 = authorization(challenge, challenge["algorithm"], "alice", "alice-secret", "REGISTER", "sip:example.com", nc="00000002")
        assert register(client, a, nc2)[0] == 200  # the phone's next use of the nonce, on A

        redis_server.stop()
        nc3 = authorization(challenge, challenge["algorithm"], "alice", "alice-secret", "REGISTER", "sip:example.com", nc="00000003")
        status, line, answer = register(client, b, nc3)
        assert (status, line) == (503, "SIP/2.0 503 Authentication Backend Unavailable")
        assert b"\r\nRetry-After: 30\r\n" in answer
        b.wait_for(r"auth: nonce counts in Redis at 127\.0\.0\.1:\d+/0 unavailable")
        redis_server.start_and_wait()  # the same port
        b.wait_for(r"state: Redis at .* back: shared state resumed", timeout=20)
        # The location store (Redis too, by default with this backend) has a connection of its
        # own, which may come back a little later: one REGISTER a second, each with the next nc
        # (a count the nonce check took before the store's 503 is used), until one is 200.
        answers: list[str] = []
        tried = [0.0]

        def registered() -> bool:
            if time.monotonic() - tried[0] < 1.0:
                return False
            tried[0] = time.monotonic()
            nc = authorization(challenge, challenge["algorithm"], "alice", "alice-secret", "REGISTER", "sip:example.com", nc=f"{4 + len(answers):08x}")
            status, line, _ = register(client, b, nc)
            answers.append(line)
            return status == 200

        wait_until(registered, 20, "node B answering a REGISTER 200 once Redis was back")
        assert all(line.startswith("SIP/2.0 503 ") for line in answers[:-1]), answers  # never a stale nonce nor a 500 meanwhile
        for node in nodes:
            assert "Traceback" not in node.log
    finally:
        for node in nodes:
            node.stop()
