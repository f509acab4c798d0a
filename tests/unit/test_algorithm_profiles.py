"""Digest algorithm profiles per source network (``[[auth.profiles]]``, the
"legacy phones VLAN"): what a source is challenged with, and may answer
with, depends on its address alone.

Through the real service (tests/pipeline_support.py): REGISTERs and INVITEs
from 127.0.0.2 (in the MD5-only profile), fd00:20::5 (its IPv6 network) and
127.0.0.3 (in no profile: the SHA-256 default), answering the challenges
the proxy really sent with digest_client (hashlib, written from RFC 7616).
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from digest_client import authorization, challenges
from pipeline_support import REALM, Proxy, RecordingFlow, proxy_service
from twisted.logger import globalLogPublisher

from sipshield import cli
from sipshield.auth._setup import sql_user_store, store_algorithms, user_report
from sipshield.auth._stages import SourceNetworks
from sipshield.config import AlgorithmProfile, ConfigError, load_config, parse_config
from sipshield.message import Response, parse_message

LEGACY = ("127.0.0.2", 40000)  # in the legacy-phones profile: MD5 only
LEGACY_V6 = ("fd00:20::5", 40000)
DEFAULT = ("127.0.0.3", 40000)  # in no profile: [auth] algorithms
AUTH = {
    "algorithms": ["SHA-256", "SHA-512-256"],
    "profiles": [{"name": "legacy-phones", "networks": ["127.0.0.2/32", "fd00:20::/64"], "algorithms": ["MD5"]}],
}
USERS = {"alice": ("alice-secret", ("staff",)), "bob": ("bob-secret", ("staff",))}


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    proxy = proxy_service(tmp_path, USERS, auth=AUTH)
    yield proxy
    proxy.stop()


def message(method: str, user: str, source: tuple[str, int], transport: str, credentials: str | None = None, seq: int = 1) -> bytes:
    """*method* from USER's phone at *source* (REGISTER for its own AOR, an
    INVITE to carol); the same bytes for every user but the name."""
    shown = f"[{source[0]}]" if ":" in source[0] else source[0]
    ruri = "sip:example.com" if method == "REGISTER" else "sip:carol@example.com"
    to = f"sip:{user}@example.com" if method == "REGISTER" else ruri
    header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
    return (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{transport} {shown}:{source[1]};branch=z9hG4bKprofile{seq}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=phone{seq}\r\nTo: <{to}>\r\nCall-ID: profile-{seq}@test\r\n"
        f"CSeq: {seq} {method}\r\nContact: <sip:{user}@{shown}:{source[1]}>\r\n"
        + (f"{header}: {credentials}\r\n" if credentials else "")
        + "Content-Length: 0\r\n\r\n"
    ).encode()


class Phone:
    """A phone at *source* talking to the proxy: asks, is challenged, answers."""

    def __init__(self, proxy: Proxy, source: tuple[str, int], transport: str = "UDP") -> None:
        self.proxy = proxy
        self.flow = RecordingFlow(source, transport)

    def send(self, data: bytes) -> list[bytes]:
        before = len(self.flow.sent)
        self.proxy.core.message_received(parse_message(data), self.flow)
        return [sent for sent, _ in self.flow.sent[before:]]

    def challenge(self, method: str, user: str) -> list[dict[str, str]]:
        (answer,) = self.send(message(method, user, self.flow.remote, self.flow.transport_name))
        return challenges(answer, "WWW-Authenticate" if method == "REGISTER" else "Proxy-Authenticate")

    def answer(self, method: str, user: str, password: str, algorithm: str, offered: str | None = None) -> list[bytes]:
        """Ask, then answer the challenge for *offered* (default: *algorithm*)
        computing the digest with *algorithm* and *password*: what was sent back."""
        (challenge,) = [c for c in self.challenge(method, user) if c["algorithm"] == (offered or algorithm)]
        ruri = "sip:example.com" if method == "REGISTER" else "sip:carol@example.com"
        credentials = authorization(challenge, algorithm, user, password, method, ruri)
        return self.send(message(method, user, self.flow.remote, self.flow.transport_name, credentials, seq=2))


def statuses(sent: list[bytes]) -> list[int]:
    parsed = [parse_message(data) for data in sent]
    return [m.status for m in parsed if isinstance(m, Response)]


def offered(sent: bytes, header: str = "WWW-Authenticate") -> list[str]:
    return [c["algorithm"] for c in challenges(sent, header)]


# -- what each source is challenged with -----------------------------------------------------

@pytest.mark.parametrize(("source", "expected"), [(LEGACY, ["MD5"]), (LEGACY_V6, ["MD5"]), (DEFAULT, ["SHA-256", "SHA-512-256"])],
                         ids=["profile-ipv4", "profile-ipv6", "default"])
@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_a_source_is_challenged_with_its_profiles_algorithms_in_order(proxy: Proxy, source: tuple[str, int], expected: list[str],
                                                                       method: str) -> None:
    found = [c["algorithm"] for c in Phone(proxy, source).challenge(method, "alice")]
    assert found == expected


def test_the_first_matching_profile_wins_in_config_order(tmp_path: Path) -> None:
    profiles = [
        {"name": "one-phone", "networks": ["127.0.0.2/32"], "algorithms": ["MD5", "SHA-256"]},
        {"name": "lab", "networks": ["127.0.0.0/24"], "algorithms": ["SHA-512-256"]},
    ]
    proxy = proxy_service(tmp_path, USERS, auth={"algorithms": ["SHA-256"], "profiles": profiles})
    try:
        assert [c["algorithm"] for c in Phone(proxy, LEGACY).challenge("REGISTER", "alice")] == ["MD5", "SHA-256"]
        assert [c["algorithm"] for c in Phone(proxy, DEFAULT).challenge("REGISTER", "alice")] == ["SHA-512-256"]
        assert [c["algorithm"] for c in Phone(proxy, ("127.0.1.3", 5060)).challenge("REGISTER", "alice")] == ["SHA-256"]
    finally:
        proxy.stop()


# -- what each source may answer with ---------------------------------------------------------

@pytest.mark.parametrize(("source", "algorithm"), [(LEGACY, "MD5"), (LEGACY_V6, "MD5"), (DEFAULT, "SHA-256"), (DEFAULT, "SHA-512-256")])
@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_an_answer_with_an_offered_algorithm_registers(proxy: Proxy, source: tuple[str, int], algorithm: str, transport: str) -> None:
    assert statuses(Phone(proxy, source, transport).answer("REGISTER", "alice", "alice-secret", algorithm)) == [200]
    assert proxy.bindings("sip:alice@example.com") != []


@pytest.mark.parametrize(("source", "algorithm", "offered_there"), [(DEFAULT, "MD5", "SHA-256"), (LEGACY, "SHA-256", "MD5"),
                                                                   (LEGACY_V6, "SHA-512-256", "MD5")],
                         ids=["md5-from-the-default", "sha256-from-the-md5-profile", "sha512-256-from-the-md5-profile-ipv6"])
def test_an_answer_with_an_algorithm_not_offered_to_the_source_is_refused_as_a_wrong_password(
    tmp_path: Path, source: tuple[str, int], algorithm: str, offered_there: str
) -> None:
    """No downgrade by choosing MD5 from a SHA-256 network (alice's MD5 HA1
    is in the store: the profile enables MD5), nor the reverse: the answer
    with the right password and an algorithm not offered to that source is
    refused with exactly what a wrong password gets, for REGISTER (401) and
    INVITE (100 Trying, then 407)."""
    answers: dict[str, list[list[bytes]]] = {}
    for case, (password, used) in {"not-offered": ("alice-secret", algorithm), "wrong-password": ("WRONG", offered_there)}.items():
        proxy = proxy_service(tmp_path / case, USERS, auth=AUTH)
        try:
            phone = Phone(proxy, source)
            # The digest answers the challenge's nonce with another algorithm than the one it was offered for.
            answers[case] = [phone.answer("REGISTER", "alice", password, used, offered=offered_there),
                             phone.answer("INVITE", "alice", password, used, offered=offered_there)]
            assert proxy.bindings("sip:alice@example.com") == [] and proxy.forwarded() == []
        finally:
            proxy.stop()
    assert [statuses(sent) for sent in answers["not-offered"]] == [[401], [100, 407]]
    assert [normalised(sent) for sent in answers["not-offered"]] == [normalised(sent) for sent in answers["wrong-password"]]


def test_a_legacy_phones_md5_answer_sent_from_another_source_is_challenged_with_sha256(proxy: Proxy) -> None:
    """A forged or relayed source: the MD5 answer to a nonce issued to
    127.0.0.2 (in the profile), sent from 127.0.0.3, proves no return path
    and asks for an algorithm 127.0.0.3 is not offered: a fresh SHA-256
    challenge, nothing bound."""
    (challenge,) = Phone(proxy, LEGACY).challenge("REGISTER", "alice")
    md5 = authorization(challenge, "MD5", "alice", "alice-secret", "REGISTER", "sip:example.com")
    (answer,) = Phone(proxy, DEFAULT).send(message("REGISTER", "alice", DEFAULT, "UDP", md5, seq=2))
    assert statuses([answer]) == [401] and offered(answer) == ["SHA-256", "SHA-512-256"]
    assert proxy.bindings("sip:alice@example.com") == []


def test_md5_from_the_default_network_counts_against_the_nonce_as_a_wrong_password(tmp_path: Path) -> None:
    """[auth] max_nonce_failures = 1: the MD5 answer used up the nonce, so the
    right SHA-256 answer over the same nonce is challenged afresh."""
    proxy = proxy_service(tmp_path, USERS, auth={**AUTH, "max_nonce_failures": 1})
    try:
        phone = Phone(proxy, DEFAULT)
        (challenge,) = [c for c in phone.challenge("REGISTER", "alice") if c["algorithm"] == "SHA-256"]
        md5 = authorization(challenge, "MD5", "alice", "alice-secret", "REGISTER", "sip:example.com")
        assert statuses(phone.send(message("REGISTER", "alice", DEFAULT, "UDP", md5, seq=2))) == [401]
        sha256 = authorization(challenge, "SHA-256", "alice", "alice-secret", "REGISTER", "sip:example.com")
        assert statuses(phone.send(message("REGISTER", "alice", DEFAULT, "UDP", sha256, seq=3))) == [401]
        assert proxy.bindings("sip:alice@example.com") == []
    finally:
        proxy.stop()


def test_a_not_offered_algorithm_is_an_auth_failure_event_naming_it(proxy: Proxy) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        Phone(proxy, DEFAULT).answer("REGISTER", "alice", "alice-secret", "MD5", offered="SHA-256")
    finally:
        globalLogPublisher.removeObserver(events.append)
    reasons = [e["reason"] for e in events if e.get("security_event") == "auth-failure"]
    assert reasons == ["MD5 not offered to this source (default)"]


# -- an existing user and an unknown one: the same answer ------------------------------------

def normalised(sent: list[bytes], user: str = "alice") -> list[bytes]:
    """*sent* with what is random in every answer (the nonce, the proxy's
    To tag) and the user's own name (echoed in From and To) replaced."""
    out = []
    for data in sent:
        data = re.sub(rb'nonce="[^"]*"', b'nonce="N"', data)
        data = re.sub(rb"(\r\nTo: [^\r]*;tag=)[0-9a-f]+", rb"\1T", data)
        out.append(data.replace(user.encode(), b"USER"))
    return out


@pytest.mark.parametrize("source", [LEGACY, LEGACY_V6, DEFAULT], ids=["profile-ipv4", "profile-ipv6", "default"])
@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_an_existing_and_an_unknown_user_get_byte_identical_answers(tmp_path: Path, source: tuple[str, int], method: str) -> None:
    """svwar learns nothing: the challenge, and the answer to a wrong
    password, are the same bytes for alice and for a name nobody has
    (apart from the nonce and the To tag, random in every answer), from a
    profile network as from the default one."""
    algorithm = "MD5" if source != DEFAULT else "SHA-256"
    seen: dict[str, list[list[bytes]]] = {}
    for user in ("alice", "zelda"):  # zelda is in no store
        proxy = proxy_service(tmp_path / user, USERS, auth=AUTH)
        try:
            phone = Phone(proxy, source)
            first = phone.send(message(method, user, source, "UDP"))
            seen[user] = [normalised(first, user), normalised(phone.answer(method, user, "WRONG", algorithm), user)]
        finally:
            proxy.stop()
    assert seen["alice"] == seen["zelda"]
    header = "WWW-Authenticate" if method == "REGISTER" else "Proxy-Authenticate"
    assert offered(seen["alice"][0][0], header) == (["MD5"] if source != DEFAULT else ["SHA-256", "SHA-512-256"])


# -- the shared network matcher (trusted sources and profiles) --------------------------------

def test_source_networks_match_in_order_ipv4_ipv6_and_ipv4_mapped() -> None:
    networks = SourceNetworks([("10.20.0.0/16", "legacy"), ("10.0.0.0/8", "office"), ("fd00:20::/64", "legacy-v6")])
    assert list(networks.matching("10.20.3.4")) == ["legacy", "office"]
    assert list(networks.matching("10.99.0.1")) == ["office"]
    assert list(networks.matching("::ffff:10.20.3.4")) == ["legacy", "office"]  # a dual-stack listener's IPv4 source
    assert list(networks.matching("fd00:20::1")) == ["legacy-v6"]
    assert list(networks.matching("fd00:21::1")) == [] and list(networks.matching("192.0.2.1")) == []
    assert list(networks.matching("not-an-address")) == []
    assert not SourceNetworks([]) and networks


# -- configuration ----------------------------------------------------------------------------

def parse(auth: dict[str, Any], tmp_path: Path) -> Any:
    return parse_config({"server": {"data_dir": str(tmp_path)}, "auth": auth}, base_dir=tmp_path)


def test_profiles_parse_in_order_and_enable_the_union_of_algorithms(tmp_path: Path) -> None:
    auth = parse({**AUTH, "profiles": [*AUTH["profiles"], {"networks": ["10.30.0.0/16"], "algorithms": ["SHA-256", "MD5"]}]}, tmp_path).auth
    assert auth.profiles == (
        AlgorithmProfile(networks=("127.0.0.2/32", "fd00:20::/64"), algorithms=("MD5",), name="legacy-phones"),
        AlgorithmProfile(networks=("10.30.0.0/16",), algorithms=("SHA-256", "MD5")),
    )
    assert auth.algorithms == ("SHA-256", "SHA-512-256")
    assert auth.enabled_algorithms == ("SHA-256", "SHA-512-256", "MD5")
    assert [p.label for p in auth.profiles] == ["legacy-phones", "10.30.0.0/16"]
    assert parse({}, tmp_path).auth.enabled_algorithms == ("SHA-256", "SHA-512-256")  # MD5 only where listed


def profile(**entry: Any) -> dict[str, Any]:
    return {"networks": ["10.20.0.0/16"], "algorithms": ["MD5"], **entry}


@pytest.mark.parametrize(("profiles", "key", "words"), [
    ([{"algorithms": ["MD5"]}], "auth.profiles[0].networks", "is required"),
    ([profile(networks=[])], "auth.profiles[0].networks", "at least one network"),
    ([profile(networks=["10.20.0.0/33"])], "auth.profiles[0].networks", "'10.20.0.0/33' is not an address or network"),
    ([profile(), profile(networks=["fd00:20::/129"])], "auth.profiles[1].networks", "is not an address or network"),
    ([profile(networks=["legacy-vlan"])], "auth.profiles[0].networks", "is not an address or network"),
    ([profile(networks="10.20.0.0/16")], "auth.profiles[0].networks", "expected a list"),
    ([{"networks": ["10.20.0.0/16"]}], "auth.profiles[0].algorithms", "is required"),
    ([profile(algorithms=[])], "auth.profiles[0].algorithms", "at least one algorithm"),
    ([profile(algorithms=["MD5", "SHA-1"])], "auth.profiles[0].algorithms", "unknown algorithm 'SHA-1'"),
    ([profile(name="legacy"), profile(name="legacy", networks=["10.21.0.0/16"])], "auth.profiles[1].name", "earlier profile"),
    ([profile(name="")], "auth.profiles[0].name", "not a usable name"),
    ([profile(name="a\nb")], "auth.profiles[0].name", "not a usable name"),
    ([profile(udp=True)], "auth.profiles[0]", "unknown key(s): udp"),
    (["10.20.0.0/16"], "auth.profiles[0]", "must be a table"),
    ({"networks": ["10.20.0.0/16"]}, "auth.profiles", "expected a list"),
])
def test_profile_errors_name_the_key(tmp_path: Path, profiles: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse({"profiles": profiles}, tmp_path)
    assert raised.value.key == key
    assert words in str(raised.value)


def test_the_file_backend_needs_md5_in_auth_algorithms_or_in_a_profile(tmp_path: Path) -> None:
    (tmp_path / "users.htdigest").write_text("")
    file_backend = {"backends": ["file", "sql"], "file": str(tmp_path / "users.htdigest")}
    with pytest.raises(ConfigError) as raised:
        parse(file_backend, tmp_path)
    assert raised.value.key == "auth.backends"
    config = parse({**file_backend, "profiles": [profile()]}, tmp_path)
    assert store_algorithms(config, "file") == ("MD5",)
    assert store_algorithms(config, "sql") == ("SHA-256", "SHA-512-256", "MD5")


# -- posture, user report, user add -----------------------------------------------------------

CONFIG = """\
[server]
data_dir = "data"
listen = ["udp:0:interface=127.0.0.1"]
domains = ["example.com"]

[auth]
algorithms = ["SHA-256", "SHA-512-256"]

[[auth.profiles]]
name = "legacy-phones"
networks = ["10.20.0.0/16", "fd00:20::/64"]
algorithms = ["MD5"]

[[auth.profiles]]
networks = ["10.30.0.0/16"]
algorithms = ["SHA-256", "MD5"]
"""


def test_posture_and_check_config_list_every_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sipshield.toml"
    path.write_text(CONFIG)
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "digest algorithms: SHA-256, SHA-512-256 (challenged in this order) to sources in no profile",
        "digest profile legacy-phones: MD5 (challenged in this order) to 10.20.0.0/16, fd00:20::/64",
        "digest profile 10.30.0.0/16: SHA-256, MD5 (challenged in this order) to 10.30.0.0/16",
    ):
        assert expected in out, (expected, out)


def test_users_without_an_md5_ha1_are_reported_when_only_a_profile_enables_md5(tmp_path: Path) -> None:
    config = parse_config({"server": {"data_dir": str(tmp_path)}, "auth": AUTH})
    store = sql_user_store(config, ["SHA-256", "SHA-512-256"])  # created before the profile was
    store.create_schema()
    store.add("alice", REALM, "alice-long-secret", ["staff"])
    try:
        lines, warnings = user_report(config, [("sql", store)])
    finally:
        store.close()
    assert lines[0] == "1 user(s) in sql"
    assert len(warnings) == 1 and "1 without MD5 credentials" in warnings[0] and "sipshield user passwd" in warnings[0]


def test_user_add_stores_an_ha1_for_every_profiles_algorithm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sipshield.toml"
    path.write_text(CONFIG)
    monkeypatch.setattr(sys, "stdin", io.StringIO("pale-orchid-tundra-7\n"))
    assert cli.main(["user", "add", "--config", str(path), "alice", "--password-stdin", "--roles", "staff"]) == 0
    store = sql_user_store(load_config(path))
    try:
        (record,) = store.list()
    finally:
        store.close()
    assert sorted(record.algorithms) == ["MD5", "SHA-256", "SHA-512-256"]


def test_a_challenge_nobody_answers_is_logged_with_the_algorithms_its_source_was_offered(proxy: Proxy) -> None:
    """The unanswered-challenge line (a phone that gave up) names what that
    source was offered: MD5 from the profile network, the default elsewhere."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_kind") == "unanswered-challenge":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        for source in (LEGACY, DEFAULT):
            Phone(proxy, source).challenge("REGISTER", "alice")
        proxy.clock.advance(proxy.service.config.auth.nonce_lifetime + 1)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert sorted((e["host"], e["algorithms"]) for e in events) == [("127.0.0.2", "MD5"), ("127.0.0.3", "SHA-256, SHA-512-256")]
