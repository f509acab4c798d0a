"""HMAC-signed nonces, staleness and replay protection (RFC 7616 3.3, 5.4), on task.Clock."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from sipshield.auth._nonce import NonceManager, load_or_create_secret

SECRET = b"k" * 32
REALM = "example.com"
SOURCE = "192.0.2.10"


def manager(**kwargs: object) -> tuple[NonceManager, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)  # a realistic epoch: the time field must hold it
    return NonceManager(SECRET, clock, **kwargs), clock  # type: ignore[arg-type]


def flip(nonce: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(nonce))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode()


# -- issue / check ---------------------------------------------------------------


def test_fresh_nonce_is_valid() -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.check(nonce, REALM, SOURCE) == "valid"


def test_nonce_is_base64url_without_padding_and_quotable() -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert len(nonce) == 64
    assert set(nonce) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_nonces_issued_in_the_same_instant_differ() -> None:
    nonces, _ = manager()
    assert nonces.issue(REALM, SOURCE) != nonces.issue(REALM, SOURCE)


def test_nonce_is_valid_until_lifetime_then_stale() -> None:
    nonces, clock = manager(lifetime=300.0)
    nonce = nonces.issue(REALM, SOURCE)
    clock.advance(300.0)
    assert nonces.check(nonce, REALM, SOURCE) == "valid"
    clock.advance(0.01)
    assert nonces.check(nonce, REALM, SOURCE) == "stale"


def test_stale_nonce_cannot_be_used() -> None:
    nonces, clock = manager(lifetime=30.0)
    nonce = nonces.issue(REALM, SOURCE)
    clock.advance(31)
    assert nonces.use(nonce, "00000001") is False


@pytest.mark.parametrize("index", [0, 7, 8, 15, 16, 47])  # time, salt, mac
def test_tampered_nonce_is_invalid(index: int) -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.check(flip(nonce, index), REALM, SOURCE) == "invalid"


def test_nonce_for_other_source_is_invalid() -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.check(nonce, REALM, "198.51.100.1") == "invalid"


def test_nonce_for_other_realm_is_invalid() -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.check(nonce, "evil.example", SOURCE) == "invalid"


def test_realm_and_source_boundaries_are_unambiguous() -> None:
    # ("ab", "c") and ("a", "bc") must not sign the same bytes.
    nonces, _ = manager()
    nonce = nonces.issue("ab", "c")
    assert nonces.check(nonce, "a", "bc") == "invalid"


def test_nonce_under_other_secret_is_invalid() -> None:
    nonces, clock = manager()
    other = NonceManager(b"o" * 32, clock)
    assert other.check(nonces.issue(REALM, SOURCE), REALM, SOURCE) == "invalid"


def test_stale_nonce_with_bad_mac_is_invalid_not_stale() -> None:
    nonces, clock = manager(lifetime=10.0)
    nonce = nonces.issue(REALM, SOURCE)
    clock.advance(11)
    assert nonces.check(flip(nonce, 40), REALM, SOURCE) == "invalid"


def test_nonce_from_the_future_is_invalid() -> None:
    # Issued by a node (same secret) whose clock is ahead of ours.
    ahead = Clock()
    ahead.advance(1_700_000_100)
    nonce = NonceManager(SECRET, ahead).issue(REALM, SOURCE)
    nonces, _ = manager()
    assert nonces.check(nonce, REALM, SOURCE) == "invalid"
    assert nonces.use(nonce, "00000001") is False


@pytest.mark.parametrize(
    "nonce",
    [
        "",
        "x",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "A" * 63,
        "A" * 65,
        "A" * 63 + "=",
        "A" * 62 + "==",
        "+" * 64,
        "/" * 64,
        "A" * 63 + "\u00e9",
        "A" * 63 + "\n",
    ],
)
def test_malformed_nonce_is_invalid(nonce: str) -> None:
    nonces, _ = manager()
    assert nonces.check(nonce, REALM, SOURCE) == "invalid"
    assert nonces.use(nonce, "00000001") is False


@pytest.mark.parametrize("kwargs", [{"secret": b"short"}, {"lifetime": 0}, {"lifetime": -1.0}, {"max_tracked": 0}, {"max_failures": 0}])
def test_constructor_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"secret": SECRET, "reactor": Clock(), **kwargs}
    with pytest.raises(ValueError):
        NonceManager(**args)  # type: ignore[arg-type]


# -- replay protection -----------------------------------------------------------


def test_same_nc_twice_is_a_replay() -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.use(nonce, "00000001") is True
    assert nonces.use(nonce, "00000001") is False


def test_nc_must_increase_strictly() -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.use(nonce, "00000001") is True
    assert nonces.use(nonce, "00000002") is True
    assert nonces.use(nonce, "0000000a") is True
    assert nonces.use(nonce, "00000009") is False
    assert nonces.use(nonce, "0000000A") is False  # same count, other spelling
    assert nonces.use(nonce, "0000000b") is True


def test_nc_may_skip_values() -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.use(nonce, "00000005") is True
    assert nonces.use(nonce, "00000004") is False
    assert nonces.use(nonce, "00000006") is True


@pytest.mark.parametrize("nc", ["00000000", "1", "000000001", "0000000g", "", " 0000001"])
def test_bad_or_zero_nc_is_refused(nc: str) -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.use(nonce, nc) is False
    assert nonces.use(nonce, "00000001") is True


def test_nonces_are_tracked_separately() -> None:
    nonces, _ = manager()
    first, second = nonces.issue(REALM, SOURCE), nonces.issue(REALM, SOURCE)
    assert nonces.use(first, "00000001") is True
    assert nonces.use(second, "00000001") is True


def test_without_qop_a_nonce_is_used_once() -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.use(nonce, None) is True
    assert nonces.use(nonce, None) is False
    assert nonces.use(nonce, "00000001") is False


def test_nonce_used_with_qop_cannot_then_be_used_without() -> None:
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.use(nonce, "00000001") is True
    assert nonces.use(nonce, None) is False


def test_used_nonce_still_checks_valid_within_lifetime() -> None:
    # A used nonce stays "valid" for check(); use() is what refuses the replay.
    nonces, _ = manager()
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.use(nonce, "00000001") is True
    assert nonces.check(nonce, REALM, SOURCE) == "valid"


# -- bounded tracking ------------------------------------------------------------


def test_expired_entries_are_dropped() -> None:
    nonces, clock = manager(lifetime=60.0)
    for _ in range(10):
        assert nonces.use(nonces.issue(REALM, SOURCE), "00000001")
    assert nonces.tracked == 10
    clock.advance(61)
    assert nonces.use(nonces.issue(REALM, SOURCE), "00000001")
    assert nonces.tracked == 1


def test_tracking_never_exceeds_max_tracked() -> None:
    nonces, clock = manager(max_tracked=5)
    for _ in range(50):
        clock.advance(0.001)
        assert nonces.use(nonces.issue(REALM, SOURCE), "00000001") is True
        assert nonces.tracked <= 5
    assert nonces.tracked == 5


def test_evicted_nonce_counts_as_stale_and_cannot_be_replayed() -> None:
    nonces, clock = manager(max_tracked=2)
    oldest = nonces.issue(REALM, SOURCE)
    clock.advance(1)
    middle = nonces.issue(REALM, SOURCE)
    clock.advance(1)
    newest = nonces.issue(REALM, SOURCE)
    assert nonces.use(oldest, "00000001") is True
    assert nonces.use(middle, "00000001") is True
    assert nonces.use(newest, "00000001") is True  # evicts the oldest-issued
    assert nonces.tracked == 2
    assert nonces.check(oldest, REALM, SOURCE) == "stale"
    assert nonces.use(oldest, "00000001") is False
    assert nonces.use(oldest, "00000002") is False
    assert nonces.use(oldest, None) is False
    # The survivors keep their state.
    assert nonces.check(middle, REALM, SOURCE) == "valid"
    assert nonces.use(middle, "00000001") is False
    assert nonces.use(newest, "00000002") is True


def test_unused_nonce_older_than_an_evicted_one_is_stale() -> None:
    # Memory cannot tell "never used" from "evicted" for old nonces: both re-challenge.
    nonces, clock = manager(max_tracked=1)
    unused = nonces.issue(REALM, SOURCE)
    clock.advance(1)
    first = nonces.issue(REALM, SOURCE)
    clock.advance(1)
    second = nonces.issue(REALM, SOURCE)
    assert nonces.use(first, "00000001") is True
    assert nonces.use(second, "00000001") is True  # evicts first
    assert nonces.check(unused, REALM, SOURCE) == "stale"
    assert nonces.use(unused, "00000001") is False
    clock.advance(1)
    fresh = nonces.issue(REALM, SOURCE)
    assert nonces.check(fresh, REALM, SOURCE) == "valid"
    assert nonces.use(fresh, "00000001") is True


def test_eviction_prefers_oldest_issued_not_first_used() -> None:
    nonces, clock = manager(max_tracked=2)
    old = nonces.issue(REALM, SOURCE)
    clock.advance(1)
    young = nonces.issue(REALM, SOURCE)
    clock.advance(1)
    youngest = nonces.issue(REALM, SOURCE)
    assert nonces.use(young, "00000001") is True
    assert nonces.use(old, "00000001") is True  # used later, issued earlier
    assert nonces.use(youngest, "00000001") is True
    assert nonces.check(old, REALM, SOURCE) == "stale"
    assert nonces.check(young, REALM, SOURCE) == "valid"
    assert nonces.use(young, "00000002") is True


# -- secret file -----------------------------------------------------------------


def test_secret_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "nonce.key"
    secret = load_or_create_secret(path)
    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == secret


def test_secret_file_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "nonce.key"
    first = load_or_create_secret(path)
    assert load_or_create_secret(path) == first
    assert load_or_create_secret(tmp_path / "other.key") != first


def test_nonces_survive_a_restart_with_the_same_secret_file(tmp_path: Path) -> None:
    clock = Clock()
    nonce = NonceManager(load_or_create_secret(tmp_path / "k"), clock).issue(REALM, SOURCE)
    assert NonceManager(load_or_create_secret(tmp_path / "k"), clock).check(nonce, REALM, SOURCE) == "valid"


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nonce.key"
    load_or_create_secret(path)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_secret(path)


def test_truncated_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nonce.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with pytest.raises(ValueError, match="shorter"):
        load_or_create_secret(path)


def test_secret_file_is_not_created_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    link = tmp_path / "nonce.key"
    link.symlink_to(target)
    # O_EXCL refuses the dangling symlink instead of creating its target.
    with pytest.raises(FileNotFoundError):
        load_or_create_secret(link)
    assert not target.exists()


def test_auth_modules_do_not_import_the_global_reactor() -> None:
    code = (
        "import sys\nimport sipshield.auth._credentials, sipshield.auth._digest, sipshield.auth._nonce\nsys.exit('twisted.internet.reactor' in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# -- failed guesses ([auth] max_nonce_failures) -------------------------------------


def fail(nonces: NonceManager, nonce: str) -> bool:
    """One wrong digest response to *nonce*, as the auth stage reports it; False when refused before the backend."""
    if not nonces.begin(nonce):
        return False
    nonces.end(nonce, failed=True)
    return True


def test_a_nonce_is_invalid_after_max_failures_wrong_answers() -> None:
    nonces, _ = manager(max_failures=2)
    nonce = nonces.issue(REALM, SOURCE)
    assert fail(nonces, nonce)
    assert nonces.check(nonce, REALM, SOURCE) == "valid"
    assert fail(nonces, nonce)
    assert nonces.check(nonce, REALM, SOURCE) == "invalid"
    assert not nonces.begin(nonce)
    assert nonces.check(nonces.issue(REALM, SOURCE), REALM, SOURCE) == "valid"  # others are untouched


def test_pending_verifications_count_against_the_limit_and_are_released() -> None:
    nonces, _ = manager(max_failures=3)
    nonce = nonces.issue(REALM, SOURCE)
    assert [nonces.begin(nonce) for _ in range(4)] == [True, True, True, False]
    for _ in range(3):
        nonces.end(nonce, failed=False)  # right answers, or outages: no guesses
    assert nonces._verifying == {}
    assert nonces.tracked == 0
    assert nonces.check(nonce, REALM, SOURCE) == "valid"


def test_failure_memory_is_bounded_and_an_evicted_spent_nonce_stays_unusable() -> None:
    nonces, clock = manager(max_tracked=4, max_failures=1)
    spent = nonces.issue(REALM, SOURCE)
    assert fail(nonces, spent)
    for _ in range(20):
        clock.advance(0.001)
        assert fail(nonces, nonces.issue(REALM, SOURCE))
        assert nonces.tracked <= 4
    assert nonces.check(spent, REALM, SOURCE) == "stale"  # forgotten, but older than an evicted one
    assert not nonces.use(spent, "00000001")


def test_failure_memory_ends_with_the_nonce_lifetime() -> None:
    nonces, clock = manager(lifetime=60.0)
    for _ in range(10):
        assert fail(nonces, nonces.issue(REALM, SOURCE))
    assert nonces.tracked == 10
    clock.advance(61)
    assert fail(nonces, nonces.issue(REALM, SOURCE))
    assert nonces.tracked == 1


def test_a_nonce_used_and_failed_is_remembered_once() -> None:
    nonces, _ = manager(max_tracked=2)
    nonce = nonces.issue(REALM, SOURCE)
    assert nonces.use(nonce, "00000001")
    assert fail(nonces, nonce)
    assert nonces.tracked == 1
    assert nonces.use(nonce, "00000002")
