"""End to end: calls through the real twistd proxy + registrar, driven by SIPp.

Every test registers its callees with ``scenarios/register.xml`` (phones registered
over UDP are reached at the address they registered from), then starts the callee
SIPp in server mode on that same port and the caller towards the proxy. Each SIPp
run is bounded twice: by SIPp's own ``-timeout N -timeout_error`` and by a wall-clock
``wait(timeout)`` here; anything still running at the end of a test is killed.

Each test asserts SIPp's exit code 0, its "Successful call" count and that the
proxy's log holds no "Traceback" and no "Unhandled" (error in a Deferred).

Debian's SIPp 3.6.1 has no TLS, so the TLS caller is a small Python ``ssl`` UAC.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ephemeral_config, free_udp_port, require_tool

pytestmark = pytest.mark.e2e
SCENARIOS = Path(__file__).parent / "scenarios"
TIMER_C = 3
CALL_CONFIG = ephemeral_config(extra=f"[timers]\ntimer_c = {TIMER_C}\n")
SIPP_TIMEOUT = 20  # seconds: SIPp's -timeout (then -timeout_error makes it fail)
WAIT_SLACK = 15  # seconds on top of that before we kill it ourselves


def udp_port_bound(port: int) -> bool:
    """Whether a socket is bound to 127.0.0.1:port/udp, read from /proc (no bind race)."""
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as table:
            return any(line.split()[1] == wanted for line in list(table)[1:])
    except OSError:
        return True  # not Linux: rely on the short sleep after this check


def sipp_counter(stdout: str, name: str) -> int | None:
    """The cumulative column of a counter line on SIPp's final screen."""
    found = re.findall(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", stdout)
    return int(found[-1]) if found else None


@dataclass
class SippResult:
    name: str
    returncode: int
    stdout: str
    messages: str

    @property
    def successful(self) -> int | None:
        return sipp_counter(self.stdout, "Successful call")

    @property
    def failed(self) -> int | None:
        return sipp_counter(self.stdout, "Failed call")

    def describe(self) -> str:
        return f"--- sipp {self.name} exit {self.returncode}\n{self.stdout[-2500:]}\n--- {self.name} messages\n{self.messages[-6000:]}"


class Sipp:
    """One SIPp process: output to files (no pipe to fill), bounded, killable."""

    def __init__(self, sipp: str, workdir: Path, name: str, scenario: str, *, port: int, service: str,
                 remote: tuple[str, int] | None = None, transport: str = "u1", calls: int = 1, timeout: int = SIPP_TIMEOUT,
                 extra: tuple[str, ...] = (), interface: str = "127.0.0.1") -> None:
        self.name = name
        self.stdout_path = workdir / f"sipp-{name}.out"
        self.messages_path = workdir / f"sipp-{name}-messages.log"
        args = [sipp]
        if remote is not None:
            args.append(f"{remote[0]}:{remote[1]}")
        args += ["-sf", str(SCENARIOS / scenario), "-s", service, "-t", transport, "-i", interface, "-p", str(port),
                 "-m", str(calls), "-timeout", str(timeout), "-timeout_error", "-nostdin",
                 "-trace_msg", "-message_file", str(self.messages_path), *extra]
        self.args = args
        self.timeout = timeout
        with open(self.stdout_path, "w") as out:
            self.process = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait(self, timeout: float | None = None) -> SippResult:
        timeout = timeout if timeout is not None else self.timeout + WAIT_SLACK
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"sipp {self.name} still running after {timeout}s (killed):\n{self.result(-9).describe()}")
        return self.result(returncode)

    def result(self, returncode: int) -> SippResult:
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        return SippResult(self.name, returncode, read(self.stdout_path), read(self.messages_path))

    def wait_listening(self, port: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bound = udp_port_bound(port)
            # Waiting on the process is the poll interval, and sees an early exit.
            try:
                self.process.wait(timeout=0.1 if bound else 0.05)
            except subprocess.TimeoutExpired:
                if bound:
                    return  # bound, and still running a moment later: it reads its socket
                continue
            pytest.fail(f"sipp {self.name} exited early:\n{self.result(self.process.returncode).describe()}")
        pytest.fail(f"sipp {self.name} did not bind udp {port} within {timeout}s")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def sipp_runner(tmp_path: Path) -> Iterator:
    """Factory: sipp_runner(name, scenario, ...) -> Sipp; every process is killed at teardown."""
    sipp = require_tool("sipp", "sip-tester")
    started: list[Sipp] = []

    def start(name: str, scenario: str, **kwargs) -> Sipp:
        process = Sipp(sipp, tmp_path, name, scenario, **kwargs)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()


def assert_ok(server, *results: SippResult, calls: int = 1) -> None:
    log = server.log
    detail = "\n".join(r.describe() for r in results) + "\n--- proxy log\n" + log[-8000:]
    for r in results:
        assert r.returncode == 0, f"sipp {r.name} exit {r.returncode}\n{detail}"
        assert r.successful == calls, f"sipp {r.name}: {r.successful} successful calls, expected {calls}\n{detail}"
        assert r.failed == 0, detail
    assert "Traceback" not in log, detail
    assert "Unhandled" not in log, detail


def register(sipp_runner, server, user: str, port: int) -> SippResult:
    """REGISTER user@example.com from 127.0.0.1:port (UDP) and require the 200."""
    result = sipp_runner(f"register-{user}-{port}", "register.xml", port=port, service=user, remote=server.addresses["udp"]).wait()
    assert result.returncode == 0 and result.successful == 1, result.describe() + "\n--- proxy log\n" + server.log[-8000:]
    return result


def start_callee(sipp_runner, server, scenario: str, user: str = "bob", name: str = "callee") -> tuple[Sipp, int]:
    """Register user from a fresh UDP port, then run the UAS scenario there."""
    port = free_udp_port()
    register(sipp_runner, server, user, port)
    callee = sipp_runner(name, scenario, port=port, service=user, timeout=SIPP_TIMEOUT + 10)
    callee.wait_listening(port)
    return callee, port


def call(sipp_runner, server, scenario: str, user: str = "bob", transport: str = "u1", kind: str = "udp") -> Sipp:
    return sipp_runner("caller", scenario, port=free_udp_port(), service=user, remote=server.addresses[kind], transport=transport)


# -- SIP message helpers (for SIPp's -trace_msg logs and the TLS client) -----------------------------


def messages_in(trace: str, direction: str) -> list[str]:
    """The messages SIPp logged as "received" or "sent", in order."""
    blocks = re.split(r"^-{10,} .*$", trace, flags=re.M)
    out = []
    for block in blocks:
        head, _, rest = block.strip("\n").partition("\n")
        if direction in head:
            out.append(rest.strip("\n"))
    return out


def first_message(trace: str, direction: str, start_line: str) -> str:
    for message in messages_in(trace, direction):
        if message.startswith(start_line):
            return message
    raise AssertionError(f"no {direction} message starting {start_line!r} in:\n{trace[-6000:]}")


COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length"}


def header_values(message: str, name: str) -> list[str]:
    """Every value of a header (each line; compact forms understood), in order."""
    name = name.lower()
    values = []
    for line in message.split("\r\n\r\n")[0].replace("\r\n", "\n").split("\n")[1:]:
        key, colon, value = line.partition(":")
        if colon and COMPACT.get(key.strip().lower(), key.strip().lower()) == name:
            values.append(value.strip())
    return values


def uris_in(values: list[str]) -> list[str]:
    """The <...> URIs of a comma-joined name-addr list such as Record-Route."""
    return [uri for value in values for uri in re.findall(r"<([^>]*)>", value)]


def assert_double_record_route(record_route: list[str], inbound: str, outbound: str = "udp") -> None:
    """Two Record-Route entries of the proxy: one per side, both loose-routing with r2=on.
    ``record_route`` is in the order the callee sees it (the callee side on top)."""
    assert len(record_route) == 2, f"expected a double Record-Route, got {record_route}"
    for uri in record_route:
        params = uri.lower().split(";")[1:]
        assert "lr" in params or any(p.startswith("lr=") for p in params), uri
        assert "r2=on" in params, uri

    def side(uri: str) -> str:
        lowered = uri.lower()
        if lowered.startswith("sips:"):
            return "tls"
        found = re.search(r";transport=(\w+)", lowered)
        return found.group(1) if found else "udp"

    assert [side(u) for u in record_route] == [outbound, inbound], record_route


# -- the tests ---------------------------------------------------------------------------------------


def test_basic_call_between_two_registered_phones(start_server, sipp_runner) -> None:
    server = start_server(CALL_CONFIG)
    # The caller registers too (two UAs), though SIPp's caller then runs from another port.
    register(sipp_runner, server, "alice", free_udp_port())
    callee, _ = start_callee(sipp_runner, server, "uas_answer.xml")
    caller = call(sipp_runner, server, "uac_call.xml").wait()
    uas = callee.wait()
    assert_ok(server, caller, uas)
    # The proxy record-routed, and ACK and BYE came through it (the callee got them at all).
    invite = first_message(uas.messages, "received", "INVITE ")
    assert len(uris_in(header_values(invite, "Record-Route"))) == 1
    host, port = server.addresses["udp"]
    assert f"{host}:{port}" in uris_in(header_values(invite, "Record-Route"))[0]
    ack = first_message(caller.messages, "sent", "ACK ")
    assert f"{host}:{port}" in " ".join(header_values(ack, "Route")), ack
    # Our Record-Route carries the dialog token (;ss=), echoed back opaquely.
    assert re.search(r";ss=[0-9a-f]{32}", " ".join(header_values(ack, "Route"))), ack
    # SIPp sends unauthenticated over UDP from 127.0.0.1, trusted with udp = true: warned about.
    assert "unsafe configuration: auth.trusted_sources: 127.0.0.1/32 is trusted over UDP" in server.log


def test_callee_hangs_up_with_the_route_set(start_server, sipp_runner) -> None:
    server = start_server(CALL_CONFIG)
    callee, _ = start_callee(sipp_runner, server, "uas_answer_hangup.xml")
    caller = call(sipp_runner, server, "uac_call_remote_bye.xml").wait()
    uas = callee.wait()
    assert_ok(server, caller, uas)
    bye = first_message(uas.messages, "sent", "BYE ")
    assert re.search(r";ss=[0-9a-f]{32}", " ".join(header_values(bye, "Route"))), bye  # the callee's tags are swapped


def test_caller_cancels_before_answer(start_server, sipp_runner) -> None:
    server = start_server(CALL_CONFIG)
    callee, _ = start_callee(sipp_runner, server, "uas_ring_then_487.xml")
    caller = call(sipp_runner, server, "uac_cancel.xml").wait()
    uas = callee.wait()
    assert_ok(server, caller, uas)


def test_busy_callee_486_reaches_the_caller(start_server, sipp_runner) -> None:
    server = start_server(CALL_CONFIG)
    callee, _ = start_callee(sipp_runner, server, "uas_busy.xml")
    caller = call(sipp_runner, server, "uac_busy.xml").wait()
    uas = callee.wait()
    assert_ok(server, caller, uas)


def test_no_answer_gets_408_after_timer_c(start_server, sipp_runner) -> None:
    server = start_server(CALL_CONFIG)
    callee, _ = start_callee(sipp_runner, server, "uas_ring_forever.xml")
    started = time.monotonic()
    caller = call(sipp_runner, server, "uac_noanswer.xml").wait()
    elapsed = time.monotonic() - started
    uas = callee.wait()
    assert_ok(server, caller, uas)
    assert TIMER_C - 0.5 <= elapsed <= TIMER_C + 5, f"408 after {elapsed:.1f}s, timer C is {TIMER_C}s"
    # The branch was CANCELled by the proxy, not by the caller.
    assert first_message(uas.messages, "received", "CANCEL ")


def test_fork_to_two_contacts_one_answers_other_cancelled(start_server, sipp_runner) -> None:
    server = start_server(CALL_CONFIG)
    answering, _ = start_callee(sipp_runner, server, "uas_answer.xml", name="callee-answers")
    ringing, _ = start_callee(sipp_runner, server, "uas_ring_then_487.xml", name="callee-rings")
    caller = call(sipp_runner, server, "uac_call.xml").wait()
    results = (caller, answering.wait(), ringing.wait())
    assert_ok(server, *results)
    # Both contacts got the INVITE: the loser got it, rang, was CANCELled and answered 487.
    assert first_message(results[2].messages, "received", "CANCEL ")
    assert first_message(results[2].messages, "sent", "SIP/2.0 487")


def test_tcp_caller_udp_callee_double_record_route(start_server, sipp_runner) -> None:
    server = start_server(CALL_CONFIG)
    callee, _ = start_callee(sipp_runner, server, "uas_answer.xml")
    caller = call(sipp_runner, server, "uac_call.xml", transport="t1", kind="tcp").wait()
    uas = callee.wait()
    assert_ok(server, caller, uas)
    invite = first_message(uas.messages, "received", "INVITE ")
    assert_double_record_route(uris_in(header_values(invite, "Record-Route")), inbound="tcp")
    ok = first_message(caller.messages, "received", "SIP/2.0 200")
    assert_double_record_route(uris_in(header_values(ok, "Record-Route")), inbound="tcp")
    ack = first_message(caller.messages, "sent", "ACK ")
    assert len(uris_in(header_values(ack, "Route"))) == 2, ack


# -- TLS caller: a minimal Python UAC (Debian's SIPp is built without TLS) ---------------------------


class StreamUAC:
    """Just enough of a UAC over one TLS connection: send requests, read framed messages."""

    def __init__(self, host: str, port: int, ca: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        raw = socket.create_connection((host, port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.local = self.sock.getsockname()
        self.buffer = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.replace("\n", "\r\n").encode())

    def read(self, deadline: float) -> str:
        """One message (framed by Content-Length), or AssertionError at the deadline."""
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end >= 0:
                head = self.buffer[:head_end].decode(errors="replace")
                length = re.search(r"^(?:content-length|l)\s*:\s*(\d+)", head, flags=re.I | re.M)
                total = head_end + 4 + (int(length.group(1)) if length else 0)
                if len(self.buffer) >= total:
                    message, self.buffer = self.buffer[:total], self.buffer[total:]
                    return message.decode(errors="replace")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no complete message before the deadline; buffered {self.buffer!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65535)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"connection closed; buffered {self.buffer!r}")
            self.buffer += chunk.lstrip(b"\r\n") if not self.buffer else chunk

    def response(self, method: str, deadline: float, final: bool = True) -> str:
        """The next response to ``method`` (provisionals skipped when final)."""
        while True:
            message = self.read(deadline)
            if not message.startswith("SIP/2.0 "):
                raise AssertionError(f"unexpected request over TLS:\n{message}")
            code = int(message.split(" ", 2)[1])
            cseq = header_values(message, "CSeq")
            if not cseq or cseq[0].split()[-1].upper() != method:
                continue  # e.g. a retransmitted 200 INVITE while we wait for the 200 BYE
            if final and code < 200:
                continue
            return message

    def close(self) -> None:
        self.sock.close()


def test_tls_caller_udp_callee_double_record_route(start_server, sipp_runner, tmp_path: Path) -> None:
    server = start_server(CALL_CONFIG)
    callee, _ = start_callee(sipp_runner, server, "uas_answer.xml")
    host, port = server.addresses["tls"]
    uac = StreamUAC(host, port, tmp_path / "data" / "tls-selfsigned.pem")
    try:
        me = f"{uac.local[0]}:{uac.local[1]}"
        sdp = "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
        common = (f'From: "caller" <sip:caller@example.com>;tag=tlscaller\nCall-ID: tls-call-{time.time_ns()}\n'
                  f"Contact: <sip:caller@{me};transport=tls>\nMax-Forwards: 70\n")
        uac.send(f"INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlsinv;rport\n{common}"
                 f"To: <sip:bob@example.com>\nCSeq: 1 INVITE\nContent-Type: application/sdp\nContent-Length: {len(sdp)}\n\n" + sdp.replace("\r\n", "\n"))
        deadline = time.monotonic() + 15
        seen: list[int] = []
        while True:
            answer = uac.response("INVITE", deadline, final=False)
            seen.append(int(answer.split(" ", 2)[1]))
            if seen[-1] >= 200:
                break
        assert seen[-1] == 200 and 180 in seen, f"responses {seen}:\n{answer}\n{server.log[-6000:]}"
        record_route = uris_in(header_values(answer, "Record-Route"))
        assert_double_record_route(record_route, inbound="tls")
        to = header_values(answer, "To")[0]
        target = uris_in(header_values(answer, "Contact"))[0]
        route = "Route: " + ", ".join(f"<{u}>" for u in reversed(record_route)) + "\n"
        uac.send(f"ACK {target} SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlsack;rport\n{route}{common}To: {to}\nCSeq: 1 ACK\nContent-Length: 0\n\n")
        uac.send(f"BYE {target} SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlsbye;rport\n{route}{common}To: {to}\nCSeq: 2 BYE\nContent-Length: 0\n\n")
        bye_answer = uac.response("BYE", time.monotonic() + 15)
        assert bye_answer.startswith("SIP/2.0 200"), bye_answer
    finally:
        uac.close()
    uas = callee.wait()
    assert_ok(server, uas)
    invite = first_message(uas.messages, "received", "INVITE ")
    assert_double_record_route(uris_in(header_values(invite, "Record-Route")), inbound="tls")
