"""Precompiled regular expressions for the RFC 3261 section 25 grammar.

They are used for cheap eager validation of the headers a proxy relies on
(one ``fullmatch`` per header) and by the typed header parsers. Header
values have been unfolded (RFC 3261 7.3.1) before they are matched, so LWS
is plain SP / HT here.
"""

from __future__ import annotations

import ipaddress
import re
from operator import itemgetter

# RFC 3261 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE; quoted-pair may escape %x00-7F.
QSTRING = r'"(?:[^"\\]|\\[\x00-\x7f])*"'
WS = r"[ \t]*"
# gen-value = token / host / quoted-string. A colon is accepted for unbracketed
# IPv6 addresses in Via received (RFC 3261 18.2.1 / 20.42).
GENVALUE = rf"(?:[A-Za-z0-9\-.!%*_+`'~:\[\]]+|{QSTRING})"
PARAMS = rf"(?:{WS};{WS}{TOKEN}(?:{WS}={WS}{GENVALUE})?)*"
HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)"
SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
DISPLAY = rf"(?:{TOKEN}(?:[ \t]+{TOKEN})*|{QSTRING})"

# A SIP URI inside <>: userinfo (lenient on characters, but no LWS), hostport, params, headers.
_SIPURI_IN_BRACKETS = rf"(?i:sips?):(?:[^\s<>\"@]+@)?{HOST}(?::[0-9]{{1,5}})?(?:;[^\s<>\";?]+)*(?:\?[^\s<>\"]*)?"
_OTHERURI_IN_BRACKETS = rf"(?!(?i:sips?):){SCHEME}:[^\s<>\"]+"
# RFC 3261 20.10: without <>, a URI must not contain ',', '?' or ';' (the ';' starts header params).
_SIPURI_BARE = rf"(?i:sips?):(?:[^\s<>\"@;,?]+@)?{HOST}(?::[0-9]{{1,5}})?"
_OTHERURI_BARE = rf"(?!(?i:sips?):){SCHEME}:[^\s<>\";,?]+"

NAME_ADDR = rf"(?:{DISPLAY}{WS})?<(?:{_SIPURI_IN_BRACKETS}|{_OTHERURI_IN_BRACKETS})>"
ADDR_SPEC = rf"(?:{_SIPURI_BARE}|{_OTHERURI_BARE})"
ADDRESS = rf"(?:{NAME_ADDR}|{ADDR_SPEC}){PARAMS}"

ADDRESS_RE = re.compile(ADDRESS)
CONTACTS_RE = re.compile(rf"\*|{ADDRESS}(?:{WS},{WS}{ADDRESS})*")

_VIA_ONE = rf"{TOKEN}{WS}/{WS}{TOKEN}{WS}/{WS}{TOKEN}[ \t]+{HOST}(?:{WS}:{WS}[0-9]{{1,5}})?{PARAMS}"
VIAS_RE = re.compile(rf"{_VIA_ONE}(?:{WS},{WS}{_VIA_ONE})*")

# Fast paths for the common shapes. Each accepts a strict subset of what the full
# expression above accepts, so trying it first never changes a verdict. Their
# repeats are possessive (``++``, ``*+``): every run is followed by a character
# it cannot contain, so no match needs backtracking, and sre skips the
# bookkeeping (about 40% faster on a Via).
_FAST_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]++"
_FAST_VALUE = r"[A-Za-z0-9\-.!%*_+`'~:]++"
_FAST_URIPARAM = r"[A-Za-z0-9\-_.!~*'()&+$%\[\]/:]++"
_FAST_PARAMS = rf"(?:;{_FAST_TOKEN}(?:={_FAST_VALUE})?)*+"
# The groups let the typed parsers build their objects straight from the match
# (Via._from_fast, Address._from_fast): FAST_VIA_RE gives transport, host, port
# and the parameter text; FAST_ADDRESS_RE gives the quoted display name, the
# token display name (with its trailing SP), the URI text, its user, host, port
# and parameter text, and the header parameter text.
FAST_VIA_RE = re.compile(rf"SIP/2\.0/([A-Z]++) ([A-Za-z0-9\-.]++)(?::([0-9]{{1,5}}+))?({_FAST_PARAMS})")
FAST_ADDRESS_RE = re.compile(
    rf"(?:\"([^\"\\]*+)\" ?|((?:{_FAST_TOKEN} )*+))?<(sips?:(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/%]++)@)?([A-Za-z0-9\-.]++)(?::([0-9]{{1,5}}+))?"
    rf"((?:;{_FAST_URIPARAM}(?:={_FAST_URIPARAM})?)*+))>({_FAST_PARAMS})"
)

# CSEQ_RE, CALLID_RE and SIP_RURI_RE are only used with fullmatch, and each of
# their runs is followed by a character it cannot contain: possessive repeats
# give the same verdicts without the backtracking bookkeeping (see the fast
# paths below).
CSEQ_RE = re.compile(rf"([0-9]++)[ \t]++({_FAST_TOKEN})")
DIGITS_RE = re.compile(r"[0-9]{1,10}")
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_FAST_WORD = _WORD + "+"
CALLID_RE = re.compile(rf"{_FAST_WORD}(?:@{_FAST_WORD})?+")
TOKEN_RE = re.compile(TOKEN)
SCHEME_RE = re.compile(SCHEME)
SIP_VERSION_RE = re.compile(r"(?i:SIP)/[0-9]+\.[0-9]+")
# Request-URI fast check (RFC 3261 19.1.1; 19.1.5: no headers in a Request-URI). It accepts
# exactly what URI.parse accepts for sip/sips, so the URI itself can be parsed lazily.
SIP_RURI_RE = re.compile(
    r"(?i:sips?):(?:[^\s<>\"@]++@)?(?:\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9\-.]++)(?::[0-9]{1,5}+)?(?:;[^\s<>\";?=]++(?:=[^\s<>\";?=]*+)?)*+"
)

# Typed parsers.
PARAM_RE = re.compile(rf"{WS};{WS}({TOKEN})(?:{WS}={WS}({GENVALUE}))?{WS}")
VIA_HEAD_RE = re.compile(rf"{WS}({TOKEN}){WS}/{WS}({TOKEN}){WS}/{WS}({TOKEN})[ \t]+({HOST})(?:{WS}:{WS}([0-9]{{1,5}}))?{WS}")
NAME_ADDR_HEAD_RE = re.compile(rf"{WS}(?:({DISPLAY}){WS})?<([^<>\s]*)>{WS}")
ADDR_SPEC_HEAD_RE = re.compile(rf"{WS}({ADDR_SPEC}){WS}")
HOST_RE = re.compile(HOST)
AUTH_HEAD_RE = re.compile(rf"{WS}({TOKEN})(?:[ \t]+|$)")
AUTH_PARAM_RE = re.compile(rf"{WS}({TOKEN}){WS}={WS}({TOKEN}|{QSTRING}){WS}(?:,|$)")
QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPED_CHAR = itemgetter(1)


def unquote_string(text: str) -> str:
    """Strip the DQUOTEs of a quoted-string and resolve quoted-pairs (RFC 3261 25.1)."""
    inner = text[1:-1]
    if "\\" in inner:
        # A C callable per escape: a template ("\\1") is expanded in Python for each one.
        inner = QUOTED_PAIR_RE.sub(_ESCAPED_CHAR, inner)
    return inner


def quote_string(text: str) -> str:
    """Render *text* as a quoted-string, escaping DQUOTE and backslash (RFC 3261 25.1)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"{_IPV4_OCTET}(?:\.{_IPV4_OCTET}){{3}}")


def ip_version(text: str) -> int | None:
    """4 or 6 when *text* is an IP address as ``ipaddress.ip_address`` reads
    it (dotted-quad without leading zeros; IPv6, a scope zone allowed; no
    brackets), else None.  Cheap for the usual IPv4 address and for a host
    name (one regular expression, no exception): it is asked for every
    message's addresses on the hot path."""
    if _IPV4_RE.fullmatch(text) is not None:
        return 4
    if ":" not in text:
        return None  # a host name, or not an address at all
    try:
        return ipaddress.IPv6Address(text).version
    except ValueError:
        return None


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quoted-strings and <> (RFC 3261 7.3.1).

    Empty elements are kept (as ``''``) so that callers can reject them.
    """
    if "," not in value:
        return [value.strip(" \t")]  # one value (the usual case): nothing to scan
    if '"' not in value and "<" not in value:
        return [part.strip(" \t") for part in value.split(",")]
    parts: list[str] = []
    start = 0
    in_quote = False
    depth = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            if depth:
                depth -= 1
        elif ch == "," and not depth:
            parts.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    parts.append(value[start:].strip(" \t"))
    return parts


def count_values(value: str, stop: int) -> int:
    """``min(len(split_commas(value)), stop)``, without splitting much past
    the *stop*-th value, so that a cap check costs what the cap allows and
    not what was sent.

    Commas are classified left to right, so the separators in a prefix of
    *value* are separators of *value*: split growing prefixes (the total
    work is at most 4/3 of the prefix that holds *stop* values).
    """
    commas = value.count(",")
    if not commas or ('"' not in value and "<" not in value):
        return min(commas + 1, stop)
    length = 1024
    while True:
        found = len(split_commas(value[:length]))
        if found >= stop or length >= len(value):
            return min(found, stop)
        length *= 4
