"""An htdigest file as a credential store, for legacy phones (MD5 only).

Apache's htdigest format (``user:realm:HA1``, one per line) holds exactly
the MD5 HA1 of RFC 2617 3.2.2.2, so this backend can answer digest
challenges with ``algorithm=MD5`` and nothing else: RFC 8760's SHA-256 and
SHA-512-256 need the SQL :class:`~sipshield.auth._users.UserStore`.  Use it
to reuse an existing htdigest file or to serve phones that only know MD5.
The realm is the domain.

Roles live beside it in ``PATH.roles`` (``user:realm:role1,role2`` per
line).  The format has no enabled flag: every listed user is enabled.  Both
files are re-read when they change on disk and written atomically (a
temporary file renamed over the old one, mode 0600).  A file that cannot be
read or does not parse is a backend that is down (CredentialStoreError).
"""

from __future__ import annotations

import builtins
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from passlib.apache import HtdigestFile

from sipshield.auth._users import (
    CredentialStoreError,
    UnknownUserError,
    UserRecord,
    _check_password,
    _lookup_key,
    check_domain,
    check_username,
    normalize_roles,
)

__all__ = ["HtdigestUserStore"]


class HtdigestUserStore:
    """Users in an htdigest file (MD5 HA1 only, realm = domain) with roles in ``PATH.roles``.

    The same read API as :class:`~sipshield.auth._users.UserStore`
    (``ha1``, ``roles``, ``list``, ``get``) and its writes ``add``,
    ``set_password``, ``set_roles`` and ``remove``.  A missing file is an
    empty store; the first write creates it.  Calls block (file I/O): from
    the reactor, run them in a thread.
    """

    #: The only digest algorithm an htdigest file can serve.
    algorithms = ("MD5",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.roles_path = self.path.with_name(self.path.name + ".roles")
        self._lock = threading.Lock()
        self._file = HtdigestFile()
        self._file_stamp: tuple[int, int, int] | None = None
        self._roles: dict[tuple[str, str], tuple[str, ...]] = {}
        self._roles_stamp: tuple[int, int, int] | None = None

    # -- reads -------------------------------------------------------------------------

    def ha1(self, username: str, domain: str, algorithm: str) -> str | None:
        """The MD5 HA1 (hex) for realm ``domain``; None for an unknown user,
        an invalid name or any algorithm other than ``"MD5"``."""
        if algorithm != "MD5":
            return None
        key = _lookup_key(username, domain)
        if key is None:
            return None
        with self._lock:
            self._reload()
            value = self._file.get_hash(key[0], key[1])
        if value is None:
            return None
        return value.decode("ascii") if isinstance(value, bytes) else str(value)

    def roles(self, username: str, domain: str) -> tuple[str, ...] | None:
        """The user's roles (sorted); None for an unknown user."""
        key = _lookup_key(username, domain)
        if key is None:
            return None
        with self._lock:
            self._reload()
            if self._file.get_hash(key[0], key[1]) is None:
                return None
            return self._roles.get(key, ())

    def get(self, username: str, domain: str) -> UserRecord | None:
        """The user's record; None if there is no such user."""
        key = _lookup_key(username, domain)
        if key is None:
            return None
        with self._lock:
            self._reload()
            if self._file.get_hash(key[0], key[1]) is None:
                return None
            return self._record(*key)

    def list(self, domain: str | None = None) -> builtins.list[UserRecord]:
        """Every user (of ``domain`` if given), ordered by domain then name."""
        realms = None if domain is None else [check_domain(domain)]
        with self._lock:
            self._reload()
            records = []
            for realm in sorted(realms if realms is not None else self._file.realms()):
                for user in sorted(self._file.users(realm)):
                    records.append(self._record(user, realm))
        return records

    # -- writes ------------------------------------------------------------------------

    def add(self, username: str, domain: str, password: str, roles: Sequence[str] = ()) -> None:
        """Add a user (MD5 HA1 only).  ValueError if it exists or a name is invalid."""
        username, domain = check_username(username), check_domain(domain)
        role_tuple = normalize_roles(roles)
        _check_password(password)
        with self._lock:
            self._reload()
            if self._file.get_hash(username, domain) is not None:
                raise ValueError(f"user {username!r} already exists in domain {domain!r}")
            self._file.set_password(username, domain, password)
            if role_tuple:
                self._roles[(username, domain)] = role_tuple
            else:
                self._roles.pop((username, domain), None)
            self._save_roles()
            self._save_file()

    def set_password(self, username: str, domain: str, password: str) -> None:
        """Replace the user's HA1.  Raises :class:`UnknownUserError`."""
        username, domain = check_username(username), check_domain(domain)
        _check_password(password)
        with self._lock:
            self._reload()
            if self._file.get_hash(username, domain) is None:
                raise UnknownUserError(username, domain)
            self._file.set_password(username, domain, password)
            self._save_file()

    def set_roles(self, username: str, domain: str, roles: Sequence[str]) -> None:
        """Replace the user's roles.  Raises :class:`UnknownUserError`."""
        username, domain = check_username(username), check_domain(domain)
        role_tuple = normalize_roles(roles)
        with self._lock:
            self._reload()
            if self._file.get_hash(username, domain) is None:
                raise UnknownUserError(username, domain)
            if role_tuple:
                self._roles[(username, domain)] = role_tuple
            else:
                self._roles.pop((username, domain), None)
            self._save_roles()

    def remove(self, username: str, domain: str) -> bool:
        """Remove the user and its roles; False if there was no such user."""
        username, domain = check_username(username), check_domain(domain)
        with self._lock:
            self._reload()
            if not self._file.delete(username, domain):
                return False
            self._save_file()
            if self._roles.pop((username, domain), None) is not None:
                self._save_roles()
            return True

    # -- internals ---------------------------------------------------------------------

    def _record(self, username: str, domain: str) -> UserRecord:
        return UserRecord(username=username, domain=domain, roles=self._roles.get((username, domain), ()), enabled=True, algorithms=("MD5",))

    def _reload(self) -> None:
        """Re-read either file if its mtime or size changed (another process wrote it).

        A file that cannot be read or does not parse raises
        :class:`CredentialStoreError` naming it, and is tried again at the
        next call: the backend is down (503 to the phone), never a traceback,
        nor a stale or an empty store."""
        path = self.path
        try:
            stamp = _stamp(path)
            if stamp != self._file_stamp:
                self._file = HtdigestFile.from_string(path.read_bytes()) if stamp is not None else HtdigestFile()
                self._file_stamp = stamp
            path = self.roles_path
            stamp = _stamp(path)
            if stamp != self._roles_stamp:
                self._roles = _parse_roles(path.read_text("utf-8")) if stamp is not None else {}
                self._roles_stamp = stamp
        except (OSError, ValueError) as e:
            # Neither message holds a line of the file (an HA1 is password-equivalent).
            raise CredentialStoreError(f"{path}: {e}") from None

    def _save_file(self) -> None:
        _write_atomic(self.path, self._file.to_string())
        self._file_stamp = _stamp(self.path)

    def _save_roles(self) -> None:
        lines = "".join(f"{user}:{realm}:{','.join(roles)}\n" for (user, realm), roles in sorted(self._roles.items()))
        _write_atomic(self.roles_path, lines.encode("utf-8"))
        self._roles_stamp = _stamp(self.roles_path)


def _parse_roles(text: str) -> dict[tuple[str, str], tuple[str, ...]]:
    roles: dict[tuple[str, str], tuple[str, ...]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise ValueError(f"roles file line {number}: expected user:realm:role1,role2")
        roles[(parts[0], parts[1].lower())] = normalize_roles(parts[2])
    return roles


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    # A rename gives a new inode, so even a same-size write in the same tick shows.
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
