#!/usr/bin/env python3
"""Memory kept per finished transaction while it waits out its timers, and per flood request.

    python bench/bench_memory.py [--calls 2000] [--flood 2000] [--top 12] [--json FILE]

The proxy is bench/bench_call.py's: the service ``twistd sipshield`` runs
(``makeService``, the default pipeline and the shield), a fake UDP port and a
clock the bench moves (bench_call's heap-based ``BenchReactor``: an
``IReactorTime`` as task.Clock is, without Clock's sort per callLater).  The
clock moves 1 ms per call, as at 1000 calls/s, so every transaction a phase
finished is still waiting out Timer J, K, L or M when the phase is measured.

Phases, each measured on its own after ``gc.collect()``:

* ``calls``: N record-routed calls (INVITE, 100, 180, 200, ACK, BYE, 200) from
  the trusted caller;
* ``407``, ``401``: N INVITEs and N REGISTERs without credentials, each from
  its own untrusted address (a flood from many sources): challenged
  statelessly by admission;
* ``503``: N INVITEs over ``[limits] max_transactions`` (set to 0 for the
  phase): refused statelessly;
* ``404``: N INVITEs (and their ACKs) to a user nobody registered, answered
  by the pipeline through an INVITE server transaction.

Per phase: the bytes tracemalloc sees allocated and still held (the snapshot
difference, over N), the top allocation lines, and the transactions left in
the tables by kind (type and state) with the bytes reachable from each that
were allocated during the phase (``sys.getsizeof`` over the object graph,
each object counted once, stopping at objects older than the phase: the
layer, the stages, the listener) and the types that make them up.  At the end
the clock runs past every timer: what is still held then is a leak.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_call  # noqa: E402  (the harness: build_proxy, Call, addresses)
from bench_call import BENCH_DOMAIN, UAC, UAS, Call  # noqa: E402

from sipshield.transaction._timers import _Queue  # noqa: E402

FLOOD_PORT = 5060


def _flood_source(n: int) -> tuple[str, int]:
    return (f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255 or 1}", FLOOD_PORT)


def _request(method: bytes, uri: bytes, source: tuple[str, int], n: int, to_tag: bytes = b"", cseq_method: bytes = b"") -> bytes:
    host = source[0].encode()
    to = b"<" + uri + b">" + (b";tag=" + to_tag if to_tag else b"")
    return (
        method + b" " + uri + b" SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP " + host + b":" + str(source[1]).encode() + b";branch=z9hG4bK-flood-" + str(n).encode() + b";rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:user" + str(n).encode() + b"@example.com>;tag=f" + str(n).encode() + b"\r\n"
        b"To: " + to + b"\r\n"
        b"Call-ID: flood-" + str(n).encode() + b"@" + host + b"\r\n"
        b"CSeq: 1 " + (cseq_method or method) + b"\r\n"
        b"Contact: <sip:user@" + host + b":5060>\r\nContent-Length: 0\r\n\r\n"
    )


class Bench:
    """One proxy and the phases driven through it."""

    def __init__(self, workdir: Path) -> None:
        self.service, self.reactor, self.port = bench_call.build_proxy(workdir)
        self.receive = self.port.protocol.datagramReceived
        self.layer = self.service.transactions
        self.core = self.service.core
        self.serial = 0

    def tick(self) -> None:
        self.reactor.advance(0.001)
        self.port.sent.clear()

    def call(self) -> None:
        self.serial += 1
        call = Call(self.serial)
        self.receive(call.invite(), UAC)
        (invite,) = self.port.take(UAS)
        self.receive(call.answer(invite, b"180 Ringing", with_rr=True), UAS)
        self.receive(call.answer(invite, b"200 OK", with_rr=True, body=call.sdp), UAS)
        up = self.port.take(UAC)
        if not up or not up[-1].startswith(b"SIP/2.0 200"):
            raise SystemExit("the call was not answered: the bench no longer drives the proxy correctly")
        call.remember_route(up[-1])
        self.receive(call.in_dialog(b"ACK", 1, "ack"), UAC)
        self.receive(call.in_dialog(b"BYE", 2, "bye"), UAC)
        bye = [m for m in self.port.take(UAS) if m.startswith(b"BYE")]
        if not bye:
            raise SystemExit("the BYE was not forwarded")
        self.receive(call.answer(bye[0], b"200 OK", with_rr=False), UAS)
        self.tick()

    def challenge(self, method: bytes) -> None:
        self.serial += 1
        source = _flood_source(self.serial)
        uri = b"sip:bob@" + BENCH_DOMAIN.encode() if method == b"INVITE" else b"sip:example.com"
        self.receive(_request(method, uri, source, self.serial), source)
        answer = self.port.take(source)
        if not answer or not answer[0].startswith((b"SIP/2.0 407", b"SIP/2.0 401")):
            raise SystemExit(f"{method.decode()} from {source[0]} got {answer[:1]!r}, not a challenge")
        self.tick()

    def over_cap(self) -> None:
        self.serial += 1
        self.receive(_request(b"INVITE", b"sip:bob@" + BENCH_DOMAIN.encode(), UAC, self.serial), UAC)
        answer = self.port.take(UAC)
        if not answer or not answer[0].startswith(b"SIP/2.0 503"):
            raise SystemExit(f"an INVITE over the cap got {answer[:1]!r}, not 503")
        self.tick()

    def not_found(self) -> None:
        self.serial += 1
        uri = b"sip:nobody" + str(self.serial).encode() + b"@example.com"
        self.receive(_request(b"INVITE", uri, UAC, self.serial), UAC)
        answer = [m for m in self.port.take(UAC) if not m.startswith(b"SIP/2.0 100")]
        if not answer or answer[0][8:9] not in (b"4", b"5", b"6"):
            raise SystemExit(f"an INVITE to nobody got {answer[:1]!r}, not a 4xx-6xx")
        to = [line for line in answer[0].split(b"\r\n") if line.lower().startswith((b"to:", b"t:"))][0]
        to_tag = to.split(b"tag=", 1)[1] if b"tag=" in to else b""
        self.receive(_request(b"ACK", uri, UAC, self.serial, to_tag=to_tag), UAC)
        self.tick()

    def drain(self) -> None:
        """Let every transaction timer run out, a tenth of a second at a time
        (a 64 s jump at once reads as a stalled reactor: overload)."""
        for _ in range(650):
            self.reactor.advance(0.1)
        self.port.sent.clear()

    def kinds(self) -> list[Any]:
        return [*self.layer._servers.values(), *self.layer._clients.values()]


def _kind(txn: Any) -> str:
    return f"{type(txn).__name__.replace('Transaction', '')} {txn.state}"


def _walk(roots: list[Any], claimed: set[int]) -> tuple[int, Counter[str]]:
    """Bytes of the objects reachable from *roots* that were allocated while
    tracemalloc traced (newer than the phase's start), each counted once."""
    size = 0
    types: Counter[str] = Counter()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in claimed or isinstance(obj, (type, _Queue)):
            continue  # a timer queue is shared by every transaction with a timer of its delay
        if tracemalloc.get_object_traceback(obj) is None:
            continue  # older than the phase: shared (the layer, a stage, the listener)
        claimed.add(id(obj))
        n = sys.getsizeof(obj)
        size += n
        types[type(obj).__name__] += n
        stack.extend(gc.get_referents(obj))
    return size, types


def _kinds(bench: Bench, txns_before: set[int]) -> dict[str, Any]:
    """The transactions the phase left waiting, by kind, with the bytes each keeps
    (a function of its own: no reference to a transaction outlives it)."""
    by_kind: dict[str, list[Any]] = defaultdict(list)
    for txn in bench.kinds():
        if id(txn) not in txns_before:
            by_kind[_kind(txn)].append(txn)
    claimed: set[int] = set()
    kinds = {}
    # Server kinds first: an object two transactions share (the caller's
    # flow, which the INVITE's client transaction forwards 2xx to) is counted
    # once, with the transaction of the request that brought it.
    for kind, txns in sorted(by_kind.items(), key=lambda item: ("Server" not in item[0], item[0])):
        size, types = _walk(txns, claimed)
        kinds[kind] = {"count": len(txns), "bytes_each": size / len(txns), "types": {t: round(b / len(txns)) for t, b in types.most_common(8)}}
    return kinds


def measure(bench: Bench, name: str, count: int, step: Any, top: int) -> dict[str, Any]:
    gc.collect()
    before = tracemalloc.take_snapshot()
    txns_before = {id(t) for t in bench.kinds()}
    for _ in range(count):
        step()
    gc.collect()
    after = tracemalloc.take_snapshot()
    # Not the proxy's: tracemalloc's own, the bench's, and the harness's reactor
    # (its heap keeps cancelled calls, Timer C's, until they come up).
    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, bench_call.__file__)]
    stats = after.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
    held = sum(s.size_diff for s in stats)
    kinds = _kinds(bench, txns_before)
    # Then every timer runs out: what the phase still holds after that outlives its requests.
    live = len(bench.kinds())
    bench.drain()
    gc.collect()
    gone = tracemalloc.take_snapshot()
    left_stats = gone.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
    left = sum(s.size_diff for s in left_stats)
    report = {
        "phase": name, "count": count, "held_bytes": held, "held_per_request": held / count, "kinds": kinds,
        "left_bytes": left, "left_per_request": left / count, "left_transactions": len(bench.kinds()) + len(bench.core.contexts),
        "top": [(_where(s), s.size_diff, s.count_diff) for s in stats[:top]],
        "top_left": [(_where(s), s.size_diff, s.count_diff) for s in left_stats[:top] if s.size_diff > 0],
    }  # fmt: skip
    print(f"\n== {name}: {count} x; held {held / 1024:.0f} KiB = {held / count:.0f} B per request (tracemalloc), {live} transactions waiting")
    if kinds:
        print(f"  {'transaction kind (type state)':40} {'count':>6} {'B each':>8}  made of (B each)")
        for kind, k in kinds.items():
            made = ", ".join(f"{t} {b}" for t, b in k["types"].items())
            print(f"  {kind:40} {k['count']:>6} {k['bytes_each']:>8.0f}  {made}")
    print("  top lines held (size diff, count diff):")
    for where, size, n in report["top"]:
        print(f"    {size / count:>7.1f} B/req {n / count:>6.2f} obj/req  {where}")
    print(f"  after every timer ran out: {report['left_transactions']} transactions or contexts left; "
          f"still held {left / 1024:.0f} KiB = {left / count:.0f} B per request")  # fmt: skip
    for where, size, n in report["top_left"]:
        print(f"    {size / count:>7.1f} B/req {n / count:>6.2f} obj/req  {where}")
    return report


def _where(stat: Any) -> str:
    return str(stat.traceback).replace(str(Path(__file__).resolve().parent.parent) + "/", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipshield-bench-memory-") as tmp:
        bench = Bench(Path(tmp))
        # Warm-up: imports, first-use caches, the timer queues of every delay.
        for _ in range(200):
            bench.call()
        for _ in range(50):
            bench.challenge(b"INVITE")
            bench.challenge(b"REGISTER")
            bench.not_found()
        bench.drain()
        gc.collect()
        tracemalloc.start(1)
        reports = [measure(bench, "calls", args.calls, bench.call, args.top)]
        reports.append(measure(bench, "407 (INVITE, no credentials, one source each)", args.flood, lambda: bench.challenge(b"INVITE"), args.top))
        reports.append(measure(bench, "401 (REGISTER, no credentials, one source each)", args.flood, lambda: bench.challenge(b"REGISTER"), args.top))
        cap = bench.core.max_transactions
        bench.core.max_transactions = 0
        reports.append(measure(bench, "503 (over max_transactions)", args.flood, bench.over_cap, args.top))
        bench.core.max_transactions = cap
        reports.append(measure(bench, "404 (INVITE to nobody, server transaction, ACK)", args.flood, bench.not_found, args.top))
        print("\nsummary (B per request): phase, held while its timers run, left after them")
        for r in reports:
            print(f"  {r['phase']:50} {r['held_per_request']:>7.0f} {r['left_per_request']:>7.0f}")
        remaining = sum(r["left_transactions"] for r in reports)
        tracemalloc.stop()
        bench.service.stopService()
    if args.json:
        args.json.write_text(json.dumps({"phases": reports}, indent=1))
    return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main())
