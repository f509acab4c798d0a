"""[acl]: CIDR allow/deny rules per method and listener, first match wins,
through the real service's admission step (before any challenge or
transaction): REGISTER only from the corporate range, INVITE from a trunk
peer only over TLS, the default, 403 or drop, IPv6."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_shield_admission import send, shielded

from sipshield.config import ConfigError, parse_config
from sipshield.events import ACL_DENY

CORPORATE = ("10.1.2.3", 5060)
OUTSIDE = ("198.51.100.7", 5060)
RULES = [
    {"action": "allow", "networks": ["10.0.0.0/8", "2001:db8:10::/48"], "methods": ["REGISTER"]},
    {"action": "deny", "methods": ["REGISTER"]},
    {"action": "allow", "networks": ["203.0.113.0/24"], "methods": ["INVITE"], "listeners": ["tls"]},
    {"action": "deny", "networks": ["203.0.113.0/24"], "methods": ["INVITE"]},
]


def test_register_only_from_the_corporate_range_first_match_wins(tmp_path: Path) -> None:
    proxy, recorder = shielded(tmp_path, acl={"rules": RULES})
    try:
        assert send(proxy, "REGISTER", source=CORPORATE).statuses() == [401]  # allowed: on to the challenge
        assert send(proxy, "REGISTER", source=("2001:db8:10:5::9", 5060)).statuses() == [401]
        denied = send(proxy, "REGISTER", source=OUTSIDE).messages()
        assert [(m.status, m.reason) for m in denied] == [(403, "Forbidden: Not Allowed From This Source")]
        assert proxy.core.transactions.counts()["server"] == 0
        assert send(proxy, "INVITE", source=OUTSIDE).statuses() == [407]  # no rule for it: the default allows
        assert [e.kind for e in recorder.events] == [ACL_DENY] and "REGISTER denied by acl rule 1" in recorder.events[0].reason
    finally:
        proxy.stop()


def test_invite_from_the_trunk_peer_only_on_the_tls_listener(tmp_path: Path) -> None:
    proxy, _ = shielded(tmp_path, acl={"rules": RULES, "action": "drop"})
    trunk = ("203.0.113.5", 5061)
    try:
        assert send(proxy, "INVITE", source=trunk, transport="TLS").statuses() == [407]
        assert send(proxy, "INVITE", source=trunk, transport="UDP").sent == []  # dropped: nothing sent
        assert send(proxy, "INVITE", source=trunk, transport="TCP").sent == []
        assert proxy.core.counters["admission_drops"] == 2
    finally:
        proxy.stop()


def test_default_deny_with_a_port_specific_listener_rule(tmp_path: Path) -> None:
    proxy, _ = shielded(tmp_path, acl={"default": "deny", "rules": [{"action": "allow", "listeners": ["udp:5060"]}]})
    try:
        assert send(proxy, "OPTIONS", to_user=None).statuses() == [200]  # the RecordingFlow's local port is 5060
        assert send(proxy, "OPTIONS", to_user=None, transport="TCP").statuses() == [403]
    finally:
        proxy.stop()


@pytest.mark.parametrize("acl, key", [
    ({"default": "maybe"}, "acl.default"),
    ({"action": "reject"}, "acl.action"),
    ({"rules": [{"networks": ["10.0.0.0/8"]}]}, r"acl.rules\[0\].action"),
    ({"rules": [{"action": "allow", "networks": ["10.0.0.300/8"]}]}, r"acl.rules\[0\].networks\[0\]"),
    ({"rules": [{"action": "allow", "listeners": ["sctp"]}]}, r"acl.rules\[0\].listeners"),
    ({"rules": [{"action": "allow", "ports": [5060]}]}, r"acl.rules\[0\]: unknown key"),
])
def test_acl_config_errors_name_the_key(acl: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config({"acl": acl})
