"""Digest computations (RFC 7616, RFC 8760, RFC 2617, RFC 3261 22.4) and the twisted.cred credentials."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest
from twisted.cred.credentials import IUsernameDigestHash
from zope.interface.verify import verifyObject

from sipshield.auth._credentials import ISIPDigestCredentials, SIPDigestCredentials
from sipshield.auth._digest import ALGORITHMS, DigestResponse, challenge_values, compute_ha1, verify
from sipshield.message import parse_auth

# RFC 7616 3.9.1 (password with a lower-case "of": RFC 7616 erratum 4495).
RFC7616_USER = "Mufasa"
RFC7616_PASSWORD = "Circle of Life"
RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_URI = "/dir/index.html"
RFC7616_MD5_RESPONSE = "8ca523f5e9506fed4657c9700eebdbec"
RFC7616_SHA256_RESPONSE = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"

HASHLIB = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


def rfc7616_header(algorithm: str | None, response: str, /, **changes: str | None) -> str:
    """The RFC 7616 3.9.1 credentials on one line; a change of None drops that parameter."""
    params: dict[str, str | None] = {
        "username": f'"{RFC7616_USER}"',
        "realm": f'"{RFC7616_REALM}"',
        "uri": f'"{RFC7616_URI}"',
        "algorithm": algorithm,
        "nonce": f'"{RFC7616_NONCE}"',
        "nc": "00000001",
        "cnonce": f'"{RFC7616_CNONCE}"',
        "qop": "auth",
        "response": f'"{response}"',
        "opaque": f'"{RFC7616_OPAQUE}"',
    }
    params.update(changes)
    return "Digest " + ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)


def h(algorithm: str, data: str | bytes) -> str:
    """An independent H(): hashlib straight, no sipshield code."""
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.new(HASHLIB[algorithm.removesuffix("-sess")], raw).hexdigest()


def client_response(
    algorithm: str,
    password: str,
    *,
    method: str = "INVITE",
    uri: str = "sip:bob@example.com",
    qop: str | None = "auth",
    body: bytes = b"",
    nonce: str = "abc123",
    cnonce: str = "0a4f113b",
    nc: str = "00000001",
    user: str = "alice",
    realm: str = "example.com",
) -> DigestResponse:
    """What a UAC computes (RFC 7616 3.4.1-3.4.3), written out independently of _digest.verify."""
    ha1 = h(algorithm, f"{user}:{realm}:{password}")
    if algorithm.endswith("-sess"):
        ha1 = h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(algorithm, f"{method}:{uri}:{h(algorithm, body)}") if qop == "auth-int" else h(algorithm, f"{method}:{uri}")
    if qop is None:
        response = h(algorithm, f"{ha1}:{nonce}:{ha2}")
        extra = ""
    else:
        response = h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
        extra = f', qop={qop}, nc={nc}, cnonce="{cnonce}"'
    value = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}", algorithm={algorithm}{extra}'
    return DigestResponse.parse(value)


# -- RFC worked examples -------------------------------------------------------


def test_rfc7616_md5_example_verifies() -> None:
    resp = DigestResponse.parse(rfc7616_header("MD5", RFC7616_MD5_RESPONSE))
    ha1 = compute_ha1("MD5", RFC7616_USER, RFC7616_REALM, RFC7616_PASSWORD)
    assert verify(resp, "GET", ha1)


def test_rfc7616_sha256_example_verifies() -> None:
    resp = DigestResponse.parse(rfc7616_header("SHA-256", RFC7616_SHA256_RESPONSE))
    assert resp.algorithm == "SHA-256"
    assert resp.opaque == RFC7616_OPAQUE
    ha1 = compute_ha1("SHA-256", RFC7616_USER, RFC7616_REALM, RFC7616_PASSWORD)
    assert verify(resp, "GET", ha1)


def test_rfc7616_example_with_capital_of_password_fails() -> None:
    # The RFC 2617 password "Circle Of Life" is not the one of RFC 7616 3.9.1.
    resp = DigestResponse.parse(rfc7616_header("SHA-256", RFC7616_SHA256_RESPONSE))
    assert not verify(resp, "GET", compute_ha1("SHA-256", RFC7616_USER, RFC7616_REALM, "Circle Of Life"))


def test_rfc2617_md5_qop_auth_example_verifies() -> None:
    # RFC 2617 3.5.
    value = (
        'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", '
        'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    resp = DigestResponse.parse(value)
    assert resp.algorithm == "MD5"
    assert verify(resp, "GET", compute_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life"))


def test_rfc2069_form_without_qop_verifies_for_md5() -> None:
    # RFC 2069 / RFC 3261 22.4 backwards compatibility: H(HA1:nonce:HA2).
    value = (
        'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", response="1949323746fe6a43ef61f9606e7febea"'
    )
    resp = DigestResponse.parse(value)
    assert resp.qop is None
    assert verify(resp, "GET", compute_ha1("MD5", "Mufasa", "testrealm@host.com", "CircleOfLife"))


def test_sha512_256_matches_fips_180_4_abc_vector() -> None:
    # FIPS 180-4 / NIST example for SHA-512/256("abc"): the hash behind RFC 8760's SHA-512-256.
    assert hashlib.new("sha512_256", b"abc").hexdigest() == "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
    assert compute_ha1("SHA-512-256", "a", "b", "c") == hashlib.new("sha512_256", b"a:b:c").hexdigest()


# -- independent computations per algorithm ------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_client_response_verifies_for_every_algorithm(algorithm: str) -> None:
    resp = client_response(algorithm, "s3cret")
    assert resp.algorithm == algorithm
    assert verify(resp, "INVITE", compute_ha1(algorithm, "alice", "example.com", "s3cret"))


def test_sha512_256_response_computed_independently() -> None:
    ha1 = hashlib.new("sha512_256", b"alice:example.com:s3cret").hexdigest()
    ha2 = hashlib.new("sha512_256", b"REGISTER:sip:example.com").hexdigest()
    expected = hashlib.new("sha512_256", f"{ha1}:n0nce:0000000a:c:auth:{ha2}".encode()).hexdigest()
    value = f'Digest username="alice", realm="example.com", nonce="n0nce", uri="sip:example.com", response="{expected}", algorithm=SHA-512-256, qop=auth, nc=0000000a, cnonce="c"'
    resp = DigestResponse.parse(value)
    assert compute_ha1("SHA-512-256", "alice", "example.com", "s3cret") == ha1
    assert verify(resp, "REGISTER", ha1)


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess", "SHA-512-256-sess"])
def test_sess_uses_session_key_from_nonce_and_cnonce(algorithm: str) -> None:
    base = algorithm.removesuffix("-sess")
    ha1 = compute_ha1(algorithm, "alice", "example.com", "s3cret")
    # compute_ha1 returns the stored base secret for -sess, not the session key.
    assert ha1 == compute_ha1(base, "alice", "example.com", "s3cret")
    resp = client_response(algorithm, "s3cret")
    assert verify(resp, "INVITE", ha1)
    # Same digest under the non-sess algorithm must not verify (the session key differs).
    assert not verify(replace(resp, algorithm=base), "INVITE", ha1)
    # The session key binds the cnonce.
    assert not verify(replace(resp, cnonce="other"), "INVITE", ha1)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "SHA-512-256-sess"])
def test_auth_int_covers_the_body(algorithm: str) -> None:
    body = b"v=0\r\no=alice 1 1 IN IP4 192.0.2.1\r\n"
    resp = client_response(algorithm, "pw", qop="auth-int", body=body)
    ha1 = compute_ha1(algorithm, "alice", "example.com", "pw")
    assert verify(resp, "INVITE", ha1, body)
    assert not verify(resp, "INVITE", ha1, body + b"a=sendonly\r\n")
    assert not verify(resp, "INVITE", ha1)


def test_auth_int_with_empty_body_hashes_the_empty_string() -> None:
    resp = client_response("SHA-256", "pw", qop="auth-int")
    assert verify(resp, "INVITE", compute_ha1("SHA-256", "alice", "example.com", "pw"), b"")


# -- failures ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_password_fails(algorithm: str) -> None:
    resp = client_response(algorithm, "s3cret")
    assert not verify(resp, "INVITE", compute_ha1(algorithm, "alice", "example.com", "guess"))


def test_tampered_uri_fails() -> None:
    resp = client_response("SHA-256", "pw")
    ha1 = compute_ha1("SHA-256", "alice", "example.com", "pw")
    assert verify(resp, "INVITE", ha1)
    assert not verify(replace(resp, uri="sip:mallory@example.com"), "INVITE", ha1)


def test_tampered_uri_in_rfc7616_header_fails() -> None:
    resp = DigestResponse.parse(rfc7616_header("SHA-256", RFC7616_SHA256_RESPONSE, uri='"/dir/admin.html"'))
    assert not verify(resp, "GET", compute_ha1("SHA-256", RFC7616_USER, RFC7616_REALM, RFC7616_PASSWORD))


@pytest.mark.parametrize("field,value", [("nonce", "other"), ("nc", "00000002"), ("cnonce", "other"), ("qop", "auth-int")])
def test_tampered_field_fails(field: str, value: str) -> None:
    resp = client_response("SHA-256", "pw")
    ha1 = compute_ha1("SHA-256", "alice", "example.com", "pw")
    changes: dict[str, Any] = {field: value}
    assert not verify(replace(resp, **changes), "INVITE", ha1)


@pytest.mark.parametrize("user,realm", [("bob", "example.com"), ("alice", "evil.com")])
def test_claimed_identity_change_fails_with_that_identitys_ha1(user: str, realm: str) -> None:
    # username and realm enter through HA1: the checker looks up the claimed identity's HA1.
    resp = replace(client_response("SHA-256", "pw"), username=user, realm=realm)
    assert not verify(resp, "INVITE", compute_ha1("SHA-256", user, realm, "pw"))


def test_other_method_fails() -> None:
    resp = client_response("SHA-256", "pw", method="REGISTER")
    assert not verify(resp, "INVITE", compute_ha1("SHA-256", "alice", "example.com", "pw"))


@pytest.mark.parametrize("algorithm", ["SHA-256", "SHA-512-256", "MD5-sess", "SHA-256-sess"])
def test_no_qop_form_is_refused_except_plain_md5(algorithm: str) -> None:
    ha1 = h(algorithm, "alice:example.com:pw")
    ha2 = h(algorithm, "INVITE:sip:bob@example.com")
    response = h(algorithm, f"{ha1}:abc:{ha2}")
    value = f'Digest username="alice", realm="example.com", nonce="abc", uri="sip:bob@example.com", response="{response}", algorithm={algorithm}'
    assert not verify(DigestResponse.parse(value), "INVITE", ha1)


def test_ha1_of_other_algorithm_fails() -> None:
    resp = client_response("SHA-256", "pw")
    assert not verify(resp, "INVITE", compute_ha1("MD5", "alice", "example.com", "pw"))


def test_upper_case_hex_response_and_ha1_are_accepted() -> None:
    resp = client_response("SHA-256", "pw")
    upper = DigestResponse.parse(
        f'Digest username="alice", realm="example.com", nonce="abc123", uri="sip:bob@example.com", '
        f'response="{resp.response.upper()}", algorithm=sha-256, qop=auth, nc=00000001, cnonce="0a4f113b"'
    )
    assert upper.response == resp.response
    assert upper.algorithm == "SHA-256"
    assert verify(upper, "INVITE", compute_ha1("SHA-256", "alice", "example.com", "pw").upper())


def test_verify_does_not_raise_on_non_ascii_response_built_directly() -> None:
    resp = replace(client_response("MD5", "pw"), response="é" * 32)
    assert verify(resp, "INVITE", compute_ha1("MD5", "alice", "example.com", "pw")) is False


def test_verify_with_unknown_algorithm_built_directly_is_false() -> None:
    resp = replace(client_response("MD5", "pw"), algorithm="SHA-1")
    assert verify(resp, "INVITE", compute_ha1("MD5", "alice", "example.com", "pw")) is False


def test_non_ascii_username_is_hashed_as_utf8() -> None:
    # RFC 7616 4: UTF-8.
    assert (
        compute_ha1("SHA-256", "J\u00e4s\u00f8n Doe", "api@example.org", "Secret, or not?")
        == hashlib.sha256("J\u00e4s\u00f8n Doe:api@example.org:Secret, or not?".encode()).hexdigest()
    )


# -- parsing ----------------------------------------------------------------------


def test_parse_fields() -> None:
    resp = DigestResponse.parse(rfc7616_header("SHA-256", RFC7616_SHA256_RESPONSE))
    assert (resp.username, resp.realm, resp.nonce, resp.uri) == (RFC7616_USER, RFC7616_REALM, RFC7616_NONCE, RFC7616_URI)
    assert (resp.cnonce, resp.nc, resp.qop, resp.userhash) == (RFC7616_CNONCE, "00000001", "auth", False)


def test_parse_defaults_algorithm_to_md5() -> None:
    resp = DigestResponse.parse(rfc7616_header(None, RFC7616_MD5_RESPONSE))
    assert resp.algorithm == "MD5"


def test_repr_does_not_show_the_response_digest() -> None:
    resp = DigestResponse.parse(rfc7616_header("SHA-256", RFC7616_SHA256_RESPONSE))
    assert RFC7616_SHA256_RESPONSE not in repr(resp)
    assert RFC7616_SHA256_RESPONSE not in repr(SIPDigestCredentials(resp, "GET", b""))


@pytest.mark.parametrize("missing", ["username", "realm", "nonce", "uri", "response"])
def test_parse_rejects_missing_required_parameter(missing: str) -> None:
    with pytest.raises(ValueError, match=f"missing {missing}"):
        DigestResponse.parse(rfc7616_header("SHA-256", RFC7616_SHA256_RESPONSE, **{missing: None}))


@pytest.mark.parametrize(
    "value,message",
    [
        ("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "not Digest"),
        ("Bearer abc.def.ghi", "not Digest"),
        ("Digest abcdef==", "token68"),
        ("Digest", "missing username"),
    ],
)
def test_parse_rejects_other_schemes_and_shapes(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigestResponse.parse(value)


def test_parse_rejects_malformed_syntax_as_value_error() -> None:
    with pytest.raises(ValueError):
        DigestResponse.parse('Digest username="alice, realm=')


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"userhash": "true"}, "userhash=true is not supported"),
        ({"userhash": "TRUE"}, "userhash=true is not supported"),
        ({"userhash": "maybe"}, "malformed userhash"),
        ({"algorithm": "SHA-1"}, "unsupported algorithm"),
        ({"algorithm": "AKAv1-MD5"}, "unsupported algorithm"),
        ({"qop": "auth-conf"}, "unsupported qop"),
        ({"cnonce": None}, "qop without cnonce"),
        ({"nc": None}, "qop without nc"),
        ({"nc": "1"}, "malformed nc"),
        ({"nc": "0000000g"}, "malformed nc"),
        ({"qop": None}, "cnonce or nc without qop"),
        ({"response": '"xyz"'}, "malformed response"),
        ({"response": f'"{RFC7616_MD5_RESPONSE}"'}, "malformed response"),  # MD5 length under SHA-256
    ],
)
def test_parse_rejects_bad_parameters(changes: dict[str, str | None], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigestResponse.parse(rfc7616_header("SHA-256", RFC7616_SHA256_RESPONSE, **changes))


def test_parse_accepts_userhash_false() -> None:
    resp = DigestResponse.parse(rfc7616_header("SHA-256", RFC7616_SHA256_RESPONSE, userhash="false"))
    assert resp.userhash is False


def test_parse_error_message_does_not_echo_peer_data() -> None:
    with pytest.raises(ValueError) as info:
        DigestResponse.parse(rfc7616_header("<script>", RFC7616_SHA256_RESPONSE))
    assert "<script>" not in str(info.value)


# -- ALGORITHMS, compute_ha1, challenges ------------------------------------------------


def test_algorithms_strongest_first() -> None:
    assert ALGORITHMS == ("SHA-512-256", "SHA-512-256-sess", "SHA-256", "SHA-256-sess", "MD5", "MD5-sess")


def test_compute_ha1_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unsupported algorithm"):
        compute_ha1("SHA-1", "a", "b", "c")


def test_compute_ha1_is_lower_case_hex() -> None:
    assert compute_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life") == h("MD5", "Mufasa:testrealm@host.com:Circle Of Life")


def test_challenge_values_one_per_algorithm_in_order() -> None:
    values = challenge_values("example.com", "n0nce", ["SHA-512-256", "SHA-256", "MD5"], stale=True)
    assert values == [
        'Digest realm="example.com", nonce="n0nce", algorithm=SHA-512-256, qop="auth", stale=true',
        'Digest realm="example.com", nonce="n0nce", algorithm=SHA-256, qop="auth", stale=true',
        'Digest realm="example.com", nonce="n0nce", algorithm=MD5, qop="auth", stale=true',
    ]


def test_challenge_values_without_stale_and_with_opaque() -> None:
    (value,) = challenge_values("example.com", "n0nce", ["sha-256"], opaque="op", qop="auth,auth-int")
    assert value == 'Digest realm="example.com", nonce="n0nce", opaque="op", algorithm=SHA-256, qop="auth,auth-int"'
    header = parse_auth(value)
    assert header.scheme == "Digest"
    assert header.params == {"realm": "example.com", "nonce": "n0nce", "opaque": "op", "algorithm": "SHA-256", "qop": "auth,auth-int"}


def test_challenge_values_quote_the_realm() -> None:
    (value,) = challenge_values('ex"ample\\', "n", ["MD5"])
    assert parse_auth(value).params["realm"] == 'ex"ample\\'


@pytest.mark.parametrize("kwargs", [{"algorithms": ["SHA-1"]}, {"qop": "auth-conf"}, {"qop": ""}])
def test_challenge_values_reject_unknown_values(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"algorithms": ["MD5"], **kwargs}
    with pytest.raises(ValueError):
        challenge_values("example.com", "n", **args)  # type: ignore[arg-type]


def test_challenge_round_trip_with_client() -> None:
    (value,) = challenge_values("example.com", "n0nce", ["SHA-512-256"])
    params = parse_auth(value).params
    resp = client_response(params["algorithm"], "pw", nonce=params["nonce"], realm=params["realm"], qop=params["qop"])
    assert verify(resp, "INVITE", compute_ha1("SHA-512-256", "alice", "example.com", "pw"))


# -- twisted.cred credentials -----------------------------------------------------------


def test_credentials_provide_the_interfaces() -> None:
    creds = SIPDigestCredentials(client_response("SHA-256", "pw"), "INVITE", b"")
    assert verifyObject(ISIPDigestCredentials, creds)
    assert IUsernameDigestHash.providedBy(creds)
    assert (creds.username, creds.realm, creds.algorithm) == ("alice", "example.com", "SHA-256")


def test_credentials_check_hash() -> None:
    creds = SIPDigestCredentials(client_response("SHA-512-256-sess", "pw", qop="auth-int", body=b"x"), "INVITE", b"x")
    assert creds.checkHash(compute_ha1("SHA-512-256", "alice", "example.com", "pw")) is True
    assert creds.checkHash(compute_ha1("SHA-512-256", "alice", "example.com", "wrong")) is False
    assert SIPDigestCredentials(creds.response, "INVITE", b"y").checkHash(compute_ha1("SHA-512-256", "alice", "example.com", "pw")) is False


@pytest.mark.parametrize("missing", ["cnonce", "nc"])
def test_verify_refuses_qop_without_cnonce_or_nc_even_when_parse_was_bypassed(missing: str) -> None:
    """verify checks what it relies on itself, not only DigestResponse.parse (mutmut survivors)."""
    ha1 = compute_ha1("SHA-256", "alice", "example.com", "pw")
    resp = DigestResponse("alice", "example.com", "n", "sip:example.com", "0" * 64, "SHA-256", cnonce="c", nc="00000001", qop="auth")
    assert not verify(replace(resp, **{missing: None}), "REGISTER", ha1)
