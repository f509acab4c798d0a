#!/usr/bin/env python3
"""CPU per authenticated request of the nonce work, this process only against nonce-counts shared in Redis.

    python bench/bench_nonces.py [--requests 20000] [--runs 3] [--per-turn 1,10] [--redis-url URL]

What the auth stage asks of the nonces for one digest answer that verifies
(docs/scaling.md "Nonce counts"): ``check`` (the HMAC), ``begin``, ``end``,
``use`` (the local table) and, with Redis, ``use_shared``: RedisNonceCounts
queues it and sends every use of one reactor turn in one script call.  The
challenge's ``issue`` is counted too (the same on both sides).  ``--per-turn``
is how many answers arrive in one reactor turn: 1 is a quiet node (one script
call per request), 10 a busy one.  The real reactor runs the connection to a
redis-server you run (keys under ``bench-nonces:``); the figure is this
process's CPU (getrusage: waiting for the reply costs none), Redis's
own CPU is printed apart (INFO's used_cpu_user + used_cpu_sys).  getrusage splits
this process's CPU into user and system time (the system part is mostly the
loopback send, which runs the receiving side's TCP work in the sender).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from typing import Any


def redis_cpu(state: Any) -> float:
    from twisted.internet import reactor

    got: list[Any] = []
    state.link.send([("INFO", "cpu")]).addBoth(got.append)
    while not got:
        reactor.iterate(0.005)  # type: ignore[attr-defined]
    fields = dict(line.split(":", 1) for line in str(got[0][0]).splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def one_run(requests: int, per_turn: int, state: Any) -> tuple[float, float, float, int]:
    """us of this process per request (user and system), us of Redis's per request, uses not "fresh"."""
    from twisted.internet import reactor

    from sipshield.auth import NonceManager
    from sipshield.state import RedisNonceCounts

    nonces = NonceManager(b"b" * 32, reactor)  # type: ignore[arg-type]
    if state is not None:
        nonces.shared = RedisNonceCounts(reactor, state.link, prefix="bench-nonces:")  # type: ignore[arg-type]
        before = redis_cpu(state)
    sources = [f"198.51.100.{i % 250}" for i in range(per_turn)]
    answered: list[str] = []
    started = resource.getrusage(resource.RUSAGE_SELF)
    for turn in range(requests // per_turn):
        waiting = 0
        for source in sources:
            nonce = nonces.issue("example.com", source)
            assert nonces.check(nonce, "example.com", source) == "valid"
            assert nonces.begin(nonce)
            nonces.end(nonce, failed=False)
            assert nonces.use(nonce, "00000001")
            if nonces.shared is not None:
                nonces.use_shared(nonce, "00000001").addCallback(answered.append)
                waiting += 1
        while len(answered) < (turn + 1) * per_turn and waiting:
            reactor.iterate(0.005)  # type: ignore[attr-defined]
    ended = resource.getrusage(resource.RUSAGE_SELF)
    done = requests // per_turn * per_turn
    redis_us = (redis_cpu(state) - before) * 1e6 / done if state is not None else 0.0
    user, system = ((ended.ru_utime - started.ru_utime) * 1e6 / done, (ended.ru_stime - started.ru_stime) * 1e6 / done)
    return user, system, redis_us, sum(a != "fresh" for a in answered)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--per-turn", default="1,10")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--backend", choices=("both", "memory", "redis"), default="both",
                        help="one side alone, once, without warm-up: for callgrind (the difference of two --requests counts)")
    args = parser.parse_args()
    from twisted.internet import reactor

    from sipshield.config import parse_config
    from sipshield.state._redis import build_shield_state

    config = parse_config({"state": {"backend": "redis", "redis_url": args.redis_url, "key_prefix": "bench-nonces:"}})
    state, service = build_shield_state(config, reactor)
    assert service is not None
    service.startService()
    deadline = time.monotonic() + 10
    while not state.link.up():  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise SystemExit(f"no Redis at {args.redis_url}")
        reactor.iterate(0.01)  # type: ignore[attr-defined]
    for per_turn in (int(n) for n in args.per_turn.split(",")):
        best: dict[str, float] = {}
        for name, shared in (("memory", None), ("redis", state)):
            if args.backend != "both":
                if name == args.backend:
                    one_run(args.requests, per_turn, shared)
                continue
            one_run(min(args.requests, 2000), per_turn, shared)  # warm-up
            runs = [one_run(args.requests, per_turn, shared) for _ in range(args.runs)]
            us = [r[0] + r[1] for r in runs]
            best[name] = min(us)
            user, system = min((r[0], r[1]) for r in runs)
            extra = f"; Redis's CPU {min(r[2] for r in runs):.1f} us per request; not fresh: {max(r[3] for r in runs)}" if shared else ""
            print(f"{name}, {per_turn} per reactor turn: best {min(us):.1f} us (user {user:.1f} + system {system:.1f}), median "
                  f"{statistics.median(us):.1f} us of nonce work per authenticated request over {args.runs} runs of {args.requests}{extra}")
        if args.backend == "both":
            print(f"  shared nonce-counts add {best['redis'] - best['memory']:.2f} us per authenticated request in this process")
    stopped = service.stopService()
    while not stopped.called:
        reactor.iterate(0.01)  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
