"""twistd integration: ``twistd sipshield [--config FILE]``."""

from __future__ import annotations

import gc
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
    ]

    def postOptions(self) -> None:
        try:
            self["_config"] = build_config(self["config"], self["data-dir"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


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
    from sipshield.service import SIPShieldService
    from sipshield.transport import ListenerError

    class TwistdService(SIPShieldService):
        """Under twistd, a listener that cannot open ends the process with one
        clear line and exit status 1 instead of a traceback."""

        def privilegedStartService(self) -> None:
            try:
                super().privilegedStartService()
            except ListenerError as e:
                raise SystemExit(f"sipshield: {e}") from None

        def startService(self) -> None:
            super().startService()
            # Under twistd the process is ours: move everything built at
            # start-up out of the cyclic collector's view, so its passes only
            # scan what traffic allocates.
            gc.collect()
            gc.freeze()

    return TwistdService(options["_config"])
