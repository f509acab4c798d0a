"""Credential keys: the AEAD keys that keep digest HA1 values encrypted at rest.

An HA1 is password-equivalent for digest authentication (RFC 7616 5.12:
whoever holds it answers any challenge of its realm), so the user store keeps
each one sealed with AES-256-GCM (cryptography's ``AESGCM``) under a key that
lives outside the database, in a key file.  A stolen database alone then
yields no HA1; the database together with the key file does.

A sealed value is text: ``enc1:<key id>:<base64url(nonce || ciphertext || tag)>``
with a random 96-bit nonce per value (NIST SP 800-38D 8.2.2; a store encrypts
far fewer than 2**32 values under one key).  The associated data binds it to
its row: the user name, the domain (the digest realm), the algorithm and the
key id, each length-prefixed, so a value copied into another user's or
another algorithm's row fails to decrypt.

The key file holds several keys, each with a random id, one of them current
(new values are sealed under it), and whether plain-text HA1 values (written
before encryption existed) are still accepted::

    # sipshield credential keys ...
    plaintext accepted
    current 3f9a12bc
    key 3f9a12bc <base64url of 32 bytes>
    key 0a1b2c3d <base64url of 32 bytes>

It is created on first use with ``O_CREAT | O_EXCL`` and mode 0600, refused
when its mode lets group or others in, and every change replaces it whole
(a new file written, fsynced and renamed over it), so a crash leaves the old
file or the new one, never half of either.  A rotation first adds the new key
(as current) and only then re-encrypts, so at every moment each value is
under a key the file holds; an old key is removed (pruned) only once no value
uses it.

Nothing here imports Twisted: the store calls it from its own thread.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["CredentialKey", "KeyFile", "KeyFileError", "KeySet", "SealedValueError", "is_plain_ha1", "sealed_key_id"]

KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12
_TAG_BYTES = 16
_PREFIX = "enc1"
_ID = re.compile(r"[0-9a-f]{8}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_LENGTH = struct.Struct(">I")
_AD_LABEL = b"sipshield ha1 v1\x00"
# The hex HA1 of each algorithm (RFC 7616 3.4.2: the hash in lower-case hex).
_HEX_LENGTHS = {"MD5": 32, "SHA-256": 64, "SHA-512-256": 64}
_HEX = re.compile(r"[0-9a-fA-F]+")
_HEADER = (
    "# sipshield credential keys (AES-256-GCM over the digest HA1 values of the user store).\n"
    "# Keep it secret and back it up apart from the database: with the database it yields every\n"
    "# HA1, without it the encrypted values are lost.  Change it only with `sipshield keys`.\n"
)


class KeyFileError(Exception):
    """The key file is missing, unreadable, too open or malformed; the message names it."""


class SealedValueError(Exception):
    """A stored value does not open: a wrong or missing key, a value tampered
    with or moved from another row, or text that is no HA1 at all."""


@dataclass(frozen=True)
class CredentialKey:
    """One AES-256 key and its id (8 hex digits, random)."""

    key_id: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class KeySet:
    """The content of a key file: the keys, which is current, and whether
    plain-text HA1 values are still accepted on read."""

    keys: tuple[CredentialKey, ...]
    current: str
    accept_plaintext: bool = True

    @classmethod
    def new(cls, *, accept_plaintext: bool) -> KeySet:
        key = _new_key(())
        return cls((key,), key.key_id, accept_plaintext)

    def get(self, key_id: str) -> CredentialKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.keys)

    def rotated(self) -> KeySet:
        """This set with a new key, which becomes current (the others kept)."""
        key = _new_key(self.ids)
        return KeySet((*self.keys, key), key.key_id, self.accept_plaintext)

    def without(self, key_ids: set[str]) -> KeySet:
        """This set without *key_ids* (never the current key)."""
        if self.current in key_ids:
            raise ValueError(f"key {self.current} is current and cannot be removed")
        return KeySet(tuple(k for k in self.keys if k.key_id not in key_ids), self.current, self.accept_plaintext)

    def refusing_plaintext(self) -> KeySet:
        return KeySet(self.keys, self.current, False)

    # -- values --------------------------------------------------------------------------

    def seal(self, ha1: str, username: str, domain: str, algorithm: str) -> str:
        """The hex HA1 *ha1*, sealed under the current key for its row."""
        key = self.get(self.current)
        if key is None:  # parse() and the constructors keep current among the keys
            raise KeyFileError(f"current key {self.current} is missing")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(key.secret).encrypt(nonce, bytes.fromhex(ha1), _associated_data(username, domain, algorithm, key.key_id))
        text = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{_PREFIX}:{key.key_id}:{text}"

    def open(self, value: str, username: str, domain: str, algorithm: str) -> str:
        """The hex HA1 in the stored *value* of the row (username, domain,
        algorithm): a sealed value decrypted, or a plain-text HA1 from before
        encryption while the set accepts them.  Raises SealedValueError."""
        key_id = sealed_key_id(value)
        if key_id is None:
            if not is_plain_ha1(value, algorithm):
                raise SealedValueError("the stored value is neither an encrypted nor a plain-text HA1")
            if not self.accept_plaintext:
                raise SealedValueError("a plain-text HA1, and the key file says every value was encrypted (plaintext refused)")
            return value.lower()
        return _open_sealed(self, key_id, value, username, domain, algorithm)

    # -- the file's text -----------------------------------------------------------------

    def serialise(self) -> bytes:
        lines = [_HEADER, f"plaintext {'accepted' if self.accept_plaintext else 'refused'}\n", f"current {self.current}\n"]
        lines += [f"key {k.key_id} {base64.urlsafe_b64encode(k.secret).decode('ascii').rstrip('=')}\n" for k in self.keys]
        return "".join(lines).encode("ascii")

    @classmethod
    def parse(cls, data: bytes, where: str) -> KeySet:
        """The set in a key file's bytes; KeyFileError naming *where* and the line."""
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise KeyFileError(f"{where}: not a sipshield key file (not ASCII text)") from None
        keys: list[CredentialKey] = []
        current: str | None = None
        accept: bool | None = None
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "key" and len(words) == 3 and _ID.fullmatch(words[1]):
                secret = _b64decode(words[2])
                if secret is None or len(secret) != KEY_BYTES:
                    raise KeyFileError(f"{where}, line {number}: key {words[1]} is not {KEY_BYTES} bytes of base64url")
                if any(k.key_id == words[1] for k in keys):
                    raise KeyFileError(f"{where}, line {number}: key {words[1]} appears twice")
                keys.append(CredentialKey(words[1], secret))
            elif words[0] == "current" and len(words) == 2 and current is None:
                current = words[1]
            elif words[0] == "plaintext" and len(words) == 2 and words[1] in ("accepted", "refused") and accept is None:
                accept = words[1] == "accepted"
            else:
                raise KeyFileError(f"{where}, line {number}: expected 'key ID BASE64', 'current ID' or 'plaintext accepted|refused' (once each)")
        if current is None or not any(k.key_id == current for k in keys):
            raise KeyFileError(f"{where}: no 'current ID' line naming one of its keys")
        return cls(tuple(keys), current, True if accept is None else accept)


class KeyFile:
    """The key file at *path*, read on first use and read again whenever it
    changes on disk (a ``stat`` per use: its content, owner or mode), so a
    running server follows a rotation made by ``sipshield keys`` in another
    process and refuses a file opened to others at its next use.

    *setting* names where the path came from in messages (``auth.key_file``,
    or data_dir's default).  Thread-safe: the store's threads share it.
    """

    def __init__(self, path: Path | str, *, setting: str = "auth.key_file") -> None:
        self.path = Path(path)
        self.setting = setting
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, ...], KeySet] | None = None

    @property
    def where(self) -> str:
        return f"key file {self.path} ({self.setting})"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> KeySet | None:
        """The keys, or None if the file does not exist.  Raises KeyFileError."""
        with self._lock:
            return self._load_locked()

    def require(self) -> KeySet:
        """The keys; KeyFileError if the file does not exist."""
        keys = self.load()
        if keys is None:
            raise KeyFileError(f"{self.where} does not exist")
        return keys

    def load_or_create(self, accept_plaintext: bool) -> KeySet:
        """The keys, creating the file with one new key if it does not exist
        (*accept_plaintext* is the new file's answer to plain-text values)."""
        with self._lock:
            keys = self._load_locked()
            if keys is not None:
                return keys
            keys = KeySet.new(accept_plaintext=accept_plaintext)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                # Another process created it first: use theirs.
                created = self._load_locked()
                if created is None:
                    raise KeyFileError(f"{self.where}: appeared and vanished while being created") from None
                return created
            except OSError as e:
                raise KeyFileError(f"{self.where}: cannot create it: {e.strerror}") from None
            _write_all(fd, keys.serialise())
            self._cached = None
            return keys

    def update(self, change: Callable[[KeySet], KeySet]) -> KeySet:
        """Replace the file with ``change(current keys)`` and return the new
        set.  Holds an advisory lock (``flock`` on ``PATH.lock``) from the
        read to the rename, so two ``sipshield keys`` runs cannot each write
        a file without the other's new key."""
        with self._exclusive():
            keys = change(self.require())
            self._replace(keys)
            return keys

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        import fcntl

        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise KeyFileError(f"{self.where}: cannot open its lock file {lock_path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _replace(self, keys: KeySet) -> None:
        """Write *keys* as the whole new file, atomically (write, fsync, rename, fsync the directory)."""
        with self._lock:
            temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as e:
                raise KeyFileError(f"{self.where}: cannot write next to it: {e.strerror}") from None
            try:
                _write_all(fd, keys.serialise())
                os.replace(temporary, self.path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            _fsync_directory(self.path.parent)
            self._cached = None

    def _load_locked(self) -> KeySet | None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            self._cached = None
            return None
        except OSError as e:
            raise KeyFileError(f"{self.where}: cannot read it: {e.strerror}") from None
        # ctime moves with a chmod too: a file opened to others is refused at its next use.
        signature = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_mode)
        if self._cached is not None and self._cached[0] == signature:
            return self._cached[1]
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{self.where}: not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFileError(f"{self.where}: mode {mode:04o} lets group or others read the credential keys; chmod 600 it")
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise KeyFileError(f"{self.where}: cannot read it: {e.strerror}") from None
        keys = KeySet.parse(data, self.where)
        self._cached = (signature, keys)
        return keys


def sealed_key_id(value: str) -> str | None:
    """The key id of a sealed value, None for any other text (a plain-text HA1)."""
    prefix, _, rest = value.partition(":")
    if prefix != _PREFIX:
        return None
    key_id, _, _ = rest.partition(":")
    return key_id


def _open_sealed(keys: KeySet, key_id: str, value: str, username: str, domain: str, algorithm: str) -> str:
    parts = value.split(":")
    raw = _b64decode(parts[2]) if len(parts) == 3 and _ID.fullmatch(key_id) else None
    if raw is None or len(raw) < _NONCE_BYTES + _TAG_BYTES:
        raise SealedValueError("the encrypted value is malformed")
    key = keys.get(key_id)
    if key is None:
        raise SealedValueError(f"encrypted under key {key_id}, which the key file does not hold (a lost or pruned key?)")
    try:
        ha1 = AESGCM(key.secret).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _associated_data(username, domain, algorithm, key_id))
    except InvalidTag:
        raise SealedValueError(f"does not decrypt under key {key_id} (tampered, or moved from another user's or algorithm's row)") from None
    if len(ha1) * 2 != _HEX_LENGTHS.get(algorithm, -1):
        raise SealedValueError("decrypts to no HA1 of its algorithm")
    return ha1.hex()


def _associated_data(username: str, domain: str, algorithm: str, key_id: str) -> bytes:
    parts = [_AD_LABEL]
    for text in (username, domain, algorithm, key_id):
        data = text.encode("utf-8")
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def is_plain_ha1(value: str, algorithm: str) -> bool:
    """True if *value* is an HA1 of *algorithm* in hex, as stored before encryption."""
    return len(value) == _HEX_LENGTHS.get(algorithm, -1) and _HEX.fullmatch(value) is not None


def _new_key(taken: tuple[str, ...]) -> CredentialKey:
    while True:
        key_id = secrets.token_hex(4)
        if key_id not in taken:
            return CredentialKey(key_id, AESGCM.generate_key(bit_length=KEY_BYTES * 8))


def _b64decode(text: str) -> bytes | None:
    if not _B64.fullmatch(text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a directory; the rename is done
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
