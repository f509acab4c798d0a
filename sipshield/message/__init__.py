"""sans-IO SIP messages: parsing, serialisation, URIs and typed headers (RFC 3261 7, 19, 20, 25),
and the media sections of SDP bodies (RFC 4566, RFC 2046 multipart).

Nothing here imports Twisted; the transports feed bytes in and take bytes out.
"""

from ._errors import FramingError, ParseError
from ._framing import KEEPALIVE, KeepAlive, StreamFramer
from ._grammar import ip_version
from ._headers import Address, AuthHeader, Contact, CSeq, Headers, Via, canonical_name, format_auth, parse_auth
from ._message import REASON_PHRASES, Message, Request, Response, check_header_values, parse_message
from ._sdp import MediaSection, SDPError, media_sections, parse_content_type
from ._uri import URI

__all__ = [
    "KEEPALIVE",
    "REASON_PHRASES",
    "URI",
    "Address",
    "AuthHeader",
    "CSeq",
    "Contact",
    "FramingError",
    "Headers",
    "KeepAlive",
    "MediaSection",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "SDPError",
    "StreamFramer",
    "Via",
    "canonical_name",
    "check_header_values",
    "format_auth",
    "ip_version",
    "media_sections",
    "parse_auth",
    "parse_content_type",
    "parse_message",
]
