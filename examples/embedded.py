"""Embed sipshield in your own Twisted application.

Run with:  python examples/embedded.py [CONFIG.toml]

makeService returns a MultiService; add it to your application beside your
own services. Nothing listens until the reactor runs the service.
"""

from __future__ import annotations

import sys

from twisted.application.service import MultiService
from twisted.internet import task
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from sipshield.config import default_config, load_config
from sipshield.service import makeService

log = Logger()


def build_application(config_path: str | None = None, reactor=None) -> MultiService:
    """Your application: sipshield plus a service of your own."""
    app = MultiService()
    config = load_config(config_path) if config_path else default_config()
    sip = makeService(config, reactor)
    sip.setName("sipshield")
    sip.setServiceParent(app)
    return app


def main(reactor, config_path: str | None = None):
    app = build_application(config_path, reactor)
    app.privilegedStartService()
    app.startService()
    sip = app.getServiceNamed("sipshield")
    for kind, (host, port) in sip.addresses().items():
        log.info("embedded sipshield: {kind} on {host}:{port}", kind=kind, host=host, port=port)
    reactor.addSystemEventTrigger("before", "shutdown", app.stopService)
    return task.Deferred()  # run until interrupted


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    task.react(main, sys.argv[1:2])
