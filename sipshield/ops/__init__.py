"""Operations: log outputs (JSON lines, syslog), the admin API; metrics and alerts to come."""

from sipshield.ops._admin import AdminBackend, AdminService, admin_resource, load_or_create_token
from sipshield.ops._logging import LogOutputs
from sipshield.ops._syslog import SyslogObserver, format_rfc5424

__all__ = ["AdminBackend", "AdminService", "LogOutputs", "SyslogObserver", "admin_resource", "format_rfc5424", "load_or_create_token"]
