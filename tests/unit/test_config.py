"""Configuration loading: the public key names, and errors that name the key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipshield.config import ConfigError, ListenerConfig, TrustedSource, default_config, load_config, parse_listener

CONTRACT = """
[server]
data_dir = "./data"
listen = ["udp:5060:interface=127.0.0.1", "tcp:5060:interface=127.0.0.1", "tls:5061:interface=127.0.0.1"]
domains = ["Example.com"]
[tls]
certificate = "server.pem"
private_key = "server.key"
client_ca = "corp-ca.pem"
minimum_version = "TLSv1.2"
[limits]
max_message_bytes = 65535
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sipshield.toml"
    p.write_text(text)
    return p


def test_contract_names_load_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CONTRACT))
    assert config.server.data_dir == tmp_path / "data"
    assert [lc.description for lc in config.server.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1:5061"]
    assert config.server.domains == ("example.com",)
    assert config.tls.certificate == tmp_path / "server.pem"
    assert config.tls.client_ca == tmp_path / "corp-ca.pem"
    assert config.limits.max_message_bytes == 65535


def test_embedded_default_listens_on_loopback() -> None:
    config = default_config()
    assert [lc.description for lc in config.server.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1:5061"]
    assert config.server.data_dir.name == "sipshield-data"
    assert config.tls.certificate is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[server]\nlisten_on = []\n", "server: unknown key(s): listen_on"),
        ("[serve]\n", "unknown section(s) or key(s): serve"),
        ("[limits]\nmax_message_bytes = 'big'\n", "limits.max_message_bytes: expected an integer, got str 'big'"),
        ("[limits]\nmax_message_bytes = true\n", "limits.max_message_bytes: expected an integer, got a boolean"),
        ("[limits]\nmax_message_bytes = 10\n", "limits.max_message_bytes: 10 is out of range"),
        ("[server]\nlisten = ['sctp:5060']\n", "server.listen: unknown listener kind 'sctp'"),
        ("[server]\nlisten = ['udp:5060:iface=1.2.3.4']\n", "server.listen: unknown listener option 'iface'"),
        ("[server]\nlisten = ['udp:5060:interface=nothost']\n", "server.listen: interface 'nothost' is not an IP address"),
        ("[server]\ndomains = 'example.com'\n", "server.domains: expected a list, got str"),
        ("[tls]\nminimum_version = 'SSLv3'\n", "tls.minimum_version: 'SSLv3' is not one of TLSv1.2, TLSv1.3"),
        ("[tls]\ncertificate = 'a.pem'\n", "tls.private_key: certificate and private_key must be given together"),
        ("[server\n", "not valid TOML"),
        ("[auth]\ntrusted_sources = ['10.0.0.0/33']\n", "auth.trusted_sources[0]: '10.0.0.0/33' is not an address or network"),
        ("[auth]\ntrusted_sources = ['10.0.0.0/8', {network = 'x'}]\n", "auth.trusted_sources[1].network: 'x' is not an address or network"),
        ("[auth]\ntrusted_sources = [{udp = true}]\n", "auth.trusted_sources[0].network: is required"),
        ("[auth]\ntrusted_sources = [{network = '10.0.0.1', udp = 'yes'}]\n", "auth.trusted_sources[0].udp: expected a boolean"),
        ("[auth]\ntrusted_sources = [{network = '10.0.0.1', tcp = false}]\n", "auth.trusted_sources[0]: unknown key(s): tcp"),
        ("[auth]\ntrusted_sources = [5]\n", "auth.trusted_sources[0]: expected a network string or a table"),
    ],
)
def test_bad_config_names_the_key_and_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert expected in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_ipv6_listener_with_escaped_colons() -> None:
    assert parse_listener(r"tls:5061:interface=\:\:1") == ListenerConfig("tls", 5061, "::1")
    assert parse_listener(r"udp:0:interface=\:\:1").description == "udp:[::1]:0"


def test_the_example_configuration_is_valid() -> None:
    example = Path(__file__).parent.parent.parent / "examples" / "sipshield.toml"
    config = load_config(example)
    assert config.registrar.store == "sql" and config.auth.trusted_role == "trunk"
    assert config.routes[0].external and "call:external" in config.roles["trunk"]
    assert config.stages[1:5] == ("auth", "ratelimit", "options", "rbac") and "egress" in config.stages
    assert config.media.srtp == "mandatory" and "media" in config.stages


def test_the_hardened_example_is_tls_only_sha2_only_and_warns_about_nothing() -> None:
    config = load_config(Path(__file__).parent.parent.parent / "examples" / "hardened.toml")
    assert {listener.kind for listener in config.server.listen} == {"tls"}
    assert config.auth.algorithms == ("SHA-256", "SHA-512-256") and config.auth.profiles == ()
    assert config.auth.trusted_sources == () and config.auth.key_file is not None
    assert config.tls.minimum_version == "TLSv1.2"
    assert config.bans.enabled and config.scanners.enabled and len(config.acl.rules) == 2
    assert config.egress.roles["staff"] == (("+1",), ("+1900", "+1976", "+1809", "+1876")) and "call:external" not in config.roles["staff"]
    assert config.registrar.max_bindings_per_identity == 8 and "egress" in config.stages
    assert all(route.target.startswith("sips:") for route in config.routes)
    assert config.media.srtp == "mandatory" and "media" in config.stages
    assert config.warnings() == []


def test_wildcard_listeners_need_an_advertised_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server.advertise: listeners on 0.0.0.0"):
        load_config(write(tmp_path, "[server]\nlisten = ['udp:5060:interface=0.0.0.0']\n"))
    config = load_config(write(tmp_path, "[server]\nlisten = ['udp:5060:interface=0.0.0.0']\nadvertise = 'sip.example.com'\n"))
    assert config.server.advertise == "sip.example.com"


def test_trusted_sources_are_tcp_and_tls_only_unless_a_table_says_udp(tmp_path: Path) -> None:
    text = "[auth]\ntrusted_sources = ['10.0.0.0/8', {network = '192.0.2.10/32', udp = true}, {network = '::1'}]\n"
    config = load_config(write(tmp_path, text))
    assert config.auth.trusted_sources == (
        TrustedSource("10.0.0.0/8"), TrustedSource("192.0.2.10/32", udp=True), TrustedSource("::1", udp=False),
    )
    (warning,) = config.warnings()
    assert warning.startswith("auth.trusted_sources: 192.0.2.10/32 is trusted over UDP (udp = true)")
    assert load_config(write(tmp_path, "[auth]\ntrusted_sources = ['10.0.0.0/8']\n")).warnings() == []
