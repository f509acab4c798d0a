"""Reflection and amplification toward a forged source: what one datagram buys an attacker.

    python bench/bench_amplification.py [--window 4]

Starts `twistd -n sipshield` on a free UDP port of 127.0.0.1 with the embedded security defaults
(no trusted sources: every sender is unauthenticated) and, for each kind of request an attacker
can send, sends ONE datagram from 127.0.0.2 and counts for --window seconds every datagram that
comes back to 127.0.0.2 and every datagram that reaches a bystander socket on 127.0.0.7 (the
"victim" an attacker names in a Via maddr, a Via sent-by, a Route or a forged response).

Reported per kind: request bytes, datagrams and bytes back, the byte amplification factor, and
what reached the victim.  The figure to hold (issue "Seal the core"): at most one datagram back,
at most 4 times the request's size, nothing at the victim.
"""

from __future__ import annotations

import argparse
import secrets
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTACKER = "127.0.0.2"
VICTIM = "127.0.0.7"


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def request(method: str, proxy: tuple[str, int], sport: int, *, ruri: str | None = None, to_tag: bool = False,
            via_extra: str = "", route: str | None = None, auth: str | None = None) -> bytes:
    host, port = proxy
    ruri = ruri or "sip:bob@example.com"
    tag = f";tag={secrets.token_hex(4)}" if to_tag else ""
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {ATTACKER}:{sport};branch=z9hG4bK{secrets.token_hex(8)}{via_extra}",
        "Max-Forwards: 70",
        f"From: <sip:alice@example.com>;tag={secrets.token_hex(4)}",
        f"To: <sip:bob@example.com>{tag}",
        f"Call-ID: {secrets.token_hex(10)}@{ATTACKER}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:alice@{ATTACKER}:{sport}>",
    ]
    if route:
        lines.append(f"Route: {route}")
    if auth:
        lines.append(auth)
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def forged_response(proxy: tuple[str, int]) -> bytes:
    host, port = proxy
    return (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)}\r\n"
        f"Via: SIP/2.0/UDP {VICTIM}:{{vport}};branch=z9hG4bK{secrets.token_hex(8)}\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\n"
        f"Call-ID: {secrets.token_hex(10)}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def compact(method: str, ruri: str = "tel:1", to_tag: str = "") -> bytes:
    """The smallest request of its kind: compact header names, no Max-Forwards,
    a one-letter sent-by.  The attacker's best factor (the reply echoes and
    expands it)."""
    return f"{method} {ruri} SIP/2.0\r\nv:SIP/2.0/UDP a\r\nf:sip:a\r\nt:sip:c{to_tag}\r\ni:1\r\nCSeq:1 {method}\r\n\r\n".encode()


def kinds(proxy: tuple[str, int], sport: int, vport: int) -> list[tuple[str, bytes]]:
    host, port = proxy
    victim_route = f"<sip:{VICTIM}:{vport};lr>"
    own_route = f"<sip:{host}:{port};lr>"
    bogus_auth = ('Proxy-Authorization: Digest username="alice", realm="example.com", nonce="bogus", '
                  'uri="sip:bob@example.com", response="00000000000000000000000000000000", algorithm=SHA-256')
    return [
        ("INVITE, no credentials", request("INVITE", proxy, sport)),
        ("INVITE, bogus credentials", request("INVITE", proxy, sport, auth=bogus_auth)),
        ("REGISTER, no credentials", request("REGISTER", proxy, sport, ruri="sip:example.com")),
        ("OPTIONS to the proxy", request("OPTIONS", proxy, sport, ruri=f"sip:{host}:{port}")),
        ("OPTIONS to a user", request("OPTIONS", proxy, sport)),
        ("MESSAGE, no credentials", request("MESSAGE", proxy, sport)),
        ("SUBSCRIBE, no credentials", request("SUBSCRIBE", proxy, sport)),
        ("INVITE, Via maddr=victim", request("INVITE", proxy, sport, via_extra=f";maddr={VICTIM}").replace(f"{ATTACKER}:{sport};branch".encode(), f"{ATTACKER}:{vport};branch".encode())),
        ("INVITE, Via sent-by=victim", request("INVITE", proxy, sport).replace(f"{ATTACKER}:{sport};branch".encode(), f"{VICTIM}:{vport};branch".encode())),
        ("BYE, To tag + Route to us", request("BYE", proxy, sport, ruri=f"sip:bob@{VICTIM}:{vport}", to_tag=True, route=own_route)),
        ("BYE, To tag, no Route", request("BYE", proxy, sport, ruri=f"sip:bob@{VICTIM}:{vport}", to_tag=True)),
        ("MESSAGE, Route to victim", request("MESSAGE", proxy, sport, route=victim_route)),
        ("ACK, To tag + Route to us", request("ACK", proxy, sport, ruri=f"sip:bob@{VICTIM}:{vport}", to_tag=True, route=own_route)),
        ("forged 200 OK, 2nd Via=victim", forged_response(proxy).replace(b"{vport}", str(vport).encode())),
        ("compact INVITE", compact("INVITE")),
        ("compact REGISTER", compact("REGISTER", "sip:a")),
        ("compact OPTIONS to a user", compact("OPTIONS", "sip:a")),
        ("compact OPTIONS to the proxy", compact("OPTIONS", f"sip:{host}")),
        ("compact MESSAGE", compact("MESSAGE")),
        ("compact SUBSCRIBE", compact("SUBSCRIBE")),
        ("compact BYE, To tag", compact("BYE", to_tag=";tag=2")),
    ]


def collect(socks: list[socket.socket], window: float) -> dict[socket.socket, list[bytes]]:
    got: dict[socket.socket, list[bytes]] = {s: [] for s in socks}
    end = time.monotonic() + window
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select(socks, [], [], left)
        for s in ready:
            got[s].append(s.recv(65535))
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=4.0, help="seconds to listen after each datagram (default 4: covers 407 retransmissions at T1, 2*T1, 4*T1)")
    args = parser.parse_args()
    port = free_udp_port()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = workdir / "sipshield.toml"
        config.write_text(f'[server]\ndata_dir = "{workdir / "data"}"\nlisten = ["udp:{port}:interface=127.0.0.1"]\ndomains = ["example.com"]\n')
        twistd = Path(sys.executable).parent / "twistd"
        runner = [str(twistd)] if twistd.exists() else [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
        server = subprocess.Popen([*runner, "-n", "--pidfile=", "sipshield", "--config", str(config)], cwd=workdir,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert server.stdout is not None
            deadline = time.monotonic() + 30
            for line in server.stdout:
                if "sipshield listening on udp" in line:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("sipshield did not start")
            else:
                raise SystemExit("sipshield exited before listening")
            print(f"{'request kind':34} {'bytes in':>8} {'dgrams back':>11} {'bytes back':>10} {'factor':>6}  victim")
            worst = 0.0
            for index in range(len(kinds(("127.0.0.1", port), 0, 0))):
                # A fresh pair of sockets per kind, so that late retransmissions
                # provoked by one kind are not counted against the next.
                attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                attacker.bind((ATTACKER, 0))
                victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                victim.bind((VICTIM, 0))
                sport, vport = attacker.getsockname()[1], victim.getsockname()[1]
                name, data = kinds(("127.0.0.1", port), sport, vport)[index]
                attacker.sendto(data, ("127.0.0.1", port))
                got = collect([attacker, victim], args.window)
                back = got[attacker]
                out = sum(map(len, back))
                factor = out / len(data)
                worst = max(worst, factor)
                hit = got[victim]
                print(f"{name:34} {len(data):8} {len(back):11} {out:10} {factor:6.2f}  {len(hit)} dgrams, {sum(map(len, hit))} bytes")
                attacker.close()
                victim.close()
            print(f"worst byte factor: {worst:.2f}")
        finally:
            server.terminate()
            server.wait(timeout=15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
