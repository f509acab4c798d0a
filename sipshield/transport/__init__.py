"""Transports: SIP over UDP, TCP and TLS, framing, connection table, TLS contexts."""

from sipshield.transport._flow import DatagramFlow, Flow, unusable_destination
from sipshield.transport._listen import ListenerError, MessageHandler, SIPListener
from sipshield.transport._stream import SIPStreamFactory, SIPStreamProtocol
from sipshield.transport._tls import ServerTLSContext, TLSMaterial, generate_self_signed, load_tls_material
from sipshield.transport._udp import SIPDatagramProtocol

__all__ = [
    "DatagramFlow",
    "Flow",
    "ListenerError",
    "MessageHandler",
    "SIPDatagramProtocol",
    "SIPListener",
    "SIPStreamFactory",
    "SIPStreamProtocol",
    "ServerTLSContext",
    "TLSMaterial",
    "generate_self_signed",
    "load_tls_material",
    "unusable_destination",
]
