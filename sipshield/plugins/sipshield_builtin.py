"""The built-in pipeline stages, as twisted.plugin providers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipshield.routing._plugins import StageFactory

if TYPE_CHECKING:
    from sipshield.environment import StageEnvironment


def _sanity(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import SanityStage

    return SanityStage(env.is_local)


def _options(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import OptionsStage

    return OptionsStage(env.is_local)


def _dialog(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import DialogStage

    return DialogStage(env.is_local)


def _registrar(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.routing._registrar import Registrar

    reg = env.config.registrar
    return Registrar(
        env.location, env.config.server.domains, env.reactor,
        min_expires=reg.min_expires, max_expires=reg.max_expires, default_expires=reg.default_expires,
        is_local=env.is_local, max_bindings=reg.max_bindings, max_bindings_per_identity=reg.max_bindings_per_identity,
    )


def _location(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.routing._registrar import LocationLookup

    return LocationLookup(env.location, env.config.server.domains, env.reactor, is_local=env.is_local, events=env.events)


def _routes(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import StaticRoute, StaticRoutes

    return StaticRoutes([StaticRoute(r.target, r.match_domain, r.match_user_prefix, r.external) for r in env.config.routes])


def _final(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.routing._stages import FinalStage

    return FinalStage(env.is_local)


sanity = StageFactory("sanity", "RFC 3261 16.3 checks: 416, 483, 482, 420", _sanity)
options = StageFactory("options", "answer OPTIONS addressed to the proxy with 200", _options)
dialog = StageFactory("dialog", "in-dialog and Route-carrying requests follow their route set", _dialog)
registrar = StageFactory("registrar", "REGISTER for the proxy's domains (RFC 3261 10, RFC 3327)", _registrar)
location = StageFactory("location", "relay to the registered contacts of an address-of-record", _location)
routes = StageFactory("routes", "static [[routes]] by domain and user prefix", _routes)
final = StageFactory("final", "404 for the proxy's domains, 403 otherwise", _final)


def _domain_map(env: StageEnvironment) -> Any:
    from sipshield.auth._stages import DomainMap

    return DomainMap(list(env.config.server.domains), env.is_local)


def _auth(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.auth._stages import DigestAuthStage
    from sipshield.auth._unanswered import UnansweredChallenges

    auth = env.config.auth
    return DigestAuthStage(
        env.portal, env.nonces, _domain_map(env), auth.algorithms, auth.trusted_sources, auth.trusted_role,
        trunks=env.trunks, bearer=env.bearer, in_dialog=env.routed_by_us, events=env.events, profiles=auth.profiles,
        downgrade=env.downgrade, unanswered=UnansweredChallenges(env.reactor, auth.nonce_lifetime),
    )


def _rbac(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.auth._stages import RBACStage

    return RBACStage(env.config.roles, _domain_map(env), _is_external(env))


def _is_external(env: StageEnvironment) -> Any:
    """Would an ``external = true`` [[routes]] entry carry this request?"""
    from sipshield.routing._stages import StaticRoute

    external = [StaticRoute(r.target, r.match_domain, r.match_user_prefix, r.external) for r in env.config.routes if r.external]
    return lambda request: any(route.matches(request) for route in external)


def _egress(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.security._egress import EgressPolicy, RolePrefixes
    from sipshield.state import MemoryShieldState

    egress = env.config.egress
    return EgressPolicy(
        env.reactor, env.shield if env.shield is not None else MemoryShieldState(), _is_external(env),
        roles={role: RolePrefixes(allow, deny) for role, (allow, deny) in egress.roles.items()},
        max_calls_per_minute=egress.max_calls_per_minute, max_concurrent_calls=egress.max_concurrent_calls,
        max_call_duration=egress.max_call_duration, events=env.events,
    )


def _media(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.security._media import MediaPolicy

    return MediaPolicy(env.config.media.srtp, events=env.events)


def _ratelimit(env: StageEnvironment, options: dict[str, Any]) -> Any:
    from sipshield.security._admission import Bucket, UserRateLimiter
    from sipshield.state import MemoryShieldState

    limits = env.config.ratelimit
    return UserRateLimiter(
        env.reactor, env.shield if env.shield is not None else MemoryShieldState(),
        per_user=None if limits.per_user is None or not limits.enabled else Bucket(*limits.per_user),
        per_method={m: Bucket(*b) for m, b in limits.per_user_methods.items()} if limits.enabled else {},
        action=limits.action, retry_after=limits.retry_after, exempt=env.exempt_from_limits, events=env.events,
    )


ratelimit = StageFactory("ratelimit", "token buckets per authenticated user ([ratelimit] per_user, per_user_methods)", _ratelimit)
auth = StageFactory("auth", "SIP digest authentication (SHA-256, SHA-512-256, MD5 if enabled; per source network profiles); trusted sources", _auth)
egress = StageFactory("egress", "toll-fraud policy for external routes: number prefixes per role, external calls a minute per user", _egress)
media = StageFactory("media", "SRTP media policy ([media] srtp): SDP offers and answers of INVITE, UPDATE, PRACK; 488 + Warning", _media)
rbac = StageFactory("rbac", "role permissions for REGISTER and every out-of-dialog request: register, call, call:external; own AOR and From only", _rbac)
