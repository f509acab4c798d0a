"""End to end with the real softphones Debian ships: baresip 1.0 (MD5 digest
only) and linphonec 5.1 (SHA-256 and MD5), through one twistd sipshield whose
``[[auth.profiles]]`` challenges baresip's address with MD5 and everyone
else with the SHA-256 default (docs/operations/phones.md).

Over UDP, TCP and TLS each phone registers (the proxy's challenge and the
algorithm answered are read from the phone's own SIP trace), then baresip
calls linphonec and linphonec calls baresip.  A call is up when its 200 and
its ACK passed the proxy: the callee received the INVITE and the ACK from
the proxy's listener with the proxy's Via on top and sent its 200 there,
and the caller received that 200 from the proxy and sent the ACK to it.
The proxy logs nothing per message, so this is read from the two traces,
one at each end of every hop through it.

Where the phones are: over UDP baresip binds 127.0.0.2 (in the MD5 profile)
and linphonec 127.0.0.3 (in none).  Neither binds its outgoing TCP or TLS
connections (libre 1.1.0's sip transport, belle-sip 5.1), so on a stream
transport both connect from the kernel's loopback source, 127.0.0.1;
there baresip uses the IPv6 loopback, ::1, which is in the profile too.
linphonec checks the TLS server name and does not match iPAddress
subjectAltNames (mbedTLS 2.28): it is pointed at ``localhost``, one of the
names the generated certificate carries, with that certificate as its CA.
baresip 1.0 checks no server certificate at all.

Both clients run with their own configuration under the test's temporary
directory (linphonec rewrites its file: a fresh one every test), stdin for
commands, stdout line-buffered through ``stdbuf`` and read by a thread;
every wait has one deadline; every process is killed at teardown.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import OutputLines, RunningServer, ipv6_available, require_tool

pytestmark = pytest.mark.e2e

PROFILE_CONFIG = """\
[server]
data_dir = "data"
listen = ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1", "tls:0:interface=127.0.0.1",
          "udp:0:interface=\\\\:\\\\:1", "tcp:0:interface=\\\\:\\\\:1", "tls:0:interface=\\\\:\\\\:1"]
domains = ["example.com"]

[auth]
algorithms = ["SHA-256", "SHA-512-256"]     # linphonec answers only the first challenge: SHA-256 first

[[auth.profiles]]
name = "legacy-phones"
networks = ["127.0.0.2/32", "::1/128"]      # baresip over UDP, and over TCP/TLS (see the module docstring)
algorithms = ["MD5"]                        # baresip gives up on any other challenge
"""
USERS = {"alice": "pale-orchid-tundra-7", "bob": "quiet-harbour-lamp-42"}  # alice on baresip, bob on linphonec
REGISTER_DEADLINE = 30.0  # one bound for start-up and registration: linphonec's first start on a loaded machine took over 10 s
CALL_DEADLINE = 10.0
_LISTENING = re.compile(r"sipshield listening on (udp|tcp|tls) \[?([0-9a-fA-F.:]+?)\]?:(\d+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def has_a_network_route() -> bool:
    """liblinphone registers only once its network monitor sees a local
    address other than loopback (the source of a route to the internet;
    no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("198.51.100.1", 9))  # off the machine: the kernel picks the default route's source
            return not s.getsockname()[0].startswith("127.")
    except OSError:
        return False


# -- what a phone said: its SIP trace ----------------------------------------------------------

@dataclass(frozen=True)
class Traced:
    """One SIP message in a phone's trace: sent to or received from *peer*."""

    received: bool
    transport: str
    peer: tuple[str, int]
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0]

    def header(self, name: str) -> list[str]:
        head = self.text.split("\n\n", 1)[0]
        return [line.split(":", 1)[1].strip() for line in head.split("\n")[1:] if line.split(":", 1)[0].strip().lower() == name.lower()]

    @property
    def call_id(self) -> str:
        return (self.header("Call-ID") or [""])[0]

    @property
    def cseq_method(self) -> str:
        return (self.header("CSeq") or [" "])[0].split()[-1]


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Phone:
    """A softphone process: commands on stdin, every output line kept."""

    name = "phone"
    DIAL: str  # the command that calls {uri}
    ESTABLISHED: str  # what the caller prints once the call is up
    HANG_UP: str

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.process = subprocess.Popen(
            ["stdbuf", "-oL", "-eL", *args], cwd=workdir, env=env, text=True, errors="replace",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.output = OutputLines(self.process, self.name, lambda line: _ANSI.sub("", line))
        self.lines = self.output.lines

    def command(self, text: str) -> int:
        """Send *text*; returns the output position from which to wait for its effect."""
        start = self.mark()
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(text)
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # exited: the wait that follows says so, with the output
        return start

    def wait_for(self, pattern: str, deadline: float, start: int = 0) -> None:
        """Until a line from *start* on matches, by the monotonic *deadline* at most."""
        self.output.wait_for(pattern, deadline, start)

    def mark(self) -> int:
        """The output position now: a wait from it sees only what comes next."""
        self.output.drain()
        return len(self.lines)

    def tail(self, count: int = 250) -> str:
        self.output.drain()
        return "\n".join(self.lines[-count:])

    def traced(self, proxy: set[tuple[str, int]]) -> list[Traced]:
        """Every SIP message of the trace; *proxy* is the (host, port) the
        phone may print for the proxy's listeners."""
        found: list[Traced] = []
        self.output.drain()
        lines = self.lines
        index = 0
        while index < len(lines):
            hop = self._HOP.search(lines[index])
            index += 1
            if hop is None:
                continue
            body: list[str] = []
            while index < len(lines) and not self._message_ended(lines[index]):
                body.append(lines[index])
                index += 1
            found += self._messages(hop, "\n".join(body).strip("\n"), proxy)
        return found

    _HOP: re.Pattern[str]

    def _message_ended(self, line: str) -> bool:
        raise NotImplementedError

    def _messages(self, hop: re.Match[str], text: str, proxy: set[tuple[str, int]]) -> list[Traced]:
        raise NotImplementedError

    def stop(self, quit_command: str) -> None:
        if self.process.poll() is None:
            self.command(quit_command)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        self.output.join(timeout=5)



class Baresip(Phone):
    """baresip 1.0 with its own config dir: the stdio, menu, g711 and aubridge
    (null audio) modules, one account, auto-answer, ``-s`` for the SIP trace."""

    name = "baresip"
    DIAL = "/dial {uri}\n"
    ESTABLISHED = r"Call established: sip:"
    HANG_UP = "/hangup\n"
    _HOP = re.compile(r"^(UDP|TCP|TLS) (\S+) -> (\S+)$")

    def __init__(self, workdir: Path, listen: str, account: str) -> None:
        home = workdir / "baresip"
        home.mkdir()
        (home / "config").write_text(
            "poll_method epoll\n"
            f"sip_listen {listen}\n"
            "audio_player aubridge,null\naudio_source aubridge,null\naudio_alert aubridge,null\n"
            "module_path /usr/lib/baresip/modules\n"
            "module stdio.so\nmodule g711.so\nmodule aubridge.so\n"
            "module_tmp account.so\nmodule_app menu.so\n"
        )
        (home / "accounts").write_text(account + "\n")
        (home / "contacts").write_text("")
        super().__init__(["baresip", "-f", str(home), "-s"], dict(os.environ), workdir)

    # Each message: "#", "UDP 127.0.0.2:5062 -> 127.0.0.1:5060", the message, "" (colours removed).
    def _message_ended(self, line: str) -> bool:
        return line in ("", "#")

    def _messages(self, hop: re.Match[str], text: str, proxy: set[tuple[str, int]]) -> list[Traced]:
        transport, source, destination = hop.groups()
        src, dst = _host_port(source), _host_port(destination)
        received = src in proxy
        return [Traced(received, transport, src if received else dst, text)]


class Linphonec(Phone):
    """linphonec 5.1 with its own linphonerc and HOME (its database), auto-answer
    (``-a``), files for audio, ``-d 6`` for its log on stdout (SIP included)."""

    name = "linphonec"
    DIAL = "call {uri}\n"
    ESTABLISHED = r"Call \d+ with sip:\S+ connected"
    HANG_UP = "terminate\n"
    _HOP = re.compile(r"channel \[0x[0-9a-f]+\]: (message sent to|received \[\d+\] new bytes from) \[(\w+)://(.+):(\d+)\]")
    _LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d:\d+ ")
    _START = re.compile(r"\n(?=SIP/2\.0 \d{3} |[A-Z]+ \S+ SIP/2\.0\n)")

    def __init__(self, workdir: Path, bind: str, proxy: str, root_ca: Path | None = None) -> None:
        home = workdir / "linphone-home"
        (home / ".local" / "share" / "linphone").mkdir(parents=True)
        transport = proxy.rsplit("transport=", 1)[1].rstrip(">")
        ports = {t: "-1" if t == transport else "0" for t in ("udp", "tcp", "tls")}
        rc = workdir / "linphonerc"
        rc.write_text(
            "[sip]\n"
            f"sip_port={ports['udp']}\nsip_tcp_port={ports['tcp']}\nsip_tls_port={ports['tls']}\n"
            f"bind_address={bind}\nuse_ipv6=0\ndefault_proxy=0\nping_with_options=0\n"
            + (f"root_ca={root_ca}\nverify_server_certs=1\nverify_server_cn=1\n" if root_ca else "")
            + "\n[rtp]\naudio_rtp_port=20000-60000\n"
            "\n[video]\nenabled=0\ncapture=0\ndisplay=0\n"
            "\n[sound]\nechocancellation=0\n"
            f"\n[proxy_0]\nreg_proxy={proxy}\nreg_route={proxy[:-1]};lr>\nreg_identity=sip:bob@example.com\n"
            "reg_expires=600\nreg_sendregister=1\npublish=0\n"
            f"\n[auth_info_0]\nusername=bob\npasswd={USERS['bob']}\nrealm=example.com\ndomain=example.com\n"
        )
        super().__init__(["linphonec", "-c", str(rc), "-a", "-d", "6"], dict(os.environ, HOME=str(home)), workdir)
        self.command("soundcard use files\n")  # no sound card: play and record files (none: silence)

    # "... channel [0x..]: message sent to [UDP://127.0.0.1:5060], size: [513] bytes", then the message.
    def _message_ended(self, line: str) -> bool:
        return self._LOG_LINE.match(line) is not None

    def _messages(self, hop: re.Match[str], text: str, proxy: set[tuple[str, int]]) -> list[Traced]:
        direction, transport, host, port = hop.groups()
        text = re.sub(r"^linphonec> ", "", text, flags=re.M)  # its prompt, printed among the log lines
        # One read from a stream may carry several messages (a 180 and the 200).
        return [Traced(direction.startswith("received"), transport.upper(), (host.strip("[]"), int(port)), part.strip("\n"))
                for part in self._START.split(text) if part.strip()]


# -- the proxy ----------------------------------------------------------------------------------

@dataclass
class Proxy:
    server: RunningServer
    addresses: dict[tuple[str, int], tuple[str, int]]  # (kind, family) -> (host, port)
    certificate: Path

    def address(self, kind: str, family: int) -> tuple[str, int]:
        return self.addresses[(kind, family)]

    def names(self, kind: str) -> set[tuple[str, int]]:
        """Every (host, port) a phone may print for the proxy's *kind* listeners."""
        found = set()
        for (k, _), (host, port) in self.addresses.items():
            if k == kind:
                found |= {(host, port), ("localhost", port)} if host == "127.0.0.1" else {(host, port)}
        return found


def add_user(config: Path, name: str, password: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sipshield.cli", "user", "add", "--config", str(config), name, "--roles", "staff", "--password-stdin"],
        input=password + "\n", capture_output=True, text=True, timeout=60, cwd=config.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def proxy(start_server, tmp_path: Path) -> Proxy:
    """twistd sipshield on 127.0.0.1 and ::1 (UDP, TCP, TLS), alice and bob
    added with ``sipshield user add`` (an HA1 for every enabled algorithm:
    MD5 from the profile, SHA-256 and SHA-512-256 from [auth])."""
    require_tool("baresip", "baresip")
    require_tool("linphonec", "linphone-cli")
    require_tool("stdbuf", "coreutils")
    if not ipv6_available():
        pytest.skip("no IPv6 loopback (::1): baresip's TCP/TLS source in the MD5 profile")
    if not has_a_network_route():
        pytest.skip("no non-loopback route: liblinphone's network monitor keeps linphonec from registering without one")
    config = tmp_path / "sipshield.toml"
    config.write_text(PROFILE_CONFIG)
    for name, password in USERS.items():
        add_user(config, name, password)
    server = start_server(PROFILE_CONFIG, listeners=6)
    addresses = {}
    for line in server.lines:
        found = _LISTENING.search(line)
        if found:
            kind, host, port = found.groups()
            addresses[(kind, 6 if ":" in host else 4)] = (host, int(port))
    assert len(addresses) == 6, server.log
    return Proxy(server, addresses, tmp_path / "data" / "tls-selfsigned.pem")


@pytest.fixture
def phones(tmp_path: Path) -> Iterator[list[Phone]]:
    started: list[Phone] = []
    yield started
    for phone in started:
        phone.stop("q" if isinstance(phone, Baresip) else "quit\n")


def start_phones(proxy: Proxy, phones: list[Phone], tmp_path: Path, transport: str) -> tuple[Baresip, Linphonec]:
    if transport == "udp":
        host, port = proxy.address("udp", 4)
        listen, outbound = "127.0.0.2:0", f"sip:{host}:{port};transport=udp"
        aor = "<sip:alice@example.com>"
    else:
        host, port = proxy.address(transport, 6)
        listen, outbound = "[::1]:0", f"sip:[{host}]:{port};transport={transport}"
        aor = f"<sip:alice@example.com;transport={transport}>"
    (tmp_path / "alice").mkdir()
    baresip = Baresip(tmp_path / "alice", listen, f'{aor};auth_pass={USERS["alice"]};outbound="{outbound}";answermode=auto;regint=600')
    phones.append(baresip)
    _, port4 = proxy.address(transport, 4)
    server_name = "localhost" if transport == "tls" else "127.0.0.1"  # the name linphonec checks in the certificate
    (tmp_path / "bob").mkdir()
    linphone = Linphonec(tmp_path / "bob", "127.0.0.3", f"<sip:{server_name}:{port4};transport={transport}>",
                         proxy.certificate if transport == "tls" else None)
    phones.append(linphone)
    return baresip, linphone


def assert_registered_with(phone: Phone, proxy: Proxy, transport: str, offered: list[str], answered: str) -> None:
    """The phone's REGISTER was challenged by the proxy with *offered* (in
    that order), answered with *answered*, and got 200."""
    names = proxy.names(transport)
    traced = [t for t in phone.traced(names) if t.cseq_method == "REGISTER" and t.peer in names]
    detail = phone.tail()
    challenge = next((t for t in traced if t.received and t.first_line.startswith("SIP/2.0 401")), None)
    assert challenge is not None, detail
    assert [re.search(r"algorithm=([\w-]+)", v).group(1) for v in challenge.header("WWW-Authenticate")] == offered, challenge.text  # type: ignore[union-attr]
    answer = next(t for t in traced if not t.received and t.header("Authorization"))
    used = re.search(r"algorithm=([\w-]+)", answer.header("Authorization")[0])
    assert (used.group(1) if used else "MD5") == answered, answer.text  # RFC 7616 3.4: no algorithm is MD5
    assert any(t.received and t.first_line.startswith("SIP/2.0 200") for t in traced), detail


def assert_call_through_the_proxy(caller: Phone, callee: Phone, proxy: Proxy, transport: str) -> None:
    """The INVITE reached the callee from the proxy (its Via on top), the
    callee's 200 went to the proxy and reached the caller from it, and the
    caller's ACK went to the proxy and reached the callee from it, again
    with the proxy's Via on top."""
    names = proxy.names(transport)
    via_hosts = {f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in names}
    detail = f"--- caller {caller.name}\n{caller.tail()}\n--- callee {callee.name}\n{callee.tail()}"

    def top_via_is_the_proxy(t: Traced) -> bool:
        via = (t.header("Via") or [""])[0]
        return via.split(";")[0].split()[-1] in via_hosts

    invites = [t for t in callee.traced(names) if t.received and t.first_line.startswith("INVITE ") and t.peer in names]
    assert invites and top_via_is_the_proxy(invites[-1]), detail
    call_id = invites[-1].call_id
    at_callee = [t for t in callee.traced(names) if t.call_id == call_id and t.peer in names]
    at_caller = [t for t in caller.traced(names) if t.call_id == call_id and t.peer in names]
    assert any(not t.received and t.first_line.startswith("SIP/2.0 200") and t.cseq_method == "INVITE" for t in at_callee), detail
    assert any(t.received and t.first_line.startswith("SIP/2.0 200") and t.cseq_method == "INVITE" for t in at_caller), detail
    assert any(not t.received and t.first_line.startswith("ACK ") for t in at_caller), detail
    acks = [t for t in at_callee if t.received and t.first_line.startswith("ACK ")]
    assert acks and top_via_is_the_proxy(acks[0]), detail


def call_and_hang_up(caller: Phone, callee: Phone, uri: str, linphone: Linphonec, proxy: Proxy, transport: str) -> None:
    """*caller* dials *uri* (the callee answers on its own); once the callee
    has the ACK, the call is checked and the caller hangs up (linphonec,
    at one end or the other, says when it has ended)."""
    deadline = time.monotonic() + CALL_DEADLINE
    at_callee = callee.mark()
    at_caller = caller.command(caller.DIAL.format(uri=uri))
    caller.wait_for(caller.ESTABLISHED, deadline, at_caller)
    callee.wait_for(r"^ACK sip:", deadline, at_callee)
    assert_call_through_the_proxy(caller, callee, proxy, transport)
    at_linphone = linphone.mark()
    caller.command(caller.HANG_UP)
    linphone.wait_for(r"Call \d+ with sip:\w+@example\.com ended", deadline, at_linphone)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_baresip_on_md5_and_linphonec_on_sha256_register_and_call_each_other(proxy: Proxy, phones: list[Phone], tmp_path: Path,
                                                                               transport: str) -> None:
    baresip, linphone = start_phones(proxy, phones, tmp_path, transport)
    deadline = time.monotonic() + REGISTER_DEADLINE
    baresip.wait_for(r"useragent registered successfully", deadline)
    linphone.wait_for(r"to \[LinphoneRegistrationOk\]", deadline)
    assert_registered_with(baresip, proxy, transport, ["MD5"], "MD5")
    assert_registered_with(linphone, proxy, transport, ["SHA-256", "SHA-512-256"], "SHA-256")

    # alice calls bob (linphonec answers on its own: -a), then bob calls alice (answermode=auto).
    call_and_hang_up(baresip, linphone, "sip:bob@example.com", linphone, proxy, transport)
    call_and_hang_up(linphone, baresip, "sip:alice@example.com", linphone, proxy, transport)

    log = proxy.server.log
    assert "Traceback" not in log and "Unhandled" not in log, log[-6000:]
