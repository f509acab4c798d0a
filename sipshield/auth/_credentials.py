"""SIP digest credentials for twisted.cred (RFC 3261 22.4, RFC 7616 3.4).

A checker looks up the stored HA1 (``H(username:realm:password)``, see
:func:`sipshield.auth._digest.compute_ha1`) for ``username``, ``realm`` and
``algorithm`` and calls ``checkHash(ha1)``, exactly as twisted.cred's
htdigest-style checkers do with ``IUsernameDigestHash``; the computation
itself is ours (SHA-256, SHA-512/256, constant-time comparison).
"""

from __future__ import annotations

from twisted.cred.credentials import IUsernameDigestHash
from zope.interface import Attribute, implementer

from ._digest import DigestResponse, verify

__all__ = ["ISIPDigestCredentials", "SIPDigestCredentials"]


class ISIPDigestCredentials(IUsernameDigestHash):
    """What a SIP client proved with a Digest Authorization / Proxy-Authorization header.

    Nonce freshness, replay and the uri/realm match with the request are
    checked before credentials are built (RFC 7616 3.4.6, 5.4); a checker
    only needs the stored HA1.
    """

    username = Attribute("The username parameter (str), as sent (RFC 7616 3.4).")
    realm = Attribute("The realm parameter (str) the credentials were computed for (RFC 7616 3.4).")
    algorithm = Attribute(
        "The canonical algorithm name (str, one of sipshield.auth._digest.ALGORITHMS): "
        "the checker must supply the HA1 computed with this hash (RFC 7616 3.4.2)."
    )

    def checkHash(ha1: str) -> bool:
        """Return True if *ha1*, the stored ``H(username:realm:password)`` as
        hex for ``algorithm``, produces the request-digest the client sent
        (RFC 7616 3.4.1), else False. Never raises for a str argument; the
        comparison is constant-time."""


@implementer(ISIPDigestCredentials)
class SIPDigestCredentials:
    """Digest credentials of one request: the parsed header, its method and body.

    *body* is only used with ``qop=auth-int`` (RFC 7616 3.4.3).
    """

    def __init__(self, response: DigestResponse, method: str, body: bytes = b"") -> None:
        self.response = response
        self.method = method
        self.body = body

    @property
    def username(self) -> str:
        return self.response.username

    @property
    def realm(self) -> str:
        return self.response.realm

    @property
    def algorithm(self) -> str:
        return self.response.algorithm

    def checkHash(self, ha1: str) -> bool:
        """True if *ha1* verifies the response (see :func:`sipshield.auth._digest.verify`)."""
        return verify(self.response, self.method, ha1, self.body)

    def __repr__(self) -> str:
        # Never the response digest: logs must not carry offline-crackable material.
        return f"<SIPDigestCredentials {self.username!r}@{self.realm!r} {self.algorithm} {self.method}>"
