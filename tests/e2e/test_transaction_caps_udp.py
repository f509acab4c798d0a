"""End to end, real UDP sockets: over [limits] max_transactions_per_source
the real twistd service answers a new request with one stateless 503 and
Retry-After, and does not relay it.

The caller on 127.0.0.2 sends in-dialog BYEs on a Route the proxy signed (it
reads the proxy's Record-Route secret from data_dir), so they are admitted
without a challenge; the callee on 127.0.0.5 never answers, so each BYE's
server transaction stays live.
"""

from __future__ import annotations

import pytest
from conftest import ephemeral_config
from test_reflection import bind, received

from sipshield.message import parse_message
from sipshield.proxy import RecordRouteSigner, endpoints

pytestmark = pytest.mark.e2e


def call_ids(datagrams: list[bytes]) -> set[str]:
    return {parse_message(d).call_id for d in datagrams}


def test_over_the_per_source_cap_a_bye_gets_503_with_retry_after_and_is_not_relayed(start_server, tmp_path) -> None:
    server = start_server(ephemeral_config(trusted=False, extra="[limits]\nmax_transactions_per_source = 2\n"))
    signer = RecordRouteSigner((tmp_path / "data" / "record-route.secret").read_bytes())
    host, port = server.addresses["udp"]
    caller, callee = bind("127.0.0.2"), bind("127.0.0.5")
    try:
        callee_port = callee.getsockname()[1]
        caller_port = caller.getsockname()[1]
        for n in range(3):
            call_id = f"cap{n}"
            caller.sendto((
                f"BYE sip:bob@127.0.0.5:{callee_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.2:{caller_port};branch=z9hG4bKcap{n};rport\r\nMax-Forwards: 70\r\n"
                "From: <sip:alice@example.com>;tag=f1\r\nTo: <sip:bob@example.com>;tag=t1\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 2 BYE\r\n"
                f"Route: <sip:{host}:{port};transport=udp;lr;ss={signer.token(call_id, 'f1', endpoints('127.0.0.2', '127.0.0.5'))}>\r\nContent-Length: 0\r\n\r\n"
            ).encode(), (host, port))
            if n < 2:
                # Wait until the callee has it, so the third BYE meets two live transactions.
                callee.settimeout(5)
                while parse_message(callee.recv(65535)).call_id != call_id:
                    pass  # a retransmission of the BYE before
        caller.settimeout(5)
        answer = parse_message(caller.recv(65535))
        caller.settimeout(0.5)
        assert received(caller) == []
        assert answer.status == 503 and answer.headers.get("Retry-After") == "5" and answer.call_id == "cap2"
        # Retransmissions of the first two BYEs reach the callee, never the third.
        callee.settimeout(0.5)
        assert call_ids(received(callee)) <= {"cap0", "cap1"}
    finally:
        caller.close()
        callee.close()
