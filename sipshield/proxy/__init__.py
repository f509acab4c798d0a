"""RFC 3261 section 16 proxy core."""

from sipshield.proxy._core import ALLOW, SUPPORTED, ProxyCore, response_address

__all__ = ["ALLOW", "SUPPORTED", "ProxyCore", "response_address"]
