"""Wiring: build the sipshield service tree from a Config.

``makeService(config)`` returns a MultiService that can run under twistd or be
added to any Twisted application.  Nothing here touches the network or the
disk until the service starts.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from sipshield.config import Config
from sipshield.proxy import ProxyCore
from sipshield.transport import (
    ServerTLSContext,
    SIPListener,
    generate_self_signed,
    load_tls_material,
)
from sipshield.transport._tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY

__all__ = ["SIPShieldService", "makeService"]


class SIPShieldService(MultiService):
    """The whole proxy: a controller and one child service per listener."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        self.core = ProxyCore(config.server.domains)
        self.tls_context: ServerTLSContext | None = None
        self.listeners: list[SIPListener] = []
        for lc in config.server.listen:
            listener = SIPListener(lc, self.core, config.limits, reactor)
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def _prepare_data_dir(self) -> None:
        data_dir = self.config.server.data_dir
        if not data_dir.exists():
            data_dir.mkdir(parents=True, mode=0o700)
            self.log.info("created data directory {path}", path=str(data_dir))

    def _prepare_tls(self) -> None:
        if not any(lc.kind == "tls" for lc in self.config.server.listen):
            return
        cfg = self.config
        material = load_tls_material(cfg.tls, cfg.server.data_dir, source=cfg.source)
        if material is None:
            names = list(cfg.server.domains) + ["localhost"]
            names += sorted({lc.interface for lc in cfg.server.listen if lc.interface not in ("0.0.0.0", "::")})
            cert_path = cfg.server.data_dir / SELF_SIGNED_CERT
            key_path = cfg.server.data_dir / SELF_SIGNED_KEY
            generate_self_signed(cert_path, key_path, names)
            self.log.info("generated a self-signed TLS certificate {path} for {names}", path=str(cert_path), names=", ".join(names))
            material = load_tls_material(cfg.tls, cfg.server.data_dir, source=cfg.source)
        self.tls_context = ServerTLSContext(material) if material is not None else None
        for listener in self.listeners:
            if listener.config.kind == "tls":
                listener.tls_context = self.tls_context

    def privilegedStartService(self) -> None:
        self._prepare_data_dir()
        self._prepare_tls()
        super().privilegedStartService()
        for listener in self.listeners:
            if listener.port is not None:
                self.core.add_local_address(*listener.address)

    def startService(self) -> None:
        if not self.listeners or self.listeners[0].port is None:
            # Started without privilegedStartService (some embedding hosts do).
            self._prepare_data_dir()
            self._prepare_tls()
        super().startService()
        for listener in self.listeners:
            self.core.add_local_address(*listener.address)

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Bound address of each listener, keyed by kind (first of each kind)."""
        found: dict[str, tuple[str, int]] = {}
        for listener in self.listeners:
            if listener.port is not None:
                found.setdefault(listener.config.kind, listener.address)
        return found


def makeService(config: Config, reactor: Any = None) -> SIPShieldService:
    """Build the sipshield service for ``config`` (an IService / MultiService)."""
    return SIPShieldService(config, reactor)
