"""Log outputs chosen in ``[logging]``: a JSON lines file and syslog.

twistd's own observer stays the human-readable log (standard output with
``-n``, else ``--logfile``); this service adds the outputs the config asks
for to a twisted.logger publisher when it starts and takes them away when it
stops, so two services in one process each keep their own, and a test
passes its own publisher.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    globalLogPublisher,
    jsonFileLogObserver,
)

from sipshield.config import SYSLOG_FACILITIES, LoggingConfig
from sipshield.ops._syslog import SyslogObserver, syslog_sender

__all__ = ["LogOutputs"]


class LogOutputs(Service):
    """The ``[logging]`` outputs of one service (see the module docstring)."""

    name = "log-outputs"

    def __init__(self, config: LoggingConfig, reactor: Any, publisher: LogPublisher | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.publisher = publisher if publisher is not None else globalLogPublisher
        self.observers: list[ILogObserver] = []
        self._closers: list[Any] = []

    def privilegedStartService(self) -> None:
        # The files are opened before twistd drops privileges (a log
        # directory only root may write to is usual).
        self.open()
        super().privilegedStartService()

    def startService(self) -> None:
        self.open()
        super().startService()

    def open(self) -> None:
        """Add the outputs to the publisher (once; again only after a stop)."""
        if self._closers or self.observers:
            return
        config = self.config
        level = LogLevel.levelWithName(config.level)
        if config.json_file is not None:
            config.json_file.parent.mkdir(parents=True, exist_ok=True)
            out = io.open(config.json_file, "a", encoding="utf-8")  # noqa: UP020 - twisted.logger wants a text file
            self._closers.append(out.close)
            self._add(jsonFileLogObserver(out, recordSeparator=""), level)  # JSON lines, no RS
        syslog = config.syslog
        if syslog is not None:
            send = syslog_sender(self.reactor, syslog.address)
            self._closers.append(send.close)
            self.observers.append(SyslogObserver(send, facility=SYSLOG_FACILITIES[syslog.facility], app_name=syslog.app_name, level=level))
            self.publisher.addObserver(self.observers[-1])

    def _add(self, observer: ILogObserver, level: LogLevel) -> None:
        predicate = LogLevelFilterPredicate(defaultLogLevel=level)
        filtered = FilteringLogObserver(observer, [predicate])
        self.observers.append(filtered)
        self.publisher.addObserver(filtered)

    def stopService(self) -> Any:
        for observer in self.observers:
            self.publisher.removeObserver(observer)
        self.observers.clear()
        for close in self._closers:
            try:
                close()
            except Exception:
                pass
        self._closers.clear()
        return super().stopService()
