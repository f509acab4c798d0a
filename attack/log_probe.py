"""Forging log records through remote values (run: PYTHONPATH=. python attack/log_probe.py):
each hostile user name and reason through LogSecurityEvents, then twistd's text line and the RFC 5424 record."""
import io

from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher, textFileLogObserver

from sipshield.events import LogSecurityEvents, SecurityEvent
from sipshield.ops import format_rfc5424

HOSTILE = ["a\r\n2026-12-03T16:40:02+0000 [sipshield.security#warn] security event auth-failure from 10.0.0.1 over UDP (user x",
           "a\u2028b\u2029c\x85d\x00e\x1b[2J", 'x"] [evil@1 a="b', "\\\"]", "A" * 5000, "\ud800", "é\u202eRTL"]
events: list[dict] = []
text = io.StringIO()
publisher = LogPublisher(textFileLogObserver(text), events.append)
sink = LogSecurityEvents(Clock(), Logger(namespace="sipshield.security", observer=publisher))
for value in HOSTILE:
    sink.emit(SecurityEvent("auth-failure", "192.0.2.7", "UDP", value, value))
for line in text.getvalue().splitlines():
    print("TEXT ", line[:200])
for event in events:
    record = format_rfc5424(event, facility=16, hostname="h", app_name="sipshield", procid="1")
    print("5424 ", record[:220])
    assert b"\n" not in record and b"\r" not in record and b"\x00" not in record
print("lines written:", len(text.getvalue().splitlines()), "for", len(HOSTILE), "events")
