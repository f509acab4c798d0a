#!/usr/bin/env python3
"""CPU per call of the shield's state, memory against Redis ([state] backend).

    python bench/bench_state.py [--calls 100000] [--runs 3] [--sources 1000] [--redis-url URL]

What the admission steps and the ban check ask of the state for one call
from a source that is not trusted (bench_call.py's caller is trusted, and
exempt from the rate limits, so it asks nothing): the ban check of each of a
call's six datagrams, and three token buckets taken for its requests (per
source, per source and method, per user), from ``--sources`` sources in turn.
With Redis (a server you run; keys under ``bench-state:``) the flush loop
runs on a clock the bench advances by 1 ms a call, and the real reactor turns
once every 50 calls (one 50 ms flush), inside the timed section: so the
figure is this process's whole share of the backend (the local answers, the
queued increments, building and pipelining each batch, reading the replies),
not the Redis server's CPU, which is printed apart (INFO's used_cpu).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from twisted.internet.task import Clock


def one_run(calls: int, sources: int, redis_url: str | None) -> tuple[float, int]:
    from twisted.internet import reactor as real

    from sipshield.config import parse_config
    from sipshield.state._redis import build_shield_state

    clock = Clock()
    clock.advance(1_000_000)
    config = parse_config({"state": {"backend": "redis", "redis_url": redis_url, "key_prefix": "bench-state:"}} if redis_url else {})
    state, service = build_shield_state(config, clock)
    if service is not None:
        service.startService()
        deadline = time.monotonic() + 10
        while not state.link.up():  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise SystemExit(f"no Redis at {redis_url}")
            real.iterate(0.01)  # type: ignore[attr-defined]
    hosts = [f"198.51.{i // 250}.{i % 250}" for i in range(sources)]
    started = time.process_time()
    for n in range(calls):
        host = hosts[n % sources]
        now = clock.seconds()
        for _ in range(6):
            if state.holds_bans():
                state.banned(host, now)
        for _ in range(3):  # INVITE, ACK, BYE
            state.take("src:" + host, 50.0, 100.0, now)
            state.take("src:" + host + ":INVITE", 5.0, 20.0, now)
            state.take("user:u" + str(n % sources), 20.0, 60.0, now)
        clock.advance(0.001)
        if service is not None and n % 50 == 49:
            real.iterate(0)  # type: ignore[attr-defined]
    spent = time.process_time() - started
    dropped = getattr(state, "dropped", 0)
    if service is not None:
        stopped = service.stopService()
        while not stopped.called:
            real.iterate(0.01)  # type: ignore[attr-defined]
    return spent * 1e6 / calls, dropped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for name, url in (("memory", None), ("redis", args.redis_url)):
        one_run(min(args.calls, 2000), args.sources, url)  # warm-up
        runs = [one_run(args.calls, args.sources, url) for _ in range(args.runs)]
        us = [r[0] for r in runs]
        results[name] = min(us)
        print(f"{name}: best {min(us):.2f} us, median {statistics.median(us):.2f} us of state work per call over {args.runs} runs of "
              f"{args.calls} calls from {args.sources} sources" + (f"; increments dropped: {max(r[1] for r in runs)}" if url else ""))
    print(f"the Redis backend adds {results['redis'] - results['memory']:.2f} us per call in this process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
