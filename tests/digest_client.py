"""A SIP digest client written from RFC 7616 (hashlib only, nothing from
sipshield.auth), shared by the unit and end-to-end tests: what a phone
computes from a challenge."""

from __future__ import annotations

import hashlib
import re
import secrets

HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


def H(algorithm: str, text: str) -> str:
    return hashlib.new(HASHES[algorithm], text.encode()).hexdigest()


def challenges(answer: bytes, header: str) -> list[dict[str, str]]:
    """The parameters of every *header* challenge in the raw message *answer*."""
    found = []
    for line in answer.decode().split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == header.lower():
            found.append(dict(re.findall(r'(\w+)="?([^",]*)"?', value)))
    return found


def authorization(challenge: dict[str, str], algorithm: str, user: str, password: str, method: str, uri: str, nc: str = "00000001") -> str:
    """The credentials (qop=auth) answering *challenge* for *method* on the digest-uri *uri*."""
    cnonce = secrets.token_hex(8)
    ha1 = H(algorithm, f"{user}:{challenge['realm']}:{password}")
    ha2 = H(algorithm, f"{method}:{uri}")
    response = H(algorithm, f"{ha1}:{challenge['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{challenge["realm"]}", nonce="{challenge["nonce"]}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, cnonce="{cnonce}", qop=auth, nc={nc}'
    )
