#!/usr/bin/env python3
"""CPU per authenticated registration through the whole proxy, in one process, without sockets.

    python bench/bench_register_cpu.py [--registrations 5000] [--runs 5] [--users 300] [--store sql|memory]
                                       [--pool threads|inline] [--credential-cache SECONDS] [--warmup 300] [--profile] [--json FILE]

The service ``twistd sipshield`` runs, built by ``makeService`` (bench_call.py's
harness: a fake UDP port, a heap-based clock), with the default pipeline, the
sql user backend on SQLite (``--users`` users, userN / pwN, HA1s for SHA-256
and MD5, encrypted at rest), the sql location store on the same SQLite file
(``--store memory`` for the memory one, what bench/bench_register.py's SIPp
run uses), digest ``algorithms = ["SHA-256", "MD5"]`` and the shield on (bans,
the scanner filter, per-source rate limits, an ACL); the UAs are not trusted.

One registration is what SIPp's register_auth_load.xml does: REGISTER ->,
<- 401 (stateless, from admission), REGISTER with Authorization ->, <- 200.
User N registers from its own address (127.0.x.y:5070), with one Call-ID and a
rising CSeq, as a phone refreshing its binding does; even users answer with
SHA-256, odd ones with MD5 (so the MD5 downgrade lock is read for half of them).
Every user registers once before the timed part (the first binding of each),
so what is timed is the refresh a registrar mostly sees.  ``--credential-cache``
sets ``[auth] credential_cache`` (default 0, off, as the config's default).

Timed: process CPU (``process_time``: every thread of the process, so the
SQLite work in the stores' thread pools counts) from the first REGISTER in
until the 200 is out, and the timers (the clock advances 0.2 ms per
registration: 5000/s, so Timer J's 32 s of finished transactions are as many
as at the target rate).  The fake client's work (digest, messages) is not
timed.

``--pool threads`` (the default) keeps the service's real thread pools; their
results come back through the bench reactor's ``callFromThread``, a queue the
bench drains until the 200 is sent (the real reactor wakes from epoll through
a pipe instead: a little more per hop).  ``--pool inline`` runs each pool job
at once in the reactor thread (tests/inline_pool.py), which is what
``--profile`` uses so that cProfile sees the SQL work too (it profiles one
thread); the difference between the two is the cost of the thread hops.

Under callgrind, instructions per registration are the difference of two runs
(``--registrations 100`` and ``--registrations 1100``, ``--runs 1``, the same
``--warmup``) over 1000: start-up cancels out.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import queue
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_call import BenchReactor, build_proxy, report  # noqa: E402
from bench_register import add_users  # noqa: E402
from digest_client import authorization, challenges  # noqa: E402
from inline_pool import call_inline  # noqa: E402

DOMAIN = "example.com"
PROXY = ("127.0.0.1", 5060)
STEP = 0.0002  # seconds of the bench clock per registration: 5000/s
STEPS = ("REGISTER", "REGISTER with credentials", "timers")


class ThreadedReactor(BenchReactor):
    """BenchReactor whose ``callFromThread`` queues, for the thread that drives the bench."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = queue.SimpleQueue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.calls.put((f, args, kw))

    def run_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Run what the pools hand back (and timers due now) until ``done()``."""
        while True:
            self.advance(0)
            if done():
                return
            try:
                f, args, kw = self.calls.get(timeout=timeout)
            except queue.Empty:
                raise SystemExit("the proxy did not answer within 10 s: the bench no longer drives it correctly") from None
            f(*args, **kw)


def settings(workdir: Path, store: str, credential_cache: float = 0.0) -> dict[str, Any]:
    return {
        "server": {"data_dir": str(workdir / "data"), "listen": [f"udp:{PROXY[1]}:interface={PROXY[0]}"], "domains": [DOMAIN]},
        "auth": {"algorithms": ["SHA-256", "MD5"], "credential_cache": credential_cache},
        "registrar": {"store": store},
        "bans": {"enabled": True},
        "scanners": {"enabled": True},
        "ratelimit": {"per_source": {"rate": 50, "burst": 100}},
        "acl": {"default": "deny", "rules": [{"action": "allow", "networks": ["127.0.0.0/8"]}]},
    }


class Phone:
    """User N's UA: one Call-ID, a rising CSeq, an algorithm of its own."""

    def __init__(self, n: int) -> None:
        self.user, self.password = f"user{n}", f"pw{n}"
        self.source = (f"127.0.{1 + n // 250}.{1 + n % 250}", 5070)
        self.algorithm = "SHA-256" if n % 2 == 0 else "MD5"
        self.call_id = f"{n}-reg@{self.source[0]}"
        self.cseq = 0
        self.branches = itertools.count()

    def register(self, credentials: str | None = None) -> bytes:
        self.cseq += 1
        auth = f"Authorization: {credentials}\r\n" if credentials else ""
        return (
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.source[0]}:5070;branch=z9hG4bK-{self.user}-{next(self.branches)};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@{DOMAIN}>;tag={self.user}t\r\nTo: <sip:{self.user}@{DOMAIN}>\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {self.cseq} REGISTER\r\n"
            f"Contact: <sip:{self.user}@{self.source[0]}:5070>\r\nExpires: 600\r\nUser-Agent: sipshield-bench\r\n"
            f"{auth}Content-Length: 0\r\n\r\n"
        ).encode()

    def answer(self, challenge: bytes) -> bytes:
        offered = {c.get("algorithm", "MD5"): c for c in challenges(challenge, "WWW-Authenticate")}
        return self.register(authorization(offered[self.algorithm], self.algorithm, self.user, self.password, "REGISTER", f"sip:{DOMAIN}"))


def inline_pools(service: Any) -> None:
    """Every pool job of the service runs at once, in the calling thread."""
    pools = [service.auth_pool, getattr(service.location, "_pool", None)]
    for pool in pools:
        if pool is not None:
            pool.callInThreadWithCallback = call_inline


def one_run(registrations: int, users: int, store: str, pool: str, profile: cProfile.Profile | None = None, credential_cache: float = 0.0) -> dict[str, float]:
    """Proxy CPU seconds for ``registrations`` authenticated registrations, by step."""
    with tempfile.TemporaryDirectory(prefix="sipshield-bench-register-") as tmp:
        workdir = Path(tmp)
        add_users(workdir, users, ("SHA-256", "MD5"))
        reactor = ThreadedReactor()
        service, _, port = build_proxy(workdir, settings=settings(workdir, store, credential_cache), reactor=reactor)
        ready = service.schema_ready
        reactor.run_until(lambda: ready.called)
        if pool == "inline":
            inline_pools(service)
        receive = port.protocol.datagramReceived
        clock = time.process_time
        spent = dict.fromkeys(STEPS, 0.0)
        phones = [Phone(n) for n in range(users)]
        sent = port.sent

        def register(phone: Phone, timed: bool) -> None:
            source = phone.source
            first = phone.register()
            if profile is not None and timed:
                profile.enable()
            started = clock()
            receive(first, source)
            spent["REGISTER"] += (clock() - started) * timed
            if profile is not None and timed:
                profile.disable()
            (challenge,) = port.take(source)
            if not challenge.startswith(b"SIP/2.0 401"):
                raise SystemExit(f"expected a 401, got {challenge[:60]!r}")
            second = phone.answer(challenge)
            if profile is not None and timed:
                profile.enable()
            started = clock()
            receive(second, source)
            reactor.run_until(lambda: source in sent)
            spent["REGISTER with credentials"] += (clock() - started) * timed
            if profile is not None and timed:
                profile.disable()
            (ok,) = port.take(source)
            if not ok.startswith(b"SIP/2.0 200"):
                raise SystemExit(f"{phone.user} ({phone.algorithm}): expected a 200, got {ok[:60]!r}")
            started = clock()
            reactor.advance(STEP)
            spent["timers"] += (clock() - started) * timed

        for phone in phones:
            register(phone, timed=False)  # each user's first binding
        for n in range(registrations):
            register(phones[n % users], timed=True)
        started = clock()
        reactor.advance(64)  # let every transaction timer run out (their cost is part of a registration's)
        spent["timers"] += clock() - started
        stopped: list[Any] = []
        service.stopService().addBoth(stopped.append)  # fires once the location store's pool has stopped too
        reactor.run_until(lambda: bool(stopped))
        return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--store", choices=("sql", "memory"), default="sql", help="[registrar] store (default: sql, on the SQLite file)")
    parser.add_argument("--pool", choices=("threads", "inline"), default="threads", help="the stores' thread pools, or every job inline")
    parser.add_argument("--credential-cache", type=float, default=0.0, help="[auth] credential_cache seconds (default 0: off)")
    parser.add_argument("--warmup", type=int, default=300, help="registrations of a first, untimed run (imports, first-use caches)")
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile (with --pool inline); print where the time goes")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.warmup:
        one_run(args.warmup, args.users, args.store, args.pool, credential_cache=args.credential_cache)
    runs = [
        {step: seconds * 1e6 / args.registrations for step, seconds in one_run(args.registrations, args.users, args.store, args.pool, credential_cache=args.credential_cache).items()}
        for _ in range(args.runs)
    ]
    report(runs, STEPS, "registration", args.registrations, args.json, f"; store {args.store}, pool {args.pool}")
    if args.profile:
        profile = cProfile.Profile()
        one_run(args.registrations, args.users, args.store, "inline", profile, args.credential_cache)
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
