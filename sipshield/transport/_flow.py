"""Flows: where a message came from and how to answer on the same path.

A flow is what the transaction and proxy layers hold on to instead of a
socket: its transport name (as in a Via header), the local and remote
addresses, and ``send(data)``, which writes on the same UDP socket or the
same TCP/TLS connection (RFC 3261 18.2.2, RFC 5626 flows).

Responses over UDP go back to the request's source address and port, as
RFC 3581 prescribes with ``rport``, for every request: never to a Via
``maddr``, ``received`` or sent-by port, which an unauthenticated sender
can forge to aim our answers (and their retransmissions) at a third party.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from twisted.internet.error import InvalidAddressError, MessageLengthError

from sipshield.message import ip_version


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

    def peer_certificate(self) -> Any:
        """The peer's verified TLS certificate (pyOpenSSL X509), or None."""


def unusable_destination(host: str, port: int) -> str | None:
    """Why no datagram or connection may go to (*host*, *port*), or None.

    Such an address comes from a peer (a Route, a Contact, a Path, a forged
    source): port 0 (or outside 1-65535), the unspecified address
    (0.0.0.0/8, ``::``: Linux delivers it to the host itself), the limited
    broadcast address and the rest of 240.0.0.0/4 (reserved), multicast
    (224.0.0.0/4, ff00::/8), also as IPv4-mapped IPv6.  A subnet's directed
    broadcast address cannot be told from a host without the subnet; the
    kernel refuses it unless SO_BROADCAST is set, which sipshield never
    sets.  A host name is not judged here (it is resolved first).
    """
    if not 0 < port <= 65535:
        return f"port {port}" if port == 0 else "port out of range"
    host = host.strip("[]")
    version = ip_version(host)
    if version == 4:
        first = int(host.partition(".")[0])
        if first < 224:
            return "an unspecified address" if first == 0 else None
        return _ipv4_class(first, host)
    if version == 6:
        address = ipaddress.IPv6Address(host)
        mapped = address.ipv4_mapped
        if mapped is not None:
            return unusable_destination(str(mapped), port)
        if address.is_unspecified:
            return "an unspecified address"
        if address.is_multicast:
            return "a multicast address"
    return None


def _ipv4_class(first: int, host: str) -> str:
    if first < 240:
        return "a multicast address"
    return "a broadcast address" if host == "255.255.255.255" else "a reserved address"


# What twisted.internet.udp.Port.write raises for an address or a datagram
# the socket cannot take (InvalidAddressError: not an IP of its family;
# OverflowError: port outside 0-65535; OSError: EINVAL, EACCES, ENETUNREACH...).
_UNSENDABLE = (InvalidAddressError, MessageLengthError, OverflowError, OSError)


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
        self.write(data, self.remote)

    def write(self, data: bytes, address: tuple[str, int]) -> bool:
        """Put one datagram on the socket; False when the socket refused it.

        The address may come from a peer (a Route, a Contact, a stray
        response's Via): a name, an address of the other family, port 0, a
        broadcast address or an unreachable network make sendto(2) fail.
        That is the datagram lost (UDP promises no more), not a reason for a
        traceback; the dispatcher turns False into a transport error
        (RFC 3261 17.1.4).  An address :func:`unusable_destination` names
        is not even given to the socket: the kernel would send to a
        multicast group, or to this host for 0.0.0.0.
        """
        if unusable_destination(*address) is not None:
            return False
        try:
            self._writer.write(data, address)
        except _UNSENDABLE:
            return False
        return True

    def peer_certificate(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"<DatagramFlow UDP {self.remote[0]}:{self.remote[1]}>"
