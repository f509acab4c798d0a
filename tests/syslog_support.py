"""Parsing RFC 5424 syslog messages strictly, for the tests of [logging.syslog]."""

from __future__ import annotations

import re
from typing import Any

# RFC 5424 section 6, strictly: PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]
SYSLOG_MSG = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 "
    rb"(?P<timestamp>-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    rb"(?P<sd>-|(?:\[[^ =\]\"]{1,32}(?: [^ =\]\"]{1,32}=\"(?:[^\"\\\]]|\\[\"\\\]])*\")*\])+)"
    rb"(?: (?P<msg>.*))?$",
    re.DOTALL,
)
SD_PARAM = re.compile(r'([^ =\]"]+)="((?:[^"\\\]]|\\["\\\]])*)"')


def parse_syslog(message: bytes) -> dict[str, Any]:
    """Parse one RFC 5424 message (fails the test if it is not one); the
    structured-data parameters unescaped into ``params``."""
    m = SYSLOG_MSG.match(message)
    assert m is not None, message
    fields: dict[str, Any] = {k: (v.decode("utf-8") if v is not None else None) for k, v in m.groupdict().items()}
    msg = m.group("msg") or b""
    if msg.startswith(b"\xef\xbb\xbf"):
        msg = msg[3:]
    fields["msg"] = msg.decode("utf-8")
    fields["params"] = {name: re.sub(r"\\([\"\\\]])", r"\1", value) for name, value in SD_PARAM.findall(fields["sd"])}
    return fields
