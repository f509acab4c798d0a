"""SIP over UDP (RFC 3261 18.2)."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sipshield.message import ParseError, parse_message
from sipshield.transport._flow import DatagramFlow

if TYPE_CHECKING:
    from sipshield.transport._listen import MessageHandler

__all__ = ["ReceiveDelay", "ReceiveQueue", "SIPDatagramProtocol"]

class SIPDatagramProtocol(DatagramProtocol):
    """Turns datagrams into parsed messages for the handler.

    One datagram is one message (RFC 3261 18.3): octets past Content-Length
    are discarded by the parser.  Keep-alive datagrams (CRLF, RFC 5626 4.4.1)
    and STUN packets are not SIP and are dropped here.

    ``[limits] max_headers`` holds as on TCP/TLS: a request with more header
    lines gets 400 Too many header lines (a response is dropped); past 4
    times the limit it is dropped unparsed (``parse_message``).
    """

    log = Logger()
    noisy = False

    def __init__(self, handler: MessageHandler, max_message_bytes: int, max_headers: int = 256) -> None:
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.max_headers = max_headers
        self.local: tuple[str, int] = ("", 0)
        self.delay: ReceiveDelay | None = None
        """Measures how long the next datagram read waited in the kernel's buffer, when armed."""

    def startProtocol(self) -> None:
        host = self.transport.getHost()  # type: ignore[union-attr]
        self.local = (host.host, host.port)

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        delay = self.delay
        if delay is not None and delay.armed:
            delay.measure()
        handler = self.handler
        if handler.refuse_source(addr[0]):
            return
        if not datagram.strip() or datagram[0] < 0x20:
            # CRLF keep-alive, or STUN (first two bits zero, RFC 5389 6).
            return
        flow = DatagramFlow(self.transport, self.local, (addr[0], addr[1]))
        try:
            message = parse_message(datagram, max_headers=self.max_headers)
        except ParseError as e:
            handler.bad_message(e, flow)
            return
        if len(datagram) > self.max_message_bytes:
            # Parsed only so that the 413 can be addressed (RFC 3261 21.4.11).
            handler.bad_message(ParseError("Message too large", status=413, message=message), flow)
            return
        handler.message_received(message, flow)


class ReceiveQueue:
    """How full a UDP socket's receive buffer is: the kernel's ``rx_queue``
    of the socket in /proc/net/udp (or udp6), found by its inode, over its
    SO_RCVBUF, both in the kernel's accounting (each datagram counts its
    buffer's true size, about 1.3 KB for a small one).

    A signal of overload that does not wait for the reactor to fall behind:
    the buffer fills while the proxy still reads as fast as it can, and
    once it is full the kernel drops datagrams of calls in progress too.
    Linux only: :meth:`share` is None elsewhere, or when the socket is not
    listed.  One read of the file costs about 50 us with a few sockets.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._inode = str(os.fstat(sock.fileno()).st_ino).encode()
        self._table = "/proc/net/udp6" if sock.family == socket.AF_INET6 else "/proc/net/udp"
        self._size = max(1, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def share(self) -> float | None:
        """The share of the receive buffer in use, 0 to 1; None when unknown."""
        try:
            with open(self._table, "rb") as table:
                data = table.read()
        except OSError:
            return None
        for line in data.split(b"\n")[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[9] == self._inode:
                try:
                    return min(1.0, int(fields[4].partition(b":")[2], 16) / self._size)
                except ValueError:
                    return None
        return None


_SIOCGSTAMP = 0x8906
"""<asm-generic/sockios.h>: the kernel's arrival time of the last datagram a socket delivered (a struct timeval)."""
_TIMEVAL = struct.Struct("@ll")


class ReceiveDelay:
    """How long the datagrams a UDP socket delivers waited in its receive
    buffer: once :meth:`arm`-ed, the next datagram the protocol reads is
    measured (the kernel's arrival time of it, SIOCGSTAMP, against the wall
    clock), and :meth:`take` hands the figure over.

    Overload shows here first and most plainly: saturated, the reactor reads
    datagrams as fast as it can, barely late for its timers, while each
    datagram waits longer in the kernel's buffer; past SIP's T1 (500 ms) the
    phones retransmit what is still queued, and the load doubles.  The buffer's
    fill (:class:`ReceiveQueue`) says the same more coarsely: a full 4 MB
    buffer of small datagrams is half a second of work.

    One system call per measurement (about 2 us), none per datagram but one
    attribute test.  Linux only (and any kernel with SIOCGSTAMP): elsewhere, or
    when the call fails, nothing is measured.  A step of the wall clock
    between a datagram's arrival and its reading is one wrong figure.
    """

    def __init__(self, sock: socket.socket, wall: Callable[[], float] = time.time) -> None:
        self._fileno = sock.fileno()
        self._wall = wall
        self.armed = False
        self._delay: float | None = None
        # The first request turns on the kernel's time stamps for this socket
        # (before any datagram, it fails: there is nothing to stamp yet).
        try:
            fcntl.ioctl(self._fileno, _SIOCGSTAMP, bytes(_TIMEVAL.size))
        except OSError:
            pass

    def arm(self) -> None:
        """Measure the next datagram read."""
        self.armed = True

    def measure(self) -> None:
        """The datagram just read: how long it waited (the protocol calls this while armed)."""
        self.armed = False
        try:
            seconds, micros = _TIMEVAL.unpack(fcntl.ioctl(self._fileno, _SIOCGSTAMP, bytes(_TIMEVAL.size)))
        except OSError:
            return
        self._delay = max(0.0, self._wall() - (seconds + micros / 1e6))

    def take(self) -> float | None:
        """How long the datagram read since the last call waited (None: none was read), and arm again."""
        delay, self._delay = self._delay, None
        self.armed = True
        return delay
