"""Throughput of the sans-IO SIP parser and serialiser.

Run ``python bench/bench_parser.py`` (about 10 s) or ``--quick`` for a short
smoke run; ``--profile`` prints a cProfile of the INVITE proxy path and
``--json FILE`` also writes the machine line and the figures to FILE (quoted by
docs/performance.md). ``--instructions`` counts the CPU instructions per
message of each case under ``valgrind --tool=callgrind`` instead (N and 10 N
messages, the difference over 9 N: start-up cancels out), a figure that does
not move with the load of a shared machine; ``--only TEXT`` keeps the cases
whose name contains TEXT. Target: >= 50,000 INVITE parse+edit+serialise per
second on one core.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import os
import platform
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipshield.message import parse_message  # noqa: E402

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds8;received=192.0.2.10\r\n"
    b"Max-Forwards: 70\r\n"
    b"Record-Route: <sip:proxy1.atlanta.example.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n"
    b"Supported: replaces, timer, 100rel\r\n"
    b"User-Agent: sipshield-bench/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)

REGISTER = (
    b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:bob@192.0.2.4>;expires=7200\r\n"
    b"Expires: 7200\r\n"
    b"User-Agent: sipshield-bench/1.0\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def _invite_proxy_edit() -> bytes:
    msg = parse_message(INVITE)
    msg.headers.prepend("Via", "SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bK-proxy-1")
    mf = msg.max_forwards
    msg.headers.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
    return msg.serialise()


def _invite_no_edit() -> bytes:
    return parse_message(INVITE).serialise()


def _invite_parse_only() -> object:
    return parse_message(INVITE)


def _invite_proxy_headers() -> object:
    msg = parse_message(INVITE)
    return (msg.top_via.branch, msg.call_id, msg.cseq, msg.to.tag, msg.max_forwards)


def _register_parse_serialise() -> bytes:
    return parse_message(REGISTER).serialise()


def _register_parse_only() -> object:
    return parse_message(REGISTER)


CASES: list[tuple[str, Callable[[], object]]] = [
    ("INVITE parse+edit+serialise (proxy)", _invite_proxy_edit),
    ("INVITE parse+serialise (no edit)", _invite_no_edit),
    ("INVITE parse only", _invite_parse_only),
    ("INVITE parse+proxy headers", _invite_proxy_headers),
    ("REGISTER parse+serialise", _register_parse_serialise),
    ("REGISTER parse only", _register_parse_only),
]
TARGET = 50_000


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rate(func: Callable[[], object], seconds: float) -> float:
    """Best of 3 runs of about seconds/3 each, in calls per second."""
    n = 1000
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            func()
        dt = time.perf_counter() - t0
        if dt > 0.05:
            break
        n *= 4
    per_run = max(1, int(n * (seconds / 3) / dt))
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(per_run):
            func()
        best = max(best, per_run / (time.perf_counter() - t0))
    return best


def _instructions(name: str, count: int) -> int:
    """Instructions callgrind counts for a process that runs case *name* *count* times."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out", sys.executable, __file__, "--loop", name, str(count)],
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict and set layouts in every run
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : ([0-9]+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{out.stderr}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about one second in total")
    parser.add_argument("--profile", action="store_true", help="cProfile the INVITE proxy path")
    parser.add_argument("--json", metavar="FILE", help="also write the machine line and the figures to FILE as JSON")
    parser.add_argument("--instructions", metavar="N", type=int, nargs="?", const=1000, help="CPU instructions per message under callgrind (N and 10 N messages, default N 1000)")
    parser.add_argument("--only", metavar="TEXT", default="", help="only the cases whose name contains TEXT")
    parser.add_argument("--loop", nargs=2, metavar=("CASE", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = [(name, func) for name, func in CASES if args.only in name]
    if args.loop:
        func = dict(CASES)[args.loop[0]]
        for _ in range(int(args.loop[1])):
            func()
        return 0
    if args.instructions:
        if shutil.which("valgrind") is None:
            raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
        n = args.instructions
        print(f"{'case':40} {'instr/msg':>10}")
        for name, _func in cases:
            per_message = (_instructions(name, 10 * n) - _instructions(name, n)) / (9 * n)
            print(f"{name:40} {per_message:10,.0f}", flush=True)
        return 0
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(lambda: [_invite_proxy_edit() for _ in range(20000)])
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return 0
    seconds = 0.15 if args.quick else 1.5
    machine = {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "date": datetime.date.today().isoformat(),
    }
    print(f"machine: {machine['cpu']} ({machine['cpus']} CPUs), {machine['python']}, {machine['date']}")
    print(f"INVITE {len(INVITE)} bytes, REGISTER {len(REGISTER)} bytes")
    print(f"{'case':40} {'msgs/s':>10} {'us/msg':>8}")
    results = {}
    for name, func in cases:
        for _ in range(2000):  # warm up caches and the allocator
            func()
        rate = _rate(func, seconds)
        results[name] = rate
        print(f"{name:40} {rate:10,.0f} {1e6 / rate:8.2f}")
    proxy = results.get(CASES[0][0], 0.0)
    if CASES[0][0] in results:
        print(f"target {TARGET:,}/s for INVITE parse+edit+serialise: {'met' if proxy >= TARGET else 'NOT met'}")
    if args.json:
        report = {
            "machine": machine,
            "quick": args.quick,
            "cases": {name: {"msgs_per_s": round(rate), "us_per_msg": round(1e6 / rate, 2)} for name, rate in results.items()},
            "target_msgs_per_s": TARGET,
            "target_met": proxy >= TARGET,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
