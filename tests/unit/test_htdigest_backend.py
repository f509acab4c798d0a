"""The htdigest file backend (``[auth] backends = ["file"]``) through the real service.

alice's MD5 HA1 is in an htdigest file and her roles in ``PATH.roles``; the
service built from the config (tests/pipeline_support.py, its auth and rbac
stages included) reads both.  What another writer (``sipshield user`` in
another process, an operator's editor) does to the files decides, at the next
request, who is let through and with which roles: a removed user, a deleted
file, roles taken away, stale roles of a removed user, hand-written comments.
A file that does not parse is a backend that is down: 503 with Retry-After,
never a traceback or a 500.  These tests kill the mutmut survivors of
``auth/_htdigest.py`` listed in docs/development.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_support import PASSWORD, Proxy, RecordingDispatcher, build_service

from sipshield.auth import HtdigestUserStore

BOB = "sip:bob@127.0.0.5:5070"


@pytest.fixture
def htdigest(tmp_path: Path) -> Path:
    return tmp_path / "users.htdigest"


@pytest.fixture
def proxy(tmp_path: Path, htdigest: Path) -> Iterator[Proxy]:
    dispatcher = RecordingDispatcher()
    service = build_service(tmp_path, {"auth": {"backends": ["file"], "file": str(htdigest), "algorithms": ["MD5"]}}, dispatcher=dispatcher)
    proxy = Proxy(service, service.reactor, dispatcher)
    proxy.register("bob", BOB)
    yield proxy
    proxy.stop()


def writer(path: Path) -> HtdigestUserStore:
    """The file as another process (``sipshield user --backend file``) writes it."""
    return HtdigestUserStore(path)


def forwarded_after_call(proxy: Proxy) -> bool:
    """alice calls bob answering the MD5 challenge with her password: was the INVITE forwarded?"""
    before = len(proxy.forwarded())
    proxy.send(proxy.authorized(algorithm="MD5", offered="MD5"))
    return len(proxy.forwarded()) > before


def test_a_user_of_the_file_calls_with_the_roles_of_the_roles_file(proxy: Proxy, htdigest: Path) -> None:
    """The control: alice (staff, so she may call) in the file is forwarded; her HA1 is MD5 only."""
    writer(htdigest).add("alice", "example.com", PASSWORD, roles=["staff"])
    assert forwarded_after_call(proxy)
    assert proxy.forwarded()[-1][1] == ("UDP", "127.0.0.5", 5070)


def test_a_user_of_the_file_without_a_role_that_may_call_gets_403(proxy: Proxy, htdigest: Path) -> None:
    writer(htdigest).add("alice", "example.com", PASSWORD, roles=["agent"])
    assert not forwarded_after_call(proxy)
    assert proxy.last().status == 403


def test_a_user_removed_by_another_writer_is_challenged_at_the_next_request(proxy: Proxy, htdigest: Path) -> None:
    writer(htdigest).add("alice", "example.com", PASSWORD, roles=["staff"])
    assert forwarded_after_call(proxy)
    assert writer(htdigest).remove("alice", "example.com") is True
    assert not forwarded_after_call(proxy)
    assert proxy.last().status == 407


def test_a_deleted_htdigest_file_leaves_no_user(proxy: Proxy, htdigest: Path) -> None:
    """The file read once and then deleted is an empty store, not a stale one nor an error (mutant _reload 6)."""
    writer(htdigest).add("alice", "example.com", PASSWORD, roles=["staff"])
    assert forwarded_after_call(proxy)
    htdigest.unlink()
    assert not forwarded_after_call(proxy)
    assert proxy.last().status == 407


def test_a_deleted_roles_file_leaves_the_user_without_roles(proxy: Proxy, htdigest: Path) -> None:
    """The roles file read once and then deleted gives no roles, not the old ones nor an error (mutant _reload 15)."""
    writer(htdigest).add("alice", "example.com", PASSWORD, roles=["staff"])
    assert forwarded_after_call(proxy)
    htdigest.with_name("users.htdigest.roles").unlink()
    assert not forwarded_after_call(proxy)
    assert proxy.last().status == 403


def test_roles_taken_away_by_another_writer_hold_at_the_next_request(proxy: Proxy, htdigest: Path) -> None:
    """``set_roles(user, [])`` forgets the roles (mutant set_roles 16: they were kept)."""
    writer(htdigest).add("alice", "example.com", PASSWORD, roles=["staff"])
    assert forwarded_after_call(proxy)
    writer(htdigest).set_roles("alice", "example.com", [])
    assert not forwarded_after_call(proxy)
    assert proxy.last().status == 403


def test_a_user_added_without_roles_does_not_inherit_stale_roles_of_the_same_name(proxy: Proxy, htdigest: Path) -> None:
    """The roles file still names alice as admin (she was removed from the
    htdigest file by hand): added again without roles, she has none (mutant add 20)."""
    htdigest.with_name("users.htdigest.roles").write_text("alice:example.com:admin\n")
    writer(htdigest).add("alice", "example.com", PASSWORD)
    assert not forwarded_after_call(proxy)
    assert proxy.last().status == 403


def test_every_user_keeps_its_roles_when_the_roles_file_is_written_for_several(proxy: Proxy, htdigest: Path) -> None:
    """One line per user: alice's roles on the second line are read back (mutant _save_roles 3 joined the lines with text)."""
    file = writer(htdigest)
    file.add("aaron", "example.com", "aaron-secret", roles=["staff"])
    file.add("alice", "example.com", PASSWORD, roles=["staff"])
    assert htdigest.with_name("users.htdigest.roles").read_text() == "aaron:example.com:staff\nalice:example.com:staff\n"
    assert forwarded_after_call(proxy)


def test_comments_and_blank_lines_of_a_hand_written_roles_file_are_skipped(proxy: Proxy, htdigest: Path) -> None:
    """Mutants _parse_roles 8 and 11 (a comment parsed as a line) and 12 (nothing read after the first comment)."""
    writer(htdigest).add("alice", "example.com", PASSWORD)
    htdigest.with_name("users.htdigest.roles").write_text("# roles of the legacy phones\n\n   \nalice:Example.COM:staff\n# end\n")
    assert forwarded_after_call(proxy)


@pytest.mark.parametrize("which", ["htdigest", "roles"])
def test_a_file_that_does_not_parse_is_a_backend_down_503_not_a_500(proxy: Proxy, htdigest: Path, which: str) -> None:
    """A line an editor broke: the backend is unavailable (503, Retry-After),
    not a 500 with a traceback (a bug found reading the _parse_roles survivors);
    the file mended, alice calls again."""
    writer(htdigest).add("alice", "example.com", PASSWORD, roles=["staff"])
    assert forwarded_after_call(proxy)
    broken = htdigest if which == "htdigest" else htdigest.with_name("users.htdigest.roles")
    broken.write_text(broken.read_text() + "not a line of this file\n")
    assert not forwarded_after_call(proxy)
    answer = proxy.last()
    assert (answer.status, answer.reason) == (503, "Authentication Backend Unavailable")
    assert answer.headers.get("Retry-After")
    broken.write_text(broken.read_text().replace("not a line of this file\n", ""))
    assert forwarded_after_call(proxy)
