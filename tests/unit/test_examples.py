"""The example hunt group router (examples/huntgroup_plugins) loads as a
plugin named in config and rings every registered phone of every member."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from sipshield.config import parse_config
from sipshield.message import parse_message
from sipshield.routing import CONTINUE, RequestContext, build_stages
from sipshield.service import makeService
from sipshield.state import Binding, MemoryLocationStore

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


class Flow:
    transport_name = "UDP"
    remote = ("192.0.2.9", 5060)
    local = ("127.0.0.1", 5060)


def invite(user: str) -> RequestContext:
    data = (
        f"INVITE sip:{user}@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKh\r\nMax-Forwards: 70\r\n"
        f"From: <sip:carol@example.com>;tag=1\r\nTo: <sip:{user}@example.com>\r\nCall-ID: hg\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    return RequestContext(parse_message(data), Flow())  # type: ignore[arg-type]


@pytest.fixture
def huntgroup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The router built as the service builds every stage: from its StageEnvironment."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    service = makeService(parse_config({"server": {"data_dir": str(tmp_path / "data"), "domains": ["example.com"]}}), Clock())
    (stage,) = build_stages(["huntgroup"], service.environment, packages=["huntgroup_plugins"], options={"huntgroup": {"sales": ["alice", "bob"]}})
    assert stage.environment is service.environment and isinstance(service.location, MemoryLocationStore)
    assert stage.service is service.environment  # the older name routers may still use
    return stage, service


def test_hunt_group_rings_every_member_phone(huntgroup) -> None:
    stage, service = huntgroup
    service.location.put(Binding("sip:alice@example.com", "sip:alice@192.0.2.1:5060", 3600.0, q=0.5))
    service.location.put(Binding("sip:bob@example.com", "sip:bob@192.0.2.2:5060", 3600.0, q=0.9))
    service.location.put(Binding("sip:bob@example.com", "sip:bob@192.0.2.3:5060", 3600.0))
    decision = stage.process(invite("sales")).result
    assert decision.kind == "relay"
    assert sorted(str(t.uri) for t in decision.targets) == ["sip:alice@192.0.2.1:5060", "sip:bob@192.0.2.2:5060", "sip:bob@192.0.2.3:5060"]


def test_hunt_group_with_nobody_registered_is_480_and_others_pass(huntgroup) -> None:
    stage, _ = huntgroup
    assert stage.process(invite("sales")).result.status == 480
    assert stage.process(invite("alice")) is CONTINUE
