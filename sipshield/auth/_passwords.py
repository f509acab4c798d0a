"""What makes a SIP password weak, for ``sipshield user add|passwd``.

A digest HA1 is as strong as the password under it: one captured challenge
and answer let anyone try passwords offline at GPU speed, and SIP scanners
(sipvicious' svcrack, friendly-scanner) try the same short list against
every extension they find.  So the CLI refuses, unless told
``--allow-weak``: a password shorter than :data:`MIN_LENGTH`, one that is
the user name (the extension number, on most PBXs) or contains it, and the
passwords those scanners try first.
"""

from __future__ import annotations

__all__ = ["MIN_LENGTH", "COMMON_PASSWORDS", "weakness"]

MIN_LENGTH = 12

#: The passwords SIP scanners and PBX defaults make most common (svcrack's
#: default range is numbers; the rest are device and PBX defaults and the
#: most frequent leaked passwords), compared case-insensitively, also with
#: digits or punctuation around them ("password123!").
COMMON_PASSWORDS = frozenset((
    "0000", "1111", "1234", "12345", "123456", "1234567", "12345678", "123456789", "1234567890", "123123", "111111",
    "000000", "654321", "666666", "888888", "987654321", "password", "passw0rd", "pass", "secret", "letmein", "qwerty",
    "qwertyuiop", "abc123", "admin", "administrator", "root", "sip", "voip", "phone", "asterisk", "freepbx", "elastix",
    "trixbox", "polycom", "yealink", "cisco", "grandstream", "snom", "welcome", "changeme", "default", "test", "guest",
    "user", "iloveyou", "monkey", "dragon", "sunshine", "football", "extension",
))

_SEPARATORS = "0123456789!@#$%^&*()_-+=.,;:?/ "


def weakness(password: str, username: str, min_length: int = MIN_LENGTH) -> str | None:
    """Why *password* is too weak for *username*, or None when it is not."""
    lowered = password.lower()
    name = username.lower()
    if len(password) < min_length:
        return f"it is shorter than {min_length} characters"
    if lowered == name or lowered == name[::-1]:
        return "it is the user name"
    if len(name) >= 3 and name in lowered:
        return "it contains the user name"
    if lowered in COMMON_PASSWORDS or lowered.strip(_SEPARATORS) in COMMON_PASSWORDS:
        return "it is one of the passwords SIP scanners try first"
    if len(set(lowered)) <= 2:
        return "it repeats one or two characters"
    if lowered.isdigit() and _sequential(lowered):
        return "it is a run of consecutive digits"
    return None


def _sequential(digits: str) -> bool:
    steps = {(int(b) - int(a)) % 10 for a, b in zip(digits, digits[1:], strict=False)}
    return steps in ({1}, {9})
