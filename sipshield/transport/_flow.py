"""Flows: where a message came from and how to answer on the same path.

A flow is what the transaction and proxy layers hold on to instead of a
socket: its transport name (as in a Via header), the local and remote
addresses, and ``send(data)``, which writes on the same UDP socket or the
same TCP/TLS connection (RFC 3261 18.2.2, RFC 5626 flows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sipshield.message import ParseError

if TYPE_CHECKING:
    from sipshield.message import Message


class Flow(Protocol):
    """What the layers above the transports know of one path to a peer."""

    transport_name: str
    """``UDP``, ``TCP`` or ``TLS``: the Via transport token."""

    remote: tuple[str, int]
    local: tuple[str, int]

    authenticated: bool
    """Set to True by the auth stage when a request on this flow passed
    authentication; a stream transport keeps such connections when its
    connection table is nearly full (the flag travels down, no call goes up)."""

    @property
    def reliable(self) -> bool:
        """True for stream transports (no retransmissions, RFC 3261 17.1.1.2)."""

    @property
    def secure(self) -> bool:
        """True when the bytes travelled over TLS."""

    def send(self, data: bytes) -> None:
        """Write one serialised message to the peer."""

    def send_to(self, data: bytes, address: tuple[str, int]) -> None:
        """Write to another address from the same socket (UDP responses sent
        to a Via's sent-by or maddr, RFC 3261 18.2.2); stream flows can only
        write to their own peer and ignore ``address``."""

    def peer_certificate(self) -> Any:
        """The peer's verified TLS certificate (pyOpenSSL X509), or None."""


class DatagramFlow:
    """A UDP peer seen on one listening socket."""

    __slots__ = ("_writer", "local", "remote", "authenticated")
    transport_name = "UDP"
    reliable = False
    secure = False

    def __init__(self, writer: Any, local: tuple[str, int], remote: tuple[str, int]) -> None:
        self._writer = writer
        self.local = local
        self.remote = remote
        self.authenticated = False

    def send(self, data: bytes) -> None:
        self._writer.write(data, self.remote)

    def send_to(self, data: bytes, address: tuple[str, int]) -> None:
        self._writer.write(data, address)

    def peer_certificate(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<DatagramFlow UDP {self.remote[0]}:{self.remote[1]}>"


def response_address(request: Message, flow: Flow) -> tuple[str, int]:
    """Where to send a response over UDP (RFC 3261 18.2.2, RFC 3581 4).

    maddr wins; with rport the response goes back to the source port;
    otherwise to the source address and the Via's sent-by port.  The
    source address is used rather than ``received`` from the message, so a
    forged received=255.255.255.255 can never aim a response at a broadcast.
    """
    try:
        via = request.top_via
    except ParseError:
        return flow.remote
    if via.maddr:
        return via.maddr.strip("[]"), via.port or 5060
    if via.rport is not None:
        return flow.remote
    return flow.remote[0], via.port or 5060
