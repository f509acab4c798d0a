"""Worst-case inputs: parse + process time per KB must stay flat from 8 KB to 64 KB.

    python bench/bench_worst_case.py [--sizes 8,16,32,64] [--budget 0.3] [--max-ratio 3] [--only NAME] [--max-header-values N]

Each family below is one shape of hostile input an attacker can send in a single datagram (many
Route or Via values, many header lines, a long line, a deep comma list, a huge quoted string, many
parameters...), grown to each size. One input is parsed with the configured limits and handed to
the real proxy core of a service built from the default configuration (default stages, digest
auth, a data_dir of its own, time from a task.Clock, a recording dispatcher instead of sockets),
exactly as the UDP transport does: ``parse_message`` then ``message_received``, or ``bad_message``
when parsing fails. Every run gets a fresh Call-ID and branch so no transaction absorbs it.

Reported per family: what the proxy answered, the time per KB at each size (best of several runs
within --budget seconds) and the ratio of the largest size's per-KB time to the smallest's. A
ratio above --max-ratio means the work grows faster than the input (super-linear): the verdict
says so and the exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from test_core import RecordingFlow  # noqa: E402
from test_no_open_relay import make_service  # noqa: E402

from sipshield.message import ParseError, parse_message  # noqa: E402

ATTACKER = ("127.0.0.2", 5070)
PROXY = "127.0.0.1:5060"
# Replaced per run by a counter of the same width, so the size does not move.
UNIQUE = "U0000000"


def _service(data_dir: Path) -> tuple[Any, Any]:
    """The service of the no-open-relay tests: default config and stages, a
    recording dispatcher instead of sockets, time from a task.Clock."""
    service, _ = make_service(data_dir)
    return service, service.config.limits


def _request(method: str = "INVITE", *, via: str | None = None, to: str = "<sip:bob@example.com>;tag=callee", extra: str = "",
             from_: str = "<sip:alice@example.com>;tag=caller", uri: str = "sip:bob@example.com") -> str:
    via = via if via is not None else f"Via: SIP/2.0/UDP {ATTACKER[0]}:{ATTACKER[1]};branch=z9hG4bK{UNIQUE}\r\n"
    return (
        f"{method} {uri} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: {from_}\r\nTo: {to}\r\n"
        f"Call-ID: {UNIQUE}@attacker\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )


def _fill(template: Callable[[int], str], size: int) -> bytes:
    """The largest template(n) that fits in *size* bytes (n found by bisection)."""
    lo, hi = 1, 1
    while len(template(hi)) <= size:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(template(mid)) <= size:
            lo = mid
        else:
            hi = mid
    return template(lo).encode()


OUR_ROUTE = f"<sip:{PROXY};lr>"
VIA_VALUE = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKhop"

# name -> template(n): the message with its hostile part repeated n times.
FAMILIES: dict[str, Callable[[int], str]] = {
    # In dialog (To tag) with Routes naming this proxy: the route set is stripped value by value.
    "Route values (comma list, ours)": lambda n: _request(extra="Route: " + ", ".join([OUR_ROUTE] * n) + "\r\n"),
    "Route values (foreign)": lambda n: _request(extra="Route: " + ", ".join(f"<sip:192.0.2.{i % 250}:5060;lr>" for i in range(n)) + "\r\n"),
    "Route lines (ours)": lambda n: _request(extra=f"Route: {OUR_ROUTE}\r\n" * n),
    "Via values (comma list)": lambda n: _request(via=f"Via: SIP/2.0/UDP {ATTACKER[0]}:{ATTACKER[1]};branch=z9hG4bK{UNIQUE}, " + ", ".join([VIA_VALUE] * n) + "\r\n"),
    "Via lines": lambda n: _request(via=f"Via: SIP/2.0/UDP {ATTACKER[0]}:{ATTACKER[1]};branch=z9hG4bK{UNIQUE}\r\n" + f"Via: {VIA_VALUE}\r\n" * n),
    "many header lines": lambda n: _request(extra="".join(f"X-H{i}: v\r\n" for i in range(n))),
    "long header line": lambda n: _request(extra="Subject: " + "x" * n + "\r\n"),
    "deep comma list (Proxy-Require)": lambda n: _request(extra="Proxy-Require: " + ",".join(["sec-agree"] * n) + "\r\n"),
    "deep comma list (empty values)": lambda n: _request(extra="Supported: " + "," * n + "\r\n"),
    "Contact values (REGISTER)": lambda n: _request("REGISTER", uri="sip:example.com", to="<sip:alice@example.com>",
                                                    extra="Contact: " + ", ".join([f"<sip:alice@{ATTACKER[0]}:5070>"] * n) + "\r\n"),
    "huge quoted display name (From)": lambda n: _request(from_='"' + "\\\"a" * n + '" <sip:alice@example.com>;tag=caller'),
    "huge quoted string in a Route": lambda n: _request(extra=f'Route: "{"a," * n}" {OUR_ROUTE}\r\n'),
    "nested angle brackets (Route)": lambda n: _request(extra="Route: " + "<" * n + OUR_ROUTE + ">" * n + "\r\n"),
    "many Via params": lambda n: _request(via=f"Via: SIP/2.0/UDP {ATTACKER[0]}:{ATTACKER[1]};branch=z9hG4bK{UNIQUE}" + ";p=v" * n + "\r\n"),
    "many To params": lambda n: _request(to="<sip:bob@example.com>;tag=callee" + ";p=v" * n),
    "many Request-URI params": lambda n: _request(uri="sip:bob@example.com" + ";p=v" * n),
    "many Route URI params (ours)": lambda n: _request(extra=f"Route: <sip:{PROXY};lr" + ";p=v" * n + ">\r\n"),
    # Credentials are parsed before any backend is asked: one huge value, or many values.
    "Proxy-Authorization auth-params": lambda n: _request(extra="Proxy-Authorization: Digest " + ",".join(['a="b"'] * n) + "\r\n"),
    "Proxy-Authorization huge quoted": lambda n: _request(extra=f'Proxy-Authorization: Digest username="{"a" * n}", realm="example.com"\r\n'),
    # Under the caps (4096 octets, 31 auth-params per value): every line is parsed.
    "Proxy-Authorization lines at caps": lambda n: _request(extra=f'Proxy-Authorization: Digest {",".join(["a=" + "b" * 125] * 31)}\r\n' * n),
    "Proxy-Authorization quoted at caps": lambda n: _request(
        extra=f'Proxy-Authorization: Digest {",".join(["a=" + chr(34) + "b" * 123 + chr(34)] * 31)}\r\n' * n),
    "Authorization auth-params (REG)": lambda n: _request("REGISTER", uri="sip:example.com", to="<sip:alice@example.com>",
                                                               extra="Authorization: Digest " + ",".join(['a="b"'] * n) + "\r\n"),
}


def _answer(flow: RecordingFlow) -> str:
    if not flow.sent:
        return "nothing"
    line = flow.sent[-1][0].split(b"\r\n", 1)[0].decode("ascii", "replace")
    return line.removeprefix("SIP/2.0 ")


def _run_once(service: Any, limits: Any, data: bytes, counter: int) -> tuple[float, RecordingFlow]:
    data = data.replace(UNIQUE.encode(), f"U{counter:07d}".encode())
    flow = RecordingFlow(ATTACKER)
    core = service.core
    start = time.perf_counter()
    try:
        message = parse_message(data, max_headers=limits.max_headers)
    except ParseError as e:
        core.bad_message(e, flow)
    else:
        core.message_received(message, flow)
    return time.perf_counter() - start, flow


def measure(service: Any, limits: Any, data: bytes, budget: float, counter: list[int]) -> tuple[float, str]:
    """Best time of as many runs as fit in *budget* seconds (at least one, at most 50)."""
    best = float("inf")
    answer = ""
    spent = 0.0
    for _ in range(50):
        counter[0] += 1
        elapsed, flow = _run_once(service, limits, data, counter[0])
        best = min(best, elapsed)
        answer = _answer(flow)
        spent += elapsed
        if spent > budget:
            break
    return best, answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,16,32,64", help="sizes in KB (64 KB is capped at max_message_bytes)")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds spent per family and size (at least one run)")
    parser.add_argument("--max-ratio", type=float, default=3.0, help="largest per-KB time / smallest per-KB time allowed")
    parser.add_argument("--only", help="run only the families whose name contains this text")
    parser.add_argument("--max-header-values", type=int, metavar="N",
                        help="raise the core's cap (default: the configured 64) to see the processing behind it")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        service, limits = _service(Path(tmp))
        if args.max_header_values:
            service.core.max_header_values = args.max_header_values
        cap = min(limits.max_message_bytes, 65535)
        print(f"machine: {platform.processor() or platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
              f"{datetime.date.today().isoformat()}")
        print(f"limits: max_headers={limits.max_headers}, max_header_values={getattr(service.core, 'max_header_values', 'none')}, "
              f"max_message_bytes={limits.max_message_bytes}")
        header = " ".join(f"{s:>5} KB" for s in sizes)
        print(f"{'family':36} {'answer (at the largest size)':34} {'us per KB at':>12} {header} {'ratio':>6} {'ms at max':>9}")
        counter = [0]
        worst = 0.0
        failed: list[str] = []
        for name, template in FAMILIES.items():
            if args.only and args.only.lower() not in name.lower():
                continue
            per_kb: list[float] = []
            answer = ""
            slowest = 0.0
            for size in sizes:
                data = _fill(template, min(size * 1024, cap))
                best, answer = measure(service, limits, data, args.budget, counter)
                per_kb.append(best * 1e6 / (len(data) / 1024))
                slowest = max(slowest, best)
            ratio = per_kb[-1] / per_kb[0]
            worst = max(worst, ratio)
            if ratio > args.max_ratio:
                failed.append(name)
            cells = " ".join(f"{v:8.1f}" for v in per_kb)
            print(f"{name:36} {answer[:34]:34} {'':>12} {cells} {ratio:6.2f} {slowest * 1e3:9.2f}", flush=True)
    if failed:
        print(f"verdict: NOT flat: per-KB time grows more than {args.max_ratio}x from {sizes[0]} to {sizes[-1]} KB for: {', '.join(failed)}")
        return 1
    print(f"verdict: flat (worst per-KB ratio {worst:.2f}, limit {args.max_ratio})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
