"""The ``sipshield`` command: operator tools beside ``twistd sipshield``."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import Any

from sipshield.auth._passwords import MIN_LENGTH as MIN_PASSWORD_LENGTH
from sipshield.auth._setup import reencrypt
from sipshield.config import Config, ConfigError

__all__ = ["main"]


def twistd_sees_plugin() -> bool:
    """True when twistd's plugin discovery finds the sipshield dropin."""
    from twisted.plugin import IPlugin, getPlugins

    import twisted.plugins

    return any(getattr(p, "tapname", None) == "sipshield" for p in getPlugins(IPlugin, twisted.plugins))


def _check_config(args: argparse.Namespace) -> int:
    from sipshield.tap import build_config

    try:
        config = build_config(args.file)
    except ConfigError as e:
        print(f"sipshield: {e}", file=sys.stderr)
        return 1
    where = config.source or "embedded default"
    print(f"{where}: ok")
    for label, text in config.posture():
        print(f"  {label}: {text}")
    users, user_warnings = _count_users(config)
    for line in users:
        print(f"  users: {line}")
    warnings = config.warnings() + user_warnings
    for warning in warnings:
        print(f"  WARNING: {warning}")
    if twistd_sees_plugin():
        print("  twistd plugin: visible")
    else:
        print(
            "  twistd plugin: NOT visible to twistd; install without -e, or regenerate the cache with\n"
            '    python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"'
        )
    if warnings and args.strict:
        print(f"sipshield: {len(warnings)} warning(s), and --strict fails on warnings", file=sys.stderr)
        return 1
    return 0


def _count_users(config: Config) -> tuple[list[str], list[str]]:
    """user_report over the configured stores, without creating any: a
    SQLite database that does not exist yet has no users."""
    from pathlib import Path

    from sipshield.auth import HtdigestUserStore
    from sipshield.auth._setup import sql_user_store, store_algorithms, user_report

    stores: list[tuple[str, Any]] = []
    opened: list[Any] = []
    empty: list[str] = []
    try:
        for backend in config.auth.backends:
            if backend == "ldap":
                stores.append((backend, None))
            elif backend == "file" and config.auth.file is not None:
                stores.append((backend, HtdigestUserStore(config.auth.file)))
            elif backend == "sql":
                url = config.database
                if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
                    empty.append(f"0 user(s) in {backend} (its database is created on first start)")
                    continue
                store = sql_user_store(config, store_algorithms(config, backend))
                opened.append(store)
                stores.append((backend, store))
        lines, warnings = user_report(config, stores)
        return empty + lines, warnings
    except Exception as e:  # an unreachable database is reported, not a traceback
        return [], [f"users: cannot open the user store: {e}"]
    finally:
        for store in opened:
            store.close()


# -- sipshield user ---------------------------------------------------------------------


class _UserCommandError(Exception):
    """A ``sipshield user`` failure to print as one line on stderr (exit 1)."""


def _user_config(args: argparse.Namespace) -> Config:
    from sipshield.config import default_config, load_config

    return load_config(args.config) if args.config else default_config()


def _user_domain(args: argparse.Namespace, config: Config) -> str:
    if args.domain:
        return str(args.domain)
    return config.server.domains[0] if config.server.domains else "localhost"


def _open_user_store(args: argparse.Namespace, config: Config) -> Any:
    """The store the command works on: the config's SQL database (schema
    created if missing), or an htdigest file with ``--backend file``."""
    backend = args.backend or ("file" if args.file else "sql")
    if backend == "file":
        from sipshield.auth._htdigest import HtdigestUserStore

        path = args.file or config.auth.file
        if not path:
            raise _UserCommandError("--backend file needs --file PATH (an htdigest file) or [auth] file")
        return HtdigestUserStore(path)
    if args.file:
        raise _UserCommandError("--file is only for --backend file")
    return _open_sql_store(config)


def _open_sql_store(config: Config) -> Any:
    """The config's SQL user store, its schema created if missing."""
    from sipshield.auth._setup import sql_user_store

    if config.database_url is None:
        # The default SQLite file lives in data_dir: create it as the server
        # would (owner only), so the running server sees the same users.
        data_dir = config.server.data_dir
        if not data_dir.exists():
            data_dir.mkdir(parents=True, mode=0o700)
    # One HA1 per algorithm the server offers to some source ([auth]
    # algorithms and every [[auth.profiles]] entry's).
    store = sql_user_store(config)
    try:
        store.create_schema()
    except BaseException:
        store.close()
        raise
    return store


def _read_password(args: argparse.Namespace, name: str) -> str:
    """One line of stdin with ``--password-stdin``, else a prompt asked twice.
    Passwords never come from the command line (they would show in ps and
    shell history)."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise _UserCommandError("no password on standard input")
        return password
    try:
        password = getpass.getpass(f"Password for {name}: ")
        again = getpass.getpass("Again: ")
    except EOFError:
        raise _UserCommandError("no password given") from None
    if password != again:
        raise _UserCommandError("passwords do not match")
    if not password:
        raise _UserCommandError("the password must not be empty")
    return password


def _strong_password(args: argparse.Namespace, name: str, domain: str) -> str:
    """The password read as ``_read_password`` does, refused when weak
    (``sipshield.auth._passwords``) unless ``--allow-weak``, which warns."""
    from sipshield.auth._passwords import weakness

    password = _read_password(args, f"{name}@{domain}")
    why = weakness(password, name, args.min_length)
    if why is not None:
        if not args.allow_weak:
            raise _UserCommandError(
                f"weak password for {name}@{domain}: {why}; choose at least {args.min_length} characters that are not the user "
                "name or a common password (or pass --allow-weak)"
            )
        print(f"sipshield user {args.user_command}: WARNING: weak password for {name}@{domain} ({why}), kept because of --allow-weak",
              file=sys.stderr)
    return password


def _defined_roles(roles: Sequence[str], config: Config) -> tuple[str, ...]:
    """*roles*, refused when one is not defined in the config's ``[roles]``."""
    unknown = sorted(set(roles) - set(config.roles))
    if unknown:
        defined = ", ".join(sorted(config.roles)) or "none"
        raise _UserCommandError(f"role(s) {', '.join(unknown)} not defined in [roles] of {config.source or 'the embedded default'} (defined: {defined})")
    return tuple(roles)


def _user_add(args: argparse.Namespace, store: Any, domain: str) -> str:
    from sipshield.auth._users import check_domain, check_username, normalize_roles

    name, domain = check_username(args.name), check_domain(domain)
    roles = _defined_roles(normalize_roles(args.roles or ""), args.config_object)
    if args.admin and args.backend_kind == "file":
        raise _UserCommandError("--admin needs the SQL backend (an htdigest file holds no admin hash)")
    password = _strong_password(args, name, domain)
    if args.admin:
        store.add(name, domain, password, roles=roles, admin=True)
    else:
        store.add(name, domain, password, roles=roles)
    return f"added {name}@{domain}"


def _user_remove(args: argparse.Namespace, store: Any, domain: str) -> str:
    from sipshield.auth._users import UnknownUserError

    if not store.remove(args.name, domain):
        raise UnknownUserError(args.name, domain.lower())
    return f"removed {args.name}@{domain.lower()}"


def _user_passwd(args: argparse.Namespace, store: Any, domain: str) -> str:
    from sipshield.auth._users import UnknownUserError, check_domain, check_username

    name, domain = check_username(args.name), check_domain(domain)
    if store.get(name, domain) is None:
        # Say so before prompting for a password that would go nowhere.
        raise UnknownUserError(name, domain)
    store.set_password(name, domain, _strong_password(args, name, domain))
    return f"password changed for {name}@{domain}"


def _user_roles(args: argparse.Namespace, store: Any, domain: str) -> str:
    from sipshield.auth._users import UnknownUserError, check_domain, check_username, normalize_roles

    name, domain = check_username(args.name), check_domain(domain)
    record = store.get(name, domain)
    if record is None:
        raise UnknownUserError(name, domain)
    if args.set is not None:
        roles = set(normalize_roles(args.set))
    else:
        roles = set(record.roles)
    roles |= set(normalize_roles(args.add or ""))
    roles -= set(normalize_roles(args.remove or ""))
    if args.set is not None or args.add:
        _defined_roles(sorted(roles - set(record.roles)), args.config_object)
    if args.set is not None or args.add or args.remove:
        store.set_roles(name, domain, sorted(roles))
    return f"{name}@{domain}: {','.join(sorted(roles)) or '(no roles)'}"


def _user_list(args: argparse.Namespace, store: Any, domain: str | None) -> str:
    locks = {(lock.username, lock.realm) for lock in _with_locks(args.config_object, lambda locks: locks.list(), [])}
    rows = [("user", "domain", "roles", "enabled", "algorithms", "md5")]
    for r in store.list(args.domain):
        md5 = "locked" if (r.username, r.domain) in locks else "-"
        rows.append((r.username, r.domain, ",".join(r.roles) or "-", "yes" if r.enabled else "no", ",".join(r.algorithms), md5))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _with_locks(config: Config, use: Any, nothing: Any) -> Any:
    """``use(store)`` on the MD5 downgrade lock store (the lock table in the
    config's database, whatever the user backend: see auth/_downgrade.py);
    *nothing* when that database is a SQLite file not created yet."""
    from pathlib import Path

    from sipshield.auth._downgrade import DowngradeLockStore, LockStoreError

    url = config.database
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return nothing
    store = DowngradeLockStore(url)
    try:
        return use(store)
    except LockStoreError as e:
        raise _UserCommandError(str(e)) from None
    finally:
        store.close()


def _md5_state(lock: Any) -> str:
    if lock is None:
        return "md5: not locked"
    import datetime

    when = datetime.datetime.fromtimestamp(lock.since, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"md5: locked since {when} (a {lock.algorithm} login; `sipshield user unlock-md5 {lock.username}` lets MD5 in again)"


def _user_show(args: argparse.Namespace, store: Any, domain: str) -> str:
    from sipshield.auth._users import UnknownUserError, check_domain, check_username

    name, domain = check_username(args.name), check_domain(domain)
    record = store.get(name, domain)
    lock = _with_locks(args.config_object, lambda locks: locks.get(name, domain), None)
    if record is None and lock is None:
        raise UnknownUserError(name, domain)
    lines = [f"{name}@{domain}"]
    if record is None:
        lines.append(f"  not in the {args.backend_kind} user store (a directory user?)")
    else:
        lines.append(f"  roles: {','.join(record.roles) or '(none)'}")
        lines.append(f"  enabled: {'yes' if record.enabled else 'no'}")
        lines.append(f"  algorithms: {','.join(record.algorithms) or '(none)'}")
    lines.append(f"  {_md5_state(lock)}")
    return "\n".join(lines)


def _user_unlock_md5(args: argparse.Namespace, store: Any, domain: str) -> str:
    from sipshield.auth._users import check_domain, check_username

    name, domain = check_username(args.name), check_domain(domain)
    if not _with_locks(args.config_object, lambda locks: locks.unlock(name, domain), False):
        return f"MD5 was not locked for {name}@{domain}"
    return f"MD5 unlocked for {name}@{domain}"


def _user(args: argparse.Namespace) -> int:
    from sipshield.auth._users import CredentialStoreError

    try:
        config = args.config_object = _user_config(args)
        args.backend_kind = args.backend or ("file" if args.file else "sql")
        store = _open_user_store(args, config)
        try:
            out = args.user_func(args, store, _user_domain(args, config))
        finally:
            close = getattr(store, "close", None)
            if close is not None:
                close()
    except (_UserCommandError, ConfigError, CredentialStoreError, ValueError, LookupError, OSError) as e:
        message = e.args[0] if isinstance(e, LookupError) and e.args else e
        print(f"sipshield user {args.user_command}: {message}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_user_parser(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML configuration (the embedded default, ./sipshield-data, when omitted)")
    common.add_argument("--domain", metavar="D", help="domain, also the digest realm (default: the first [server] domains, else localhost)")
    common.add_argument("--backend", choices=("sql", "file"), help="sql: the configured database (default); file: an htdigest file (MD5 only)")
    common.add_argument("--file", metavar="PATH", help="the htdigest file for --backend file (roles in PATH.roles)")
    password = argparse.ArgumentParser(add_help=False)
    password.add_argument("--password-stdin", action="store_true", help="read the password from one line of standard input instead of a prompt")
    password.add_argument("--allow-weak", action="store_true", help="keep a weak password (short, the user name, a common one) with a warning")
    password.add_argument("--min-length", type=_positive, default=MIN_PASSWORD_LENGTH, metavar="N",
                          help=f"shortest password accepted without --allow-weak (default {MIN_PASSWORD_LENGTH})")

    user = sub.add_parser("user", help="manage SIP users and their digest credentials")
    commands = user.add_subparsers(dest="user_command", required=True, metavar="{add,remove,list,show,passwd,roles,unlock-md5}")
    user.set_defaults(func=_user)

    add = commands.add_parser("add", parents=[common, password], help="add a user (password prompted twice, or --password-stdin)")
    add.add_argument("name", help="SIP user name (RFC 3261 user part)")
    add.add_argument("--roles", metavar="r1,r2", help="comma-separated roles")
    add.add_argument("--admin", action="store_true", help="also store an argon2/bcrypt hash for the admin API")
    add.set_defaults(user_func=_user_add)

    remove = commands.add_parser("remove", parents=[common], help="remove a user")
    remove.add_argument("name")
    remove.set_defaults(user_func=_user_remove)

    listing = commands.add_parser("list", parents=[common], help="list users (of --domain only, when given)")
    listing.set_defaults(user_func=_user_list)

    show = commands.add_parser("show", parents=[common], help="show a user: roles, algorithms, whether MD5 is locked")
    show.add_argument("name")
    show.set_defaults(user_func=_user_show)

    unlock = commands.add_parser("unlock-md5", parents=[common],
                                 help="accept MD5 answers from a user again, after a SHA-2 login locked them out (the downgrade lock)")
    unlock.add_argument("name")
    unlock.set_defaults(user_func=_user_unlock_md5)

    passwd = commands.add_parser("passwd", parents=[common, password], help="set a new password")
    passwd.add_argument("name")
    passwd.set_defaults(user_func=_user_passwd)

    roles = commands.add_parser("roles", parents=[common], help="show or change a user's roles")
    roles.add_argument("name")
    roles.add_argument("--set", metavar="r1,r2", help="replace the roles ('' for none)")
    roles.add_argument("--add", metavar="r1,r2", help="add roles")
    roles.add_argument("--remove", metavar="r1,r2", help="remove roles")
    roles.set_defaults(user_func=_user_roles)


def _admin_client(args: argparse.Namespace) -> Any:
    """The admin API client for ``--url`` or the config's ``[admin]``, with
    the local token (data_dir/admin.token, or $SIPSHIELD_ADMIN_TOKEN); with
    ``--cert``/``--key`` ($SIPSHIELD_ADMIN_CERT, $SIPSHIELD_ADMIN_KEY) a
    client certificate instead, over the HTTPS listener (``[admin.tls]``,
    its certificate checked against ``--cacert``, $SIPSHIELD_ADMIN_CACERT)."""
    import os

    from sipshield.ops._client import AdminClient

    config = _user_config(args)
    certificate = getattr(args, "cert", None) or os.environ.get("SIPSHIELD_ADMIN_CERT") or None
    key = getattr(args, "key", None) or os.environ.get("SIPSHIELD_ADMIN_KEY") or None
    cacert = getattr(args, "cacert", None) or os.environ.get("SIPSHIELD_ADMIN_CACERT") or None
    url = args.url
    if url is None:
        admin = config.admin
        port = admin.port if certificate is None else admin.tls_port
        if certificate is not None and admin.tls is None:
            raise ConfigError("a client certificate needs the HTTPS listener ([admin.tls]), or give --url https://...", key="admin.tls", source=config.source)
        if not admin.enabled or port == 0:
            key_name = "admin.port" if certificate is None else "admin.tls_port"
            raise ConfigError("[admin] is off or on a port chosen at start (port = 0): give --url", key=key_name, source=config.source)
        host = f"[{admin.host}]" if ":" in admin.host else admin.host
        url = f"{'http' if certificate is None else 'https'}://{host}:{port}"
    token = os.environ.get("SIPSHIELD_ADMIN_TOKEN")
    if not token and certificate is None:
        path = config.server.data_dir / "admin.token"
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the admin token {path}: {e.strerror} (the server writes it at its first start)", key="server.data_dir",
                              source=config.source) from None
    return AdminClient(url.rstrip("/"), token or "", certificate=certificate, key=key, cacert=cacert)


def _when(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _admin_command(name: str, act: Any) -> Any:
    """A CLI command that talks to the admin API: errors become one line and exit 1."""
    from sipshield.ops._client import AdminError, AdminUnavailable

    def run(args: argparse.Namespace) -> int:
        try:
            result = act(args, _admin_client(args))
        except (ConfigError, AdminError, AdminUnavailable) as e:
            print(f"sipshield {name}: {e}", file=sys.stderr)
            return 1
        if getattr(args, "json", False):
            import json

            print(json.dumps(result, indent=2, sort_keys=True))
        return 0

    return run


def _print_bans(bans: list[dict[str, Any]]) -> None:
    for ban in bans:
        print(f"{ban['key']}\tuntil {_when(ban['until'])} ({ban['remaining']} s)\t{ban['reason']}")


def _ban_list(args: argparse.Namespace) -> int:
    """``sipshield ban list``: the running server's bans; when it does not
    answer, the ones it last saved in data_dir/bans.json."""
    import time

    from sipshield.ops._client import AdminError, AdminUnavailable
    from sipshield.security import BanFile

    try:
        config = _user_config(args)
        try:
            bans = _admin_client(args).bans()
        except (AdminUnavailable, ConfigError) as e:
            print(f"sipshield ban list: {e}; showing data_dir/bans.json as last saved", file=sys.stderr)
        else:
            if not args.json:
                _print_bans(bans)
                print(f"{len(bans)} ban(s) in force", file=sys.stderr)
            else:
                import json

                print(json.dumps(bans, indent=2, sort_keys=True))
            return 0
    except (ConfigError, AdminError) as e:
        print(f"sipshield ban list: {e}", file=sys.stderr)
        return 1
    path = config.server.data_dir / "bans.json"
    now = time.time()
    saved = sorted((b for b in BanFile(path).load() if b.until > now), key=lambda b: b.until)
    _print_bans([{"key": b.key, "until": b.until, "remaining": int(b.until - now), "reason": b.reason} for b in saved])
    workers = " and the workers' bans.worker-K.json" if config.server.workers > 1 else ""
    print(f"{len(saved)} ban(s) in force in {path}{workers}", file=sys.stderr)
    return 0


def _ban_add(args: argparse.Namespace, client: Any) -> Any:
    ban = client.ban(args.address, args.duration, args.reason)
    if not args.json:
        print(f"banned {ban['key']} until {_when(ban['until'])} ({ban['remaining']} s)")
    return ban


def _ban_remove(args: argparse.Namespace, client: Any) -> Any:
    client.unban(args.key)
    if not args.json:
        print(f"lifted the ban on {args.key}")
    return {"unbanned": args.key}


def _status(args: argparse.Namespace, client: Any) -> Any:
    status = client.status()
    if not args.json:
        print(f"sipshield {status['version']}, up {status['uptime']:.0f} s")
        for listener in status["listeners"]:
            print(f"listening: {listener['transport']} {listener['host']}:{listener['port']}")
        print(f"server transactions: {status['server_transactions']}, proxied requests in progress: {status['proxied_requests']}, bans: {status['bans']}")
        print("counters: " + ", ".join(f"{k} {v}" for k, v in sorted(status["counters"].items())))
        for line in _rates_lines(client.rates()):
            print(line)
    return status


def _per_second(rates: dict[str, float]) -> str:
    """``12.5/s (INVITE 2.5, REGISTER 10)``: the total and its non-zero parts."""
    parts = ", ".join(f"{name} {rate:g}" for name, rate in sorted(rates.items(), key=lambda item: -item[1]) if rate)
    return f"{sum(rates.values()):g}/s" + (f" ({parts})" if parts else "")


def _rates_lines(rates: dict[str, Any]) -> list[str]:
    """``sipshield status``'s rates summary (GET /v1/rates)."""
    if not rates["seconds"]:
        return [f"rates: not measured yet (one reading every {rates['interval']:g} s)"]
    return [
        f"rates over the last {rates['seconds']:g} s: requests {_per_second(rates['requests'])}; responses sent {_per_second(rates['responses'])}",
        f"  auth failures {_per_second(rates['auth_failures'])}; drops {_per_second(rates['drops'])}; refused {_per_second(rates['refused'])}",
    ]


def _top(args: argparse.Namespace, client: Any) -> Any:
    top = client.top_talkers(args.limit, args.by)
    if not args.json:
        print(f"top talkers by {args.by.replace('_', ' ')} since {_when(top['since'])} (the last {top['seconds']:.0f} s)")
        print("source	requests	auth failures	banned")
        for row in top["talkers"]:
            print(f"{row['source']}	{row['requests']}	{row['auth_failures']}	{'yes' if row['banned'] else 'no'}")
    return top


def _registrations(args: argparse.Namespace, client: Any) -> Any:
    rows = client.registrations(args.limit)
    if not args.json:
        for row in rows:
            print(f"{row['aor']}\t{row['contact']}\t{row['expires_in']} s\t{row['source'] or '-'}\t{row['user_agent'] or '-'}")
        print(f"{len(rows)} binding(s)", file=sys.stderr)
    return rows


def _tls_reload(args: argparse.Namespace, client: Any) -> Any:
    served = client.reload_tls()
    if not args.json:
        print(f"now serving {served['subject']}, valid until {served['not_after']}")
    return served


def _reload(args: argparse.Namespace, client: Any) -> Any:
    done = client.reload()
    if not args.json:
        print("reloaded: " + (", ".join(done["reloaded"]) or "nothing had changed"))
        if done["tls"] is not None:
            print(f"TLS: serving {done['tls']['subject']}, valid until {done['tls']['not_after']}")
    return done


def _explain(args: argparse.Namespace, client: Any) -> Any:
    source = f"{args.transport} {args.source}"
    result = client.explain(args.request, source, args.user, args.header or None)
    if not args.json:
        print(f"{result['request']}  from {result['source']}" + (f"  as {result['user']}" if result["user"] else ""))
        for step in result["steps"]:
            mark = "  <- decides here" if step["decides"] else ""
            print(f"{step['phase']:<9} {step['stage']:<10} {step['verdict']}: {step['reason']}{mark}")
        print(f"outcome: {result['outcome']}")
    return result


def _add_admin_parsers(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML configuration (the embedded default, ./sipshield-data, when omitted)")
    common.add_argument("--url", help="the admin API (default: http://[admin] host:port of the config)")
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    common.add_argument("--cert", metavar="PEM", help="a client certificate for the HTTPS listener ([admin.tls]; or $SIPSHIELD_ADMIN_CERT)")
    common.add_argument("--key", metavar="PEM", help="its private key (or $SIPSHIELD_ADMIN_KEY; default: in the --cert file)")
    common.add_argument("--cacert", metavar="PEM", help="the CA the server's certificate is checked against (or $SIPSHIELD_ADMIN_CACERT)")
    ban = sub.add_parser("ban", help="bans: list, add, remove (through the running server's admin API)")
    commands = ban.add_subparsers(dest="ban_command", required=True, metavar="{list,add,remove}")
    commands.add_parser("list", parents=[common], help="the bans in force (data_dir/bans.json when the server does not answer)").set_defaults(
        func=_ban_list)
    add = commands.add_parser("add", parents=[common], help="ban an address (an IPv6 one with its /64, as [bans] ipv6_prefix says)")
    add.add_argument("address")
    add.add_argument("--duration", type=_positive, help="seconds (default: [bans] ban_time)")
    add.add_argument("--reason", help="kept with the ban and logged")
    add.set_defaults(func=_admin_command("ban add", _ban_add))
    remove = commands.add_parser("remove", parents=[common], help="lift a ban (its key, as ban list shows it)")
    remove.add_argument("key")
    remove.set_defaults(func=_admin_command("ban remove", _ban_remove))
    sub.add_parser("status", parents=[common], help="the running server: version, listeners, transactions, bans, counters, rates").set_defaults(
        func=_admin_command("status", _status))
    top = sub.add_parser("top", parents=[common], help="the sources sending the most requests (or auth failures) in the last 60 to 120 s")
    top.add_argument("--limit", type=_positive, default=10, help="rows (1 to 100, default 10)")
    top.add_argument("--by", choices=("requests", "auth_failures"), default="requests", help="rank by (default: requests)")
    top.set_defaults(func=_admin_command("top", _top))
    registrations = sub.add_parser("registrations", parents=[common], help="the registered contacts, by AOR")
    registrations.add_argument("--limit", type=_positive, default=1000)
    registrations.set_defaults(func=_admin_command("registrations", _registrations))
    sub.add_parser("reload", parents=[common], help="read the config file again: acl, ratelimit, scanners, routes, roles, egress, and TLS (as SIGHUP)"
                   ).set_defaults(func=_admin_command("reload", _reload))
    explain = sub.add_parser("explain", parents=[common], help="which step of the running server decides what about a request, and why (changes nothing)")
    explain.add_argument("request", help="the request line: 'INVITE sip:+4930123@pbx.example.com SIP/2.0'")
    explain.add_argument("--source", required=True, help="the source address: 203.0.113.5:5060, [2001:db8::1]:5060")
    explain.add_argument("--transport", default="udp", choices=("udp", "tcp", "tls"))
    explain.add_argument("--user", help="take the request as authenticated as this user (its roles from the user stores)")
    explain.add_argument("--header", action="append", metavar="'NAME: VALUE'", help="an extra header line (repeatable), e.g. 'User-Agent: friendly-scanner'")
    explain.set_defaults(func=_admin_command("explain", _explain))
    tls = sub.add_parser("tls", help="TLS certificates")
    tls_commands = tls.add_subparsers(dest="tls_command", required=True, metavar="{reload}")
    tls_commands.add_parser("reload", parents=[common], help="read the certificate and key files again (new handshakes get them)").set_defaults(
        func=_admin_command("tls reload", _tls_reload))


# -- sipshield keys ---------------------------------------------------------------------


def _keys_status(store: Any) -> list[str]:
    keyfile = store.keys
    keys = keyfile.load()
    usage = store.key_usage()
    lines = [keyfile.where + ("" if keys is not None else ": not created yet (the first user, or `sipshield keys migrate`, creates it)")]
    accepted = keys is None or keys.accept_plaintext
    lines.append(f"plain-text HA1 values: {usage.plaintext} ({'accepted until migrated' if accepted else 'refused'})")
    held = keys.ids if keys is not None else ()
    for key_id in dict.fromkeys((*held, *(k for k, _ in usage.by_key))):
        count = usage.count(key_id)
        if keys is not None and key_id == keys.current:
            state = "current"
        elif key_id not in held:
            state = "MISSING: not in the key file, those users cannot log in"
        elif count:
            state = "old: `sipshield keys rotate` moves its values to the current key"
        else:
            state = "unused: `sipshield keys prune` removes it"
        lines.append(f"  key {key_id}: {count} value(s), {state}")
    if usage.malformed:
        lines.append(f"  {usage.malformed} value(s) neither encrypted nor plain-text HA1s (tampered with?)")
    return lines


def _keys_prune(store: Any) -> list[str]:
    keyfile = store.keys
    removed: list[str] = []

    def prune(keys: Any) -> Any:
        used = {k for k, n in store.key_usage().by_key if n}
        removed.extend(k for k in keys.ids if k not in used and k != keys.current)
        return keys.without(set(removed))

    keys = keyfile.update(prune)
    lines = [f"removed key {k}" for k in removed] or ["no key to remove"]
    return lines + [f"kept key {k}" for k in keys.ids]


def _keys(args: argparse.Namespace) -> int:
    from sipshield.auth._keys import KeyFileError
    from sipshield.auth._users import CredentialStoreError

    try:
        store = _open_sql_store(_user_config(args))
        try:
            lines = args.keys_func(store)
        finally:
            store.close()
    except (ConfigError, CredentialStoreError, KeyFileError, OSError) as e:
        print(f"sipshield keys {args.keys_command}: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _add_keys_parser(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML configuration (the embedded default, ./sipshield-data, when omitted)")
    keys = sub.add_parser("keys", help="the key file the SQL user store's HA1 values are encrypted under")
    commands = keys.add_subparsers(dest="keys_command", required=True, metavar="{status,migrate,rotate,prune}")
    keys.set_defaults(func=_keys)
    for name, func, text in (
        ("status", _keys_status, "how many values each key encrypts, which key is current, plain-text values left"),
        ("migrate", lambda store: reencrypt(store, rotate=False), "encrypt every plain-text value (and any under an old key) under the current key"),
        ("rotate", lambda store: reencrypt(store, rotate=True), "add a new current key and encrypt every value under it again"),
        ("prune", _keys_prune, "remove the keys no value is encrypted under any more"),
    ):
        commands.add_parser(name, parents=[common], help=text).set_defaults(keys_func=func)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipshield", description="sipshield operator tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a configuration file without starting")
    check.add_argument("file", nargs="?", help="TOML file (the embedded default when omitted)")
    check.add_argument("--strict", action="store_true", help="fail (exit 1) on warnings too, for operators' CI")
    check.set_defaults(func=_check_config)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda args: print(__import__("sipshield").__version__) or 0)
    _add_user_parser(sub)
    _add_admin_parsers(sub)
    _add_keys_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
