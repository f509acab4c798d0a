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
        is_local=service.core.is_local, max_bindings_per_identity=reg.max_bindings_per_identity,
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


def _domain_map(service: Any) -> Any:
    from sipshield.auth._stages import DomainMap

    return DomainMap(list(service.config.server.domains), service.core.is_local)


def _auth(service: Any, options: dict[str, Any]) -> Any:
    from sipshield.auth._stages import DigestAuthStage

    auth = service.config.auth
    return DigestAuthStage(
        service.portal, lambda: service.nonces, _domain_map(service), auth.algorithms, auth.trusted_sources, auth.trusted_role,
        trunks=service.trunks, bearer=service.bearer, in_dialog=service.core.routed_by_us,
    )


def _rbac(service: Any, options: dict[str, Any]) -> Any:
    from sipshield.auth._stages import RBACStage
    from sipshield.routing._stages import StaticRoute

    external = [StaticRoute(r.target, r.match_domain, r.match_user_prefix, r.external) for r in service.config.routes if r.external]
    return RBACStage(service.config.roles, _domain_map(service), lambda request: any(route.matches(request) for route in external))


auth = StageFactory("auth", "SIP digest authentication (SHA-256, SHA-512-256, MD5 if enabled); trusted sources", _auth)
rbac = StageFactory("rbac", "role permissions for REGISTER and every out-of-dialog request: register, call, call:external; own AOR and From only", _rbac)
