#!/usr/bin/env python3
"""Call-rate benchmark: SIPp UAC -> proxy -> SIPp UAS on loopback, step by step.

    python bench/sipp_load.py [--rates 100,200,400,800,1200] [--duration 5] [--kamailio]

What it does (see bench/README.md and /work/shared/PERFORMANCE.md for the method):

* starts ``twistd -n sipshield`` with a UDP listener and a static route
  ``bench.example.com -> sip:127.0.0.1:UASPORT`` (no registration needed; the
  proxy still record-routes and stays transaction-stateful), pinned to core 1
  with ``taskset -c 1`` when there are two cores or more;
* per rate: a SIPp UAS (tests/e2e/scenarios/uas_answer.xml, which echoes
  Record-Route) and a SIPp UAC (uac_call.xml with its domain rewritten to
  bench.example.com: ACK and BYE follow the route set), both on core 0,
  ``-r RATE -m RATE*DURATION``; each SIPp bounded by ``-timeout`` and a wall clock;
* reads SIPp's exit code and its ``-trace_stat`` CSV (successful / failed calls,
  retransmissions of both SIPps), and the proxy's CPU seconds from
  /proc/PID/stat before and after the step, and its memory;
* with ``--kamailio`` runs the same steps through Kamailio (bench/kamailio.cfg:
  tm + rr + sl, one UDP worker, ``-m 1024``) as Debian ships it (its default,
  debugging allocator), and with ``--kamailio-tuned`` through the same Kamailio
  with the fast allocators (``-x fm -X fm``), and prints them side by side;
* with ``--shield`` sipshield runs with every shield stage on (bans, an access
  list, the scanner filter, rate limits, the egress policy on an external route,
  and the media policy in ``mandatory`` mode), and both SIPps offer and answer
  DTLS-SRTP (``UDP/TLS/RTP/SAVP`` with ``a=fingerprint``) instead of plain RTP, for
  every system in the run, so that the policy admits them.

"Sustainable" = zero failed calls and retransmissions under 1% of the calls
attempted (UAC + UAS retransmissions together). Loopback only; every loop is
bounded in count and in time; every process started here is stopped by its id.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "e2e" / "scenarios"
BENCH_DOMAIN = "bench.example.com"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_STEPS = 20
MAX_RATE = 20000
SUSTAINABLE_RETRANS = 0.01


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_port_bound(port: int) -> bool:
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as table:
        return any(line.split()[1] == wanted for line in list(table)[1:])


def udp_receive_errors() -> int:
    """System-wide UDP datagrams dropped for a full receive buffer (RcvbufErrors, /proc/net/snmp)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    if len(lines) < 2 or "RcvbufErrors" not in lines[0]:
        return 0
    return int(lines[1][lines[0].index("RcvbufErrors")])


def udp_socket_drops(port: int) -> int:
    """Datagrams dropped on the socket bound to 127.0.0.1:port (last column of /proc/net/udp)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if fields[1] == wanted:
                return int(fields[-1])
    return 0


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def pin(core: int) -> list[str]:
    """``taskset -c CORE`` when taskset exists and there are at least two cores."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core)]
    return []


# -- /proc accounting -------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """pid and every process below it (Kamailio forks its workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime (all threads) of the processes, in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = fields[fields.rindex(")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])  # fields 14 and 15 of proc(5)
    return total / CLK_TCK


def memory_mb(pids: list[int]) -> float:
    """VmRSS of one process; for a process tree the sum of Pss (shared memory counted once)."""
    if len(pids) == 1:
        status = Path(f"/proc/{pids[0]}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.M)
        return int(found.group(1)) / 1024 if found else 0.0
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        found = re.search(r"^Pss:\s+(\d+) kB", rollup, flags=re.M)
        total += int(found.group(1)) if found else 0
    return total / 1024


# -- the systems under test -------------------------------------------------------------------------


class System:
    """A proxy in a subprocess of its own session, stopped by its own process group id."""

    name = "?"
    memory_label = "RSS"
    uac_transport = "u1"
    """SIPp's ``-t`` for the UAC (``un`` for sipshield's workers: one source port per call)."""

    def __init__(self, workdir: Path, port: int, uas_port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.uas_port = uas_port
        self.log_path = workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                self.command(), cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            wait_until(lambda: self.process.poll() is not None or udp_port_bound(self.port), 30, f"{self.name} on udp {self.port}")
        except RuntimeError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
        time.sleep(0.5)

    def pids(self) -> list[int]:
        assert self.process is not None
        return [self.process.pid]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = self.process.pid  # start_new_session: the group is ours alone
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def trouble(self) -> str | None:
        """A Traceback or Unhandled Error in the log, if any."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for marker in ("Traceback", "Unhandled"):
            at = text.find(marker)
            if at >= 0:
                return text[at : at + 1500]
        return None


SHIELD_CONFIG = """\
[bans]
enabled = true

[scanners]
enabled = true

[ratelimit]
per_source = {rate = 50, burst = 100}

[acl]
default = "deny"

[[acl.rules]]
action = "allow"
networks = ["127.0.0.0/8"]

[egress]
max_calls_per_minute = 10

[egress.roles.trunk]
deny = ["+1900", "+1976", "00"]

[media]
srtp = "mandatory"
"""
"""Every shield stage on (``--shield``).  The SIPp pair is a trusted source
(as in Kamailio's config), which the rate limits do not count and which has
no user for the per-user limits; the checks still run on every request."""

DTLS_SDP = "m=audio [media_port] UDP/TLS/RTP/SAVP 0\n      a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\n      a=setup:actpass"


class Sipshield(System):
    name = "sipshield"
    memory_label = "VmRSS"

    def __init__(self, workdir: Path, port: int, uas_port: int, shield: bool = False, workers: int = 1) -> None:
        self.workers = workers
        if workers > 1:
            # Its supervisor and workers: CPU and memory summed over every process (Pss).
            self.name, self.memory_label = f"sipshield-{workers}w", "Pss (all processes)"
            self.uac_transport = "un"  # one socket per call: the kernel spreads calls by source port
        super().__init__(workdir, port, uas_port)
        self.shield = shield

    def start(self) -> None:
        super().start()
        if self.workers > 1:
            last = f"sipshield worker ready (worker {self.workers - 1}"
            wait_until(lambda: last in self.log_tail(10**7) or self.process is None or self.process.poll() is not None, 60, f"{self.name}'s workers")

    def pids(self) -> list[int]:
        assert self.process is not None
        return descendants(self.process.pid) if self.workers > 1 else [self.process.pid]

    def command(self) -> list[str]:
        config = self.workdir / "sipshield.toml"
        config.write_text(
            "[server]\n"
            f'data_dir = "{self.workdir / "data"}"\n'
            f'listen = ["udp:{self.port}:interface=127.0.0.1"]\n'
            'domains = ["example.com"]\n'
            + (f"workers = {self.workers}\n\n[registrar]\nstore = \"sql\"\n" if self.workers > 1 else "")
            + "\n[[routes]]\n"
            f'match_domain = "{BENCH_DOMAIN}"\n'
            f'target = "sip:127.0.0.1:{self.uas_port};transport=udp"\n'
            f"external = {'true' if self.shield else 'false'}\n\n"
            # Like the Kamailio config: the SIPp pair is a trusted peer (no digest).
            "[auth]\n"
            'trusted_sources = [{network = "127.0.0.1/32", udp = true}]\n'
            'trusted_role = "trunk"\n\n'
            + (SHIELD_CONFIG if self.shield else "")
        )
        twistd = Path(sys.executable).parent / "twistd"
        runner = [str(twistd)] if twistd.exists() else [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
        # Several workers are not pinned: they are there to use every core.
        return [*(pin(1) if self.workers == 1 else []), *runner, "-n", "--pidfile=", "sipshield", "--config", str(config)]


class Kamailio(System):
    name = "kamailio"
    memory_label = "Pss (all processes)"

    def __init__(self, workdir: Path, port: int, uas_port: int, binary: str, tuned: bool = False) -> None:
        self.name = "kamailio-fm" if tuned else "kamailio"
        super().__init__(workdir, port, uas_port)
        self.binary = binary
        self.tuned = tuned

    def command(self) -> list[str]:
        runtime = self.workdir / f"{self.name}-run"
        runtime.mkdir(exist_ok=True)
        return [
            *pin(1), self.binary, "-DD", "-E", "-f", str(ROOT / "bench" / "kamailio.cfg"),
            "-l", f"udp:127.0.0.1:{self.port}", "-m", "1024", "-M", "16", "-n", "1",
            "-Y", str(runtime), "-A", f'BENCH_UAS="sip:127.0.0.1:{self.uas_port}"',
            *(["-x", "fm", "-X", "fm"] if self.tuned else []),
        ]  # fmt: skip

    def pids(self) -> list[int]:
        assert self.process is not None
        return descendants(self.process.pid)


# -- SIPp -------------------------------------------------------------------------------------------


def read_stat(path: Path) -> dict[str, str]:
    """The last row of SIPp's -trace_stat CSV (';'-separated, header first)."""
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def counter(stats: dict[str, str], name: str) -> int:
    try:
        return int(stats.get(name, "0") or 0)
    except ValueError:
        return 0


def screen_counter(stdout: str, name: str) -> int | None:
    found = re.findall(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", stdout)
    return int(found[-1]) if found else None


def bench_scenarios(workdir: Path, srtp: bool) -> tuple[Path, Path]:
    """(UAC, UAS): uac_call.xml calling USER@bench.example.com instead of
    USER@example.com, and uas_answer.xml; with *srtp* both offer and answer
    DTLS-SRTP instead of plain RTP."""
    plain = "m=audio [media_port] RTP/AVP 0"
    paths = []
    for name, edit in (("uac_call", lambda t: t.replace("@example.com", f"@{BENCH_DOMAIN}")), ("uas_answer", lambda t: t)):
        text = edit((SCENARIOS / f"{name}.xml").read_text())
        if srtp:
            if plain not in text:
                raise RuntimeError(f"{name}.xml has no {plain!r} line to make DTLS-SRTP")
            text = text.replace(plain, DTLS_SDP)
        target = workdir / f"{name}_bench.xml"
        target.write_text(text)
        paths.append(target)
    return paths[0], paths[1]


@dataclass
class Step:
    system: str
    rate: int
    duration: int
    attempted: int = 0
    ok: int = 0
    failed: int = 0
    uac_retrans: int = 0
    uas_retrans: int = 0
    udp_drops: int = 0
    proxy_socket_drops: int = 0
    uac_exit: int | None = None
    uas_exit: int | None = None
    cpu_s: float = 0.0
    memory_mb: float = 0.0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def retrans(self) -> int:
        return self.uac_retrans + self.uas_retrans

    @property
    def retrans_ratio(self) -> float:
        return self.retrans / self.attempted if self.attempted else 0.0

    @property
    def cpu_ms_per_call(self) -> float | None:
        return 1000 * self.cpu_s / self.ok if self.ok else None

    @property
    def sustainable(self) -> bool:
        return self.uac_exit == 0 and self.failed == 0 and self.ok == self.attempted and self.retrans_ratio < SUSTAINABLE_RETRANS


def run_sipp(args: list[str], out: Path, workdir: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as handle:
        return subprocess.Popen(args, cwd=workdir, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_sipp(process: subprocess.Popen[bytes], grace: float) -> int:
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            return process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=5)


def run_step(system: System, sipp: str, rate: int, duration: int, workdir: Path, scenario: Path, uas_scenario: Path) -> Step:
    calls = rate * duration
    step = Step(system.name, rate, duration, attempted=calls)
    tag = f"{system.name}-{rate}"
    uac_csv, uas_csv = workdir / f"uac-{tag}.csv", workdir / f"uas-{tag}.csv"
    for stale in (uac_csv, uas_csv):
        stale.unlink(missing_ok=True)
    wall_limit = duration + 30  # SIPp's own -timeout; the wall clock below adds a margin
    common = ["-i", "127.0.0.1", "-t", "u1", "-nostdin", "-trace_stat", "-fd", "1", "-timeout", str(wall_limit)]
    uas = run_sipp(
        [*pin(0), sipp, "-sf", str(uas_scenario), "-s", "bench", "-p", str(system.uas_port), "-m", str(calls),
         "-stf", str(uas_csv), "-trace_err", "-error_file", str(workdir / f"uas-{tag}-errors.log"), *common],
        workdir / f"uas-{tag}.out", workdir,
    )  # fmt: skip
    try:
        wait_until(lambda: uas.poll() is not None or udp_port_bound(system.uas_port), 10, "the SIPp UAS")
        if uas.poll() is not None:
            step.notes.append(f"UAS exited early ({uas.returncode})")
            return step
        pids = system.pids()
        drops_before, proxy_drops_before = udp_receive_errors(), udp_socket_drops(system.port)
        cpu_before = cpu_seconds(pids)
        started = time.monotonic()
        uac = run_sipp(
            [*pin(0), sipp, f"127.0.0.1:{system.port}", "-sf", str(scenario), "-s", "bench", "-p", str(free_udp_port()),
             "-r", str(rate), "-m", str(calls), "-l", str(max(rate * 4, 100)), "-recv_timeout", "8000", "-timeout_error",
             "-stf", str(uac_csv), "-trace_err", "-error_file", str(workdir / f"uac-{tag}-errors.log"), *common,
             *(["-t", system.uac_transport, "-max_socket", str(max(rate * 8, 200))] if system.uac_transport != "u1" else [])],
            workdir / f"uac-{tag}.out", workdir,
        )  # fmt: skip
        try:
            step.uac_exit = uac.wait(timeout=wall_limit + 15)
        except subprocess.TimeoutExpired:
            step.notes.append("UAC killed at the wall-clock limit")
            step.uac_exit = stop_sipp(uac, 0)
        # The UAS ends by itself after -m calls; if calls failed it never will: short grace.
        step.uas_exit = stop_sipp(uas, 3)
        step.wall_s = time.monotonic() - started
        step.cpu_s = cpu_seconds(system.pids()) - cpu_before
        step.udp_drops = udp_receive_errors() - drops_before
        step.proxy_socket_drops = udp_socket_drops(system.port) - proxy_drops_before
        step.memory_mb = memory_mb(system.pids())
    finally:
        stop_sipp(uas, 0)
    uac_stats, uas_stats = read_stat(uac_csv), read_stat(uas_csv)
    screen = (workdir / f"uac-{tag}.out").read_text(errors="replace")
    step.ok = counter(uac_stats, "SuccessfulCall(C)") or (screen_counter(screen, "Successful call") or 0)
    step.failed = counter(uac_stats, "FailedCall(C)") or (screen_counter(screen, "Failed call") or 0)
    # Calls never started (e.g. SIPp killed) count as failed too.
    step.failed = max(step.failed, calls - step.ok)
    step.uac_retrans = counter(uac_stats, "Retransmissions(C)")
    step.uas_retrans = counter(uas_stats, "Retransmissions(C)")
    for name in ("FailedTimeoutOnRecv(C)", "FailedMaxUDPRetrans(C)", "FailedUnexpectedMessage(C)"):
        if counter(uac_stats, name):
            step.notes.append(f"{name.removesuffix('(C)')}={counter(uac_stats, name)}")
    if not uac_stats:
        step.notes.append("no SIPp statistics: " + screen[-300:].replace("\n", " "))
    trouble = system.trouble()
    if trouble:
        step.notes.append("proxy log has a Traceback/Unhandled error")
    return step


# -- reporting --------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def step_table(steps: list[Step]) -> str:
    lines = [
        "| system | rate (calls/s) | calls ok | failed | retrans (UAC+UAS) | retrans % | CPU ms/call | memory MB | UDP drops (all / proxy socket) | SIPp exit | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        lines.append(
            f"| {s.system} | {s.rate} | {s.ok}/{s.attempted} | {s.failed} | {s.uac_retrans}+{s.uas_retrans} | {100 * s.retrans_ratio:.2f} | "
            f"{fmt(s.cpu_ms_per_call)} | {s.memory_mb:.1f} | {s.udp_drops} / {s.proxy_socket_drops} | {s.uac_exit}/{s.uas_exit} | {'; '.join(s.notes)} |"
        )
    return "\n".join(lines)


def side_by_side(rates: list[int], results: dict[str, list[Step]]) -> str:
    names = list(results)
    head = "| rate | " + " | ".join(f"{n} ok / failed / retrans % / CPU ms per call" for n in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    for rate in rates:
        cells = []
        for name in names:
            step = next((s for s in results[name] if s.rate == rate), None)
            if step is None:
                cells.append("-")
            else:
                mark = "" if step.sustainable else " ✗"
                cells.append(f"{step.ok} / {step.failed} / {100 * step.retrans_ratio:.2f} / {fmt(step.cpu_ms_per_call)}{mark}")
        lines.append(f"| {rate} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def highest_sustainable(steps: list[Step]) -> str:
    good = [s.rate for s in steps if s.sustainable]
    return f"{max(good)} calls/s" if good else "none of the rates tried"


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,200,400,800,1200", help="comma-separated call rates (calls/s)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per step (1..60)")
    parser.add_argument("--kamailio", action="store_true", help="also run the steps through Kamailio (bench/kamailio.cfg)")
    parser.add_argument("--kamailio-tuned", action="store_true", help="also run the steps through Kamailio with its fast allocators (-x fm -X fm)")
    parser.add_argument("--shield", action="store_true", help="sipshield with every shield stage on; both SIPps speak DTLS-SRTP")
    parser.add_argument("--workers", default="1", help="comma-separated [server] workers values: sipshield runs once per value (e.g. 1,2)")
    parser.add_argument("--skip-sipshield", action="store_true", help="only Kamailio (with --kamailio or --kamailio-tuned)")
    parser.add_argument("--port", type=int, default=0, help="proxy UDP port (default: a free one)")
    parser.add_argument("--uas-port", type=int, default=0, help="SIPp UAS UDP port (default: a free one)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between steps (lets transactions expire)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (SIPp screens, CSVs, logs)")
    args = parser.parse_args(argv)
    try:
        args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--rates takes integers, e.g. 100,200,400")
    if not args.rates or len(args.rates) > MAX_STEPS or not all(0 < r <= MAX_RATE for r in args.rates):
        parser.error(f"--rates: 1..{MAX_STEPS} rates, each 1..{MAX_RATE}")
    if not 1 <= args.duration <= 60:
        parser.error("--duration: 1..60 seconds")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers takes integers, e.g. 1,2")
    if not args.workers or len(args.workers) > 4 or not all(1 <= w <= 64 for w in args.workers):
        parser.error("--workers: 1..4 values, each 1..64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sipp = shutil.which("sipp")
    if sipp is None:
        print("sipp not found: apt-get install -y sip-tester", file=sys.stderr)
        return 2
    kamailio = shutil.which("kamailio") or ("/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None)
    if (args.kamailio or args.kamailio_tuned) and kamailio is None:
        print("kamailio not found: apt-get install -y kamailio", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="sipp-load-"))
    uas_port = args.uas_port or free_udp_port()
    scenario, uas_scenario = bench_scenarios(workdir, args.shield)
    systems: list[System] = []
    if not args.skip_sipshield:
        for workers in args.workers:
            systems.append(Sipshield(workdir, (args.port if len(args.workers) == 1 else 0) or free_udp_port(), uas_port, shield=args.shield, workers=workers))
    if args.kamailio:
        systems.append(Kamailio(workdir, free_udp_port(), uas_port, kamailio))  # type: ignore[arg-type]
    if args.kamailio_tuned:
        systems.append(Kamailio(workdir, free_udp_port(), uas_port, kamailio, tuned=True))  # type: ignore[arg-type]
    pinned = "pinned: proxy core 1, SIPp core 0" if pin(0) else "not pinned (taskset missing or one core)"
    log(f"work directory {workdir}; UAS port {uas_port}; {pinned}")
    results: dict[str, list[Step]] = {}
    not_started: dict[str, str] = {}
    try:
        for system in systems:
            log(f"starting {system.name} on udp 127.0.0.1:{system.port}")
            try:
                system.start()
            except RuntimeError as error:
                log(f"{system.name} did not start: {error}")
                not_started[system.name] = str(error).strip().splitlines()[-1][:300]
                continue
            steps = results.setdefault(system.name, [])
            try:
                for rate in args.rates:
                    log(f"{system.name}: {rate} calls/s for {args.duration}s")
                    step = run_step(system, sipp, rate, args.duration, workdir, scenario, uas_scenario)
                    steps.append(step)
                    log(f"  ok {step.ok}/{step.attempted}, failed {step.failed}, retrans {step.retrans}, "
                        f"CPU {fmt(step.cpu_ms_per_call)} ms/call, UDP drops {step.udp_drops} (proxy socket {step.proxy_socket_drops}), {system.memory_label} {step.memory_mb:.1f} MB {'; '.join(step.notes)}")
                    if system.process is not None and system.process.poll() is not None:
                        log(f"{system.name} exited ({system.process.returncode}); stopping its steps")
                        break
                    time.sleep(args.pause)
                trouble = system.trouble()
                if trouble:
                    log(f"{system.name} log, first error:\n{trouble}")
            finally:
                system.stop()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    all_steps = [s for steps in results.values() for s in steps]
    print(f"\n## SIPp call-rate steps ({args.duration} s each, {pinned})\n")
    print(step_table(all_steps))
    if len(results) > 1:
        print("\n## Side by side (✗ = not sustainable)\n")
        print(side_by_side(args.rates, results))
    for name, why in not_started.items():
        print(f"\n{name} did not start: {why}")
    print("\n## Highest sustainable rate (0 failed calls, retransmissions < 1% of calls)\n")
    for name, steps in results.items():
        print(f"- {name}: {highest_sustainable(steps)}")
    memory_notes = ", ".join(f"{s.name}: {s.memory_label}" for s in systems)
    print(f"\nmemory column: {memory_notes}; CPU: utime+stime from /proc/PID/stat over the step")
    return 0 if all_steps and not not_started and all(s.sustainable for s in all_steps) else 1


if __name__ == "__main__":
    sys.exit(main())
