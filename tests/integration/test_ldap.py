"""The LDAP credential backend against a real, private slapd (see ``ldap_support``):
HA1s per algorithm from the directory, roles from groups, unknown users, filter
injection, fail-closed when the directory is down or silent, reconnection,
ldaps with certificate verification, and chaining with the SQL store."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import ldap_support
import pytest
import pytest_twisted
from ldap_support import REALM, SERVICE_DN, SERVICE_PASSWORD, Slapd, start_slapd
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor, ssl
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyObject

from sipshield.auth import KeyFile, SIPDigestCredentials, UserStore, compute_ha1
from sipshield.auth._checkers import BackendUnavailable, ChainedChecker, IIdentity, StoreChecker, UnknownUser, make_portal
from sipshield.auth._digest import DigestResponse, _h
from sipshield.auth._ldap import LDAPChecker, LDAPSettings

ALICE_PASSWORD = ldap_support.USERS["alice"][0]


def digest_credentials(username: str, password: str, algorithm: str = "SHA-256", realm: str = REALM) -> SIPDigestCredentials:
    """Credentials as a phone computes them (RFC 7616 3.4.1, qop=auth)."""
    base = algorithm.removesuffix("-sess")
    hash_name = {"SHA-256": "sha256", "SHA-512-256": "sha512_256", "MD5": "md5"}[base]
    nonce, cnonce, nc, uri = "n0nce", "c0nce", "00000001", "sip:example.com"
    ha1 = compute_ha1(base, username, realm, password)
    if algorithm.endswith("-sess"):
        ha1 = _h(hash_name, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _h(hash_name, f"REGISTER:{uri}")
    response = _h(hash_name, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    digest = DigestResponse(username, realm, nonce, uri, response, algorithm, cnonce, nc, "auth")
    return SIPDigestCredentials(digest, "REGISTER")


def settings_for(url: str, **overrides: object) -> LDAPSettings:
    values: dict[str, object] = {
        "url": url,
        "base_dn": ldap_support.PEOPLE_DN,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "group_base_dn": ldap_support.GROUPS_DN,
        "group_roles": {"sip-staff": ["staff"], "sip-ops": ["ops", "staff"]},
        "timeout": 5.0,
    }
    values.update(overrides)
    return LDAPSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    # Plain ldap:// for most tests, ldaps:// (test CA) as well for the TLS ones.
    server = start_slapd(tmp_path_factory.mktemp("slapd"), tls=True)
    yield server
    server.stop()


@pytest.fixture
def checker(slapd: Slapd) -> Iterator[LDAPChecker]:
    checker = LDAPChecker(settings_for(slapd.url), reactor)
    yield checker
    checker.close()


def closed_port() -> int:
    return ldap_support.free_port()


def test_checker_provides_icredentialschecker(slapd: Slapd) -> None:
    assert verifyObject(ICredentialsChecker, LDAPChecker(settings_for(slapd.url), reactor))


@pytest.mark.parametrize("algorithm", ["SHA-256", "SHA-512-256", "SHA-256-sess", "SHA-512-256-sess"])
@pytest_twisted.inlineCallbacks
def test_alice_authenticates_with_each_stored_algorithm(checker: LDAPChecker, algorithm: str) -> Iterator:
    avatar = yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD, algorithm))
    assert avatar == "alice@example.com"
    assert avatar.roles == ("staff",)


@pytest_twisted.inlineCallbacks
def test_a_host_name_url_connects(slapd: Slapd) -> Iterator:
    checker = LDAPChecker(settings_for(f"ldap://localhost:{slapd.port}"), reactor)
    try:
        avatar = yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
    finally:
        checker.close()
    assert avatar == "alice@example.com"


@pytest_twisted.inlineCallbacks
def test_roles_are_the_union_of_mapped_groups(checker: LDAPChecker) -> Iterator:
    avatar = yield checker.requestAvatarId(digest_credentials("carol", ldap_support.USERS["carol"][0]))
    assert avatar.roles == ("ops", "staff")


@pytest_twisted.inlineCallbacks
def test_groups_without_a_mapping_give_no_roles(slapd: Slapd) -> Iterator:
    checker = LDAPChecker(settings_for(slapd.url, group_roles={}), reactor)
    try:
        avatar = yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
    finally:
        checker.close()
    assert avatar.roles == ()


@pytest_twisted.inlineCallbacks
def test_wrong_password_is_unauthorized_not_unknown(checker: LDAPChecker) -> Iterator:
    with pytest.raises(UnauthorizedLogin) as raised:
        yield checker.requestAvatarId(digest_credentials("alice", "not-her-password"))
    assert not isinstance(raised.value, UnknownUser)


@pytest_twisted.inlineCallbacks
def test_unknown_user_is_unknown_after_a_decoy_check(checker: LDAPChecker) -> Iterator:
    credentials = digest_credentials("mallory", "whatever")
    checked: list[str] = []
    original = credentials.checkHash
    credentials.checkHash = lambda ha1: checked.append(ha1) or original(ha1)  # type: ignore[method-assign]
    with pytest.raises(UnknownUser):
        yield checker.requestAvatarId(credentials)
    assert len(checked) == 1


@pytest_twisted.inlineCallbacks
def test_no_ha1_for_the_realm_or_algorithm_is_unknown(checker: LDAPChecker) -> Iterator:
    with pytest.raises(UnknownUser):
        yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD, realm="other.example"))
    with pytest.raises(UnknownUser):
        yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD, algorithm="MD5"))


@pytest.mark.parametrize("username", ["*)(uid=*", "*", "alice)(uid=*", "al*", "alice\\29"])
@pytest_twisted.inlineCallbacks
def test_filter_injection_finds_no_user(checker: LDAPChecker, username: str) -> Iterator:
    with pytest.raises(UnknownUser):
        yield checker.requestAvatarId(digest_credentials(username, ALICE_PASSWORD))


@pytest_twisted.inlineCallbacks
def test_a_filter_matching_several_entries_refuses_the_login(slapd: Slapd) -> Iterator:
    checker = LDAPChecker(settings_for(slapd.url, user_filter="(|(uid={username})(objectClass=inetOrgPerson))"), reactor)
    try:
        with pytest.raises(UnauthorizedLogin) as raised:
            yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
    finally:
        checker.close()
    assert not isinstance(raised.value, UnknownUser)


@pytest_twisted.inlineCallbacks
def test_directory_down_fails_closed() -> Iterator:
    checker = LDAPChecker(settings_for(f"ldap://127.0.0.1:{closed_port()}"), reactor)
    with pytest.raises(BackendUnavailable):
        yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))


@pytest_twisted.inlineCallbacks
def test_bind_refused_fails_closed(slapd: Slapd) -> Iterator:
    checker = LDAPChecker(settings_for(slapd.url, bind_password="wrong"), reactor)
    with pytest.raises(BackendUnavailable) as raised:
        yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
    assert "refused" in str(raised.value) and "wrong" not in str(raised.value)


@pytest_twisted.inlineCallbacks
def test_wrong_base_dn_fails_closed(slapd: Slapd) -> Iterator:
    checker = LDAPChecker(settings_for(slapd.url, base_dn="ou=nowhere,dc=example,dc=com"), reactor)
    try:
        with pytest.raises(BackendUnavailable):
            yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
    finally:
        checker.close()


@pytest_twisted.inlineCallbacks
def test_silent_directory_times_out_and_fails_closed() -> Iterator:
    # A listening socket that never accepts: TCP connects (backlog), no LDAP answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        checker = LDAPChecker(settings_for(f"ldap://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3), reactor)
        with pytest.raises(BackendUnavailable) as raised:
            yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
        checker.close()
    assert "in time" in str(raised.value) or "within" in str(raised.value)


@pytest_twisted.inlineCallbacks
def test_directory_restart_fails_closed_then_reconnects(tmp_path: Path) -> Iterator:
    server = start_slapd(tmp_path)
    checker = LDAPChecker(settings_for(server.url), reactor)
    try:
        avatar = yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
        assert avatar == "alice@example.com"
        server.stop()
        with pytest.raises(BackendUnavailable):
            yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
        server.start()
        avatar = yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
        assert avatar.roles == ("staff",)
    finally:
        checker.close()
        server.stop()


@pytest_twisted.inlineCallbacks
def test_concurrent_requests_share_one_connection(checker: LDAPChecker) -> Iterator:
    from twisted.internet import defer

    results = yield defer.gatherResults([checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD)) for _ in range(5)])
    assert results == ["alice@example.com"] * 5
    assert len(checker._waiting) == 0 and checker._client is not None and checker._client.connected


@pytest.fixture
def sqlite_checker(tmp_path: Path) -> Iterator[StoreChecker]:
    store = UserStore(f"sqlite:///{tmp_path / 'users.db'}", keys=KeyFile(tmp_path / "credential.keys"))
    store.create_schema()
    store.add("bob", REALM, "bob-secret", roles=["admin"])
    store.add("alice", REALM, "sql-alice-secret", roles=["admin"])
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test-sql")
    pool.start()
    yield StoreChecker(store, reactor, pool)
    pool.stop()
    store.close()


@pytest_twisted.inlineCallbacks
def test_chain_of_ldap_and_sql_finds_users_in_either(checker: LDAPChecker, sqlite_checker: StoreChecker) -> Iterator:
    portal = make_portal([checker, sqlite_checker])
    _, alice, _ = yield portal.login(digest_credentials("alice", ALICE_PASSWORD), None, IIdentity)
    assert (alice.aor, alice.roles) == ("sip:alice@example.com", frozenset({"staff"}))
    _, bob, _ = yield portal.login(digest_credentials("bob", "bob-secret"), None, IIdentity)
    assert (bob.aor, bob.roles) == ("sip:bob@example.com", frozenset({"admin"}))
    chain = ChainedChecker([checker, sqlite_checker])
    # LDAP knows alice: a wrong password there stops the chain, even if SQL would accept it.
    with pytest.raises(UnauthorizedLogin):
        yield chain.requestAvatarId(digest_credentials("alice", "sql-alice-secret"))
    with pytest.raises(UnauthorizedLogin):
        yield chain.requestAvatarId(digest_credentials("nobody", "x"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": "ldapi://h"}, "url"),
        ({"url": "https://h"}, "url"),
        ({"url": "ldaps://h:x"}, "port"),
        ({"url": "ldap://"}, "url"),
        ({"base_dn": ""}, "base_dn"),
        ({"bind_password": ""}, "bind_password"),
        ({"user_filter": "(uid=alice)"}, "{username}"),
        ({"group_filter": "(member=x)"}, "{dn}"),
        ({"ha1_attribute": "de(scr"}, "attribute"),
        ({"timeout": 0}, "timeout"),
        ({"group_roles": {"sip-staff": "staff"}}, "group_roles"),
    ],
)
def test_settings_reject_unusable_values(overrides: dict[str, object], message: str) -> None:
    # The parameter is not changed (popped from): the test can run again in one process (bench/_mutant_loop.py).
    others = {k: v for k, v in overrides.items() if k != "url"}
    with pytest.raises(ValueError, match=message.replace("{", "\\{").replace("}", "\\}")):
        settings_for(str(overrides.get("url", "ldap://127.0.0.1:389")), **others)


@pytest.mark.parametrize(("url", "address"), [("ldaps://h", ("h", 636)), ("LDAPS://h:1636/", ("h", 1636)), ("ldap://h", ("h", 389))])
def test_settings_ldaps_default_port(url: str, address: tuple[str, int]) -> None:
    settings = settings_for(url)
    assert settings.endpoint_address() == address
    assert settings.tls == url.lower().startswith("ldaps:")


def test_settings_ca_file_must_be_a_pem_file_and_only_for_ldaps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ca_file"):
        settings_for("ldaps://h", ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="ca_file"):
        settings_for("ldaps://h", ca_file=str(tmp_path))
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        settings_for("ldaps://h", ca_file=str(tmp_path / "empty.pem"))
    ca, _key = ldap_support.make_ca(tmp_path)
    with pytest.raises(ValueError, match="ldaps"):
        settings_for("ldap://h", ca_file=str(ca))
    assert settings_for("ldaps://h", ca_file=str(ca)).ca_file == str(ca)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.inlineCallbacks
def test_ldaps_login_verifies_against_the_ca_file(slapd: Slapd, host: str) -> Iterator:
    # The server certificate names 127.0.0.1 (IP SAN) and localhost (DNS SAN).
    checker = LDAPChecker(settings_for(f"ldaps://{host}:{slapd.tls_port}", ca_file=str(slapd.ca_file)), reactor)
    try:
        avatar = yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD, "SHA-256"))
        assert checker._client.transport.getPeerCertificate() is not None
    finally:
        checker.close()
    assert avatar == "alice@example.com"
    assert avatar.roles == ("staff",)


@pytest_twisted.inlineCallbacks
def test_ldaps_with_a_ca_that_did_not_sign_the_certificate_fails_closed(slapd: Slapd, tmp_path: Path) -> Iterator:
    other_ca, _key = ldap_support.make_ca(tmp_path, "other-ca")
    checker = LDAPChecker(settings_for(slapd.ldaps_url, ca_file=str(other_ca)), reactor)
    try:
        with pytest.raises(BackendUnavailable) as raised:
            yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
    finally:
        checker.close()
    assert "TLS" in str(raised.value)


@pytest_twisted.inlineCallbacks
def test_ldaps_without_ca_file_uses_the_platform_trust_and_fails_closed(slapd: Slapd) -> Iterator:
    # The test CA is not in the platform's trust store.
    checker = LDAPChecker(settings_for(slapd.ldaps_url), reactor)
    try:
        with pytest.raises(BackendUnavailable):
            yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
    finally:
        checker.close()


@pytest_twisted.inlineCallbacks
def test_ldaps_certificate_for_another_host_fails_closed(slapd: Slapd) -> Iterator:
    checker = LDAPChecker(settings_for(slapd.ldaps_url, ca_file=str(slapd.ca_file)), reactor)
    # A trusted chain that does not name the host the checker expects.
    trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(slapd.ca_file.read_bytes())])
    checker._tls_options = ssl.optionsForClientTLS("ldap.example.net", trustRoot=trust)
    try:
        with pytest.raises(BackendUnavailable) as raised:
            yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
    finally:
        checker.close()
    assert "TLS" in str(raised.value)


@pytest.mark.parametrize("user_filter", ["(uid={username}", "({username}=alice)"])
def test_checker_rejects_bad_filter_templates(user_filter: str) -> None:
    with pytest.raises(ValueError):
        LDAPChecker(settings_for("ldap://127.0.0.1:389", user_filter=user_filter), reactor)


def test_libpass_still_provides_passlib() -> None:
    # ldaptor depends on passlib 1.7; installed after libpass it would replace it (DEPENDENCIES.md).
    import passlib

    assert passlib.__version__.startswith("1.9"), passlib.__version__


def test_the_username_becomes_a_literal_value_in_every_kind_of_filter_leaf() -> None:
    """Equality, NOT, OR, substrings and an extensible match: each place the
    placeholder stands gets the peer's value as an escaped assertion value,
    never filter text (RFC 4515 3; mutmut survivors of _substitute)."""
    from sipshield.auth._ldap import _FilterTemplate

    template = _FilterTemplate("(&(uid={username})(!(cn={username}))(mail={username}@*)(cn:caseExactMatch:={username})(|(sn=x)(sn={username})))", "{username}")
    value = r"a*b)(c"
    escaped = r"a\2ab\29\28c"
    assert template.render(value).asText() == (
        f"(&(uid={escaped})(!(cn={escaped}))(mail={escaped}@*)(cn:caseExactMatch:={escaped})(|(sn=x)(sn={escaped})))"
    )
    assert template.render("bob").asText() == "(&(uid=bob)(!(cn=bob))(mail=bob@*)(cn:caseExactMatch:=bob)(|(sn=x)(sn=bob)))"
    # A presence test has no value to fill (mutant _substitute 19 looked for one).
    assert _FilterTemplate("(&(objectClass=*)(uid={username}))", "{username}").render("bob").asText() == "(&(objectClass=*)(uid=bob))"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_dn": ""}, "ldap: base_dn must not be empty"),
        ({"bind_password": ""}, "ldap: bind_dn needs a bind_password (an empty one is an unauthenticated bind)"),
        ({"group_roles": {"sip-staff": "staff"}}, "ldap: group_roles maps a group cn to a list of roles"),
        ({"timeout": 300.5}, "ldap: timeout must be a number of seconds in (0, 300]"),
        ({"url": "ldap://127.0.0.1:389", "ca_file": "x.pem"}, "ldap: ca_file is only used with an ldaps:// url"),
        ({"url": "ldaps://127.0.0.1", "ca_file": ""}, "ldap: ca_file must be the path of a PEM file"),
        ({"url": "ldap://admin@127.0.0.1"}, "ldap: url must be ldap://host[:port] or ldaps://host[:port], not 'ldap://admin@127.0.0.1'"),
        ({"url": "ldap://127.0.0.1/?uid"}, "ldap: url must be ldap://host[:port] or ldaps://host[:port], not 'ldap://127.0.0.1/?uid'"),
        ({"url": "ldap://127.0.0.1/dc=example"}, "ldap: url must be ldap://host[:port] or ldaps://host[:port], not 'ldap://127.0.0.1/dc=example'"),
    ],
)
def test_settings_errors_say_exactly_what_is_wrong(overrides: dict[str, object], message: str) -> None:
    """Word for word (the mutmut survivors of __post_init__, endpoint_address and _load_ca_file)."""
    others = {k: v for k, v in overrides.items() if k != "url"}
    with pytest.raises(ValueError) as raised:
        settings_for(str(overrides.get("url", "ldap://127.0.0.1:389")), **others)
    assert str(raised.value) == message


def test_settings_accept_the_bounds_and_an_attribute_name_in_mixed_case() -> None:
    settings = settings_for("ldap://127.0.0.1:389", timeout=300, ha1_attribute="sipDigestHA1")
    assert (settings.timeout, settings.ha1_attribute) == (300, "sipDigestHA1")


@pytest_twisted.inlineCallbacks
def test_roles_come_from_every_group_of_a_user_in_several(slapd: Slapd) -> Iterator:
    """dave is in sip-staff and sip-ops, each mapped to a role of its own: both
    (mutant _roles 14 asked the directory for one group only)."""
    checker = LDAPChecker(settings_for(slapd.url, group_roles={"sip-staff": ["staff"], "sip-ops": ["ops"]}), reactor)
    try:
        avatar = yield checker.requestAvatarId(digest_credentials("dave", ldap_support.USERS["dave"][0]))
    finally:
        checker.close()
    assert avatar.roles == ("ops", "staff")


@pytest_twisted.inlineCallbacks
def test_without_a_group_base_dn_no_role_comes_from_groups(slapd: Slapd) -> Iterator:
    """An empty group_base_dn turns roles from groups off, whatever group_roles
    maps (mutant __init__ 10 searched for groups all the same)."""
    checker = LDAPChecker(settings_for(slapd.url, group_base_dn=""), reactor)
    try:
        avatar = yield checker.requestAvatarId(digest_credentials("alice", ALICE_PASSWORD))
    finally:
        checker.close()
    assert (avatar, avatar.roles) == ("alice@example.com", ())


@pytest_twisted.inlineCallbacks
def test_an_entry_without_any_ha1_value_is_an_unknown_user(slapd: Slapd) -> Iterator:
    """The filter finds the service account, which holds no ha1_attribute at
    all: unknown, not an error (mutants _authenticate 36 and 38)."""
    checker = LDAPChecker(settings_for(slapd.url, base_dn=ldap_support.BASE_DN, user_filter="(&(objectClass=person)(cn={username}))"), reactor)
    try:
        with pytest.raises(UnknownUser):
            yield checker.requestAvatarId(digest_credentials("sipshield", "whatever"))
    finally:
        checker.close()
