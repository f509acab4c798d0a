#!/usr/bin/env python3
"""Bindings in the Redis location store: memory per binding, time to write and look them up.

    python bench/bench_bindings.py [--bindings 100000] [--concurrency 64] [--registers 20000]

Starts a private redis-server (ephemeral port, temporary directory, no
persistence), puts ``--bindings`` bindings into it through the real
RedisLocationStore (``update`` with the registrar's limits: the Lua script a
REGISTER runs), one per AOR, each with what a phone's REGISTER leaves (a
32-character Call-ID, a source, a User-Agent, an identity, a +sip.instance
on every other one), and reads INFO before and after:

- ``used_memory`` (INFO memory): bytes per binding, every index included;
- ``total_net_input_bytes`` / ``total_net_output_bytes`` (INFO stats): bytes
  between this process and Redis per write and per lookup;
- ``used_cpu_user + used_cpu_sys`` (INFO cpu): the Redis server's CPU per
  write and per lookup.

Then looks every AOR up (``bindings``), and runs ``--registers`` whole
REGISTER refreshes through the Registrar stage (its two round trips:
read, then the script, which answers with the bindings the 200 lists), each with ``--concurrency`` calls in flight; and the
latency of one call at a time (p50/p99 of 2000).  The figures are of one
process on loopback: the Redis server and this process share the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _info(store: Any, section: str) -> dict[str, str]:
    from twisted.internet import reactor

    box: list[Any] = []
    store.link.send([("INFO", section)]).addBoth(box.append)
    while not box:
        reactor.iterate(0.001)  # type: ignore[attr-defined]
    if not isinstance(box[0], list):
        box[0].raiseException()
    return dict(line.split(":", 1) for line in str(box[0][0]).splitlines() if ":" in line and not line.startswith("#"))


def _counters(store: Any) -> tuple[int, int, int, float]:
    memory, stats, cpu = _info(store, "memory"), _info(store, "stats"), _info(store, "cpu")
    return (int(memory["used_memory"]), int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"]),
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))


def _drive(calls: int, concurrency: int, start: Callable[[int], Any]) -> float:
    """Run start(i) for every i with *concurrency* in flight; wall seconds."""
    from twisted.internet import reactor

    failures: list[Any] = []
    state = {"next": 0, "done": 0}

    def launch() -> None:
        i = state["next"]
        state["next"] = i + 1
        d = start(i)
        d.addErrback(failures.append)
        d.addBoth(finished)

    def finished(_: Any) -> None:
        state["done"] += 1
        if state["next"] < calls:
            launch()

    began = time.perf_counter()
    for _ in range(min(concurrency, calls)):
        launch()
    while state["done"] < calls:
        reactor.iterate(0)  # type: ignore[attr-defined]
    took = time.perf_counter() - began
    if failures:
        failures[0].raiseException()
    return took


def _latency(calls: int, start: Callable[[int], Any]) -> tuple[float, float]:
    samples = []
    for i in range(calls):
        began = time.perf_counter()
        _drive(1, 1, lambda _, i=i: start(i))
        samples.append(time.perf_counter() - began)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(len(samples) * 0.99)] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bindings", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--registers", type=int, default=20_000)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")

    from twisted.internet import reactor

    from sipshield.message import parse_message
    from sipshield.routing import RequestContext
    from sipshield.routing._registrar import Registrar
    from sipshield.state import Binding, BindingLimits
    from sipshield.state._redis_location import redis_location_store

    workdir = Path(tempfile.mkdtemp(prefix="bench-bindings-"))
    port = _free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        store = redis_location_store(f"redis://127.0.0.1:{port}/0", "bench:", reactor)
        store.start()
        deadline = time.monotonic() + 10
        while not store.link.up():
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not come up")
            reactor.iterate(0.01)  # type: ignore[attr-defined]
        n = args.bindings
        now = reactor.seconds()

        def binding(i: int, cseq: int = 1) -> Binding:
            return Binding(
                aor=f"sip:user{i}@example.com", contact=f"sip:user{i}@198.51.{i // 250 % 250}.{i % 250}:5060;transport=udp",
                expires_at=now + 3600, call_id=f"{uuid.UUID(int=i).hex}@198.51.100.1", cseq=cseq,
                source=("UDP", f"198.51.{i // 250 % 250}.{i % 250}", 5060 + i % 1000),
                instance=f'"<urn:uuid:{uuid.UUID(int=i)}>"' if i % 2 else None, reg_id=1 if i % 2 else None,
                user_agent="Yealink SIP-T46S 66.86.0.15", identity=f"user{i}@example.com",
            )

        def write(i: int) -> Any:
            b = binding(i)
            return store.update(b.aor, (), [b], BindingLimits(16, 32, b.identity, b.call_id, b.cseq))

        before = _counters(store)
        cpu = time.process_time()
        write_s = _drive(n, args.concurrency, write)
        write_cpu = (time.process_time() - cpu) / n * 1e6
        after = _counters(store)
        memory = (after[0] - before[0]) / n
        per_write = ((after[1] - before[1]) / n, (after[2] - before[2]) / n, (after[3] - before[3]) / n * 1e6)
        cpu = time.process_time()
        lookup_s = _drive(n, args.concurrency, lambda i: store.bindings(f"sip:user{i}@example.com"))
        lookup_cpu = (time.process_time() - cpu) / n * 1e6
        looked = _counters(store)
        per_lookup = ((looked[1] - after[1]) / n, (looked[2] - after[2]) / n, (looked[3] - after[3]) / n * 1e6)
        write_lat = _latency(2000, lambda i: store.update(binding(n + i).aor, (), [binding(n + i)], None))
        lookup_lat = _latency(2000, lambda i: store.bindings(f"sip:user{i}@example.com"))

        class Flow:
            transport_name = "UDP"
            reliable = False
            local = ("127.0.0.1", 5060)

            def __init__(self, i: int) -> None:
                self.remote = (f"198.51.{i // 250 % 250}.{i % 250}", 5060 + i % 1000)

        def register_with(registrar: Any) -> Callable[[int], Any]:
            return lambda i: register(registrar, i)

        def register(registrar: Any, i: int) -> Any:
            i %= n
            data = (f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK{i}r\r\nMax-Forwards: 70\r\n"
                    f"From: <sip:user{i}@example.com>;tag=t{i}\r\nTo: <sip:user{i}@example.com>\r\nCall-ID: {uuid.UUID(int=i).hex}@198.51.100.1\r\n"
                    f"CSeq: {2 + i} REGISTER\r\nContact: <sip:user{i}@198.51.{i // 250 % 250}.{i % 250}:5060;transport=udp>\r\nExpires: 3600\r\n"
                    "User-Agent: Yealink SIP-T46S 66.86.0.15\r\nContent-Length: 0\r\n\r\n")
            context = RequestContext(parse_message(data.encode()), Flow(i))  # type: ignore[arg-type]
            context.identity = f"user{i}@example.com"
            from twisted.internet import defer

            def answered(decision: Any) -> None:
                if decision.status != 200:
                    raise RuntimeError(f"REGISTER {i}: {decision.status} {decision.reason}")

            return defer.maybeDeferred(registrar.process, context).addCallback(answered)

        regs = min(args.registers, n)
        before_reg = _counters(store)
        register_cpu = time.process_time()
        register_s = _drive(regs, args.concurrency, register_with(Registrar(store, ["example.com"], reactor, store_timeout=30.0)))
        register_cpu = time.process_time() - register_cpu
        after_reg = _counters(store)
        per_register = ((after_reg[1] - before_reg[1]) / regs, (after_reg[2] - before_reg[2]) / regs, (after_reg[3] - before_reg[3]) / regs * 1e6)
        count = store.count()
        box: list[Any] = []
        count.addBoth(box.append)
        while not box:
            reactor.iterate(0.001)  # type: ignore[attr-defined]
        print(f"bindings: {n} written, {box[0]} held; used_memory {before[0]} -> {after[0]} bytes: {memory:.0f} bytes per binding")
        print(f"write  (update script, caps checked): {n / write_s:,.0f}/s with {args.concurrency} in flight; one at a time p50 {write_lat[0]:.3f} ms, p99 {write_lat[1]:.3f} ms; "
              f"{per_write[0]:.0f} bytes to Redis, {per_write[1]:.0f} back; CPU {write_cpu:.0f} us in this process, {per_write[2]:.1f} us in Redis")
        print(f"lookup (HGETALL): {n / lookup_s:,.0f}/s with {args.concurrency} in flight; one at a time p50 {lookup_lat[0]:.3f} ms, p99 {lookup_lat[1]:.3f} ms; "
              f"{per_lookup[0]:.0f} bytes to Redis, {per_lookup[1]:.0f} back; CPU {lookup_cpu:.0f} us in this process, {per_lookup[2]:.1f} us in Redis")
        print(f"REGISTER refresh through the Registrar (2 round trips: read, script): {regs / register_s:,.0f}/s with {args.concurrency} in flight, "
              f"{register_cpu / regs * 1e6:.0f} us CPU each in this process; {per_register[0]:.0f} bytes to Redis, {per_register[1]:.0f} back; "
              f"Redis CPU {per_register[2]:.1f} us")
        # The same on the memory store (the default: one process, nothing shared), for comparison.
        from sipshield.state import MemoryLocationStore

        memory_store = MemoryLocationStore(reactor)
        for i in range(n):
            memory_store.put(binding(i))
        cpu = time.process_time()
        memory_registrar = Registrar(memory_store, ["example.com"], reactor)
        for i in range(regs):  # each answered at once: no reactor turn needed
            register(memory_registrar, i)
        memory_register_cpu = (time.process_time() - cpu) / regs * 1e6
        cpu = time.process_time()
        for i in range(n):
            memory_store.bindings_now(f"sip:user{i}@example.com")
        memory_lookup_cpu = (time.process_time() - cpu) / n * 1e6
        print(f"memory store, for comparison: REGISTER refresh through the Registrar {memory_register_cpu:.0f} us CPU each; "
              f"lookup (bindings_now, what the location stage calls) {memory_lookup_cpu:.1f} us")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (redis-server and this process share it)")
        store.stop()
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
