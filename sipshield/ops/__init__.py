"""Operations: log outputs (JSON lines, syslog), Prometheus metrics, the admin API; alerts to come."""

from sipshield.ops._admin import AdminBackend, AdminService, admin_resource, load_or_create_token
from sipshield.ops._logging import LogOutputs
from sipshield.ops._metrics import MetricSources, MetricsService, ProxyCollector, SecurityEventTally, metrics_registry
from sipshield.ops._syslog import SyslogObserver, format_rfc5424

__all__ = [
    "AdminBackend", "AdminService", "LogOutputs", "MetricSources", "MetricsService", "ProxyCollector", "SecurityEventTally", "SyslogObserver",
    "admin_resource", "format_rfc5424", "load_or_create_token", "metrics_registry",
]
