#!/usr/bin/env python3
"""CPU per call through the whole proxy, in one process, without sockets.

    python bench/bench_call.py [--calls 20000] [--runs 5] [--srtp off|prefer|mandatory] [--state memory|redis --redis-url URL]
                               [--profile] [--json FILE]

The proxy is the service that ``twistd sipshield`` runs, built by
``makeService`` from the same config as bench/sipp_load.py (one UDP listener,
a static route for bench.example.com, the caller a trusted UDP source): only
the socket and the reactor's clock are replaced.  A fake UDP port records what
the proxy sends, and the reactor's clock is one the bench advances by 1 ms per
call (timers fire as they would at 1000 calls/s).  Every datagram goes in
through ``SIPDatagramProtocol.datagramReceived``, as the kernel hands it to
the listener, so parsing, admission, the transaction layer, the pipeline,
forwarding and serialising are all measured.

A call is the SIPp pair of sipp_load.py: INVITE ->, <- 180, <- 200 (echoing
Record-Route), ACK -> along the route set, BYE ->, <- 200: six datagrams into
the proxy, six out.  Only the proxy's work is timed (the fake caller and callee
build their messages outside the timed sections).  Reported: microseconds of
proxy CPU per call (best and median of ``--runs``), and with ``--profile`` the
functions where that time goes (cProfile, sorted by own time).

``--srtp`` sets ``[media] srtp`` (default: the config's default, prefer);
with ``mandatory`` both SDPs are DTLS-SRTP (UDP/TLS/RTP/SAVPF with a
fingerprint and ICE candidates), which the policy lets through, so the
figure is the policy's cost on a call it accepts.

``--state redis`` puts the shield's state in Redis (``[state] backend =
"redis"``, ``--redis-url``, default redis://127.0.0.1:6379/0, a server you
run: the bench writes keys under ``bench:``).  Its writes go out through the
real reactor, which the bench turns once every 50 calls (50 ms of the bench's
clock: one flush), inside the timed "timers" section, so the figure includes
this process's share of the Redis backend (building and pipelining the
batches, reading the replies and messages), not the Redis server's.

Unlike sipp_load.py this is repeatable on a busy machine (best of runs, one
process, no kernel in the loop), so it is the one to compare commits with; the
SIPp figures say what a real network path sustains.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import heapq
import itertools
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.base import DelayedCall

ROOT = Path(__file__).resolve().parent.parent
BENCH_DOMAIN = "bench.example.com"
PROXY = ("127.0.0.1", 5060)
UAC = ("127.0.0.1", 5070)
UAS = ("127.0.0.1", 5080)
SDP = (
    b"v=0\r\no=caller 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
DTLS_SDP = (
    b"v=0\r\no=caller 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF\r\n"
    b"m=audio 6000 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=setup:actpass\r\n"
    b"a=ice-ufrag:F7gI\r\na=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\na=candidate:1 1 udp 2130706431 127.0.0.1 6000 typ host\r\na=rtcp-mux\r\n"
)


class FakeHost:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


class FakePort:
    """What reactor.listenUDP returns, recording each datagram sent by address."""

    def __init__(self, protocol: Any, address: tuple[str, int]) -> None:
        self.protocol = protocol
        self.address = address
        self.sent: dict[tuple[str, int], list[bytes]] = {}
        protocol.makeConnection(self)

    def getHost(self) -> FakeHost:
        return FakeHost(*self.address)

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.setdefault((address[0], address[1]), []).append(data)

    def take(self, address: tuple[str, int]) -> list[bytes]:
        return self.sent.pop(address, [])

    def stopListening(self) -> None:
        return None


class BenchReactor:
    """Just enough reactor for the service: IReactorTime on a heap, a UDP "listen" that returns a FakePort.

    twisted.internet.task.Clock sorts its whole list of calls on every
    callLater and pops from the front, so with the thousands of transaction
    timers a call rate keeps pending it would cost more than the proxy does;
    the real reactor keeps its timers in a heap, and so does this one.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.ports: list[FakePort] = []
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._count = itertools.count()

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> DelayedCall:
        call = DelayedCall(self.now + delay, f, args, kw, self._cancelled, self._moved, seconds=self.seconds)
        heapq.heappush(self._heap, (call.time, next(self._count), call))
        return call

    def _cancelled(self, call: DelayedCall) -> None:
        return None  # left in the heap, skipped when it comes up

    def _moved(self, call: DelayedCall) -> None:
        heapq.heappush(self._heap, (call.time, next(self._count), call))

    def getDelayedCalls(self) -> list[DelayedCall]:
        return [call for _, _, call in self._heap if call.active()]

    def advance(self, amount: float) -> None:
        self.now += amount
        heap = self._heap
        while heap and heap[0][0] <= self.now:
            when, _, call = heapq.heappop(heap)
            if call.cancelled or call.called or call.time != when:
                continue  # cancelled, or an entry left behind by reset()
            call.called = 1
            call.func(*call.args, **call.kw)

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakePort:
        fake = FakePort(protocol, (interface or "127.0.0.1", port or PROXY[1]))
        self.ports.append(fake)
        return fake

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)

    def callWhenRunning(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


def build_proxy(workdir: Path, srtp: str | None = None, redis_url: str | None = None, *, settings: dict[str, Any] | None = None,
                reactor: BenchReactor | None = None) -> tuple[Any, BenchReactor, FakePort]:
    """The service of ``settings`` (a parsed TOML table; default: sipp_load.py's
    call config) on ``reactor`` (default: a new BenchReactor), started."""
    from sipshield.config import parse_config
    from sipshield.service import makeService

    config = parse_config(settings if settings is not None else {
        "server": {"data_dir": str(workdir / "data"), "listen": [f"udp:{PROXY[1]}:interface={PROXY[0]}"], "domains": ["example.com"]},
        "routes": [{"match_domain": BENCH_DOMAIN, "target": f"sip:{UAS[0]}:{UAS[1]};transport=udp"}],
        "auth": {"trusted_sources": [{"network": "127.0.0.1/32", "udp": True}], "trusted_role": "trunk"},
        **({"media": {"srtp": srtp}} if srtp else {}),
        **({"state": {"backend": "redis", "redis_url": redis_url, "key_prefix": "bench:"}} if redis_url else {}),
    })  # fmt: skip
    if reactor is None:
        reactor = BenchReactor()
    reactor.advance(1_000_000)
    service = makeService(config, reactor)
    service.privilegedStartService()
    service.startService()
    if redis_url:
        deadline = time.monotonic() + 10
        while not service.shield_state.link.up():
            if time.monotonic() > deadline:
                raise SystemExit(f"no Redis at {redis_url}")
            turn_real_reactor(0.01)
    # As twistd runs it (sipshield/tap.py): what start-up built is moved out
    # of the cyclic collector's view, so its passes walk only what traffic
    # allocates.
    gc.collect()
    gc.freeze()
    (port,) = reactor.ports
    return service, reactor, port


def turn_real_reactor(timeout: float = 0.0) -> None:
    """One turn of the real reactor (the Redis connections' I/O)."""
    from twisted.internet import reactor

    reactor.iterate(timeout)  # type: ignore[attr-defined]


def headers_of(data: bytes) -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")[1:]


def named(lines: list[bytes], *names: bytes) -> list[bytes]:
    wanted = tuple(n.lower() + b":" for n in names)
    return [line for line in lines if line.lower().startswith(wanted)]


def value(line: bytes) -> bytes:
    return line.split(b":", 1)[1].strip()


class Call:
    """The SIPp caller and callee of one call, building their messages as uac_call.xml / uas_answer.xml do."""

    def __init__(self, n: int, sdp: bytes = SDP) -> None:
        self.n = n
        self.sdp = sdp
        self.call_id = f"{n}-bench@127.0.0.1".encode()
        self.from_tag = f"{n}SIPpTag00".encode()
        self.to_tag = f"{n}SIPpTag01".encode()
        self.route: list[bytes] = []
        self.branch = f"z9hG4bK-{n}".encode()

    def invite(self) -> bytes:
        return (
            b"INVITE sip:bob@" + BENCH_DOMAIN.encode() + b" SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=" + self.branch + b"-1;rport\r\n"
            b"Max-Forwards: 70\r\n"
            b'From: "caller" <sip:caller@example.com>;tag=' + self.from_tag + b"\r\n"
            b"To: <sip:bob@" + BENCH_DOMAIN.encode() + b">\r\n"
            b"Call-ID: " + self.call_id + b"\r\nCSeq: 1 INVITE\r\n"
            b"Contact: <sip:caller@127.0.0.1:5070;transport=UDP>\r\nUser-Agent: sipshield-e2e\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: " + str(len(self.sdp)).encode() + b"\r\n\r\n" + self.sdp
        )

    def answer(self, request: bytes, status: bytes, with_rr: bool, body: bytes = b"") -> bytes:
        lines = headers_of(request)
        out = [b"SIP/2.0 " + status]
        out += named(lines, b"Via", b"v")
        out += named(lines, b"From", b"f")
        (to,) = named(lines, b"To", b"t")
        out.append(to if b"tag=" in to else to + b";tag=" + self.to_tag)
        out += named(lines, b"Call-ID", b"i") + named(lines, b"CSeq")
        if with_rr:
            out += named(lines, b"Record-Route")
        out.append(b"Contact: <sip:bob@127.0.0.1:5080;transport=UDP>")
        if body:
            out.append(b"Content-Type: application/sdp")
        out.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(out) + b"\r\n\r\n" + body

    def remember_route(self, ok: bytes) -> None:
        values: list[bytes] = []
        for line in named(headers_of(ok), b"Record-Route"):
            values += [v.strip() for v in value(line).split(b",")]
        self.route = list(reversed(values))

    def in_dialog(self, method: bytes, cseq: int, branch: str) -> bytes:
        route = b"Route: " + b", ".join(self.route) + b"\r\n" if self.route else b""
        return (
            method + b" sip:bob@127.0.0.1:5080;transport=UDP SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=" + self.branch + b"-" + branch.encode() + b";rport\r\n"
            + route + b"Max-Forwards: 70\r\n"
            b'From: "caller" <sip:caller@example.com>;tag=' + self.from_tag + b"\r\n"
            b"To: <sip:bob@" + BENCH_DOMAIN.encode() + b">;tag=" + self.to_tag + b"\r\n"
            b"Call-ID: " + self.call_id + b"\r\nCSeq: " + str(cseq).encode() + b" " + method + b"\r\n"
            b"Contact: <sip:caller@127.0.0.1:5070;transport=UDP>\r\nContent-Length: 0\r\n\r\n"
        )


STEPS = ("INVITE", "180", "200 INVITE", "ACK", "BYE", "200 BYE", "timers")


def one_run(calls: int, profile: cProfile.Profile | None = None, profile_step: str | None = None, srtp: str | None = None,
            redis_url: str | None = None) -> dict[str, float]:
    """Proxy CPU seconds for ``calls`` calls by step (process time of the
    proxy's own sections: each datagram in, and the timers)."""
    with tempfile.TemporaryDirectory(prefix="sipshield-bench-call-") as tmp:
        service, reactor, port = build_proxy(Path(tmp), srtp, redis_url)
        sdp = DTLS_SDP if srtp == "mandatory" else SDP
        receive = port.protocol.datagramReceived
        spent = dict.fromkeys(STEPS, 0.0)
        clock = time.process_time
        failures = 0

        def proxy(step: str, data: bytes, source: tuple[str, int]) -> None:
            profiled = profile is not None and profile_step in (None, step)
            if profiled:
                profile.enable()  # type: ignore[union-attr]
            started = clock()
            receive(data, source)
            spent[step] += clock() - started
            if profiled:
                profile.disable()  # type: ignore[union-attr]

        for n in range(calls):
            call = Call(n, sdp)
            proxy("INVITE", call.invite(), UAC)
            forwarded = port.take(UAS)
            port.take(UAC)  # 100 Trying
            if len(forwarded) != 1:
                failures += 1
                continue
            invite = forwarded[0]
            proxy("180", call.answer(invite, b"180 Ringing", with_rr=True), UAS)
            proxy("200 INVITE", call.answer(invite, b"200 OK", with_rr=True, body=sdp), UAS)
            up = port.take(UAC)
            if len(up) != 2 or not up[1].startswith(b"SIP/2.0 200"):
                failures += 1
                continue
            call.remember_route(up[1])
            proxy("ACK", call.in_dialog(b"ACK", 1, "ack"), UAC)
            proxy("BYE", call.in_dialog(b"BYE", 2, "bye"), UAC)
            down = port.take(UAS)
            if len(down) != 2 or not down[1].startswith(b"BYE"):
                failures += 1
                continue
            proxy("200 BYE", call.answer(down[1], b"200 OK", with_rr=False), UAS)
            if not any(m.startswith(b"SIP/2.0 200") for m in port.take(UAC)):
                failures += 1
            started = clock()
            profiled = profile is not None and profile_step in (None, "timers")
            if profiled:
                profile.enable()  # type: ignore[union-attr]
            reactor.advance(0.001)
            if redis_url and n % 50 == 49:
                turn_real_reactor()
            if profiled:
                profile.disable()  # type: ignore[union-attr]
            spent["timers"] += clock() - started
        started = clock()
        reactor.advance(64)  # let every transaction timer run out (their cost is part of a call's)
        if redis_url:
            turn_real_reactor()
        spent["timers"] += clock() - started
        live = service.transactions.server_load("")[0] + len(service.core.contexts)
        stopped = service.stopService()
        while redis_url and not stopped.called:
            turn_real_reactor(0.01)
        if failures:
            raise SystemExit(f"{failures} of {calls} calls did not complete: the bench no longer drives the proxy correctly")
        if live:
            print(f"note: {live} transactions or contexts still live after the timers ran out", file=sys.stderr)
        return spent


def report(runs: list[dict[str, float]], steps: tuple[str, ...], what: str, count: int, json_path: Path | None, note: str = "") -> None:
    """Print the best and median CPU per *what* over *runs* (us per step), and the best per step;
    write them to *json_path* (``--json``) as well."""
    results = [sum(run.values()) for run in runs]
    best, median = min(results), statistics.median(results)
    print(f"proxy CPU per {what}: best {best:.1f} us, median {median:.1f} us over {len(runs)} runs of {count} "
          f"({1e6 / best:.0f} {what}s/s on one core at best{note})")  # fmt: skip
    per_step = {step: min(run[step] for run in runs) for step in steps}
    print(f"best per step (us per {what}): " + ", ".join(f"{step} {us:.1f}" for step, us in per_step.items()))
    if json_path:
        json_path.write_text(json.dumps({"count": count, "runs": runs, "best_us": best, "median_us": median, "best_steps_us": per_step}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile; print where the time goes")
    parser.add_argument("--profile-step", choices=STEPS, help="profile only this step of each call")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--srtp", choices=("off", "prefer", "mandatory"), help="[media] srtp (default: the config default)")
    parser.add_argument("--state", choices=("memory", "redis"), default="memory", help="[state] backend (default: memory)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="with --state redis: the Redis server to use")
    args = parser.parse_args()
    redis_url = args.redis_url if args.state == "redis" else None
    one_run(min(args.calls, 500), srtp=args.srtp, redis_url=redis_url)  # warm-up: imports, first-use caches
    runs = [
        {step: seconds * 1e6 / args.calls for step, seconds in one_run(args.calls, srtp=args.srtp, redis_url=redis_url).items()}
        for _ in range(args.runs)
    ]
    report(runs, STEPS, "call", args.calls, args.json)
    if args.profile:
        profile = cProfile.Profile()
        one_run(args.calls, profile, args.profile_step, args.srtp, redis_url)
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
