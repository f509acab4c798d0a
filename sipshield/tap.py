"""twistd integration: ``twistd sipshield [--config FILE]``."""

from __future__ import annotations

import gc
import os
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from sipshield.config import Config, ConfigError, default_config, load_config

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """Command-line options of the twistd plugin."""

    synopsis = "[--config FILE] [--data-dir DIR]"
    longdesc = (
        "Run the sipshield SIP proxy. With no options it starts the embedded default: "
        "UDP and TCP on 127.0.0.1:5060 and TLS on 127.0.0.1:5061, data in ./sipshield-data."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["data-dir", "d", None, "Data directory (overrides [server] data_dir)."],
        ["worker", None, None, "(internal) run as worker K of [server] workers, started by the supervisor."],
        ["sockets", None, "", "(internal) a worker's inherited listener sockets."],
    ]

    def postOptions(self) -> None:
        try:
            self["_config"] = build_config(self["config"], self["data-dir"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["worker"] is not None:
            from sipshield.workers import parse_sockets

            try:
                self["worker"] = int(self["worker"])
                self["_sockets"] = parse_sockets(self["sockets"])
            except ValueError:
                raise usage.UsageError("--worker K --sockets INDEX=FD[+FD],...: a number and file descriptors") from None
            if not 0 <= self["worker"] < self["_config"].server.workers or len(self["_sockets"]) != len(self["_config"].server.listen):
                raise usage.UsageError("--worker/--sockets do not match [server] workers and listen")


def build_config(path: str | None, data_dir: str | None = None) -> Config:
    """Load (or default) and fully check the configuration, TLS files included."""
    import dataclasses
    from pathlib import Path

    from sipshield.transport import load_tls_material

    config = load_config(path) if path else default_config()
    if data_dir is not None:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, data_dir=Path(data_dir)))
    if any(lc.kind == "tls" for lc in config.server.listen) or config.tls.certificate:
        load_tls_material(config.tls, config.server.data_dir, source=config.source)
    if config.auth.nonce_secret_file is not None:
        from sipshield.auth._setup import load_nonce_secret

        load_nonce_secret(config)
    _check_stages(config)
    from twisted.internet.task import Clock

    from sipshield.auth._setup import build_bearer, build_ldap, build_trunks

    build_trunks(config)
    build_bearer(config, Clock())  # reads and checks the key set; the clock is not used here
    checker = build_ldap(config, Clock())  # checks the settings; connects only when used
    if checker is not None:
        checker.close()
    return config


def _check_stages(config: Config) -> None:
    """Every ``[pipeline] stages`` name must be a known plugin (listing the known ones)."""
    from sipshield.routing import available_stages

    try:
        known = available_stages(config.server.plugins)
    except ConfigError as e:
        raise ConfigError(str(e).split(": ", 1)[-1], key="server.plugins", source=config.source) from None
    for name in config.stages:
        if name not in known:
            raise ConfigError(f"unknown stage {name!r} (known: {', '.join(sorted(known))})", key="pipeline.stages", source=config.source)


def makeService(options: Any) -> IService:
    from twisted.internet import reactor

    from sipshield.service import SIPShieldService
    from sipshield.transport import ListenerError

    config: Config = options["_config"]
    worker: int | None = options.get("worker")
    if worker is None and config.server.workers > 1:
        from sipshield.workers import Supervisor, stop_once_on_signals, worker_command

        class TwistdSupervisor(Supervisor):
            def privilegedStartService(self) -> None:
                try:
                    super().privilegedStartService()
                except ListenerError as e:
                    raise SystemExit(f"sipshield: {e}") from None
                stop_once_on_signals(self.reactor)

        return TwistdSupervisor(config, reactor, worker_command(options["config"], options["data-dir"]))

    class TwistdService(SIPShieldService):
        """Under twistd, a listener that cannot open ends the process with one
        clear line and exit status 1 instead of a traceback."""

        def privilegedStartService(self) -> None:
            try:
                super().privilegedStartService()
            except (ListenerError, ConfigError) as e:  # a ConfigError: a secret file changed since the options were read
                raise SystemExit(f"sipshield: {e}") from None

        def startService(self) -> None:
            super().startService()
            # Under twistd the process is ours: move everything built at
            # start-up out of the cyclic collector's view, so its passes only
            # scan what traffic allocates.
            gc.collect()
            gc.freeze()

    if worker is None:
        return TwistdService(config)
    from sipshield.workers import READY, adopt_sockets, die_with_parent, stop_once_on_signals, worker_config

    index: int = worker

    class WorkerService(TwistdService):
        """Worker K of ``[server] workers``: the proxy on the sockets its supervisor bound."""

        def privilegedStartService(self) -> None:
            die_with_parent()  # started by the supervisor: it goes when the supervisor goes
            stop_once_on_signals(self.reactor)
            super().privilegedStartService()

        def startService(self) -> None:
            super().startService()
            for listener in self.listeners:
                if listener.own_port is not None:
                    self.core.add_local_address(*listener.own_address)  # its Record-Route names it
            self.schema_ready.addBoth(lambda _: self.log.info(READY + " (worker {worker}, pid {pid})", worker=index, pid=os.getpid()))

        def reload(self, config: Config) -> list[str]:
            # The file's [admin] and [metrics] are worker 0's alone: not a change that needs a restart here.
            return super().reload(worker_config(config, index))

        def stopService(self) -> Any:
            counters = self.core.counters
            self.log.info("worker {worker} stopping: {requests} requests, {calls} calls started", worker=index,
                          requests=counters["requests"], calls=counters["calls_started"])
            return super().stopService()

    service = WorkerService(worker_config(config, index), reactor)
    adopt_sockets(service.listeners, options["_sockets"])
    return service
