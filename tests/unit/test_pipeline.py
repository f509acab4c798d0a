"""The routing pipeline, its built-in stages, plugin discovery and the Router base class."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from sipshield.config import ConfigError
from sipshield.interfaces import IPipelineStage, IStageFactory
from sipshield.message import URI, parse_message
from sipshield.proxy._branch import new_branch
from sipshield.routing import CONTINUE, DROP, Decision, Pipeline, RequestContext, Router, Target, available_stages, build_stages
from sipshield.routing._stages import DialogStage, FinalStage, OptionsStage, SanityStage, StaticRoute, StaticRoutes


class Flow:
    transport_name = "UDP"
    reliable = False
    remote = ("192.0.2.9", 5060)
    local = ("127.0.0.1", 5060)

    def peer_certificate(self) -> None:
        return None


def is_local(host: str, port: int | None) -> bool:
    return host in ("example.com", "127.0.0.1") and port in (None, 5060)


def request(uri: str = "sip:bob@example.com", method: str = "INVITE", extra: str = "", to_tag: str = "", vias: str = "") -> RequestContext:
    to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
    data = (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKabc\r\n{vias}Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag=f\r\nTo: {to}\r\nCall-ID: c@x\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()
    return RequestContext(parse_message(data), Flow())  # type: ignore[arg-type]


class Recorder:
    def __init__(self, name: str, decision: Decision | defer.Deferred, log: list[str]) -> None:
        self.name = name
        self.decision = decision
        self.log = log

    def process(self, context: RequestContext):
        self.log.append(self.name)
        return self.decision


def test_pipeline_stops_at_first_final_decision() -> None:
    log: list[str] = []
    pipeline = Pipeline([Recorder("a", CONTINUE, log), Recorder("b", Decision.reply(486), log), Recorder("c", DROP, log)])
    decision = pipeline.run(request())
    assert (decision.kind, decision.status, decision.reason) == ("reply", 486, "Busy Here")
    assert log == ["a", "b"]


def test_pipeline_resumes_after_a_deferred_stage() -> None:
    log: list[str] = []
    later: defer.Deferred[Decision] = defer.Deferred()
    pipeline = Pipeline([Recorder("a", later, log), Recorder("b", DROP, log)])
    result = pipeline.run(request())
    assert isinstance(result, defer.Deferred) and log == ["a"]
    later.callback(CONTINUE)
    assert log == ["a", "b"]
    assert result.result is DROP


def test_pipeline_answers_500_when_a_stage_raises() -> None:
    class Broken:
        name = "broken"

        def process(self, context):
            raise KeyError("bug")

    decision = Pipeline([Broken()]).run(request())
    assert decision.status == 500 and "broken" in decision.reason


def test_pipeline_falls_back_to_404() -> None:
    assert Pipeline([]).run(request()).status == 404


@pytest.mark.parametrize(
    "ctx, status",
    [
        (request("tel:+15551234"), None),
        (request("sip:bob@example.com", extra="Proxy-Require: foo, bar\r\n"), 420),
        (request("sip:bob@example.com").__class__(parse_message(b"OPTIONS mailto:x@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"), Flow()), 416),  # type: ignore[arg-type]
    ],
)
def test_sanity_stage(ctx: RequestContext, status: int | None) -> None:
    decision = SanityStage(is_local).process(ctx)
    assert (decision.status if decision.kind == "reply" else None) == status


def test_sanity_max_forwards_zero_but_options_to_self_passes() -> None:
    ctx = request()
    ctx.request.headers.set("Max-Forwards", "0")
    assert SanityStage(is_local).process(ctx).status == 483
    own = request("sip:127.0.0.1", "OPTIONS")
    own.request.headers.set("Max-Forwards", "0")
    assert SanityStage(is_local).process(own) is CONTINUE


def test_sanity_detects_loop_but_allows_spiral() -> None:
    first = request()
    our_branch = new_branch(first.request)
    looped = request(vias=f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={our_branch}\r\n")
    assert SanityStage(is_local).process(looped).status == 482
    spiral = request("sip:bob2@example.com", vias=f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={our_branch}\r\n")
    assert SanityStage(is_local).process(spiral) is CONTINUE


def test_options_stage_answers_for_itself_only() -> None:
    decision = OptionsStage(is_local).process(request("sip:127.0.0.1", "OPTIONS"))
    assert decision.status == 200 and dict(decision.headers)["Accept"] == "application/sdp"
    assert OptionsStage(is_local).process(request("sip:bob@example.com", "OPTIONS")) is CONTINUE


def test_static_routes_by_domain_and_prefix() -> None:
    stage = StaticRoutes([
        StaticRoute("sip:127.0.0.1:5090;transport=udp", match_domain="pstn.example.com"),
        StaticRoute("sip:192.0.2.50:5070", match_user_prefix="+1", external=True),
    ])
    by_domain = stage.process(request("sip:123@pstn.example.com"))
    assert by_domain.kind == "relay"
    (target,) = by_domain.targets
    assert str(target.uri) == "sip:123@pstn.example.com" and str(target.next_hop) == "sip:127.0.0.1:5090;transport=udp"
    ctx = request("sip:+15551234@example.com")
    assert stage.process(ctx).targets[0].next_hop.port == 5070
    assert ctx.external is True
    escaped = request("sip:%2B15551234@example.com")  # the same user (RFC 3261 19.1.4): the same route
    assert stage.process(escaped).targets[0].next_hop.port == 5070 and escaped.external is True
    assert stage.process(request("sip:bob@example.com")) is CONTINUE


def test_final_stage_404_for_own_domain_403_for_others() -> None:
    assert FinalStage(is_local).process(request()).status == 404
    assert FinalStage(is_local).process(request("sip:bob@elsewhere.test")).status == 403


def test_dialog_stage_follows_route_set() -> None:
    assert DialogStage(is_local).process(request()) is CONTINUE
    routed = request("sip:bob@192.0.2.20:5062", "BYE", to_tag="t1")
    routed.route_set = True
    in_dialog = DialogStage(is_local).process(routed)
    assert in_dialog.kind == "relay" and in_dialog.targets[0].uri.port == 5062
    # A To tag alone, without our route set, is not a dialog we are on: no open relay.
    stray = DialogStage(is_local).process(request("sip:+19005550100@198.51.100.7", "INVITE", to_tag="forged"))
    assert (stray.status, stray.reason) == (404, "Not Here")
    preloaded = request("sip:bob@192.0.2.20", "INVITE", extra="Route: <sip:192.0.2.30;lr>\r\n")
    assert DialogStage(is_local).process(preloaded).reason == "Forbidden: preloaded Route"
    preloaded.trusted = True  # a PBX on a trusted address may pre-route
    assert DialogStage(is_local).process(preloaded).kind == "relay"


def test_builtin_stages_are_plugins_and_unknown_names_list_known_ones() -> None:
    found = available_stages()
    assert {"sanity", "options", "dialog", "registrar", "location", "routes", "final"} <= set(found)
    for factory in found.values():
        assert verifyObject(IStageFactory, factory)
    with pytest.raises(ConfigError, match=r"unknown stage 'nope' \(known: .*sanity"):
        build_stages(["nope"], environment=None)  # type: ignore[arg-type]


def test_router_subclass_in_a_few_lines() -> None:
    class Hunt(Router):
        name = "hunt"

        def route(self, context):
            if context.request.uri.user == "sales":
                return ["sip:alice@192.0.2.1", URI.parse("sip:bob@192.0.2.2"), Target(uri=URI.parse("sip:carol@192.0.2.3"), q=0.5)]
            if context.request.uri.user == "nobody":
                return []
            return None

    router = Hunt()
    assert verifyObject(IPipelineStage, router)
    decision = router.process(request("sip:sales@example.com"))
    assert [str(t.uri) for t in decision.targets] == ["sip:alice@192.0.2.1", "sip:bob@192.0.2.2", "sip:carol@192.0.2.3"]
    assert router.process(request("sip:nobody@example.com")).status == 480
    assert router.process(request("sip:other@example.com")) is CONTINUE
