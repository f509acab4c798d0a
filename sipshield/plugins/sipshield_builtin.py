"""The built-in pipeline stages, as twisted.plugin providers."""

from __future__ import annotations

from typing import Any

from sipshield.routing._plugins import StageFactory


def _sanity(service: Any, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import SanityStage

    return SanityStage(service.core.is_local)


def _options(service: Any, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import OptionsStage

    return OptionsStage(service.core.is_local)


def _dialog(service: Any, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import DialogStage

    return DialogStage(service.core.is_local)


def _registrar(service: Any, options: dict[str, Any]) -> Any:
    from sipshield.routing._registrar import Registrar

    reg = service.config.registrar
    return Registrar(
        service.location, service.config.server.domains, service.reactor,
        min_expires=reg.min_expires, max_expires=reg.max_expires, default_expires=reg.default_expires,
        is_local=service.core.is_local,
    )


def _location(service: Any, options: dict[str, Any]) -> Any:
    from sipshield.routing._registrar import LocationLookup

    return LocationLookup(service.location, service.config.server.domains, service.reactor, is_local=service.core.is_local)


def _routes(service: Any, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import StaticRoute, StaticRoutes

    return StaticRoutes([StaticRoute(r.target, r.match_domain, r.match_user_prefix, r.external) for r in service.config.routes])


def _final(service: Any, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import FinalStage

    return FinalStage(service.core.is_local)


sanity = StageFactory("sanity", "RFC 3261 16.3 checks: 416, 483, 482, 420", _sanity)
options = StageFactory("options", "answer OPTIONS addressed to the proxy with 200", _options)
dialog = StageFactory("dialog", "in-dialog and Route-carrying requests follow their route set", _dialog)
registrar = StageFactory("registrar", "REGISTER for the proxy's domains (RFC 3261 10, RFC 3327)", _registrar)
location = StageFactory("location", "relay to the registered contacts of an address-of-record", _location)
routes = StageFactory("routes", "static [[routes]] by domain and user prefix", _routes)
final = StageFactory("final", "404 for the proxy's domains, 403 otherwise", _final)
