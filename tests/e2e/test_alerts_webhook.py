"""Issue 10's proof: a failed-auth surge from SIPp fires a webhook alert.

A real twistd sipshield with one ``[[alerts.rules]]`` (more than 5
auth-failure events within 15 s) and a webhook notifier pointing at an
HTTP receiver this test runs (the stdlib's http.server in a thread: the
server is another process).  SIPp guesses alice's password from 127.0.0.2,
.3 and .4 at once, three times each (each address is banned after its
third failure by the default [bans]); the receiver gets exactly one
firing alert, and once the window has emptied and the rule has been clear
for resolve_after, exactly one resolve."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import ephemeral_config, require_tool
from test_auth import add_user
from test_fail2ban_filter import sipp_register_command

pytestmark = pytest.mark.e2e

SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class Receiver:
    """Webhook POSTs to 127.0.0.1:PORT, recorded with their path and headers."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.changed:
                    receiver.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
                    receiver.changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/security"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def states(self) -> list[str]:
        with self.changed:
            return [body["alert"]["state"] for _, _, body in self.posts]

    def wait_for(self, count: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.posts) < count and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())
        return self.states()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Any:
    hook = Receiver()
    yield hook
    hook.close()


def test_a_failed_auth_surge_from_sipp_fires_one_webhook_alert_and_one_resolve(start_server, receiver: Receiver, tmp_path: Path) -> None:
    sipp = require_tool("sipp", "sip-tester")
    extra = f'''
[[auth.profiles]]
networks = ["127.0.0.0/8"]
algorithms = ["MD5"]

[alerts.notifiers.security]
type = "webhook"
url = "{receiver.url}"
headers = {{ Authorization = "Bearer e2e-token" }}
timeout = 5

[[alerts.rules]]
name = "auth-failure-surge"
kind = "event_rate"
event = "auth-failure"
more_than = 5
window = 15
resolve_after = 1
notify = ["webhook:security", "log"]
'''
    server = start_server(ephemeral_config(trusted=False, extra=extra))
    add_user(tmp_path, "alice", "right-password-1", "staff")
    udp = server.addresses["udp"]
    runs = [subprocess.Popen(sipp_register_command(sipp, udp, source, f"wrong-{index}", 3), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for index, source in enumerate(SOURCES)]  # fmt: skip
    try:
        for run in runs:
            assert run.wait(timeout=60) != 0  # every REGISTER refused
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
    for source in SOURCES:
        server.wait_for(rf"security event ban from {source.replace('.', r'.')} over UDP")
    assert server.wait_count(r"security event auth-failure from ", 9) == 9

    assert receiver.wait_for(1, timeout=10) == ["firing"]
    path, headers, firing = receiver.posts[0]
    assert path == "/hooks/security" and headers["authorization"] == "Bearer e2e-token"
    assert firing["text"].startswith("[FIRING] auth-failure-surge: more than 5 auth-failure events in 15 s (now ")
    assert firing["alert"]["rule"] == "auth-failure-surge" and firing["alert"]["value"] > 5
    server.wait_for(r"alert \[FIRING\] auth-failure-surge")  # the log notifier too

    # No more failures: the window empties within 15 s, then 1 s clear, then one resolve.
    assert receiver.wait_for(2, timeout=40) == ["firing", "resolved"]
    resolved = receiver.posts[1][2]
    assert resolved["text"].startswith("[RESOLVED] auth-failure-surge: ") and resolved["alert"]["since"] == firing["alert"]["since"]
    server.wait_for(r"alert \[RESOLVED\] auth-failure-surge")
    server.stop()  # nothing else was sent while it ran
    assert receiver.states() == ["firing", "resolved"]
