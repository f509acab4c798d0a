"""A SIPp INVITE flood from one address (127.0.0.2, unauthenticated) is shed
by the rate limits while a legitimate SIPp caller from another (127.0.0.3, a
trusted trunk) keeps at least 99 % of its calls: a real twistd sipshield on
loopback, with the default [ratelimit]."""

from __future__ import annotations

from pathlib import Path

import test_calls
from conftest import free_udp_port
from test_calls import register, sipp_counter

sipp_runner = test_calls.sipp_runner  # the fixture, shared

CONFIG = """
[server]
data_dir = "data"
listen = ["udp:0:interface=127.0.0.1"]
domains = ["example.com"]

[auth]
trusted_sources = [{network = "127.0.0.1/32", udp = true}, {network = "127.0.0.3/32", udp = true}]
trusted_role = "admin"
"""
CALLS = 100


def test_an_invite_flood_is_shed_while_a_legitimate_caller_keeps_its_calls(start_server, sipp_runner, tmp_path: Path) -> None:
    server = start_server(CONFIG, listeners=1)
    proxy = server.addresses["udp"]
    port = free_udp_port()
    register(sipp_runner, server, "bob", port)
    callee = sipp_runner("callee", "uas_answer.xml", port=port, service="bob", timeout=60, calls=CALLS)
    callee.wait_listening(port)
    flood = sipp_runner("flood", "uac_call.xml", port=free_udp_port(), service="bob", remote=proxy, interface="127.0.0.2",
                        calls=1500, timeout=10, extra=("-r", "300", "-recv_timeout", "2000", "-max_recv_loops", "1000"))
    caller = sipp_runner("caller", "uac_call.xml", port=free_udp_port(), service="bob", remote=proxy, interface="127.0.0.3",
                         calls=CALLS, timeout=60, extra=("-r", "20"))
    legit = caller.wait()
    flooded = flood.wait()
    callee.kill()
    detail = legit.describe() + "\n" + flooded.describe()[-3000:] + "\n--- proxy log\n" + server.log[-4000:]
    successful = legit.successful or 0
    assert successful >= CALLS * 99 // 100, detail
    # The flood met the limits: 503 Rate Limit Exceeded, statelessly, and rate-limit events.
    assert "SIP/2.0 503 Rate Limit Exceeded" in flooded.messages, detail
    assert (sipp_counter(flooded.stdout, "Successful call") or 0) == 0, detail
    server.wait_for(r"security event rate-limit from 127\.0\.0\.2 over UDP")
    assert "Traceback" not in server.log
