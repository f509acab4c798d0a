"""``[auth] trusted_sources`` over UDP only when explicit (issue 7).

A UDP source address is forged with one datagram, so a plain entry trusts
TCP and TLS only; ``{network = ..., udp = true}`` trusts UDP too, and the
service's start-up log and ``sipshield check-config`` warn about it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_support import Proxy, proxy_service

from sipshield import cli

PBX = ("127.0.0.2", 40000)
UDP_WARNING = "auth.trusted_sources: 127.0.0.2/32 is trusted over UDP (udp = true)"


def pbx_proxy(tmp_path: Path, entry: object) -> Proxy:
    proxy = proxy_service(tmp_path, {"bob": ("b-secret", ("staff",))}, auth={"trusted_sources": [entry], "trusted_role": "trunk"})
    bob = "sip:bob@example.com"
    answer = proxy.send_request("REGISTER", "sip:example.com", from_uri=bob, to=bob, credentials=("bob", "b-secret"), source=("127.0.0.3", 5060),
                        contact="sip:bob@127.0.0.3:5060")
    assert answer.status == 200
    return proxy


def call(proxy: Proxy, transport: str):
    return proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:pbx@example.com", source=PBX, transport=transport)


@pytest.mark.parametrize("entry", ["127.0.0.2/32", {"network": "127.0.0.2/32"}], ids=["string", "table"])
def test_udp_from_a_network_trusted_without_udp_is_challenged(tmp_path: Path, entry: object) -> None:
    proxy = pbx_proxy(tmp_path, entry)
    try:
        assert call(proxy, "UDP").status == 407
        assert proxy.relayed("INVITE") == []
        call(proxy, "TCP")  # over a connection the same network is trusted
        (relayed,) = proxy.relayed("INVITE")
        assert str(relayed.uri) == "sip:bob@127.0.0.3:5060"
    finally:
        proxy.stop()


def test_udp_true_trusts_udp_too(tmp_path: Path) -> None:
    proxy = pbx_proxy(tmp_path, {"network": "127.0.0.2/32", "udp": True})
    try:
        answer = call(proxy, "UDP")
        assert answer is None or answer.status < 300
        (relayed,) = proxy.relayed("INVITE")
        assert str(relayed.uri) == "sip:bob@127.0.0.3:5060"
    finally:
        proxy.stop()


def config_file(tmp_path: Path, udp: bool) -> Path:
    path = tmp_path / "sipshield.toml"
    path.write_text(
        f"[server]\ndata_dir = 'data'\nlisten = ['udp:0:interface=127.0.0.1']\n\n"
        f"[auth]\ntrusted_sources = ['10.0.0.0/8', {{network = '127.0.0.2/32', udp = {str(udp).lower()}}}]\n"
    )
    return path


@pytest.mark.parametrize("udp", [True, False])
def test_check_config_warns_about_udp_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str], udp: bool) -> None:
    assert cli.main(["check-config", str(config_file(tmp_path, udp))]) == 0
    out = capsys.readouterr().out
    assert (f"WARNING: {UDP_WARNING}" in out) is udp
