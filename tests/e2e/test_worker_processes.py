"""End to end: ``[server] workers = 2`` under a real twistd, driven by SIPp.

The supervisor binds the listeners with SO_REUSEPORT for both workers; the
kernel hashes a UDP datagram by its 4-tuple, so a caller's CANCEL, its ACK
and its BYE (SIPp sends every request to the proxy's listening port) reach
the worker of its INVITE, and a callee's responses and requests come back to
the worker's own port named in Via and Record-Route.  SIPp's ``-t un`` /
``-t tn`` give each call its own socket (its own source port, its own TCP
connection), so many calls land on both workers: each worker says how many
calls it started when it stops.  Registrations are in the SQL location store
(one SQLite file), which both workers read.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time

import pytest
import test_calls
from conftest import ephemeral_config, free_udp_port
from test_calls import SIPP_TIMEOUT, assert_ok, first_message, header_values, register, uris_in
from waiting import wait_until

pytestmark = pytest.mark.e2e
sipp_runner = test_calls.sipp_runner  # the fixture, shared
WORKERS_CONFIG = ephemeral_config(extra=f'[timers]\ntimer_c = {test_calls.TIMER_C}\n[registrar]\nstore = "sql"\n').replace(
    'domains = ["example.com"]\n', 'domains = ["example.com"]\nworkers = 2\n', 1,
)


def start_workers(start_server):
    server = start_server(WORKERS_CONFIG)
    server.wait_for(r"worker 1: .*sipshield worker ready \(worker 1, pid \d+\)", timeout=30)
    server.wait_for(r"worker 0: .*sipshield worker ready", timeout=5)
    return server


def worker_pids(server) -> dict[int, list[int]]:
    """Every PID each worker had (the supervisor logs each start), in order."""
    pids: dict[int, list[int]] = {}
    for worker, pid in re.findall(r"worker (\d+) started, pid (\d+)", server.log):
        pids.setdefault(int(worker), []).append(int(pid))
    return pids


def calls_started(server) -> dict[int, int]:
    """What each worker said when it stopped (its last words, per worker)."""
    return {int(w): int(c) for w, c in re.findall(r"worker (\d+) stopping: \d+ requests, (\d+) calls started", server.log)}


def own_ports(server) -> dict[int, int]:
    return {int(w): int(p) for w, p in re.findall(r"worker (\d+): .*worker's own UDP port [0-9.]+:(\d+)", server.log)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: only its parent has not read its status yet
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def many_calls(sipp_runner, server, name: str, scenario: str, callee_scenario: str, calls: int, transport: str = "un", kind: str = "udp"):
    """*calls* calls, each from its own socket, to a callee registered as *name* (one binding:
    the bindings of the runs before stay in the location store); both SIPp results."""
    port = free_udp_port()
    register(sipp_runner, server, name, port)
    callee = sipp_runner(f"{name}-callee", callee_scenario, port=port, service=name, calls=calls, timeout=SIPP_TIMEOUT + 20)
    callee.wait_listening(port)
    caller = sipp_runner(f"{name}-caller", scenario, port=free_udp_port(), service=name, remote=server.addresses[kind], transport=transport,
                         calls=calls, timeout=SIPP_TIMEOUT + 10, extra=("-r", "10", "-l", "10", "-max_socket", "200"))
    return caller.wait(), callee.wait()


def test_call_scenarios_pass_with_two_workers_and_both_take_calls(start_server, sipp_runner) -> None:
    server = start_workers(start_server)
    ports = own_ports(server)
    assert sorted(ports) == [0, 1] and ports[0] != ports[1] != server.addresses["udp"][1], server.log[-4000:]
    # One call: the callee sees the worker's own port in the Record-Route and the Via, not the shared one.
    caller, callee = many_calls(sipp_runner, server, "one", "uac_call.xml", "uas_answer.xml", 1)
    assert_ok(server, caller, callee)
    invite = first_message(callee.messages, "received", "INVITE ")
    record_route = uris_in(header_values(invite, "Record-Route"))
    assert len(record_route) == 1 and re.search(r";ss=[0-9a-f]{32}", record_route[0]), record_route
    used = {worker for worker, port in ports.items() if f"127.0.0.1:{port};" in record_route[0]}
    assert len(used) == 1, (record_route, ports)
    assert f"127.0.0.1:{ports[used.pop()]};branch=" in header_values(invite, "Via")[0]
    # Many calls of each kind over UDP, each from its own source port: answered, hung up by the callee,
    # busy, cancelled while ringing (the CANCEL reaches the worker of its INVITE), and over TCP.
    for name, scenario, callee_scenario, transport, kind in [
        ("answer", "uac_call.xml", "uas_answer.xml", "un", "udp"),
        ("remote-bye", "uac_call_remote_bye.xml", "uas_answer_hangup.xml", "un", "udp"),
        ("busy", "uac_busy.xml", "uas_busy.xml", "un", "udp"),
        ("cancel", "uac_cancel.xml", "uas_ring_then_487.xml", "un", "udp"),
        ("tcp", "uac_call.xml", "uas_answer.xml", "tn", "tcp"),
    ]:
        results = many_calls(sipp_runner, server, name, scenario, callee_scenario, 12, transport=transport, kind=kind)
        assert_ok(server, *results, calls=12)  # a CANCEL or ACK at the wrong worker would get 481: a failed call
    server.stop()
    started = calls_started(server)
    # 61 INVITEs in all, from 61 source ports or connections: each worker got some.
    assert sorted(started) == [0, 1] and all(count > 0 for count in started.values()) and sum(started.values()) == 61, started
    assert "Traceback" not in server.log and "died" not in server.log


# test_calls.py's scenarios, each against two workers (its first test checks that the Record-Route
# names the shared listening port: with workers it names the worker's own port, checked above).
SCENARIOS = [
    "test_callee_hangs_up_with_the_route_set", "test_caller_cancels_before_answer", "test_busy_callee_486_reaches_the_caller",
    "test_no_answer_gets_408_after_timer_c", "test_fork_to_two_contacts_one_answers_other_cancelled",
    "test_tcp_caller_udp_callee_double_record_route", "test_tls_caller_udp_callee_double_record_route",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_call_scenarios_of_test_calls_pass_with_two_workers(scenario: str, start_server, sipp_runner, tmp_path) -> None:
    test = getattr(test_calls, scenario)
    started = []

    def workers_server(config_text: str | None = None, **_: object):
        assert config_text == test_calls.CALL_CONFIG  # the same configuration, with workers = 2 and the SQL location store
        started.append(start_workers(start_server))
        return started[-1]

    kwargs = {"tmp_path": tmp_path} if "tmp_path" in test.__code__.co_varnames[: test.__code__.co_argcount] else {}
    test(workers_server, sipp_runner, **kwargs)
    assert len(started) == 1 and "sipshield worker ready (worker 1" in started[0].log


def test_a_killed_worker_is_restarted_and_calls_go_on(start_server, sipp_runner) -> None:
    server = start_workers(start_server)
    before = own_ports(server)
    victim = worker_pids(server)[1][-1]
    os.kill(victim, signal.SIGKILL)
    server.wait_for(rf"worker 1 \(pid {victim}\) died \(signal 9\) after [0-9.]+s; restarting it in", timeout=10)
    server.wait_for(rf"sipshield worker ready \(worker 1, pid (?!{victim}\b)\d+\)", timeout=30)
    assert not alive(victim)
    pids = worker_pids(server)
    assert len(pids[1]) == 2 and len(pids[0]) == 1, pids
    # The restarted worker adopted the very sockets the supervisor kept: the same own port.
    assert own_ports(server) == before
    results = many_calls(sipp_runner, server, "after-restart", "uac_call.xml", "uas_answer.xml", 16)
    assert_ok(server, *results, calls=16)
    server.stop()
    started = calls_started(server)
    assert started.get(1, 0) > 0 and started.get(0, 0) > 0, started


def test_sigterm_to_twistd_stops_every_worker(start_server) -> None:
    server = start_workers(start_server)
    pids = [pid for each in worker_pids(server).values() for pid in each]
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    # SIGHUP is passed on: each worker reloads the file itself.
    mark = len(server.lines)
    server.process.send_signal(signal.SIGHUP)
    server.wait_for(r"worker 0: .*SIGHUP: reloaded", start=mark)
    server.wait_for(r"worker 1: .*SIGHUP: reloaded", start=mark)
    began = time.monotonic()
    # Twice, as a control-group kill and a supervisor's SIGTERM reach a worker: still one clean stop.
    server.process.send_signal(signal.SIGTERM)
    server.process.send_signal(signal.SIGTERM)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    server.process.wait(timeout=15)
    assert time.monotonic() - began < 10
    assert not any(alive(pid) for pid in pids), pids
    server.stop()
    assert "Traceback" not in server.log and "ReactorNotRunning" not in server.log, server.log[-3000:]
    assert re.search(r"worker 0 \(pid \d+\) stopped", server.log) and re.search(r"worker 1 \(pid \d+\) stopped", server.log), server.log[-3000:]


def test_workers_do_not_outlive_a_killed_supervisor(start_server) -> None:
    server = start_workers(start_server)
    pids = [pid for each in worker_pids(server).values() for pid in each]
    server.process.kill()
    server.process.wait(timeout=5)
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, f"the workers {pids} ending with their supervisor")
