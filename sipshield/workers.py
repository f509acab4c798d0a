"""``[server] workers = N``: N worker processes behind one twistd (docs/scaling.md).

With N > 1 the twistd process runs a :class:`Supervisor` instead of the proxy.
It binds every SIP listener N times with SO_REUSEPORT (so the kernel spreads
UDP datagrams between the sockets by their 4-tuple, and TCP/TLS connections
as they come), plus one UDP port of each worker's own per UDP listener
(listener port + 1 + K, or an ephemeral one for port 0), before twistd drops
privileges; then it spawns each worker as ``twistd -n sipshield --worker K``,
handing it its sockets as inherited file descriptors.  A worker adopts them
(:meth:`sipshield.transport.SIPListener._adopt`) and runs the whole proxy as
a single process does; it sends its requests from its own port and puts that
port in its Via and Record-Route, so that responses and in-dialog requests
come back to the worker holding the transaction or dialog.

The supervisor relays each worker's log lines into its own log (prefixed
``worker K:``), restarts a worker that dies (with a backoff when it dies
young, so a crash loop does not spin), forwards SIGHUP, and on stop sends
SIGTERM to every worker and waits for them (SIGKILL after
:data:`STOP_TIMEOUT`).  The sockets stay open in the supervisor across a
worker's restart, so the kernel's spreading does not move the other
workers' flows.  Worker 0 starts first and alone, until it is ready (it
creates the data directory's secrets, the self-signed certificate and the
database tables); only worker 0 serves the admin API and the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

if TYPE_CHECKING:
    from sipshield.config import Config, ListenerConfig
    from sipshield.transport import SIPListener

__all__ = ["READY", "Supervisor", "adopt_sockets", "parse_sockets", "worker_config"]

READY = "sipshield worker ready"
"""What a worker logs once its stores are ready (worker 0's line lets the others start)."""
STOP_TIMEOUT = 10.0
"""Seconds a worker has to stop after SIGTERM before it gets SIGKILL."""
FIRST_READY_TIMEOUT = 30.0
"""Seconds the other workers wait for worker 0 to be ready before they start anyway."""
YOUNG = 10.0
"""A worker that dies younger than this (seconds) is restarted with a growing delay."""
MAX_BACKOFF = 30.0

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")


def worker_config(config: Config, worker: int) -> Config:
    """What worker *worker* runs: the configuration, knowing which worker it
    is (``server.worker``: its ban file), without the admin API and the
    metrics listener except in worker 0 (one port each)."""
    server = dataclasses.replace(config.server, worker=worker)
    if worker == 0:
        return dataclasses.replace(config, server=server)
    return dataclasses.replace(
        config, server=server, admin=dataclasses.replace(config.admin, enabled=False), metrics=dataclasses.replace(config.metrics, enabled=False),
    )


def parse_sockets(text: str) -> dict[int, tuple[int, int | None]]:
    """``--sockets``: ``INDEX=FD[+OWN_FD],...`` -> {listener index: (fd, own fd)}; ValueError when malformed."""
    found: dict[int, tuple[int, int | None]] = {}
    for item in filter(None, text.split(",")):
        index, _, fds = item.partition("=")
        shared, _, own = fds.partition("+")
        found[int(index)] = (int(shared), int(own) if own else None)
    return found


def adopt_sockets(listeners: list[SIPListener], sockets: dict[int, tuple[int, int | None]]) -> None:
    """Give each listener of a worker the sockets its supervisor bound for it."""
    for index, listener in enumerate(listeners):
        listener.inherited = sockets[index]


def _bind(lc: ListenerConfig, port: int, reuse: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in lc.interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM if lc.kind == "udp" else socket.SOCK_STREAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if lc.kind != "udp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((lc.interface, port))
        if lc.kind != "udp":
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclasses.dataclass
class _Worker:
    index: int
    sockets: dict[int, tuple[socket.socket, socket.socket | None]]
    process: Any = None
    pid: int | None = None
    started: float = 0.0
    failures: int = 0
    restart: Any = None
    ended: defer.Deferred[None] | None = None


class _WorkerOutput(ProcessProtocol):
    """Relays one worker's lines into the supervisor's log and reports its end."""

    def __init__(self, supervisor: Supervisor, worker: _Worker) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self.supervisor.worker_line(self.worker, line.decode("utf-8", "replace"))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if self._partial:
            self.supervisor.worker_line(self.worker, self._partial.decode("utf-8", "replace"))
            self._partial = b""
        self.supervisor.worker_ended(self.worker, reason.value)


class Supervisor(Service):
    """The twistd process's service with ``[server] workers`` > 1: binds the
    listeners' sockets, runs the workers and keeps them running.

    *command* is the argument list that runs one worker, up to ``--worker``
    (the default: this Python running twistd with the same ``--config`` and
    ``--data-dir``).  *spawn* is ``reactor.spawnProcess`` (a seam for tests).
    """

    log = Logger()

    def __init__(self, config: Config, reactor: Any, command: list[str], spawn: Callable[..., Any] | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.command = command
        self.spawn = spawn or reactor.spawnProcess
        self.workers = [_Worker(k, {}) for k in range(config.server.workers)]
        self._stopping = False
        self._first_ready: Any = None
        self._previous_sighup: Any = None

    # -- sockets --------------------------------------------------------------------
    def bind(self) -> None:
        """Every listener once per worker (SO_REUSEPORT), and each worker's own UDP ports."""
        from sipshield.transport import ListenerError

        for index, lc in enumerate(self.config.server.listen):
            port = lc.port
            for worker in self.workers:
                try:
                    shared = _bind(lc, port, reuse=True)
                    port = shared.getsockname()[1]  # the others join the port the first one got
                    own = _bind(lc, lc.own_port(worker.index), reuse=False) if lc.kind == "udp" else None
                except OSError as e:
                    self.close()
                    raise ListenerError(f"cannot listen on {lc.description} (worker {worker.index}): {e.strerror}") from None
                worker.sockets[index] = (shared, own)
            shown = f"[{lc.interface}]" if ":" in lc.interface else lc.interface
            self.log.info("supervisor bound {kind} {where} for {count} workers", kind=lc.kind, where=f"{shown}:{port}", count=len(self.workers))

    def close(self) -> None:
        for worker in self.workers:
            for shared, own in worker.sockets.values():
                shared.close()
                if own is not None:
                    own.close()
            worker.sockets.clear()

    # -- the workers -----------------------------------------------------------------
    def start_worker(self, worker: _Worker) -> None:
        worker.restart = None
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        spec = []
        fd = 3
        for index, (shared, own) in sorted(worker.sockets.items()):
            child_fds[fd] = shared.fileno()
            item = f"{index}={fd}"
            fd += 1
            if own is not None:
                child_fds[fd] = own.fileno()
                item += f"+{fd}"
                fd += 1
            spec.append(item)
        args = [*self.command, "--worker", str(worker.index), "--sockets", ",".join(spec)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        worker.started = self.reactor.seconds()
        worker.ended = defer.Deferred()
        worker.process = self.spawn(_WorkerOutput(self, worker), args[0], args, env=env, childFDs=child_fds)
        worker.pid = worker.process.pid
        self.log.info("worker {worker} started, pid {pid}", worker=worker.index, pid=worker.pid)

    def worker_line(self, worker: _Worker, line: str) -> None:
        line = _TIMESTAMP.sub("", line.rstrip("\r"))
        if not line:
            return
        self.log.info("worker {worker}: {line}", worker=worker.index, line=line)
        if worker.index == 0 and READY in line and self._first_ready is not None:
            self._start_the_others()

    def worker_ended(self, worker: _Worker, why: Any) -> None:
        status = getattr(why, "exitCode", None)
        signal_number = getattr(why, "signal", None)
        how = f"signal {signal_number}" if signal_number is not None else f"status {status}"
        pid = worker.pid
        worker.process = None
        ended, worker.ended = worker.ended, None
        if ended is not None:
            ended.callback(None)
        if self._stopping:
            self.log.info("worker {worker} (pid {pid}) stopped: {how}", worker=worker.index, pid=pid, how=how)
            return
        lived = self.reactor.seconds() - worker.started
        worker.failures = worker.failures + 1 if lived < YOUNG else 0
        delay = 0.0 if worker.failures == 0 else min(MAX_BACKOFF, 0.5 * 2 ** (worker.failures - 1))
        self.log.error("worker {worker} (pid {pid}) died ({how}) after {lived:.1f}s; restarting it in {delay:.1f}s",
                       worker=worker.index, pid=pid, how=how, lived=lived, delay=delay)
        worker.restart = self.reactor.callLater(delay, self.start_worker, worker)
        if worker.index == 0 and self._first_ready is not None:
            self._start_the_others()

    def _start_the_others(self) -> None:
        waiting, self._first_ready = self._first_ready, None
        if waiting is not None and waiting.active():
            waiting.cancel()
        for worker in self.workers[1:]:
            if worker.process is None and worker.restart is None and not self._stopping:
                self.start_worker(worker)
        self.log.info("{count} workers started", count=len(self.workers))

    def signal_workers(self, name: str) -> None:
        for worker in self.workers:
            if worker.process is not None:
                with contextlib.suppress(OSError, Exception):
                    worker.process.signalProcess(name)

    # -- the service -----------------------------------------------------------------
    def privilegedStartService(self) -> None:
        # Bound before twistd drops privileges: a port below 1024 works as with one process.
        if not self.workers[0].sockets:
            self.bind()
        if self.config.source is not None and self._previous_sighup is None:
            self._previous_sighup = signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self._sighup))
        super().privilegedStartService()

    def _sighup(self) -> None:
        self.log.info("SIGHUP: passed on to the workers")
        self.signal_workers("HUP")

    def startService(self) -> None:
        if not self.workers[0].sockets:
            self.bind()
        super().startService()
        self._stopping = False
        self.start_worker(self.workers[0])
        self._first_ready = self.reactor.callLater(FIRST_READY_TIMEOUT, self._start_the_others)

    def stopService(self) -> Any:
        super().stopService()
        self._stopping = True
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        if self._first_ready is not None and self._first_ready.active():
            self._first_ready.cancel()
        self._first_ready = None
        waits = []
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            if worker.ended is not None:
                waits.append(worker.ended)
        self.signal_workers("TERM")
        killer = self.reactor.callLater(STOP_TIMEOUT, self._kill_remaining)
        done = defer.DeferredList(waits)

        def stopped(_: object) -> None:
            if killer.active():
                killer.cancel()
            self.close()

        done.addCallback(stopped)
        return done

    def _kill_remaining(self) -> None:
        for worker in self.workers:
            if worker.process is not None:
                self.log.warn("worker {worker} (pid {pid}) did not stop in {timeout}s: killed", worker=worker.index,
                              pid=worker.pid, timeout=STOP_TIMEOUT)
        self.signal_workers("KILL")


def worker_command(config_path: str | None, data_dir: str | None) -> list[str]:
    """This Python running ``twistd -n sipshield`` with the supervisor's options."""
    args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "sipshield"]
    if config_path is not None:
        args += ["--config", config_path]
    if data_dir is not None:
        args += ["--data-dir", data_dir]
    return args


def stop_once_on_signals(reactor: Any) -> None:
    """SIGTERM and SIGINT stop the reactor, and a second one while it stops
    is not a ``ReactorNotRunning`` traceback: with workers a stop often
    signals twice (systemd's control-group kill reaches the workers, and so
    does their supervisor's SIGTERM).  Installed once the reactor runs, over
    its own handlers."""
    from twisted.internet.error import ReactorNotRunning

    def stop() -> None:
        with contextlib.suppress(ReactorNotRunning):
            reactor.stop()

    def install() -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: reactor.callFromThread(stop))

    reactor.callWhenRunning(install)


def die_with_parent() -> None:
    """Linux: the kernel sends this worker SIGTERM if its supervisor dies (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
