"""The SQL credential store: SIP digest secrets (HA1) and roles per user.

SQLAlchemy 2 Core on SQLite (the default, a file in the data directory) or
PostgreSQL, in the style of :mod:`sipshield.state._sql`.  Plain-text
passwords are never stored: setting a password stores, per enabled digest
algorithm, only ``HA1 = H(username ":" realm ":" password)`` (RFC 7616 3.4.2,
RFC 8760 for SHA-256 and SHA-512/256), which is all a proxy needs to check a
digest response (RFC 3261 22.4).  The realm is the user's domain.  Users
with the admin flag also get a slow passlib hash (argon2, else bcrypt) in
``admin_hash`` for the admin API, which sees real passwords.

An HA1 is password-equivalent, so each one is stored encrypted (AES-256-GCM,
bound to its row: :mod:`sipshield.auth._keys`) under a key of the key file,
which lives outside the database; ``ha1`` decrypts it in the store's thread.
Plain-text HA1 values of a database from before encryption are read until
``sipshield keys migrate`` has encrypted them (``migrate_credentials``).

The API is blocking: the CLI calls it directly, the server from a thread
pool of its own (never on the reactor thread).
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

__all__ = [
    "ALGORITHMS",
    "CredentialStoreError",
    "KeyUsage",
    "Reencryption",
    "UnknownUserError",
    "UserRecord",
    "UserStore",
    "check_domain",
    "check_role",
    "check_username",
    "normalize_roles",
]

#: Digest algorithms a credential can be stored for (RFC 7616 3.3, RFC 8760).
from sipshield.auth._digest import compute_ha1
from sipshield.auth._keys import KeyFile, KeyFileError, KeySet, SealedValueError, is_plain_ha1, sealed_key_id
from sipshield.state._prepared import Prepared
from sipshield.state._sqlite import sqlite_pragmas

ALGORITHMS = ("MD5", "SHA-256", "SHA-512-256")

_HASHLIB_NAMES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}

# RFC 3261 25.1: user = 1*( unreserved / escaped / user-unreserved ).
_USER = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
# RFC 3261 25.1 hostname, with RFC 1123's leading digits allowed (so IPv4 too).
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_USERNAME = 128


class CredentialStoreError(Exception):
    """The credential database failed or cannot be reached; the message is
    one line, names the database (without its password) and never holds a
    secret."""


class UnknownUserError(LookupError):
    """No such user in that domain."""

    def __init__(self, username: str, domain: str) -> None:
        self.username = username
        self.domain = domain
        super().__init__(f"no user {username!r} in domain {domain!r}")

    def __str__(self) -> str:
        # LookupError would show the repr of the args tuple.
        return str(self.args[0])


@dataclass(frozen=True)
class UserRecord:
    """One user as listed: never a secret, only which algorithms have an HA1."""

    username: str
    domain: str
    roles: tuple[str, ...]
    enabled: bool
    algorithms: tuple[str, ...]
    admin: bool = False


@dataclass(frozen=True)
class KeyUsage:
    """How the stored HA1 values are kept: ``(key id, values)`` for each key
    id some value is encrypted under (sorted by id), plain-text values left
    from before encryption, and values that are neither."""

    by_key: tuple[tuple[str, int], ...]
    plaintext: int
    malformed: int

    def count(self, key_id: str) -> int:
        return next((n for k, n in self.by_key if k == key_id), 0)


@dataclass(frozen=True)
class Reencryption:
    """What a pass of :meth:`UserStore.reencrypt` did: values written under
    the current key, and the rows it could not read (``user@domain (ALG): why``)."""

    reencrypted: int
    unreadable: tuple[str, ...]


def check_username(username: str) -> str:
    """Return ``username`` if it is a SIP user token (RFC 3261 25.1 ``user``),
    else raise ValueError.  User names are case-sensitive (RFC 3261 19.1.4)."""
    if not isinstance(username, str) or not _USER.fullmatch(username) or len(username) > _MAX_USERNAME:
        raise ValueError(f"{username!r} is not a valid SIP user name (RFC 3261 25.1 user token, at most {_MAX_USERNAME} characters)")
    return username


def check_domain(domain: str) -> str:
    """Return ``domain`` lower-cased if it is a host name (RFC 3261 25.1
    ``hostname``, an IPv4 address included), else raise ValueError."""
    if not isinstance(domain, str):
        raise ValueError(f"{domain!r} is not a domain name")
    name = domain.lower()
    stripped = name[:-1] if name.endswith(".") else name
    if not stripped or len(stripped) > 253 or not all(_LABEL.fullmatch(label) for label in stripped.split(".")):
        raise ValueError(f"{domain!r} is not a domain name")
    return name


def check_role(role: str) -> str:
    """Return ``role`` if it is a role name (letters, digits, ``_.-``), else raise ValueError."""
    if not isinstance(role, str) or not _ROLE.fullmatch(role):
        raise ValueError(f"{role!r} is not a valid role name (letters, digits, '_', '.', '-'; at most 64 characters)")
    return role


def normalize_roles(roles: Sequence[str] | str) -> tuple[str, ...]:
    """Check, de-duplicate and sort roles; a string is split on commas."""
    items = roles.split(",") if isinstance(roles, str) else list(roles)
    return tuple(sorted({check_role(r.strip()) for r in items if r.strip()}))


def _check_algorithm(algorithm: str) -> str:
    if algorithm not in _HASHLIB_NAMES:
        raise ValueError(f"unknown digest algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    return algorithm


def _admin_context() -> Any:
    """A passlib CryptContext with argon2 (argon2-cffi), else bcrypt; None if neither has a backend."""
    from passlib.context import CryptContext
    from passlib.hash import argon2, bcrypt

    for scheme, handler in (("argon2", argon2), ("bcrypt", bcrypt)):
        if handler.has_backend():
            return CryptContext(schemes=[scheme])
    return None


def _tables(metadata: MetaData, prefix: str) -> tuple[Table, Table]:
    users = Table(
        f"{prefix}users",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("username", Text, nullable=False),
        Column("domain", Text, nullable=False),
        Column("enabled", Boolean, nullable=False, default=True),
        Column("roles", Text, nullable=False, default=""),
        Column("admin_hash", Text, nullable=True),
        Column("created", Float, nullable=False),
        UniqueConstraint("username", "domain", name=f"{prefix}users_username_domain"),
    )
    credentials = Table(
        f"{prefix}credentials",
        metadata,
        Column("user_id", Integer, ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False),
        Column("algorithm", Text, nullable=False),
        Column("ha1", Text, nullable=False),
        UniqueConstraint("user_id", "algorithm", name=f"{prefix}credentials_user_algorithm"),
    )
    return users, credentials


class UserStore:
    """Users, their roles and their digest HA1s in two SQL tables.

    ``url`` is a SQLAlchemy URL (``sqlite:///data/sipshield.db`` or
    ``postgresql+psycopg://user@host/db``, as ``Config.database`` gives).
    ``algorithms`` are the digest algorithms an HA1 is computed for whenever
    a password is set (RFC 8760 recommends SHA-256 and SHA-512-256; add
    ``"MD5"`` only for phones that know nothing else).  ``table_prefix``
    names the tables (``sipshield_users``, ``sipshield_credentials``);
    ``clock`` gives the ``created`` time.  ``keys`` is the key file the HA1
    values are encrypted under (created on the first write).

    Invalid names raise ValueError, a missing user :class:`UnknownUserError`,
    and every database failure, a key file that cannot be used and a value
    that does not decrypt :class:`CredentialStoreError`.  Calls block: from
    the reactor, run them in a thread pool.
    """

    def __init__(
        self,
        url: str,
        algorithms: Sequence[str] = ("SHA-256", "SHA-512-256"),
        *,
        keys: KeyFile,
        table_prefix: str = "sipshield_",
        clock: Callable[[], float] = time.time,
        echo: bool = False,
    ) -> None:
        if isinstance(algorithms, str) or not algorithms:
            raise ValueError("algorithms must be a non-empty sequence of algorithm names")
        self.algorithms = tuple(dict.fromkeys(_check_algorithm(a) for a in algorithms))
        try:
            self.url = make_url(url)
        except ArgumentError as e:
            raise CredentialStoreError(f"not a database URL: {e}") from None
        self._where = self.url.render_as_string(hide_password=True)
        self._clock = clock
        self.keys = keys
        self._table_prefix = table_prefix
        self.users, self.credentials = _tables(MetaData(), table_prefix)
        backend = self.url.get_backend_name()
        # A SQLite connection is a file handle, not a link that drops: no ping per checkout.
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": backend != "sqlite", "hide_parameters": True}
        if backend == "sqlite" and self.url.database in (None, "", ":memory:"):
            from sqlalchemy.pool import StaticPool

            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif backend == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 5}
        try:
            engine = create_engine(self.url, **kwargs)
        except (SQLAlchemyError, ImportError) as e:
            raise CredentialStoreError(f"credential database {self._where}: {one_line(e)}") from None
        if backend == "sqlite":
            event.listen(engine, "connect", sqlite_pragmas)
        self._engine: Engine | None = engine
        self._admin: Any = None
        users, creds = self.users, self.credentials
        self._secret_query = Prepared(
            select(creds.c.ha1, users.c.roles)
            .select_from(creds.join(users, creds.c.user_id == users.c.id))
            .where(users.c.username == bindparam("username"), users.c.domain == bindparam("domain"), users.c.enabled.is_(True),
                   creds.c.algorithm == bindparam("algorithm")),
            engine.dialect,
        )  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create both tables if they are missing (existing ones are kept)."""
        with self._errors():
            self.users.metadata.create_all(self._live_engine())

    def close(self) -> None:
        """Dispose of the engine's connections; the store is unusable afterwards."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    # -- writes ------------------------------------------------------------------------

    def add(self, username: str, domain: str, password: str, roles: Sequence[str] = (), admin: bool = False) -> None:
        """Add an enabled user with an HA1 per algorithm (realm = domain).

        ``admin`` also stores a passlib hash for :meth:`verify_admin`.
        Raises ValueError for a bad name, role or empty password, or if the
        user already exists.
        """
        username, domain = check_username(username), check_domain(domain)
        role_text = ",".join(normalize_roles(roles))
        _check_password(password)
        admin_hash = self._admin_hash(password) if admin else None
        with self._errors():
            try:
                with self._live_engine().begin() as conn:
                    if self._user_id(conn, username, domain) is not None:
                        raise ValueError(f"user {username!r} already exists in domain {domain!r}")
                    result = conn.execute(
                        insert(self.users).values(
                            username=username, domain=domain, enabled=True, roles=role_text, admin_hash=admin_hash, created=self._clock()
                        )
                    )
                    (user_id,) = result.inserted_primary_key or (None,)
                    if user_id is None:
                        user_id = self._user_id(conn, username, domain)
                    self._write_credentials(conn, user_id, username, domain, password)
            except IntegrityError:
                # Another writer added the same user between our check and insert.
                raise ValueError(f"user {username!r} already exists in domain {domain!r}") from None

    def set_password(self, username: str, domain: str, password: str) -> None:
        """Replace the user's HA1s (one per algorithm of this store; HA1s of
        other algorithms are dropped, being for the old password) and, for an
        admin, the admin hash.  Raises :class:`UnknownUserError`."""
        username, domain = check_username(username), check_domain(domain)
        _check_password(password)
        with self._errors(), self._live_engine().begin() as conn:
            row = conn.execute(
                select(self.users.c.id, self.users.c.admin_hash).where(self.users.c.username == username, self.users.c.domain == domain)
            ).first()
            if row is None:
                raise UnknownUserError(username, domain)
            if row.admin_hash is not None:
                conn.execute(update(self.users).where(self.users.c.id == row.id).values(admin_hash=self._admin_hash(password)))
            conn.execute(delete(self.credentials).where(self.credentials.c.user_id == row.id))
            self._write_credentials(conn, row.id, username, domain, password)

    def remove(self, username: str, domain: str) -> bool:
        """Remove the user and its credentials; False if there was no such user."""
        username, domain = check_username(username), check_domain(domain)
        with self._errors(), self._live_engine().begin() as conn:
            user_id = self._user_id(conn, username, domain)
            if user_id is None:
                return False
            conn.execute(delete(self.credentials).where(self.credentials.c.user_id == user_id))
            conn.execute(delete(self.users).where(self.users.c.id == user_id))
            return True

    def set_roles(self, username: str, domain: str, roles: Sequence[str]) -> None:
        """Replace the user's roles.  Raises :class:`UnknownUserError`."""
        self._update(username, domain, roles=",".join(normalize_roles(roles)))

    def set_enabled(self, username: str, domain: str, enabled: bool) -> None:
        """Enable or disable the user (a disabled user has no HA1 to offer).
        Raises :class:`UnknownUserError`."""
        self._update(username, domain, enabled=bool(enabled))

    # -- reads -------------------------------------------------------------------------

    def list(self, domain: str | None = None) -> builtins.list[UserRecord]:
        """Every user (of ``domain`` if given), ordered by domain then name."""
        users, creds = self.users, self.credentials
        query = select(users).order_by(users.c.domain, users.c.username)
        if domain is not None:
            query = query.where(users.c.domain == check_domain(domain))
        with self._errors(), self._live_engine().connect() as conn:
            rows = conn.execute(query).all()
            algorithms: dict[int, list[str]] = {}
            for user_id, algorithm in conn.execute(select(creds.c.user_id, creds.c.algorithm)):
                algorithms.setdefault(user_id, []).append(algorithm)
        return [self._record(row, algorithms.get(row.id, [])) for row in rows]

    def get(self, username: str, domain: str) -> UserRecord | None:
        """The user's record, disabled or not; None if there is no such user."""
        username, domain = check_username(username), check_domain(domain)
        users, creds = self.users, self.credentials
        with self._errors(), self._live_engine().connect() as conn:
            row = conn.execute(select(users).where(users.c.username == username, users.c.domain == domain)).first()
            if row is None:
                return None
            algorithms = conn.execute(select(creds.c.algorithm).where(creds.c.user_id == row.id)).scalars().all()
        return self._record(row, list(algorithms))

    def ha1(self, username: str, domain: str, algorithm: str) -> str | None:
        """The stored HA1 (hex), decrypted, for the digest realm ``domain``;
        None for an unknown or disabled user or when no HA1 exists for
        ``algorithm``.  A value that does not decrypt (a wrong or lost key, a
        row tampered with) raises :class:`CredentialStoreError` naming the row:
        it is never taken for "no such user".

        A name that is not a valid user token or domain is simply unknown
        (None), since it comes from a peer's Authorization header.
        """
        key = _lookup_key(username, domain)
        if key is None:
            return None
        users, creds = self.users, self.credentials
        query = (
            select(creds.c.ha1)
            .select_from(creds.join(users, creds.c.user_id == users.c.id))
            .where(users.c.username == key[0], users.c.domain == key[1], users.c.enabled.is_(True), creds.c.algorithm == algorithm)
        )
        with self._errors(), self._live_engine().connect() as conn:
            value = conn.execute(query).scalar_one_or_none()
        if value is None:
            return None
        with self._errors():
            return self._open(self._read_keys(), str(value), key[0], key[1], algorithm)

    def secret(self, username: str, domain: str, algorithm: str) -> tuple[str, tuple[str, ...]] | None:
        """:meth:`ha1` and :meth:`roles` in one query (what a digest login
        needs): None when either would be None.  Raises as :meth:`ha1` does."""
        key = _lookup_key(username, domain)
        if key is None:
            return None
        with self._errors(), self._live_engine().connect() as conn:
            row = self._secret_query.execute(conn, {"username": key[0], "domain": key[1], "algorithm": algorithm}).first()
        if row is None:
            return None
        with self._errors():
            return self._open(self._read_keys(), str(row.ha1), key[0], key[1], algorithm), _split_roles(row.roles)

    def roles(self, username: str, domain: str) -> tuple[str, ...] | None:
        """The user's roles (sorted); None for an unknown or disabled user."""
        key = _lookup_key(username, domain)
        if key is None:
            return None
        users = self.users
        query = select(users.c.roles).where(users.c.username == key[0], users.c.domain == key[1], users.c.enabled.is_(True))
        with self._errors(), self._live_engine().connect() as conn:
            value = conn.execute(query).scalar_one_or_none()
        return None if value is None else _split_roles(value)

    def verify_admin(self, username: str, domain: str, password: str) -> bool:
        """True if the user exists, is enabled, has the admin flag and
        ``password`` matches its admin hash.

        passlib compares in constant time, and an unknown user still costs
        one hash verification (``dummy_verify``), so timing does not reveal
        which users exist.
        """
        context = self._admin_context()
        key = _lookup_key(username, domain)
        stored = None
        if key is not None:
            users = self.users
            query = select(users.c.admin_hash).where(users.c.username == key[0], users.c.domain == key[1], users.c.enabled.is_(True))
            with self._errors(), self._live_engine().connect() as conn:
                stored = conn.execute(query).scalar_one_or_none()
        if context is None:
            return False
        if stored is None or not isinstance(password, str):
            context.dummy_verify()
            return False
        try:
            return bool(context.verify(password, stored))
        except ValueError:
            # A hash of a scheme this context does not know (e.g. argon2
            # hashes read where only bcrypt is installed): not a match.
            return False

    # -- credential keys ---------------------------------------------------------------

    def key_usage(self) -> KeyUsage:
        """How many HA1 values are encrypted under each key id, and how many are not."""
        counts: dict[str, int] = {}
        plaintext = malformed = 0
        with self._errors(), self._live_engine().connect() as conn:
            for value, algorithm in conn.execute(select(self.credentials.c.ha1, self.credentials.c.algorithm)):
                key_id = sealed_key_id(str(value))
                if key_id is not None:
                    counts[key_id] = counts.get(key_id, 0) + 1
                elif is_plain_ha1(str(value), algorithm):
                    plaintext += 1
                else:
                    malformed += 1
        return KeyUsage(tuple(sorted(counts.items())), plaintext, malformed)

    def reencrypt(self, keys: KeySet, *, batch: int = 200) -> Reencryption:
        """Write every HA1 value that is not under ``keys.current`` again
        under it (plain-text ones included), ``batch`` rows per transaction.

        Each row is opened with the keys of *keys* and replaced only if it
        still holds the value read (a password set meanwhile is kept), so a
        crash or a concurrent writer leaves every row either as it was or
        under the current key: readable with *keys* throughout.  A row that
        does not open is left as it is and reported.
        """
        users, creds = self.users, self.credentials
        query = select(creds.c.user_id, creds.c.algorithm, creds.c.ha1, users.c.username, users.c.domain).select_from(
            creds.join(users, creds.c.user_id == users.c.id)
        )
        done = 0
        unreadable: list[str] = []
        with self._errors():
            with self._live_engine().connect() as conn:
                rows = [r for r in conn.execute(query) if sealed_key_id(str(r.ha1)) != keys.current]
            for start in range(0, len(rows), batch):
                with self._live_engine().begin() as conn:
                    for row in rows[start:start + batch]:
                        old = str(row.ha1)
                        try:
                            ha1 = self._open(keys, old, row.username, row.domain, row.algorithm)
                        except CredentialStoreError as e:
                            unreadable.append(str(e))
                            continue
                        sealed = keys.seal(ha1, row.username, row.domain, row.algorithm)
                        result = conn.execute(
                            update(creds)
                            .where(creds.c.user_id == row.user_id, creds.c.algorithm == row.algorithm, creds.c.ha1 == old)
                            .values(ha1=sealed)
                        )
                        done += result.rowcount
        return Reencryption(done, tuple(unreadable))

    def _read_keys(self) -> KeySet:
        """The key file's keys for reading; before it exists, plain-text values only."""
        keys = self.keys.load()
        return _PLAIN if keys is None else keys

    def _writing_keys(self, conn: Connection) -> KeySet:
        """The key file's keys, creating the file on the first write: a new
        file accepts plain-text values only if the database holds some."""
        if self.keys.exists():
            return self.keys.require()
        creds = self.credentials
        plaintext = conn.execute(select(creds.c.ha1).where(creds.c.ha1.not_like("enc1:%")).limit(1)).first() is not None
        return self.keys.load_or_create(accept_plaintext=plaintext)

    def _open(self, keys: KeySet, value: str, username: str, domain: str, algorithm: str) -> str:
        try:
            return keys.open(value, username, domain, algorithm)
        except SealedValueError as e:
            hint = f" ({self.keys.where} does not exist)" if keys is _PLAIN and sealed_key_id(value) is not None else ""
            raise CredentialStoreError(f"credential of {username}@{domain} ({algorithm}) in {self._where}: {e}{hint}") from None

    # -- internals ---------------------------------------------------------------------

    def _live_engine(self) -> Engine:
        if self._engine is None:
            raise CredentialStoreError("credential store is closed")
        return self._engine

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn any SQLAlchemy (or missing-driver) error into one clear CredentialStoreError."""
        try:
            yield
        except (SQLAlchemyError, ImportError) as e:
            raise CredentialStoreError(f"credential database {self._where}: {one_line(e)}") from e
        except KeyFileError as e:
            raise CredentialStoreError(str(e)) from None

    def _admin_context(self) -> Any:
        if self._admin is None:
            self._admin = _admin_context()
        return self._admin

    def _admin_hash(self, password: str) -> str:
        context = self._admin_context()
        if context is None:
            raise CredentialStoreError("admin users need a password hash backend: pip install argon2-cffi (or bcrypt)")
        return str(context.hash(password))

    def _user_id(self, conn: Connection, username: str, domain: str) -> int | None:
        users = self.users
        value = conn.execute(select(users.c.id).where(users.c.username == username, users.c.domain == domain)).scalar_one_or_none()
        return None if value is None else int(value)

    def _write_credentials(self, conn: Connection, user_id: Any, username: str, domain: str, password: str) -> None:
        try:
            keys = self._writing_keys(conn)
        except KeyFileError as e:
            raise CredentialStoreError(str(e)) from None
        conn.execute(
            insert(self.credentials),
            [
                {"user_id": user_id, "algorithm": a, "ha1": keys.seal(compute_ha1(_check_algorithm(a), username, domain, password), username, domain, a)}
                for a in self.algorithms
            ],
        )

    def _update(self, username: str, domain: str, **values: Any) -> None:
        username, domain = check_username(username), check_domain(domain)
        users = self.users
        with self._errors(), self._live_engine().begin() as conn:
            result = conn.execute(update(users).where(users.c.username == username, users.c.domain == domain).values(**values))
            if result.rowcount == 0:
                raise UnknownUserError(username, domain)

    @staticmethod
    def _record(row: Any, algorithms: Sequence[str]) -> UserRecord:
        order = {a: i for i, a in enumerate(ALGORITHMS)}
        return UserRecord(
            username=row.username,
            domain=row.domain,
            roles=_split_roles(row.roles),
            enabled=bool(row.enabled),
            algorithms=tuple(sorted(algorithms, key=lambda a: (order.get(a, len(order)), a))),
            admin=row.admin_hash is not None,
        )


def credential_gaps(records: Iterable[UserRecord], algorithms: Sequence[str]) -> tuple[int, dict[str, int]]:
    """How many users *records* holds, and for each of *algorithms* how many
    enabled users have no HA1 for it (created before it was enabled: they
    cannot answer that challenge until their password is set again)."""
    total = 0
    missing = dict.fromkeys(algorithms, 0)
    for record in records:
        total += 1
        if record.enabled:
            for algorithm in algorithms:
                if algorithm not in record.algorithms:
                    missing[algorithm] += 1
    return total, {a: n for a, n in missing.items() if n}


def describe_users(where: str, records: Iterable[UserRecord], algorithms: Sequence[str]) -> tuple[str, str | None]:
    """One line about a user store (how many users), and a warning naming
    the fix when some lack credentials for an enabled algorithm, else None."""
    total, missing = credential_gaps(records, algorithms)
    line = f"{total} user(s) in {where}"
    if not missing:
        return line, None
    gaps = ", ".join(f"{n} without {a}" for a, n in missing.items())
    return line, (
        f"{where}: {gaps} credentials (created before the algorithm was enabled; they cannot answer its challenge): "
        "set each one's password again with `sipshield user passwd USER`, which stores every enabled algorithm"
    )


# No key file yet: plain-text HA1 values are read, encrypted ones cannot be.
_PLAIN = KeySet((), "-", accept_plaintext=True)


def describe_keys(where: str, store: UserStore) -> tuple[str, list[str]]:
    """One line about how a store's HA1 values are encrypted, and warnings:
    plain-text values left (with the fix), values under a key the key file
    lacks, values that are neither, a key file that cannot be used.  Blocking."""
    keyfile = store.keys
    try:
        keys = keyfile.load()
        usage = store.key_usage()
    except (CredentialStoreError, KeyFileError) as e:
        return f"{where}: credential keys unusable", [f"{where}: {e}"]
    warnings: list[str] = []
    if usage.plaintext:
        warnings.append(
            f"{where}: {usage.plaintext} HA1 value(s) stored in plain text (from before encryption): a copy of the database "
            "is enough to log in as those users; run `sipshield keys migrate`"
        )
    held = set(keys.ids) if keys is not None else set()
    lost = [(k, n) for k, n in usage.by_key if k not in held]
    if lost:
        ids = ", ".join(k for k, _ in lost)
        warnings.append(
            f"{where}: {sum(n for _, n in lost)} HA1 value(s) encrypted under key(s) {ids}, which {keyfile.where} does not hold: "
            "those users cannot log in (restore the key file from its backup, or set their passwords again)"
        )
    if usage.malformed:
        warnings.append(f"{where}: {usage.malformed} stored HA1 value(s) are neither encrypted nor plain-text HA1s (tampered with?)")
    if keys is None:
        return f"{where}: HA1 values to be encrypted under {keyfile.where}, created with the first user or `sipshield keys migrate`", warnings
    older = sum(n for k, n in usage.by_key if k != keys.current and k in held)
    line = f"{where}: HA1 values encrypted under {keyfile.where}: current key {keys.current}, {usage.count(keys.current)} value(s) under it"
    if older:
        line += f", {older} under older keys (finish with `sipshield keys rotate`, then `sipshield keys prune`)"
    return line, warnings


def _check_password(password: str) -> None:
    if not isinstance(password, str) or not password:
        raise ValueError("the password must not be empty")


def _lookup_key(username: str, domain: str) -> tuple[str, str] | None:
    try:
        return check_username(username), check_domain(domain)
    except ValueError:
        return None


def _split_roles(text: str) -> tuple[str, ...]:
    return tuple(r for r in text.split(",") if r)


def one_line(error: BaseException) -> str:
    """A database error in one line: its type and the first line of its text."""
    # SQLAlchemy puts the SQL and its parameters on later lines: keep only the first.
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(orig or error).__name__}: {first}" if first else type(orig or error).__name__
