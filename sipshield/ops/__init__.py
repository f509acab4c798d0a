"""Operations: log outputs (JSON lines, syslog); metrics, alerts and the admin API to come."""

from sipshield.ops._logging import LogOutputs
from sipshield.ops._syslog import SyslogObserver, format_rfc5424

__all__ = ["LogOutputs", "SyslogObserver", "format_rfc5424"]
