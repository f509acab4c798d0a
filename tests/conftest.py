"""Shared test fixtures.

Tests that need an outside tool or server skip when it is missing, except
under CI=true, where every skip is a failure (CI must install the tool, start
the server, free the port): see ``pytest_runtest_makereport`` below.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_CI_SKIP = "skipped under CI=true, where a skip is a failure (CI must provide what the test needs): "


# Hypothesis: no deadline and no too-slow health check, so a loaded machine
# (CI, parallel runs) cannot turn a slow example into a failure; a failure
# prints the blob that reproduces it.  Each test's @settings sets its
# max_examples on top of this profile.  To hunt for a rare failure, vary the
# seed: pytest tests/unit/test_message_properties.py --hypothesis-seed=N.
settings.register_profile("sipshield", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile("sipshield")


def _skip_reason(longrepr: object) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skip (pytest.skip, importorskip, a skipif marker) fails with its reason.

    A green CI run must mean every test ran: a busy port, a missing tool or
    server would otherwise pass silently.  xfail is not a skip and is kept.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = _CI_SKIP + _skip_reason(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped at import (module-level importorskip)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = _CI_SKIP + _skip_reason(report.longrepr)


def require_tool(name: str, package: str) -> str:
    """Path of an executable, or skip (fail under CI) naming the Debian package."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path is None:
        message = f"{name} not found: apt-get install -y {package}"
        if IN_CI:
            pytest.fail(f"{message} (required under CI=true)")
        pytest.skip(message)
    return path


def twistd_command() -> list[str]:
    """The twistd of the interpreter running the tests (same venv)."""
    candidate = Path(sys.executable).parent / "twistd"
    if candidate.exists():
        return [str(candidate)]
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]


_LISTENING = re.compile(r"sipshield listening on (udp|tcp|tls) \[?([0-9a-fA-F.:]+?)\]?:(\d+)$")


class OutputLines:
    """What a subprocess writes on its stdout, line by line: a daemon thread
    reads it (so the pipe never fills), ``lines`` holds what was read so far.
    *clean* is applied to each line (say, to remove colour codes)."""

    def __init__(self, process: subprocess.Popen[str], what: str, clean: Callable[[str], str] = str) -> None:
        self.process = process
        self.what = what
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(clean,), daemon=True)
        self._thread.start()

    def _read(self, clean: Callable[[str], str]) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(clean(line.rstrip("\n")))
        self._queue.put(None)

    def drain(self) -> None:
        """Move every line read so far into ``lines``."""
        while not self._ended:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            self._take(line)

    def _take(self, line: str | None) -> None:
        if line is None:
            self._ended = True
        else:
            self.lines.append(line)

    def wait_for(self, pattern: str, deadline: float, start: int = 0) -> re.Match[str]:
        """The first match of *pattern* in a line from *start* on, waiting
        until the monotonic *deadline* at most: one deadline for the whole
        wait (a chatty process must not extend it line by line).  Fails with
        what the process wrote."""
        regex = re.compile(pattern)
        scanned = start
        while True:
            self.drain()
            for line in self.lines[scanned:]:
                m = regex.search(line)
                if m:
                    return m
            scanned = max(scanned, len(self.lines))
            if self._ended:
                pytest.fail(f"{self.what} exited ({self.process.wait()}) before writing {pattern!r}:\n" + "\n".join(self.lines))
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{self.what}: no line matching {pattern!r} in time:\n" + "\n".join(self.lines))
            self._take(line)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate *process* (one a test started) and wait for it, bounded; kill it if it does not go."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class RunningServer:
    """A real ``twistd -n sipshield`` in a subprocess, on ephemeral ports."""

    def __init__(self, workdir: Path, config_text: str | None, extra_args: tuple[str, ...] = (), prefix: tuple[str, ...] = ()) -> None:
        """*prefix* runs twistd through a command (``ip netns exec NS``, which execs it)."""
        self.workdir = workdir
        self.addresses: dict[str, tuple[str, int]] = {}
        self._scan = 0
        args = [*prefix, *twistd_command(), "-n", "--pidfile=", "sipshield"]
        if config_text:
            config = workdir / "sipshield.toml"
            config.write_text(config_text)
            args += ["--config", str(config)]
        args += list(extra_args)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(args, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output = OutputLines(self.process, "twistd")
        self.lines = self.output.lines

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        """Wait (bounded) until a log line from ``start`` on matches; fail with the log so far."""
        return self.output.wait_for(pattern, time.monotonic() + timeout, start)

    def wait_listening(self, count: int) -> None:
        """Wait for ``count`` listener lines and record each kind's address."""
        seen = 0
        while seen < count:
            m = self.wait_for(r"sipshield listening on ", start=self._scan)
            self._scan = self.lines.index(m.string, self._scan) + 1
            found = _LISTENING.search(m.string)
            if found is None:
                pytest.fail(f"unparseable listening line: {m.string}")
            kind, host, port = found.groups()
            self.addresses.setdefault(kind, (host, int(port)))
            seen += 1

    def stop(self) -> int:
        stop_process(self.process, timeout=15)
        self.output.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.output.drain()
        return self.process.returncode

    def wait_count(self, pattern: str, at_least: int, timeout: float = 10.0) -> int:
        """Wait (bounded) until ``at_least`` log lines match; return the count."""
        regex = re.compile(pattern)
        count = sum(1 for line in self.lines if regex.search(line))
        deadline = time.monotonic() + timeout
        while count < at_least:
            self.wait_for(pattern, timeout=max(0.0, deadline - time.monotonic()), start=len(self.lines))
            count += 1
        return count

    @property
    def log(self) -> str:
        """Everything logged so far."""
        self.output.drain()
        return "\n".join(self.lines)


EPHEMERAL = """
[server]
data_dir = "data"
listen = ["udp:0:interface={host}", "tcp:0:interface={host}", "tls:0:interface={host}"]
domains = ["example.com"]

[admin]
port = 0

[metrics]
listen = "tcp:0:interface=127.0.0.1"
{extra}
"""

# SIPp and the other tools send from 127.0.0.1 / ::1 without credentials, over
# UDP too: the tests that are not about authentication trust those two
# addresses on every transport (udp = true; the server logs a warning).
# Authentication tests pass trusted=False and send from 127.0.0.2.
TRUSTED_LOOPBACK = """
[auth]
trusted_sources = [{network = "127.0.0.1/32", udp = true}, {network = "::1/128", udp = true}]
trusted_role = "admin"
"""


def ephemeral_config(host: str = "127.0.0.1", extra: str = "", trusted: bool = True) -> str:
    escaped = host.replace(":", "\\\\:")
    return EPHEMERAL.format(host=escaped, extra=extra + (TRUSTED_LOOPBACK if trusted else ""))


@pytest.fixture
def security_log() -> Iterator[list[dict[str, Any]]]:
    """Every security event logged (the default sink's twisted.logger events) while the test runs."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "security_event" in event:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """The test's own redis-server (tests/redis_support.py), started; stopped after the test."""
    from redis_support import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start_and_wait()
    yield server
    server.stop()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every line logged (twisted.logger, formatted) while the test runs."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:
    """Factory fixture: start_server(config_text) -> RunningServer, stopped after the test."""
    servers: list[RunningServer] = []

    def start(config_text: str | None = None, listeners: int = 3, extra_args: tuple[str, ...] = (), prefix: tuple[str, ...] = ()) -> RunningServer:
        server = RunningServer(tmp_path, config_text if config_text is not None else ephemeral_config(), extra_args, prefix)
        servers.append(server)
        if listeners:
            server.wait_listening(listeners)
        return server

    yield start
    for server in servers:
        server.stop()


def ipv6_available() -> bool:
    """Whether this machine has an IPv6 loopback (::1) to bind."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_udp_port() -> int:
    """An ephemeral UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
