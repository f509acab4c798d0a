"""Operations: log outputs (JSON lines, syslog), Prometheus metrics, alerts, the admin API."""

from sipshield.ops._admin import AdminBackend, AdminService, admin_resource, load_or_create_token
from sipshield.ops._alerts import Alert, AlertEngine, MetricSource, build_notifiers
from sipshield.ops._logging import LogOutputs
from sipshield.ops._metrics import MetricSources, MetricsService, ProxyCollector, SecurityEventTally, metrics_registry
from sipshield.ops._rates import ActivityMonitor, counter_readings
from sipshield.ops._syslog import SyslogObserver, format_rfc5424

__all__ = [
    "ActivityMonitor", "counter_readings",
    "AdminBackend", "AdminService", "Alert", "AlertEngine", "LogOutputs", "MetricSource", "MetricSources", "MetricsService", "ProxyCollector",
    "SecurityEventTally", "SyslogObserver", "admin_resource", "build_notifiers", "format_rfc5424", "load_or_create_token", "metrics_registry",
]
