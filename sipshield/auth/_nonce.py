"""Stateless HMAC-signed digest nonces with bounded replay tracking (RFC 7616 3.3, 5.4).

A nonce carries its own issue time and a random salt, signed with HMAC-SHA256
over (time, salt, realm, source) under a server secret, so any node holding
the secret can check it without shared state (RFC 7616 3.3 suggests
``time-stamp H(time-stamp ":" ETag ":" secret-data)``; this is the keyed-MAC
form of that idea). Only the nonce-count (nc) of nonces actually used, and
the failed digest responses to a nonce (a password guess each), are
remembered, and that memory is bounded.

Several nodes (``[state] backend = "redis"``, docs/scaling.md) share the
secret through ``[auth] nonce_secret_file`` and the nonce-counts through a
:class:`SharedNonceCounts` (``NonceManager.shared``): a (nonce, nc) accepted
by one node is a replay on every other.  The local table is still asked
first, so a replay to this node costs Redis nothing.

Time comes from an injected IReactorTime (``reactor.seconds()``) so tests
drive it with ``twisted.internet.task.Clock``; nothing here imports the
global reactor.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import os
import re
import secrets
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from twisted.internet import defer

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

    from sipshield.state._redis_nonces import SharedUse

__all__ = ["NonceManager", "SharedNonceCounts", "load_or_create_secret", "load_secret"]

_TIME = struct.Struct(">Q")  # issue time, integer milliseconds of reactor.seconds()
_LENGTH = struct.Struct(">I")
_SALT_BYTES = 8
_MAC_BYTES = 32  # full HMAC-SHA256
_HEAD_BYTES = _TIME.size + _SALT_BYTES
_RAW_BYTES = _HEAD_BYTES + _MAC_BYTES
# 48 raw bytes are a multiple of 3, so the base64url text has no padding and
# exactly one spelling per value: a re-encoded nonce cannot dodge the
# replay table, which is keyed by the text.
_ENCODED_RE = re.compile(rf"[A-Za-z0-9_-]{{{_RAW_BYTES * 4 // 3}}}")
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")

_MIN_SECRET_BYTES = 16
_SECRET_BYTES = 32
SKEW_MS = 1000
"""How far in the future (ms) a nonce's issue time may be: another node's
clock may be that far ahead of ours (NTP keeps them within milliseconds).
A nonce further ahead is invalid; only a holder of the secret can make one."""
NO_QOP = -1
"""The count a shared use without qop is recorded with: once, and nothing after it."""


class SharedNonceCounts(Protocol):
    """The nonce-counts every node sees (``sipshield.state.RedisNonceCounts``)."""

    def use(self, nonce: str, nc: int, ttl_ms: int) -> Deferred[SharedUse]:
        """Record a use of *nonce* with count *nc* (:data:`NO_QOP` without
        qop) if it is above every count any node recorded for it (none at
        all for :data:`NO_QOP`, and nothing after it), remembered *ttl_ms*.
        Fires with "fresh", "replayed" or "unavailable"; never fails, and
        fires within a bounded time (the reactor never waits on it)."""


def _field(text: str) -> bytes:
    """Length-prefixed UTF-8, so that (realm, source) pairs cannot run into each other."""
    data = text.encode("utf-8", "surrogatepass")
    return _LENGTH.pack(len(data)) + data


def _decode(nonce: str) -> tuple[int, bytes, bytes] | None:
    """(issue time in ms, signed head, mac) of a well-formed nonce, else None."""
    if not _ENCODED_RE.fullmatch(nonce):
        return None
    raw = base64.urlsafe_b64decode(nonce)
    head = raw[:_HEAD_BYTES]
    return _TIME.unpack_from(head)[0], head, raw[_HEAD_BYTES:]


def _parse_nc(nc: str) -> int | None:
    """The nonce-count as an int (RFC 7616 3.4: nc-value = 8LHEX), else None."""
    if not _NC_RE.fullmatch(nc):
        return None
    return int(nc, 16)


class NonceManager:
    """Issues and checks digest nonces and refuses replays (RFC 7616 3.3, 5.4; RFC 3261 22.4).

    *secret* (at least 16 bytes; see :func:`load_or_create_secret`) keys the
    HMAC. *reactor* provides IReactorTime. A nonce is fresh for *lifetime*
    seconds; after that it is ``"stale"`` and the challenge says
    ``stale=true`` so the client retries with the same credentials
    (RFC 7616 3.3). At most *max_tracked* used nonces are remembered for
    replay protection; when the table is full the oldest-issued entries are
    evicted and every nonce issued no later than an evicted one then counts
    as stale, so an evicted nonce can never be replayed.

    A nonce serves at most *max_failures* failed digest responses (wrong
    password or unknown user): a guess is announced with :meth:`begin`
    before the credential backend is asked and settled with :meth:`end`;
    guesses still being verified count against the limit too, so a burst
    sent before the first failure is known gets no more.  A nonce that
    reached the limit is ``"invalid"`` from then on (a fresh challenge,
    ``stale=false``).  One counter per nonce that failed, in the same
    bounded table as the used ones.
    """

    def __init__(self, secret: bytes, reactor: IReactorTime, lifetime: float = 300.0, max_tracked: int = 100_000, max_failures: int = 3) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"nonce secret must be at least {_MIN_SECRET_BYTES} bytes")
        if not lifetime > 0:
            raise ValueError("nonce lifetime must be positive")
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self._secret = bytes(secret)
        self._reactor = reactor
        self._lifetime_ms = round(lifetime * 1000)
        self._max_tracked = max_tracked
        self._max_failures = max_failures
        # nonce -> highest nc accepted, or None when used once without qop.
        self._last_nc: dict[str, int | None] = {}
        # nonce -> failed digest responses to it.
        self._failures: dict[str, int] = {}
        # nonce -> responses to it being verified now (an entry lives only
        # while a backend answers; the stage deadline bounds that).
        self._verifying: dict[str, int] = {}
        # (issue ms, nonce), once for every nonce in _last_nc or _failures: a min-heap, oldest first.
        self._by_issue: list[tuple[int, str]] = []
        # Issue time of the newest nonce evicted for space; -1 when none was.
        self._evicted_through = -1
        self.shared: SharedNonceCounts | None = None
        """The nonce-counts shared with other nodes, asked by :meth:`use_shared`; None: this process only."""

    @property
    def tracked(self) -> int:
        """How many used or failed nonces are remembered (for metrics and leak tests)."""
        return len(self._by_issue)

    def _now_ms(self) -> int:
        return round(self._reactor.seconds() * 1000)

    def _mac(self, head: bytes, realm: str, source: str) -> bytes:
        message = head + _field(realm) + _field(source)
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def issue(self, realm: str, source: str) -> str:
        """A new nonce for a challenge in *realm* to the client at *source* (RFC 7616 3.3).

        *source* is whatever the caller binds the nonce to (typically the
        client's IP address); :meth:`check` must be given the same value.
        The result is base64url without padding (64 characters), safe in a
        quoted-string.
        """
        head = _TIME.pack(self._now_ms()) + secrets.token_bytes(_SALT_BYTES)
        return base64.urlsafe_b64encode(head + self._mac(head, realm, source)).decode("ascii")

    def check(self, nonce: str, realm: str, source: str) -> str:
        """Classify *nonce* from credentials for *realm* sent from *source*.

        ``"valid"``: we issued it for this realm and source, and it is fresh.
        ``"stale"``: authentic but older than the lifetime, or older than a
        nonce evicted from the replay table; answer with a new nonce and
        ``stale=true`` (RFC 7616 3.3). ``"invalid"``: malformed, forged,
        signed for another realm or source or under another secret, or
        issued more than :data:`SKEW_MS` in the future. The MAC is compared in constant time.
        """
        decoded = _decode(nonce)
        if decoded is None:
            return "invalid"
        issued, head, mac = decoded
        if not hmac.compare_digest(mac, self._mac(head, realm, source)):
            return "invalid"
        now = self._now_ms()
        if issued > now + SKEW_MS:
            return "invalid"
        if now - issued > self._lifetime_ms:
            return "stale"
        if issued <= self._evicted_through and not self._remembered(nonce):
            return "stale"
        if self._failures.get(nonce, 0) >= self._max_failures:
            return "invalid"
        return "valid"

    def begin(self, nonce: str) -> bool:
        """A response to *nonce* (which :meth:`check` found valid) is about
        to be verified; False when the nonce may take no more guesses
        (failed and pending ones reach ``max_failures``): challenge afresh.
        Every True must be followed by one :meth:`end`."""
        pending = self._verifying.get(nonce, 0)
        if self._failures.get(nonce, 0) + pending >= self._max_failures:
            return False
        self._verifying[nonce] = pending + 1
        return True

    def end(self, nonce: str, failed: bool) -> None:
        """The verification :meth:`begin` announced is over; *failed* when
        the digest response was wrong (a backend outage or a deadline is no
        guess: pass False)."""
        pending = self._verifying.pop(nonce, 0) - 1
        if pending > 0:
            self._verifying[nonce] = pending
        if not failed:
            return
        decoded = _decode(nonce)
        if decoded is None:
            return
        issued = decoded[0]
        now = self._now_ms()
        self._expire(now)
        if now - issued > self._lifetime_ms or (issued <= self._evicted_through and not self._remembered(nonce)):
            return  # already stale: nothing to count
        self._remember(nonce, issued)
        self._failures[nonce] = self._failures.get(nonce, 0) + 1
        self._evict()

    def use(self, nonce: str, nc: str | None) -> bool:
        """Record one use of *nonce*; False for a replay (RFC 7616 5.4, RFC 3261 22.4).

        Call it only after :meth:`check` said ``"valid"`` and the response
        digest verified. With qop, *nc* is the 8-hex-digit nonce-count and
        must be strictly greater than any accepted before for this nonce
        (the same nc twice is a replay). Without qop pass ``None``: such a
        nonce may then be used exactly once. A False result means "challenge
        again"; a nonce that is expired or was evicted from the table is
        refused here too, as stale.
        """
        decoded = _decode(nonce)
        if decoded is None:
            return False
        issued = decoded[0]
        now = self._now_ms()
        self._expire(now)
        if issued > now + SKEW_MS or now - issued > self._lifetime_ms:
            return False
        known = nonce in self._last_nc
        if not known and issued <= self._evicted_through and nonce not in self._failures:
            return False
        if nc is None:
            if known:
                return False
            self._track(nonce, issued, None)
            return True
        count = _parse_nc(nc)
        if count is None:
            return False
        if known:
            last = self._last_nc[nonce]
            if last is None or count <= last:
                return False
            self._last_nc[nonce] = count
            return True
        if count < 1:
            return False
        self._track(nonce, issued, count)
        return True

    def use_shared(self, nonce: str, nc: str | None) -> Deferred[SharedUse]:
        """Record the use :meth:`use` accepted with the other nodes too
        (:attr:`shared`, which must be set): "fresh" when no node accepted
        this (nonce, nc) before, "replayed" when one did, "unavailable"
        when that cannot be known now.  Remembered there as long as any
        node may accept the nonce (its lifetime from issue, and the skew)."""
        assert self.shared is not None
        decoded = _decode(nonce)
        count = NO_QOP if nc is None else _parse_nc(nc)
        if decoded is None or count is None:  # use() refused these already
            return defer.succeed("replayed")
        ttl = decoded[0] + self._lifetime_ms + SKEW_MS - self._now_ms()
        return self.shared.use(nonce, count, max(ttl, 1))

    def _remembered(self, nonce: str) -> bool:
        return nonce in self._last_nc or nonce in self._failures

    def _remember(self, nonce: str, issued: int) -> None:
        """Give *nonce* its one place in the issue-time heap."""
        if not self._remembered(nonce):
            heapq.heappush(self._by_issue, (issued, nonce))

    def _forget(self, nonce: str) -> None:
        self._last_nc.pop(nonce, None)
        self._failures.pop(nonce, None)

    def _track(self, nonce: str, issued: int, count: int | None) -> None:
        self._remember(nonce, issued)
        self._last_nc[nonce] = count
        self._evict()

    def _evict(self) -> None:
        while len(self._by_issue) > self._max_tracked:
            old_issued, old_nonce = heapq.heappop(self._by_issue)
            self._forget(old_nonce)
            if old_issued > self._evicted_through:
                self._evicted_through = old_issued

    def _expire(self, now: int) -> None:
        """Forget nonces past their lifetime: time alone now refuses them."""
        heap = self._by_issue
        while heap and now - heap[0][0] > self._lifetime_ms:
            _, nonce = heapq.heappop(heap)
            self._forget(nonce)


def load_secret(path: Path) -> bytes:
    """The secret stored at *path*, which must exist (``[auth] nonce_secret_file``:
    one file copied to every node, as a TLS key is).  Raises FileNotFoundError,
    PermissionError if it is accessible to group or others, ValueError if it
    holds fewer than 16 bytes."""
    path = Path(path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise PermissionError(f"{path}: secret is accessible to group or others (mode {mode:04o}); chmod 600 it")
    secret = path.read_bytes()
    if len(secret) < _MIN_SECRET_BYTES:
        raise ValueError(f"{path}: secret is shorter than {_MIN_SECRET_BYTES} bytes")
    return secret


def load_or_create_secret(path: Path) -> bytes:
    """The secret stored at *path*, created on first start (the nonce "secret-data" of RFC 7616 3.3;
    also the Record-Route token key).

    A new file gets 32 bytes from :mod:`secrets`, is created exclusively
    (``O_CREAT | O_EXCL``, never following a planted file) with mode 0600,
    and is reused on later starts so nonces survive restarts. Raises
    PermissionError if an existing file is accessible to group or others,
    and ValueError if it holds fewer than 16 bytes (a truncated write).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        secret = secrets.token_bytes(_SECRET_BYTES)
        try:
            view = memoryview(secret)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        return secret
    try:
        return load_secret(path)
    except ValueError as e:
        raise ValueError(f"{e}; delete it to regenerate") from None
