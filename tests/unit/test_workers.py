"""``[server] workers``: the key, each worker's own UDP port in its Via and
Record-Route, and the supervisor's restarts and stop (on a task.Clock, with a
fake spawnProcess; the real processes are in tests/e2e/test_worker_processes.py)."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from sipshield.config import ConfigError, LimitsConfig, ListenerConfig, load_config
from sipshield.transport import SIPListener
from sipshield.transport._dispatch import TransportDispatcher
from sipshield.transport._flow import DatagramFlow
from sipshield.workers import READY, Supervisor, parse_sockets, worker_config


def config(tmp_path: Path, workers: str, listen: str = '"udp:5060", "tcp:5060", "tls:5061"') -> Any:
    path = tmp_path / "sipshield.toml"
    path.write_text(f'[server]\ndata_dir = "data"\nlisten = [{listen}]\ndomains = ["example.com"]\nworkers = {workers}\n[registrar]\nstore = "sql"\n')
    return load_config(path)


def test_default_is_one_worker_and_auto_is_the_number_of_cores(tmp_path: Path) -> None:
    path = tmp_path / "plain.toml"
    path.write_text('[server]\ndata_dir = "data"\n')
    assert load_config(path).server.workers == 1
    assert config(tmp_path, '"auto"').server.workers == (os.cpu_count() or 1)
    assert config(tmp_path, "4").server.workers == 4


@pytest.mark.parametrize("value, why", [
    ("0", "out of range"), ("-2", "out of range"), ("1000", "out of range"), ('"many"', 'an integer or "auto"'),
    ("true", "got a boolean"), ("1.5", "expected"), ('"2"', 'an integer or "auto"'),
])
def test_bad_values_are_config_errors_naming_the_key(tmp_path: Path, value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"server.workers: .*{why}"):
        config(tmp_path, value)


def test_check_config_and_the_start_up_log_say_so(tmp_path: Path) -> None:
    posture = dict(config(tmp_path, "2", '"udp:5060", "tcp:5060", "udp:0:interface=127.0.0.2"').posture())
    assert posture["workers"] == ("2 processes sharing the listeners (SO_REUSEPORT); their own UDP ports: 5061-5062, ephemeral; "
                                  "admin API and metrics in worker 0; bans and limits per worker; "
                                  "a phone registered over TCP/TLS is reached only through the worker holding its connection")
    assert "workers" not in dict(config(tmp_path, "1").posture())
    assert dict(config(tmp_path, "2", '"udp:5060"').posture())["workers"].endswith("bans and limits per worker")


def test_workers_need_a_shared_location_store(tmp_path: Path) -> None:
    path = tmp_path / "memory.toml"
    path.write_text('[server]\ndata_dir = "data"\nworkers = 2\n')
    with pytest.raises(ConfigError, match='server.workers: 2 workers need a location store they share: \\[registrar\\] store = "sql" or "redis"'):
        load_config(path)


def test_worker_ports_must_not_overlap_another_udp_listener(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server.workers: 2 workers need UDP ports 5061..5062 next to udp:127.0.0.1:5060, which holds udp:127.0.0.1:5062"):
        config(tmp_path, "2", '"udp:5060", "udp:5062"')
    with pytest.raises(ConfigError, match="past 65535"):
        config(tmp_path, "3", '"udp:65534"')
    assert config(tmp_path, "2", '"udp:5060", "udp:5063", "tcp:5061"').server.workers == 2  # TCP 5061 is not a UDP port


def test_own_port_is_listener_port_plus_one_plus_k_or_ephemeral() -> None:
    assert ListenerConfig("udp", 5060).own_port(0) == 5061
    assert ListenerConfig("udp", 5060).own_port(3) == 5064
    assert ListenerConfig("udp", 0).own_port(3) == 0


def test_only_worker_zero_serves_the_admin_api_and_metrics(tmp_path: Path) -> None:
    cfg = config(tmp_path, "2")
    first = worker_config(cfg, 0)
    assert first.admin == cfg.admin and first.metrics == cfg.metrics and first.server.worker == 0
    other = worker_config(cfg, 1)
    assert not other.admin.enabled and not other.metrics.enabled
    assert other.server == dataclasses.replace(cfg.server, worker=1) and other.ratelimit == cfg.ratelimit
    assert cfg.server.worker is None  # a single process


def test_sockets_option_round_trip() -> None:
    assert parse_sockets("0=3+4,1=5,2=6") == {0: (3, 4), 1: (5, None), 2: (6, None)}
    with pytest.raises(ValueError):
        parse_sockets("0=x")


class _Handler:
    def refuse_source(self, host: str) -> bool:
        return False

    def message_received(self, message: Any, flow: Any) -> None:
        pass

    def bad_message(self, error: Any, flow: Any) -> None:
        pass


def _udp(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def test_a_worker_sends_from_its_own_port_and_names_it_in_via_and_record_route() -> None:
    """The adopted listener keeps the shared port as its address (what the
    ACL and Warning headers see), while Via, Record-Route and the source port
    of what it sends are the worker's own port."""
    from twisted.internet import reactor

    shared, own = _udp(), _udp()
    shared_port, own_port_number = shared.getsockname()[1], own.getsockname()[1]
    peer = _udp()
    listener = SIPListener(ListenerConfig("udp", shared_port), _Handler(), LimitsConfig(), reactor)
    listener.inherited = (os.dup(shared.fileno()), os.dup(own.fileno()))
    dispatcher = TransportDispatcher(reactor, "example.com")
    dispatcher.add_listener(listener)
    try:
        listener.listen()
        assert listener.address == ("127.0.0.1", shared_port)
        assert dispatcher.local_address("UDP", "127.0.0.1") == ("127.0.0.1", own_port_number)
        arrived = DatagramFlow(listener.port, ("127.0.0.1", shared_port), ("127.0.0.1", 5999))
        assert dispatcher.reached_at(arrived) == ("127.0.0.1", own_port_number)
        flow = dispatcher.send(b"OPTIONS sip:x SIP/2.0\r\n\r\n", ("UDP", "127.0.0.1", peer.getsockname()[1]))
        assert flow is not None and flow.local == ("127.0.0.1", shared_port)
        peer.settimeout(2)
        data, source = peer.recvfrom(100)
        assert data.startswith(b"OPTIONS") and source == ("127.0.0.1", own_port_number)
    finally:
        listener.stopService()
        for sock in (shared, own, peer):
            sock.close()


def test_a_single_process_listener_names_its_own_address() -> None:
    from twisted.internet import reactor

    listener = SIPListener(ListenerConfig("udp", 0), _Handler(), LimitsConfig(), reactor)
    dispatcher = TransportDispatcher(reactor)
    dispatcher.add_listener(listener)
    listener.listen()
    try:
        host, port = listener.address
        assert listener.own_address == (host, port) and listener.sending_port is listener.port
        assert dispatcher.local_address("UDP", "127.0.0.1") == (host, port)
        assert dispatcher.reached_at(DatagramFlow(listener.port, (host, port), ("127.0.0.1", 5999))) == (host, port)
    finally:
        listener.stopService()


class _Process:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class _Exit:
    def __init__(self, code: int | None = None, sig: int | None = None) -> None:
        self.exitCode, self.signal = code, sig


class _Spawner:
    def __init__(self) -> None:
        self.spawned: list[tuple[Any, list[str], dict[int, Any], _Process]] = []

    def __call__(self, protocol: Any, executable: str, args: list[str], env: Any, childFDs: dict[int, Any]) -> _Process:
        process = _Process(1000 + len(self.spawned))
        self.spawned.append((protocol, args, childFDs, process))
        return process


def test_supervisor_starts_worker_zero_first_restarts_with_backoff_and_stops_all(tmp_path: Path) -> None:
    cfg = config(tmp_path, "2", '"udp:0", "tcp:0"')
    clock, spawn = Clock(), _Spawner()
    supervisor = Supervisor(cfg, clock, ["twistd"], spawn=spawn)
    supervisor.startService()
    try:
        assert len(spawn.spawned) == 1 and spawn.spawned[0][1][-4:-2] == ["--worker", "0"]
        protocol0, args0, fds0, _ = spawn.spawned[0]
        assert args0[-1] == "0=3+4,1=5" and set(fds0) == {0, 1, 2, 3, 4, 5}
        protocol0.outReceived(f"2026-12-04T00:00:00+0000 [x#info] {READY} (worker 0)\n".encode())
        assert len(spawn.spawned) == 2 and spawn.spawned[1][1][-3] == "1"
        # Both workers' shared sockets are on one port (SO_REUSEPORT), their own ports differ.
        shared = {w.sockets[0][0].getsockname() for w in supervisor.workers}
        own = {w.sockets[0][1].getsockname() for w in supervisor.workers if w.sockets[0][1] is not None}
        assert len(shared) == 1 and len(own) == 2
        # Worker 1 dies young, again and again: restarted after 0.5 s, 1 s, 2 s ...
        delays = []
        for _attempt in range(4):
            protocol = spawn.spawned[-1][0]
            clock.advance(1)
            protocol.processEnded(type("R", (), {"value": _Exit(sig=9)})())
            before = len(spawn.spawned)
            waited = 0.0
            while len(spawn.spawned) == before:
                clock.advance(0.25)
                waited += 0.25
            delays.append(waited)
        assert delays == [0.5, 1.0, 2.0, 4.0]
        # One that ran long before dying comes back at once.
        clock.advance(60)
        spawn.spawned[-1][0].processEnded(type("R", (), {"value": _Exit(code=1)})())
        clock.advance(0)
        assert len(spawn.spawned) == 7
    finally:
        stopped = supervisor.stopService()
    live = [spawn.spawned[0], spawn.spawned[-1]]
    assert all(entry[3].signals == ["TERM"] for entry in live)
    results: list[Any] = []
    stopped.addCallback(results.append)
    live[0][0].processEnded(type("R", (), {"value": _Exit(sig=15)})())
    assert not results
    clock.advance(10)  # the other did not stop: SIGKILL
    assert live[1][3].signals == ["TERM", "KILL"]
    live[1][0].processEnded(type("R", (), {"value": _Exit(sig=9)})())
    assert results and all(not w.sockets for w in supervisor.workers)


def test_twistd_options_run_the_supervisor_or_a_worker(tmp_path: Path) -> None:
    from twisted.python import usage

    from sipshield.service import SIPShieldService
    from sipshield.tap import Options, makeService

    config(tmp_path, "2", '"udp:0", "tcp:0"')
    path = str(tmp_path / "sipshield.toml")
    options = Options()
    options.parseOptions(["--config", path])
    supervisor = makeService(options)
    assert isinstance(supervisor, Supervisor) and supervisor.command[-2:] == ["--config", path]
    for bad in (["--worker", "2", "--sockets", "0=3+4,1=5"], ["--worker", "1", "--sockets", "0=3+4"], ["--worker", "x", "--sockets", "0=3,1=4"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(["--config", path, *bad])
    options = Options()
    options.parseOptions(["--config", path, "--worker", "1", "--sockets", "0=3+4,1=5"])
    worker = makeService(options)
    assert isinstance(worker, SIPShieldService) and not isinstance(worker, Supervisor)
    assert [listener.inherited for listener in worker.listeners] == [(3, 4), (5, None)]
    assert not worker.config.admin.enabled and worker.admin is None and worker.metrics is None
