"""The seeded mutation fuzzer at scale: the real service in process, its real UDP and TCP protocols.

    python bench/fuzz.py [--count 100000] [--seed N] [--udp-share 0.5] [--show 5]

Runs tests/sipfuzz.py (the same harness as tests/unit/test_fuzz.py, which sends 10^4 in CI):
``--count`` messages from ``random.Random(--seed)``, split between UDP datagrams and TCP
connections, from an unauthenticated source (with valid and broken digest answers) and a
trusted one.  Reports messages per second, the answers by status, and every crash class (an
exception escaping a protocol or a timer, a failure logged, a 5xx other than 503/505 and the
500 of an unreachable target, a transaction or response context that never ended) with the
first input that caused it.  Exit status 1 when there is any.  Same seed, same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import sipfuzz  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=4475)
    parser.add_argument("--udp-share", type=float, default=0.5, help="share of the messages sent over UDP (the rest over TCP)")
    parser.add_argument("--show", type=int, default=5, help="crash classes shown in full")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        target = sipfuzz.FuzzTarget(Path(workdir) / "data")
        try:
            report = sipfuzz.run(target, args.count, args.seed, args.udp_share)
        finally:
            target.close()
    print(f"seed {args.seed}: {report.sent} messages in {report.seconds:.1f} s, {report.sent / report.seconds:.0f} messages/s")
    print("answers: " + ", ".join(f"{status}: {n}" for status, n in sorted(report.answers.items())))
    print(f"crash classes: {len(report.findings)}")
    for finding in sorted(report.findings.values(), key=lambda f: -f.count)[: args.show]:
        print(f"\n{finding.count:7d}  {finding.key}\n  first input: {finding.first!r}\n{finding.detail[-1500:]}")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
