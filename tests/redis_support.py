"""A real redis-server of the test's own, on an ephemeral loopback port in a
temporary directory (no persistence), that a test can stop and start again
on the same port.  Missing redis-server: skip, a failure under CI=true."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from conftest import RunningServer, ephemeral_config, require_tool, stop_process
from twisted.internet import defer, reactor, task
from waiting import wait_until


def start_nodes(workdir: Path, extra: str, nodes: list[RunningServer], names: tuple[str, ...] = ("a", "b")) -> Iterator[RunningServer]:
    """Start one real twistd node per name, each in workdir/NAME with
    ``ephemeral_config(extra=extra)``, appended to *nodes* (for the test's
    ``finally`` to stop) and yielded once listening."""
    for name in names:
        (workdir / name).mkdir()
        node = RunningServer(workdir / name, ephemeral_config(extra=extra), ())
        nodes.append(node)
        node.wait_listening(3)
        yield node


@defer.inlineCallbacks
def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll the reactor (never sleeping in it) until *condition*; the deadline
    does not move.  Fires with the seconds it took."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        yield task.deferLater(reactor, 0.01, lambda: None)
    return time.monotonic() - (deadline - timeout)


def free_tcp_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.binary = require_tool("redis-server", "redis-server")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it, without waiting (see :meth:`accepting`)."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def accepting(self) -> bool:
        """Whether it takes connections now (one connect attempt on loopback: refused at once, or not)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start_and_wait(self, timeout: float = 10.0) -> None:
        """Start it and wait (bounded, before any reactor work) until it answers."""
        self.start()
        try:
            wait_until(self.accepting, timeout, f"redis-server on port {self.port}", failed=lambda: self.process is not None and self.process.poll() is not None)
        except AssertionError as e:
            raise RuntimeError(f"{e}: {(self.workdir / 'redis.log').read_text(errors='replace')[-2000:]}") from None

    def kill(self) -> None:
        """Stop it at once (SIGKILL: an outage, not a shutdown)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def two_shield_states(url: str, prefix: str) -> Iterator[tuple[Any, Any]]:
    """A fixture's body: two nodes' RedisShieldStates on the redis-server at
    *url* (keys *prefix*), started on the real reactor; stopped after the test."""
    import pytest_twisted
    from twisted.internet import reactor

    from sipshield.config import parse_config
    from sipshield.state import RedisShieldState
    from sipshield.state._redis import build_shield_state

    config = parse_config({"state": {"backend": "redis", "redis_url": url, "key_prefix": prefix}})
    states = [build_shield_state(config, reactor)[0] for _ in range(2)]
    assert all(isinstance(s, RedisShieldState) for s in states)
    for state in states:
        state.start()
    yield states[0], states[1]
    for state in states:
        pytest_twisted.blockon(state.stop())
