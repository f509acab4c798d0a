"""RFC 3261 section 16 proxy core: validation, forwarding, response context."""

from sipshield.proxy._core import ProxyCore
from sipshield.proxy._forward import endpoints
from sipshield.proxy._response import ResponseContext
from sipshield.proxy._signer import RecordRouteSigner

__all__ = ["ProxyCore", "RecordRouteSigner", "ResponseContext", "endpoints"]
