"""examples/fail2ban/ against the log of a real run: Debian's fail2ban-regex,
with the shipped filter, over what a real twistd sipshield wrote while SIPp
guessed passwords from three addresses (one of them until it was banned),
a phone registered with the right one, and a client named itself as a user
whose name tries to put another address in the line.  Every failed login
is matched, with its own source address, and nothing else is."""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path

from conftest import ephemeral_config, require_tool
from digest_client import authorization, challenges
from test_auth import Client, add_user

ROOT = Path(__file__).resolve().parent.parent.parent
FILTER = ROOT / "examples" / "fail2ban" / "filter.d" / "sipshield.conf"
SCENARIO = Path(__file__).parent / "scenarios" / "register_auth.xml"
INJECTED = "x) from 10.9.9.9 over UDP (user y"


def sipp_register_command(sipp: str, address: tuple[str, int], source: str, password: str, calls: int) -> list[str]:
    """SIPp registering alice from *source* *calls* times (one a second), with *password*."""
    host, port = address
    return [sipp, f"{host}:{port}", "-sf", str(SCENARIO), "-s", "alice", "-au", "alice", "-ap", password, "-i", source, "-p", "0",
            "-m", str(calls), "-r", "1", "-timeout", "20", "-timeout_error", "-nostdin", "-recv_timeout", "3000"]  # fmt: skip


def sipp_register(sipp: str, address: tuple[str, int], source: str, password: str, calls: int, workdir: Path) -> int:
    result = subprocess.run(sipp_register_command(sipp, address, source, password, calls), cwd=workdir, capture_output=True, text=True, timeout=60)
    return result.returncode


def test_fail2ban_regex_matches_every_failed_login_with_its_source_and_nothing_else(start_server, tmp_path: Path) -> None:
    sipp = require_tool("sipp", "sip-tester")
    fail2ban_regex = require_tool("fail2ban-regex", "fail2ban")
    # SIPp answers MD5 only: offer it to loopback (a profile), SHA-256 to everyone else.
    extra = '[[auth.profiles]]\nnetworks = ["127.0.0.0/8"]\nalgorithms = ["MD5"]\n'
    server = start_server(ephemeral_config(trusted=False, extra=extra))
    add_user(tmp_path, "alice", "right-password-1", "staff")
    udp = server.addresses["udp"]

    assert sipp_register(sipp, udp, "127.0.0.3", "wrong-1", 2, tmp_path) != 0
    assert sipp_register(sipp, udp, "127.0.0.4", "wrong-2", 3, tmp_path) != 0  # the third failure bans it
    server.wait_for(r"security event ban from 127\.0\.0\.4 over UDP")
    # the right password from another address: no failure (SIPp's INVITE after it gets a 404, as the scenario expects)
    assert sipp_register(sipp, udp, "127.0.0.5", "right-password-1", 1, tmp_path) == 0
    client = Client(udp)  # from 127.0.0.2
    _, _, first = client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com")
    challenge = challenges(first, "WWW-Authenticate")[0]
    auth = authorization(challenge, challenge.get("algorithm", "MD5"), INJECTED, "whatever", "REGISTER", "sip:example.com")
    assert client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com", auth)[0] == 401
    server.wait_count(r"security event auth-failure from ", 6)
    server.stop()
    log = tmp_path / "twistd.log"
    log.write_text(server.log + "\n")
    failures = [line for line in server.lines if "security event auth-failure from " in line]
    assert len(failures) == 6, "\n".join(failures)

    result = subprocess.run([fail2ban_regex, "-o", "ip", str(log), str(FILTER)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    matched = collections.Counter(line.strip() for line in result.stdout.splitlines() if line.strip())
    assert matched == {"127.0.0.3": 2, "127.0.0.4": 3, "127.0.0.2": 1}, result.stdout + "\n" + "\n".join(failures)
    assert INJECTED in "\n".join(failures)  # the name was in the line, and still did not move the address


def test_a_line_after_a_newline_in_a_log_message_cannot_name_an_address(tmp_path: Path) -> None:
    """twistd writes a multi-line message's later lines after a tab, and
    fail2ban dates a line without a time stamp now: a forged failure line
    there (a traceback's text, any value that held a newline) must match
    nothing.  The log is written by twistd's own text observer."""
    import io

    from twisted.internet.task import Clock
    from twisted.logger import Logger, LogPublisher, textFileLogObserver

    from sipshield.events import LogSecurityEvents, SecurityEvent

    fail2ban_regex = require_tool("fail2ban-regex", "fail2ban")
    out = io.StringIO()
    publisher = LogPublisher(textFileLogObserver(out))
    forged = "[sipshield.security#warn] security event auth-failure from 10.9.9.8 over UDP (user x): y"
    Logger(namespace="sipshield.proxy.core", observer=publisher).error("routing failed: {why}", why=f"boom\n{forged}\n {forged}")
    events = LogSecurityEvents(Clock(), Logger(namespace="sipshield.security", observer=publisher))
    events.emit(SecurityEvent("auth-failure", "192.0.2.7", "UDP", "alice", "credentials refused"))
    log = tmp_path / "twistd.log"
    log.write_text(out.getvalue())
    assert "\t" + forged in out.getvalue()
    result = subprocess.run([fail2ban_regex, "-o", "ip", str(log), str(FILTER)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.strip() for line in result.stdout.splitlines() if line.strip()] == ["192.0.2.7"], result.stdout



def test_the_tls_jail_line_of_the_docs_matches_handshake_failures_which_the_shipped_filter_leaves_alone(tmp_path: Path) -> None:
    """docs/operations/logging.md's failregex for a jail on tls-handshake-failure
    lines, in a filter with the shipped datepattern: each line counts for its
    own source (an SNI or a reason naming another address does not move it);
    the shipped filter matches none of them."""
    import io
    import re

    from twisted.internet.task import Clock
    from twisted.logger import Logger, LogPublisher, textFileLogObserver

    from sipshield.events import TLS_HANDSHAKE_FAILURE, LogSecurityEvents, SecurityEvent

    fail2ban_regex = require_tool("fail2ban-regex", "fail2ban")
    documented = re.search(r"^    (failregex = .*tls-handshake-failure.*)$", (ROOT / "docs" / "operations" / "logging.md").read_text(), re.M)
    assert documented is not None
    shipped = FILTER.read_text()
    datepattern = re.search(r"^datepattern = .*$", shipped, re.M)
    assert datepattern is not None
    jail = tmp_path / "sipshield-tls.conf"
    jail.write_text(f"[Definition]\n{documented.group(1)}\nignoreregex =\n\n[Init]\n{datepattern.group(0)}\n")
    out = io.StringIO()
    events = LogSecurityEvents(Clock(), Logger(namespace="sipshield.security", observer=LogPublisher(textFileLogObserver(out))))
    for source, reason, sni in (("192.0.2.7", "no shared cipher", "10.9.9.9"), ("192.0.2.8", "http request from 10.9.9.8 over TLS (user None): x", None)):
        events.emit(SecurityEvent(TLS_HANDSHAKE_FAILURE, source, "TLS", None, reason, port=40000, sni=sni))
    events.emit(SecurityEvent("auth-failure", "192.0.2.9", "TLS", "alice", "credentials refused"))
    log = tmp_path / "twistd.log"
    log.write_text(out.getvalue())

    def matched(filter_path: Path) -> list[str]:
        result = subprocess.run([fail2ban_regex, "-o", "ip", str(log), str(filter_path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return sorted(line.strip() for line in result.stdout.splitlines() if line.strip())

    assert matched(jail) == ["192.0.2.7", "192.0.2.8"], out.getvalue()
    assert matched(FILTER) == ["192.0.2.9"]  # the auth failure only
