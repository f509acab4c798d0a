"""Syslog output: twisted.logger events as RFC 5424 messages, over UDP
(RFC 5426), TCP (RFC 6587 octet counting) or the local unix socket.

The formatter is plain functions over a twisted.logger event dict; the
senders never block the caller and never raise into it (a log observer that
raises would be removed by the publisher, and logging must not stop the
proxy): UDP and the unix socket send one non-blocking datagram per message
(a full socket buffer loses that message, as syslog over UDP does anyway),
TCP keeps one connection through a ReconnectingClientFactory and a bounded
queue while it is down.

A security event (the ``sipshield.security`` events of
:class:`sipshield.events.LogSecurityEvents`) becomes MSGID = its kind and a
structured-data element ``[sipshield@32473 kind=... src=... transport=...
user=... reason=...]`` (and ``port=... sni=...`` for ``tls-handshake-failure``) (32473 is the enterprise number RFC 5612 reserves for
documentation), so a collector can filter on the fields instead of on the
text.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet.protocol import Protocol, ReconnectingClientFactory
from twisted.logger import ILogObserver, LogLevel, formatEvent
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

__all__ = ["SD_ID", "SyslogObserver", "format_rfc5424", "syslog_sender"]

SD_ID = "sipshield@32473"
_SEVERITY = {LogLevel.critical: 2, LogLevel.error: 3, LogLevel.warn: 4, LogLevel.info: 6, LogLevel.debug: 7}
_SD_FIELDS = (("kind", "security_event"), ("src", "host"), ("transport", "transport"), ("user", "user"), ("reason", "reason"))
_SD_CONNECTION = (("port", "port"), ("sni", "sni"))
"""Added for the events about one connection (those with a ``port``: ``tls-handshake-failure``)."""
_BOM = "\ufeff"
MAX_DATAGRAM = 2048
"""RFC 5426 3.2: a receiver must take 480 octets and should take 2048; longer messages are cut."""


def _header_field(text: str, limit: int) -> str:
    """A HEADER field (PRINTUSASCII, no space) of at most *limit* characters; "-" when empty."""
    cleaned = "".join(c for c in text if "!" <= c <= "~")[:limit]
    return cleaned or "-"


def _param_value(value: object) -> str:
    """RFC 5424 6.3.3: '"', '\\' and ']' escaped with a backslash."""
    text = str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_rfc5424(event: dict[str, Any], *, facility: int, hostname: str, app_name: str, procid: str) -> bytes:
    """One RFC 5424 SYSLOG-MSG for a twisted.logger *event*."""
    level = event.get("log_level", LogLevel.info)
    pri = facility * 8 + _SEVERITY.get(level, 6)
    when = event.get("log_time")
    stamp = (
        datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        if isinstance(when, (int, float)) else "-"
    )
    kind = event.get("security_event")
    if isinstance(kind, str):
        msgid = _header_field(kind, 32)
        names = _SD_FIELDS + _SD_CONNECTION if "port" in event else _SD_FIELDS
        params = " ".join(f'{name}="{_param_value(event.get(field) if event.get(field) is not None else "-")}"' for name, field in names)
        structured = f"[{SD_ID} {params}]"
    else:
        msgid = "-"
        structured = "-"
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            text += " | " + failure.getErrorMessage()
        except Exception:
            pass
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    header = f"<{pri}>1 {stamp} {_header_field(hostname, 255)} {_header_field(app_name, 48)} {_header_field(procid, 128)} {msgid} {structured} "
    return header.encode("utf-8") + (_BOM + text).encode("utf-8", "replace")


@implementer(ILogObserver)
class SyslogObserver:
    """A twisted.logger observer that formats each event (at *level* or
    above) as RFC 5424 and hands the bytes to *send*."""

    def __init__(self, send: Callable[[bytes], None], *, facility: int = 16, app_name: str = "sipshield",
                 level: LogLevel = LogLevel.info, hostname: str | None = None) -> None:
        self.send = send
        self.facility = facility
        self.app_name = app_name
        self.level = level
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self.procid = str(os.getpid())

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        if isinstance(level, type(LogLevel.info)) and level < self.level:
            return
        try:
            message = format_rfc5424(event, facility=self.facility, hostname=self.hostname, app_name=self.app_name, procid=self.procid)
            self.send(message)
        except Exception:
            pass  # logging must never stop the proxy; the other observers still have the event


class _DatagramSender:
    """One non-blocking datagram per message, to a UDP address or a unix
    socket.  A full socket (a unix socket's queue holds only
    net.unix.max_dgram_qlen datagrams, 10 by default, until the syslog
    daemon reads them) keeps up to ``max_queued`` messages, sent again from
    the reactor a moment later; beyond that the oldest are lost, and counted."""

    retry_delay = 0.02

    def __init__(self, reactor: Any, family: int, address: Any, max_queued: int = 10000) -> None:
        self.reactor = reactor
        self.address = address
        self.socket = socket.socket(family, socket.SOCK_DGRAM)
        self.socket.setblocking(False)
        self.queue: deque[bytes] = deque(maxlen=max_queued)
        self.retry: Any = None
        self.lost = 0

    def __call__(self, message: bytes) -> None:
        if self.queue:
            self._queue(message)
            return
        try:
            self.socket.sendto(message[:MAX_DATAGRAM], self.address)
        except BlockingIOError:
            self._queue(message)
        except OSError:
            self.lost += 1  # no collector listening: syslog over datagrams loses it, as it would anyway

    def _queue(self, message: bytes) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.lost += 1
        self.queue.append(message)
        if self.retry is None and self.reactor is not None:
            if isInIOThread():
                self.retry = self.reactor.callLater(self.retry_delay, self._flush)
            else:
                self.reactor.callFromThread(self._schedule)

    def _schedule(self) -> None:
        if self.retry is None and self.queue:
            self.retry = self.reactor.callLater(self.retry_delay, self._flush)

    def _flush(self) -> None:
        self.retry = None
        queue = self.queue
        while queue:
            try:
                self.socket.sendto(queue[0][:MAX_DATAGRAM], self.address)
            except BlockingIOError:
                self.retry = self.reactor.callLater(self.retry_delay, self._flush)
                return
            except OSError:
                self.lost += 1
            queue.popleft()

    def close(self) -> None:
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        self.retry = None
        self.socket.close()


class _StreamProtocol(Protocol):
    def connectionMade(self) -> None:
        self.factory.connected(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.disconnected(self)  # type: ignore[attr-defined]


class _StreamSender(ReconnectingClientFactory):
    """RFC 6587 3.4.1 octet counting over one TCP connection, reconnecting
    (backing off to ``maxDelay``) while the collector is away; at most
    ``max_queued`` messages wait for it, the oldest are dropped first.
    Called on the reactor thread only (twisted.logger calls observers in
    the emitting thread; the service logs from the reactor, and a message
    from another thread is handed over with callFromThread)."""

    protocol = _StreamProtocol
    maxDelay = 30

    def __init__(self, reactor: Any, host: str, port: int, max_queued: int = 10000) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.queue: deque[bytes] = deque(maxlen=max_queued)
        self.current: _StreamProtocol | None = None
        self.stopped = False
        self.lost = 0

    def start(self) -> None:
        self.reactor.connectTCP(self.host, self.port, self)

    def connected(self, protocol: _StreamProtocol) -> None:
        self.resetDelay()
        self.current = protocol
        while self.queue and self.current is not None:
            self._write(self.queue.popleft())

    def disconnected(self, protocol: _StreamProtocol) -> None:
        if self.current is protocol:
            self.current = None

    def _write(self, message: bytes) -> None:
        assert self.current is not None and self.current.transport is not None
        self.current.transport.write(b"%d %s" % (len(message), message))

    def __call__(self, message: bytes) -> None:
        if not isInIOThread():
            self.reactor.callFromThread(self, message)
            return
        if self.current is None:
            if len(self.queue) == self.queue.maxlen:
                self.lost += 1
            self.queue.append(message)
        else:
            self._write(message)

    def close(self) -> None:
        self.stopped = True
        self.stopTrying()
        if self.current is not None and self.current.transport is not None:
            self.current.transport.loseConnection()


def syslog_sender(reactor: Any, address: str) -> _DatagramSender | _StreamSender:
    """The sender for an ``[logging.syslog] address``: ``udp:HOST:PORT``,
    ``tcp:HOST:PORT`` or ``unix:PATH`` (checked by the config parser)."""
    scheme, _, rest = address.partition(":")
    if scheme == "unix":
        return _DatagramSender(reactor, socket.AF_UNIX, rest)
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if scheme == "udp":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return _DatagramSender(reactor, family, (host, int(port)))
    sender = _StreamSender(reactor, host, int(port))
    sender.start()
    return sender
