#!/usr/bin/env python3
"""The banned-source drop path, in one process, without sockets.

    python bench/bench_drop.py [--datagrams 200000] [--runs 5] [--bans 10000]

The service of bench/bench_call.py (built by ``makeService``, a fake UDP
port, the ban policy of the default ``[bans]``), fed through
``SIPDatagramProtocol.datagramReceived`` as the kernel hands datagrams to
the listener:

* ``banned``: INVITEs from a banned source, with ``--bans`` bans held in all
  (the target: at least 50,000 datagrams/s dropped on one core, issue 9);
* ``parse+401``: for scale, the same INVITE from a source that is not banned,
  which is parsed, admitted and answered with a stateless 407;
* ``filter``: the cost the ban check adds to every datagram of a source that
  is not banned, with no ban held and with ``--bans`` held
  (``ProxyCore.refuse_source`` alone);
* ``shield admission steps``: the scanner and rate-limit steps on one parsed
  request from a source that is not exempt (the issue's target: under 5 % of
  a call's CPU, bench/bench_call.py);
* ``overload step``: the overload shedding step while not overloaded (what
  every request pays), and a flood from 5000 distinct sources fed through
  the listener, answered (407) when not overloaded and dropped as unproven
  when overloaded;
* ``ratelimit stage``: the per-user buckets on one authenticated request.

Reported: datagrams per second (best of ``--runs``) and microseconds each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_call import build_proxy  # noqa: E402

BANNED = ("198.51.100.66", 5060)
OTHER = ("198.51.100.7", 5060)
INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.66:5060;branch=z9hG4bK-flood;rport\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: flood@x\r\n"
    b"CSeq: 1 INVITE\r\nContact: <sip:a@198.51.100.66>\r\nContent-Length: 0\r\n\r\n"
)


def rate(fn: Any, count: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn(count)
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datagrams", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bans", type=int, default=10_000, help="bans held in all while measuring")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        service, reactor, port = build_proxy(Path(tmp))
        protocol = port.protocol
        core = service.core
        bans = service.bans
        assert bans is not None, "[bans] is on by default"
        received = protocol.datagramReceived
        refuse = core.refuse_source

        def filter_only(n: int) -> None:
            host = OTHER[0]
            for _ in range(n):
                refuse(host)

        rows: list[tuple[str, float]] = [("filter, no ban held", rate(filter_only, args.datagrams, args.runs))]
        bans.ban(BANNED[0], "bench")
        for n in range(args.bans - 1):
            bans.ban(f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", "bench")
        rows.append((f"filter, {args.bans} bans held", rate(filter_only, args.datagrams, args.runs)))

        def banned(n: int) -> None:
            for _ in range(n):
                received(INVITE, BANNED)

        rows.append((f"banned source dropped ({args.bans} bans held)", rate(banned, args.datagrams, args.runs)))
        assert not port.sent, "a banned source got an answer"

        def answered(n: int) -> None:
            for _ in range(n):
                received(INVITE, OTHER)
            port.sent.clear()

        rows.append(("not banned: parsed, admitted, stateless 407", rate(answered, max(1, args.datagrams // 20), args.runs)))

        # The shield's admission steps alone (scanner User-Agent check, two
        # token buckets) on a parsed INVITE from a source that is not exempt,
        # each from its own address so that no bucket runs dry.
        from sipshield.message import parse_message
        from sipshield.security import RateLimiter, ScannerBlock

        steps = [s for s in core.admission if isinstance(s, (ScannerBlock, RateLimiter))]
        assert len(steps) == 2, "[scanners] and [ratelimit] are on by default"
        request = parse_message(INVITE)

        class Flow:
            reliable = secure = authenticated = False
            transport_name = "UDP"
            remote = ("198.51.100.7", 5060)

            def peer_certificate(self) -> None:
                return None

        flows = []
        for n in range(1000):
            flow = Flow()
            flow.remote = (f"198.51.{n >> 8}.{n & 255}", 5060)
            flows.append(flow)

        def shield(n: int) -> None:
            for i in range(n):
                flow = flows[i % 1000]
                for step in steps:
                    step.admission(request, flow)
            reactor.advance(1.0)  # refill

        rows.append(("shield admission steps on one request (scanners + rate limits)", rate(shield, args.datagrams, args.runs)))

        # Overload shedding: its step while not overloaded (the hot path:
        # one attribute test), and a flood from distinct UDP sources while
        # overloaded (parsed, then dropped as unproven) beside the same
        # flood answered (each a 407) when not.
        from sipshield.proxy import RequestContext
        from sipshield.security import ReactorLag, UserRateLimiter

        shedding = service.overload
        assert shedding is not None, "[limits] overload_lag is on by default"
        for monitor in [s for s in service if isinstance(s, ReactorLag)]:
            monitor.stopService()  # the fake clock jumps: overload is entered and left by hand here
        if shedding.overloaded:
            shedding.leave(0.0, reactor.seconds())

        def calm(n: int) -> None:
            admission = shedding.admission
            for i in range(n):
                admission(request, flows[i % 1000])

        rows.append(("overload step, not overloaded", rate(calm, args.datagrams, args.runs)))
        spread = [(INVITE.replace(b"198.51.100.66", f"203.0.{n >> 8 & 255}.{n & 255}".encode()), (f"203.0.{n >> 8 & 255}.{n & 255}", 5060))
                  for n in range(5000)]

        def spread_flood(n: int) -> None:
            for i in range(n):
                data, source = spread[i % 5000]
                received(data, source)
            port.sent.clear()

        count = max(5000, args.datagrams // 20)
        rows.append(("spread flood, not overloaded: parsed, stateless 407", rate(spread_flood, count, args.runs)))
        shedding.enter(1.0, reactor.seconds())
        reactor.advance(2.0)
        for data, source in spread[:1500]:
            received(data, source)
        shedding.roll(reactor.seconds())  # the window of 1500 distinct sources: spread
        rows.append(("spread flood, overloaded: parsed, dropped unproven", rate(spread_flood, count, args.runs)))
        shedding.leave(0.0, reactor.seconds())

        # The per-user buckets of the ratelimit stage on one authenticated request.
        (user_limits,) = [s for s in service.pipeline.stages if isinstance(s, UserRateLimiter)]
        contexts = []
        for n in range(1000):
            context = RequestContext(request, flows[n])
            context.user, context.identity = (f"u{n}", "example.com"), f"sip:u{n}@example.com"
            contexts.append(context)

        def per_user(n: int) -> None:
            process = user_limits.process
            for i in range(n):
                process(contexts[i % 1000])
            reactor.advance(1.0)  # refill

        rows.append(("ratelimit stage (per-user bucket) on one authenticated request", rate(per_user, args.datagrams, args.runs)))
        print("| path | datagrams/s | us each |")
        print("|---|---|---|")
        for name, per_second in rows:
            print(f"| {name} | {per_second:,.0f} | {1e6 / per_second:.2f} |")
        service.stopService()
    return 0


if __name__ == "__main__":
    sys.exit(main())
