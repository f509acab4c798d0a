"""Building the optional auth mechanisms from configuration (used by the
service and by ``sipshield check-config``, so both refuse the same mistakes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sipshield.auth._bearer import BearerSettings, BearerValidator, challenge_value
from sipshield.auth._mtls import TrunkAccount, TrunkMap, normalize_identity
from sipshield.config import Config, ConfigError

if TYPE_CHECKING:
    from sipshield.auth._users import UserStore

__all__ = ["BearerSetup", "build_admin_clients", "build_bearer", "build_ldap", "build_trunks", "load_nonce_secret", "sql_user_store", "store_algorithms",
           "user_report"]

_BEARER_KEYS = {"issuer", "audience", "keys", "algorithms", "identity_claim", "roles_claim", "leeway", "default_domain", "domains", "authz_server", "require_tls"}


class BearerSetup:
    """The validator plus how to challenge for and accept tokens."""

    def __init__(self, validator: BearerValidator, authz_server: str | None, require_tls: bool) -> None:
        self.validator = validator
        self.authz_server = authz_server
        self.require_tls = require_tls


def build_admin_clients(config: Config) -> dict[str, tuple[str, ...]]:
    """``[[admin.clients]]``: canonical certificate identity (as trunks' are
    named, :func:`normalize_identity`) -> roles.  Raises ConfigError naming
    the entry for an identity that is not one, or one given twice."""
    clients: dict[str, tuple[str, ...]] = {}
    for index, (identity, roles) in enumerate(config.admin.clients):
        key = f"admin.clients[{index}].identity"
        try:
            canonical = normalize_identity(identity)
        except ValueError as e:
            raise ConfigError(str(e), key=key, source=config.source) from None
        if canonical in clients:
            raise ConfigError(f"{identity!r} is configured twice", key=key, source=config.source)
        clients[canonical] = roles
    return clients


def build_trunks(config: Config) -> TrunkMap | None:
    if not config.auth.trunks:
        return None
    mapping = {}
    for index, (identity, name, domain, roles) in enumerate(config.auth.trunks):
        try:
            key = normalize_identity(identity)
        except ValueError as e:
            raise ConfigError(str(e), key=f"auth.tls.trunks[{index}].identity", source=config.source) from None
        mapping[key] = TrunkAccount(name, domain or key.removeprefix("sip:"), tuple(roles))
    try:
        return TrunkMap(mapping)
    except ValueError as e:
        raise ConfigError(str(e), key="auth.tls.trunks", source=config.source) from None


def build_bearer(config: Config, reactor: Any) -> BearerSetup | None:
    raw = config.auth.bearer
    if raw is None:
        return None
    unknown = sorted(set(raw) - _BEARER_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(unknown)}", key="auth.bearer", source=config.source)
    missing = [k for k in ("issuer", "audience", "keys") if k not in raw]
    if missing:
        raise ConfigError(f"{', '.join(missing)} required", key="auth.bearer", source=config.source)
    domains = config.server.domains
    try:
        settings = BearerSettings(
            issuer=str(raw["issuer"]), audience=str(raw["audience"]), keys=raw["keys"],
            algorithms=tuple(raw.get("algorithms", ("RS256", "ES256"))),
            identity_claim=str(raw.get("identity_claim", "sub")), roles_claim=str(raw.get("roles_claim", "roles")),
            leeway=int(raw.get("leeway", 30)), default_domain=raw.get("default_domain", domains[0] if domains else None),
            domains=tuple(raw.get("domains", domains)),
        )
        validator = BearerValidator(settings, reactor)
    except ConfigError as e:
        raise ConfigError(str(e), source=config.source) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e), key="auth.bearer", source=config.source) from None
    return BearerSetup(validator, _authz_server(raw.get("authz_server"), config.source), bool(raw.get("require_tls", True)))


def _authz_server(value: Any, source: str | None) -> str | None:
    """``[auth.bearer] authz_server``, checked now as every challenge will carry it
    (a control character would otherwise fail each challenge, not the start)."""
    key = "auth.bearer.authz_server"
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError("must be a non-empty string (where a UA gets a token, RFC 8898 2.3)", key=key, source=source)
    try:
        challenge_value("", value)
    except ValueError as e:
        raise ConfigError(str(e), key=key, source=source) from None
    return value


def build_ldap(config: Config, reactor: Any) -> Any:
    """The LDAPChecker for ``[ldap]``, or None when the ldap backend is not used.
    ldaptor is imported only here: installs without LDAP never load it."""
    if "ldap" not in config.auth.backends or config.ldap is None:
        return None
    try:
        from sipshield.auth._ldap import LDAPChecker, LDAPSettings
    except ImportError as e:
        raise ConfigError(
            f"the ldap backend needs ldaptor ({e}): pip install --no-deps ldaptor && pip install pyparsing six",
            key="auth.backends", source=config.source,
        ) from None
    raw = dict(config.ldap)
    if "group_roles" in raw:
        raw["group_roles"] = {str(k): tuple(v) for k, v in dict(raw["group_roles"]).items()}
    try:
        settings = LDAPSettings(**raw)
    except TypeError as e:
        raise ConfigError(f"unknown or missing key: {e}", key="ldap", source=config.source) from None
    except ValueError as e:
        raise ConfigError(str(e), key="ldap", source=config.source) from None
    return LDAPChecker(settings, reactor)


def load_nonce_secret(config: Config) -> bytes:
    """The secret nonces are signed under (``Config.nonce_secret_file``):
    ``[auth] nonce_secret_file``, which must exist, be 0600 and hold at
    least 16 bytes (a ConfigError naming the key otherwise), else
    data_dir/nonce.secret, created on first start."""
    from sipshield.auth._nonce import load_or_create_secret, load_secret

    path, configured = config.nonce_secret_file
    if not configured:
        return load_or_create_secret(path)
    try:
        return load_secret(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: make one (head -c 32 /dev/urandom > FILE; chmod 600 FILE) and copy it to every node",
                          key="auth.nonce_secret_file", source=config.source) from None
    except (PermissionError, ValueError) as e:
        raise ConfigError(str(e), key="auth.nonce_secret_file", source=config.source) from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", key="auth.nonce_secret_file", source=config.source) from None


def sql_user_store(config: Config, algorithms: Sequence[str] | None = None) -> UserStore:
    """The SQL user store of *config* (``Config.database``), its HA1 values
    encrypted under the configured key file, keeping an HA1 for
    *algorithms* (default: every algorithm some source is offered, ``[auth]
    algorithms`` and every profile's).  Opens no file yet."""
    from sipshield.auth._keys import KeyFile
    from sipshield.auth._users import UserStore

    path, setting = config.credential_key_file
    return UserStore(config.database, algorithms=list(algorithms or config.auth.enabled_algorithms), keys=KeyFile(path, setting=setting))


def store_algorithms(config: Config, backend: str) -> tuple[str, ...]:
    """The enabled algorithms (``[auth] algorithms`` and every profile's) a
    user store of *backend* keeps an HA1 for (an htdigest file holds MD5 only)."""
    return tuple(a for a in config.auth.enabled_algorithms if backend != "file" or a == "MD5")


def user_report(config: Config, stores: Any) -> tuple[list[str], list[str]]:
    """Lines and warnings about the user stores: how many users each holds,
    and how many lack credentials for an enabled algorithm (with the fix).
    *stores* pairs each ``[auth] backends`` entry with its open store, or
    with None for one that holds no countable users (LDAP).  Blocking."""
    from sipshield.auth._users import CredentialStoreError, UserStore, describe_keys, describe_users

    lines: list[str] = []
    warnings: list[str] = []
    for backend, store in stores:
        if store is None:
            lines.append(f"{backend}: users are not counted (the directory holds them)")
            continue
        try:
            records = store.list()
        except (CredentialStoreError, OSError) as e:
            warnings.append(f"users ({backend}): cannot read the user store: {e}")
            continue
        line, warning = describe_users(backend, records, store_algorithms(config, backend))
        lines.append(line)
        if warning is not None:
            warnings.append(warning)
        if isinstance(store, UserStore):
            key_line, key_warnings = describe_keys(backend, store)
            lines.append(key_line)
            warnings += key_warnings
    return lines, warnings


def reencrypt(store: Any, rotate: bool = False) -> list[str]:
    """Migrate (and with *rotate*, first add a new current key): every value
    not under the current key is written again under it; once no plain-text
    value is left, the key file refuses them from then on.  What was done,
    a line each.  ``sipshield keys migrate|rotate`` and the service's first
    start on a database of plain-text values (:func:`migrate_at_start`)."""
    keyfile = store.keys
    keys = keyfile.load_or_create(accept_plaintext=True)
    lines = []
    if rotate:
        keys = keyfile.update(lambda k: k.rotated())
        lines.append(f"new current key {keys.current} (the old ones stay until `sipshield keys prune`)")
    result = store.reencrypt(keys)
    lines.append(f"{result.reencrypted} value(s) written under key {keys.current}")
    lines += [f"  not readable, left as it is: {why}" for why in result.unreadable]
    if keys.accept_plaintext and store.key_usage().plaintext == 0:
        keyfile.update(lambda k: k.refusing_plaintext())
        lines.append("no plain-text value is left: the key file now refuses them")
    return lines


def migrate_at_start(store: Any) -> list[str]:
    """Encrypt the plain-text HA1 values a database from before encryption
    holds, once, when the service starts on it (in the auth pool); nothing
    when there are none (a new database creates no key file here)."""
    if store.key_usage().plaintext == 0:
        return []
    return reencrypt(store)
