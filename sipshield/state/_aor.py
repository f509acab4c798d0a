"""The address-of-record key the location service indexes bindings by (RFC 3261 10.3 step 5)."""

from __future__ import annotations

from sipshield.message import URI

__all__ = ["aor_of"]

_DEFAULT_PORTS = {"sip": 5060, "sips": 5061}


def aor_of(uri: URI | str) -> str:
    """The canonical address-of-record of a SIP or SIPS URI, as a string key.

    RFC 3261 10.3 step 5: "all URI parameters MUST be removed (including the
    user-param), and any escaped characters MUST be converted to their
    unescaped form".  So: parameters and URI headers are dropped, the user
    part is %-unescaped (``URI.canonical_user``, case-sensitive, RFC 3261
    19.1.4), the host is lowercased (the URI parser already does that).

    Choices beyond the RFC text, made so that one user has one key:

    * ``sips`` is keyed as ``sip``.  RFC 3261 19.1.4 says a SIPS URI is never
      equivalent to a SIP URI, but a user who registers ``sips:alice@example.com``
      is still reachable as ``sip:alice@example.com`` (RFC 5630 treats the
      scheme as a requirement on the path, not a different user).  The SIPS
      requirement is enforced at lookup instead: a request for a ``sips``
      Request-URI is only relayed to ``sips`` contacts (RFC 3261 16.5 / RFC 5630).
    * The port is dropped when it is the scheme's default (5060 for sip, 5061
      for sips) and kept otherwise: ``sip:a@example.com:5060`` and
      ``sip:a@example.com`` are the same AOR, ``:5070`` is a different one.
    * The password (deprecated, RFC 3261 19.1.1) is dropped.

    Raises ValueError for any other scheme (tel, unknown): an AOR here is
    always a SIP or SIPS URI (RFC 3261 10.2).
    """
    if isinstance(uri, str):
        uri = URI.parse(uri)
    scheme = uri.scheme
    if scheme != "sip" and scheme != "sips":
        raise ValueError(f"not a SIP or SIPS URI: {uri}")
    host = uri.host or ""
    port = uri.port
    hostport = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    user = uri.canonical_user
    if not user:
        return f"sip:{hostport}"
    return f"sip:{user}@{hostport}"
