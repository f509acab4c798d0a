"""Authenticated REGISTERs per second through the running proxy.

    python bench/bench_register.py [--rates 250,500,1000,1500] [--duration 5] [--users 1000]

sipshield runs as `twistd -n sipshield` (pinned to core 1) with the sql user backend on SQLite in
its data dir and MD5 enabled (the digest SIPp implements; the server's cost is the same for
SHA-256: one HA1 lookup in the thread pool, one HMAC nonce check, one hash); SIPp (core 0) does
REGISTER -> 401 -> REGISTER with credentials -> 200 as user0 of --users users in the table (SIPp 3.6 does not expand
[field] values inside [authentication], so every registration uses -au/-ap).  Reported per
step: registrations ok/failed, retransmissions, the proxy's CPU ms per registration.
Target (issue): 1,000 authenticated REGISTERs per second on one core.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sipp_load import (  # noqa: E402
    Sipshield,
    counter,
    cpu_seconds,
    free_udp_port,
    log,
    memory_mb,
    pin,
    read_stat,
    run_sipp,
    stop_sipp,
    udp_socket_drops,
)

SCENARIO = Path(__file__).resolve().parent / "register_auth_load.xml"


class AuthSipshield(Sipshield):
    def command(self) -> list[str]:
        command = super().command()  # writes the call-bench config; ours replaces it below
        config = self.workdir / "sipshield-auth.toml"
        config.write_text(
            "[server]\n"
            f'data_dir = "{self.workdir / "data"}"\n'
            f'listen = ["udp:{self.port}:interface=127.0.0.1"]\n'
            'domains = ["example.com"]\n\n'
            "[auth]\n"
            'algorithms = ["MD5"]\n'
        )
        return command[:-1] + [str(config)]


def add_users(workdir: Path, count: int, algorithms: tuple[str, ...] = ("MD5",)) -> None:
    """userN with password pwN (N < count), in the SQLite database and key file of workdir/data."""
    from sipshield.auth import KeyFile, UserStore

    data = workdir / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    store = UserStore(f"sqlite:///{data / 'sipshield.db'}", algorithms=list(algorithms), keys=KeyFile(data / "credential.keys"))
    store.create_schema()
    for i in range(count):
        store.add(f"user{i}", "example.com", f"pw{i}", roles=("staff",))
    store.close()


def step(system: AuthSipshield, sipp: str, rate: int, duration: int, workdir: Path) -> dict[str, object]:
    total = rate * duration
    stat = workdir / f"reg-{rate}.csv"
    stat.unlink(missing_ok=True)
    pids = system.pids()
    cpu_before, drops_before = cpu_seconds(pids), udp_socket_drops(system.port)
    started = time.monotonic()
    uac = run_sipp(
        [*pin(0), sipp, f"127.0.0.1:{system.port}", "-sf", str(SCENARIO), "-au", "user0", "-ap", "pw0",
         "-i", "127.0.0.1", "-p", str(free_udp_port()),
         "-r", str(rate), "-m", str(total), "-l", str(max(rate * 4, 100)), "-recv_timeout", "8000", "-timeout", str(duration + 30),
         "-timeout_error", "-nostdin", "-trace_stat", "-fd", "1", "-stf", str(stat)],
        workdir / f"reg-{rate}.out", workdir,
    )  # fmt: skip
    try:
        exit_code = uac.wait(timeout=duration + 45)
    except subprocess.TimeoutExpired:
        exit_code = stop_sipp(uac, 0)
    cpu = cpu_seconds(system.pids()) - cpu_before
    stats = read_stat(stat)
    ok = counter(stats, "SuccessfulCall(C)")
    return {
        "rate": rate, "ok": ok, "failed": total - ok, "retrans": counter(stats, "Retransmissions(C)"),
        "cpu_ms": 1000 * cpu / ok if ok else None, "wall": time.monotonic() - started, "exit": exit_code,
        "drops": udp_socket_drops(system.port) - drops_before, "rss": memory_mb(system.pids()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="250,500,1000,1500")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp not found: apt-get install -y sip-tester", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="sipshield-reg-") as tmp:
        workdir = Path(tmp)
        add_users(workdir, args.users)
        port = free_udp_port()
        system = AuthSipshield(workdir, port, 0)
        log(f"starting sipshield on udp 127.0.0.1:{port} with {args.users} users (SQLite)")
        system.start()
        results = []
        try:
            for rate in rates:
                result = step(system, sipp, rate, args.duration, workdir)
                results.append(result)
                log(f"{rate}/s: ok {result['ok']}, failed {result['failed']}, retrans {result['retrans']}, "
                    f"CPU {result['cpu_ms'] and round(result['cpu_ms'], 3)} ms/registration, drops {result['drops']}, RSS {result['rss']:.1f} MB")
                time.sleep(2)  # let retransmission timers of the previous step run out
        finally:
            trouble = system.trouble()
            system.stop()
        print("\n| rate (reg/s) | ok | failed | retrans | CPU ms per registration | RSS MB |\n|---|---|---|---|---|---|")
        for r in results:
            cpu = f"{r['cpu_ms']:.3f}" if r["cpu_ms"] else "-"
            print(f"| {r['rate']} | {r['ok']} | {r['failed']} | {r['retrans']} | {cpu} | {r['rss']:.1f} |")
        good = [r["rate"] for r in results if r["failed"] == 0 and r["retrans"] <= 0.01 * r["ok"]]
        print(f"\nhighest sustainable: {max(good) if good else 'none'} authenticated registrations/s")
        if trouble:
            print("proxy log has a Traceback:\n" + trouble)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
