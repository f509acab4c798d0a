"""Save coverage data in a measured twistd before it kills itself.

twistd stopped by SIGTERM (as the end-to-end tests stop their servers)
shuts the reactor down cleanly, then, to exit with the signal's status,
resets SIGTERM to its default and sends it to itself
(``twisted.application.app._exitWithSignal``): no atexit handler runs, and
coverage's own ``sigterm = true`` handler was replaced by the reactor's.
So the data of every twistd would be lost.  scripts/test copies this module
into the environment's site-packages with a .pth line importing it; in a
process that coverage measures (COVERAGE_PROCESS_CONFIG, set by coverage's
subprocess patch) it wraps ``_exitWithSignal`` to save the data first.
Elsewhere it does nothing.
"""

from __future__ import annotations

import os


def install() -> None:
    if not os.environ.get("COVERAGE_PROCESS_CONFIG"):
        return
    try:
        import coverage
        from twisted.application import app
    except ImportError:
        return
    exit_with_signal = app._exitWithSignal

    def save_then_exit(sig: int) -> None:
        cov = coverage.Coverage.current()
        if cov is not None:
            cov.stop()
            cov.save()
        exit_with_signal(sig)

    app._exitWithSignal = save_then_exit


install()
