"""The registrar (RFC 3261 10.3, RFC 3327) and the location lookup stage (RFC 3261 16.5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from sipshield.interfaces import IPipelineStage
from sipshield.message import URI, parse_message
from sipshield.routing import CONTINUE, Decision, RequestContext
from sipshield.routing._registrar import LocationLookup, Registrar
from sipshield.state import Binding, MemoryLocationStore, SQLLocationStore, StoreUnavailable

DATA = Path(__file__).parent.parent / "data" / "rfc4475"
AOR = "sip:alice@example.com"


class Flow:
    transport_name = "UDP"
    reliable = False
    remote = ("192.0.2.9", 5062)
    local = ("127.0.0.1", 5060)

    def peer_certificate(self) -> None:
        return None


class TLSFlow(Flow):
    transport_name = "TLS"
    remote = ("198.51.100.7", 40123)


def register(
    contacts: list[str] | None = None,
    expires: int | None = None,
    call_id: str = "reg1@ua",
    cseq: int = 1,
    to: str = "sip:alice@example.com",
    uri: str = "sip:example.com",
    extra: str = "",
    flow: Any = None,
) -> RequestContext:
    lines = [
        f"REGISTER {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bK" + call_id.replace("@", "") + str(cseq),
        "Max-Forwards: 70",
        f"From: <{to}>;tag=f1",
        f"To: <{to}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in contacts or ()]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    data = "\r\n".join(lines) + "\r\n" + extra + "Content-Length: 0\r\n\r\n"
    return RequestContext(parse_message(data.encode()), flow or Flow())  # type: ignore[arg-type]


def invite(uri: str = "sip:alice@example.com") -> RequestContext:
    data = (
        f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bKinv\r\nMax-Forwards: 70\r\n"
        f"From: <sip:bob@example.com>;tag=b\r\nTo: <{uri}>\r\nCall-ID: call@b\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    return RequestContext(parse_message(data.encode()), Flow())  # type: ignore[arg-type]


def settled(result: Decision | Deferred[Decision]) -> Decision:
    """The decision of a stage whose store has answered already."""
    if isinstance(result, Deferred):
        box: list[Any] = []
        result.addBoth(box.append)
        assert box, "the stage did not answer synchronously"
        if not isinstance(box[0], Decision):
            box[0].raiseException()
        return box[0]
    return result


def header(decision: Decision, name: str) -> list[str]:
    return [v for n, v in decision.headers if n.lower() == name.lower()]


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_000_000)
    return clock


@pytest.fixture
def store(clock: Clock) -> MemoryLocationStore:
    return MemoryLocationStore(clock)


@pytest.fixture
def registrar(store: MemoryLocationStore, clock: Clock) -> Registrar:
    return Registrar(store, ["example.com"], clock, min_expires=60, max_expires=3600, default_expires=1800)


def run(registrar: Registrar, context: RequestContext) -> Decision:
    return settled(registrar.process(context))


def contacts_of(store: MemoryLocationStore) -> list[str]:
    return [b.contact for b in store.bindings_now(AOR)]


# -- what the registrar is for ----------------------------------------------------------------


def test_registrar_provides_ipipelinestage(registrar: Registrar) -> None:
    assert verifyObject(IPipelineStage, registrar)
    assert registrar.name == "registrar"


def test_non_register_request_passes_on(registrar: Registrar) -> None:
    assert registrar.process(invite()) is CONTINUE


def test_register_for_a_domain_not_served_passes_on(registrar: Registrar) -> None:
    context = register(["<sip:alice@192.0.2.9:5062>"], uri="sip:other.example.net", to="sip:alice@other.example.net")
    assert registrar.process(context) is CONTINUE


def test_register_to_the_proxy_itself_is_served_through_is_local(store: MemoryLocationStore, clock: Clock) -> None:
    registrar = Registrar(store, [], clock, is_local=lambda host, port: host == "127.0.0.1")
    decision = run(registrar, register(["<sip:alice@192.0.2.9:5062>"], uri="sip:127.0.0.1", to="sip:alice@127.0.0.1"))
    assert decision.status == 200
    assert [b.contact for b in store.bindings_now("sip:alice@127.0.0.1")] == ["sip:alice@192.0.2.9:5062"]


# -- adding, refreshing, removing (RFC 3261 10.3 step 7) ------------------------------------------


def test_register_adds_a_binding_and_the_200_lists_it_with_expires_and_date(registrar: Registrar, store: MemoryLocationStore, clock: Clock) -> None:
    decision = run(registrar, register(["<sip:alice@192.0.2.9:5062>"], expires=600))
    assert (decision.kind, decision.status) == ("reply", 200)
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.9:5062>;expires=600"]
    assert header(decision, "Date") == ["Mon, 12 Jan 1970 13:46:40 GMT"]
    [b] = store.bindings_now(AOR)
    assert (b.expires_at, b.call_id, b.cseq, b.source) == (clock.seconds() + 600, "reg1@ua", 1, ("UDP", "192.0.2.9", 5062))


def test_refresh_with_a_higher_cseq_extends_the_binding(registrar: Registrar, store: MemoryLocationStore, clock: Clock) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9:5062>"], expires=600, cseq=1))
    clock.advance(300)
    decision = run(registrar, register(["<sip:alice@192.0.2.9:5062>"], expires=600, cseq=2))
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.9:5062>;expires=600"]
    [b] = store.bindings_now(AOR)
    assert (b.cseq, b.expires_at) == (2, clock.seconds() + 600)


def test_expires_zero_removes_the_binding(registrar: Registrar, store: MemoryLocationStore) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9:5062>", "<sip:alice@192.0.2.10>"], expires=600, cseq=1))
    decision = run(registrar, register(["<sip:alice@192.0.2.9:5062>;expires=0"], expires=600, cseq=2))
    assert decision.status == 200
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.10>;expires=600"]
    assert contacts_of(store) == ["sip:alice@192.0.2.10"]


def test_removing_the_last_binding_gives_a_200_without_contacts(registrar: Registrar, store: MemoryLocationStore) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9:5062>"], cseq=1))
    decision = run(registrar, register(["<sip:alice@192.0.2.9:5062>"], expires=0, cseq=2))
    assert decision.status == 200 and header(decision, "Contact") == []
    assert store._aors == {}


def test_contact_expires_param_wins_over_the_expires_header(registrar: Registrar) -> None:
    decision = run(registrar, register(["<sip:alice@192.0.2.9>;expires=120", "<sip:alice@192.0.2.10>"], expires=900))
    assert sorted(header(decision, "Contact")) == ["<sip:alice@192.0.2.10>;expires=900", "<sip:alice@192.0.2.9>;expires=120"]


def test_default_expiry_applies_without_param_or_header(registrar: Registrar) -> None:
    decision = run(registrar, register(["<sip:alice@192.0.2.9>"]))
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.9>;expires=1800"]


def test_expiry_above_the_maximum_is_capped(registrar: Registrar) -> None:
    decision = run(registrar, register(["<sip:alice@192.0.2.9>;expires=86400"]))
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.9>;expires=3600"]


@pytest.mark.parametrize(("contact", "expires"), [("<sip:alice@192.0.2.9>", 30), ("<sip:alice@192.0.2.9>;expires=1", None)])
def test_too_brief_expiry_gives_423_with_min_expires(registrar: Registrar, store: MemoryLocationStore, contact: str, expires: int | None) -> None:
    decision = run(registrar, register([contact], expires=expires))
    assert (decision.status, decision.reason) == (423, "Interval Too Brief")
    assert header(decision, "Min-Expires") == ["60"]
    assert contacts_of(store) == []


def test_one_bad_contact_fails_the_whole_register(registrar: Registrar, store: MemoryLocationStore) -> None:
    decision = run(registrar, register(["<sip:alice@192.0.2.9>", "<sip:alice@192.0.2.10>;expires=5"]))
    assert decision.status == 423
    assert contacts_of(store) == []


def test_q_is_stored_and_bindings_are_listed_highest_q_first(registrar: Registrar) -> None:
    decision = run(registrar, register(["<sip:alice@192.0.2.9>;q=0.2", "<sip:alice@192.0.2.10>;q=0.8"], expires=600))
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.10>;expires=600;q=0.8", "<sip:alice@192.0.2.9>;expires=600;q=0.2"]


def test_a_respelled_contact_replaces_its_binding(registrar: Registrar, store: MemoryLocationStore) -> None:
    run(registrar, register(["<sip:alice@PHONE.example.com;transport=udp>"], cseq=1))
    run(registrar, register(["<sip:alice@phone.example.com;transport=UDP>"], cseq=2))
    assert contacts_of(store) == ["sip:alice@phone.example.com;transport=UDP"]


def test_source_instance_reg_id_and_user_agent_are_stored(registrar: Registrar, store: MemoryLocationStore) -> None:
    contact = '<sip:alice@192.0.2.9;transport=tls>;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";reg-id=1'
    run(registrar, register([contact], extra="User-Agent: Phone/2.1\r\n", flow=TLSFlow()))
    [b] = store.bindings_now(AOR)
    assert b.source == ("TLS", "198.51.100.7", 40123)
    assert b.instance == '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'
    assert (b.reg_id, b.user_agent) == (1, "Phone/2.1")


# -- Contact: * (RFC 3261 10.3 step 6) ---------------------------------------------------------------


def test_star_with_expires_zero_removes_every_binding(registrar: Registrar, store: MemoryLocationStore) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>", "<sip:alice@192.0.2.10>"], call_id="a@ua", cseq=5))
    run(registrar, register(["<sip:alice@192.0.2.11>"], call_id="b@ua", cseq=1))
    decision = run(registrar, register(["*"], expires=0, call_id="c@ua", cseq=1))
    assert decision.status == 200 and header(decision, "Contact") == []
    assert store._aors == {}


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [(["*"], None), (["*"], 3600), (["*", "<sip:alice@192.0.2.9>"], 0)],
    ids=["no-expires", "expires-3600", "with-another-contact"],
)
def test_star_needs_expires_zero_and_to_be_alone(registrar: Registrar, store: MemoryLocationStore, contacts: list[str], expires: int | None) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>"], call_id="a@ua"))
    decision = run(registrar, register(contacts, expires=expires, call_id="b@ua"))
    assert decision.status == 400
    assert contacts_of(store) == ["sip:alice@192.0.2.9"]


def test_star_from_the_same_call_id_with_an_old_cseq_is_out_of_order(registrar: Registrar, store: MemoryLocationStore) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>"], call_id="a@ua", cseq=5))
    decision = run(registrar, register(["*"], expires=0, call_id="a@ua", cseq=5))
    assert (decision.status, decision.reason) == (400, "CSeq out of order")
    assert contacts_of(store) == ["sip:alice@192.0.2.9"]


# -- Call-ID and CSeq ordering (RFC 3261 10.3 step 7) ---------------------------------------------------


@pytest.mark.parametrize("cseq", [5, 4])
def test_same_call_id_with_a_cseq_not_higher_is_out_of_order(registrar: Registrar, store: MemoryLocationStore, cseq: int) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>"], expires=600, call_id="a@ua", cseq=5))
    decision = run(registrar, register(["<sip:alice@192.0.2.9>"], expires=0, call_id="a@ua", cseq=cseq))
    assert (decision.status, decision.reason) == (400, "CSeq out of order")
    assert contacts_of(store) == ["sip:alice@192.0.2.9"]


def test_another_call_id_replaces_the_binding_whatever_its_cseq(registrar: Registrar, store: MemoryLocationStore) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>"], call_id="a@ua", cseq=50))
    decision = run(registrar, register(["<sip:alice@192.0.2.9>"], call_id="rebooted@ua", cseq=1))
    assert decision.status == 200
    [b] = store.bindings_now(AOR)
    assert (b.call_id, b.cseq) == ("rebooted@ua", 1)


# -- Path (RFC 3327) --------------------------------------------------------------------------------------


PATHS = "Path: <sip:edge1.example.net;lr>\r\nPath: <sip:edge2.example.net;lr>\r\n"


def from_edge(context: RequestContext) -> RequestContext:
    """As the auth stage marks a request from [auth] trusted_sources."""
    context.trusted = True
    return context


def test_path_is_stored_and_echoed_when_the_ua_supports_path(registrar: Registrar, store: MemoryLocationStore) -> None:
    decision = run(registrar, from_edge(register(["<sip:alice@192.0.2.9>"], extra=PATHS + "Supported: path, outbound\r\n")))
    assert header(decision, "Path") == ["<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>"]
    [b] = store.bindings_now(AOR)
    assert b.path == ("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>")


def test_path_is_stored_but_not_echoed_when_the_ua_does_not_support_path(registrar: Registrar, store: MemoryLocationStore) -> None:
    decision = run(registrar, from_edge(register(["<sip:alice@192.0.2.9>"], extra=PATHS)))
    assert header(decision, "Path") == []
    assert store.bindings_now(AOR)[0].path == ("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>")


def test_path_from_an_untrusted_source_is_refused_and_nothing_is_bound(registrar: Registrar, store: MemoryLocationStore) -> None:
    """A UA's own Path would make every call to its AOR go through a host it chose."""
    decision = run(registrar, register(["<sip:alice@192.0.2.9>"], extra=PATHS + "Supported: path\r\n"))
    assert (decision.status, decision.reason) == (403, "Forbidden: Path from an untrusted source")
    assert store.bindings_now(AOR) == []


def test_require_path_is_accepted_and_other_extensions_get_420(registrar: Registrar) -> None:
    assert run(registrar, register(["<sip:alice@192.0.2.9>"], extra="Require: path\r\n")).status == 200
    decision = run(registrar, register(["<sip:alice@192.0.2.9>"], cseq=2, extra="Require: path, gruu\r\n"))
    assert (decision.status, header(decision, "Unsupported")) == (420, ["gruu"])


# -- the 200 and queries (RFC 3261 10.3 step 8, 10.2.3) ----------------------------------------------------------


def test_200_lists_every_binding_of_the_aor_with_its_remaining_expiry(registrar: Registrar, clock: Clock) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>"], expires=600, call_id="desk@ua"))
    clock.advance(100)
    decision = run(registrar, register(["<sip:alice@192.0.2.10>"], expires=3600, call_id="mobile@ua"))
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.9>;expires=500", "<sip:alice@192.0.2.10>;expires=3600"]


def test_register_without_contact_is_a_query_that_changes_nothing(registrar: Registrar, store: MemoryLocationStore, clock: Clock) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>"], expires=600, call_id="desk@ua", cseq=9))
    clock.advance(60)
    decision = run(registrar, register(None, call_id="query@ua", cseq=1))
    assert decision.status == 200
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.9>;expires=540"]
    [b] = store.bindings_now(AOR)
    assert (b.call_id, b.cseq) == ("desk@ua", 9)


def test_lapsed_bindings_are_not_listed(registrar: Registrar, clock: Clock) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>"], expires=60))
    clock.advance(61)
    assert header(run(registrar, register(None, cseq=2)), "Contact") == []


# -- what a registrar refuses -----------------------------------------------------------------------------------


def test_rfc4475_unksm2_unknown_schemes_in_to_from_and_contact_get_400(registrar: Registrar, store: MemoryLocationStore) -> None:
    request = parse_message((DATA / "unksm2.dat").read_bytes())
    decision = run(registrar, RequestContext(request, Flow()))  # type: ignore[arg-type]
    assert decision.status == 400
    assert store._aors == {}


def test_contact_with_a_non_sip_scheme_gets_400(registrar: Registrar, store: MemoryLocationStore) -> None:
    decision = run(registrar, register(["<sip:alice@192.0.2.9>", "<mailto:alice@example.com>"]))
    assert (decision.status, decision.reason) == (400, "Contact is not a SIP or SIPS URI")
    assert contacts_of(store) == []


@pytest.mark.parametrize("contact", ["<sip:alice@192.0.2.9>;q=2", "<sip:alice@192.0.2.9>;expires=soon"])
def test_invalid_q_or_expires_param_gets_400(registrar: Registrar, contact: str) -> None:
    assert run(registrar, register([contact])).status == 400


def test_aor_in_a_foreign_domain_gets_404(registrar: Registrar, store: MemoryLocationStore) -> None:
    decision = run(registrar, register(["<sip:alice@192.0.2.9>"], to="sip:alice@elsewhere.example.org"))
    assert (decision.status, decision.reason) == (404, "Not Found")
    assert store._aors == {}


def test_authorize_hook_refusal_gets_403(store: MemoryLocationStore, clock: Clock) -> None:
    class OwnAorOnly(Registrar):
        def authorize(self, context: RequestContext, aor: str) -> bool:
            return context.identity is not None and f"sip:{context.identity}@example.com" == aor

    registrar = OwnAorOnly(store, ["example.com"], clock)
    context = register(["<sip:alice@192.0.2.9>"])
    context.identity = "mallory"
    assert run(registrar, context).status == 403
    context = register(["<sip:alice@192.0.2.9>"])
    context.identity = "alice"
    assert run(registrar, context).status == 200


def test_more_contacts_than_allowed_per_aor_get_403(store: MemoryLocationStore, clock: Clock) -> None:
    registrar = Registrar(store, ["example.com"], clock, max_bindings=2)
    assert run(registrar, register(["<sip:alice@192.0.2.1>", "<sip:alice@192.0.2.2>"])).status == 200
    decision = run(registrar, register(["<sip:alice@192.0.2.3>"], cseq=2))
    assert (decision.status, decision.reason) == (403, "Too Many Contacts")
    assert run(registrar, register(["<sip:alice@192.0.2.1>"], cseq=3)).status == 200  # refreshing is fine


# -- fail closed when the store is down ------------------------------------------------------------------------


class DownStore:
    """Every ILocationStore method fails as a database outage does."""

    def _down(self, *args: Any) -> Deferred[Any]:
        return defer.fail(StoreUnavailable("database is down"))

    bindings = put = remove = remove_all = expire = count = update = _down


class HangingStore:
    def __init__(self) -> None:
        self.calls: list[Deferred[Any]] = []

    def bindings(self, aor: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append(d)
        return d


def test_store_down_gives_503_with_retry_after(clock: Clock) -> None:
    registrar = Registrar(DownStore(), ["example.com"], clock, retry_after=20)
    decision = run(registrar, register(["<sip:alice@192.0.2.9>"]))
    assert decision.status == 503
    assert header(decision, "Retry-After") == ["20"]


def test_store_that_does_not_answer_gives_503_after_the_timeout(clock: Clock) -> None:
    registrar = Registrar(HangingStore(), ["example.com"], clock, store_timeout=2.0)
    result = registrar.process(register(["<sip:alice@192.0.2.9>"]))
    assert isinstance(result, Deferred)
    decisions: list[Decision] = []
    result.addCallback(decisions.append)
    clock.advance(1.9)
    assert decisions == []
    clock.advance(0.2)
    assert decisions[0].status == 503 and header(decisions[0], "Retry-After") == ["30"]


def test_a_bug_in_the_store_is_not_hidden_as_503(clock: Clock) -> None:
    class BrokenStore:
        def bindings(self, aor: str) -> Deferred[Any]:
            return defer.fail(KeyError("bug"))

    result = Registrar(BrokenStore(), ["example.com"], clock).process(register(["<sip:alice@192.0.2.9>"]))
    assert isinstance(result, Deferred)
    failures: list[Any] = []
    result.addErrback(failures.append)
    assert failures[0].check(KeyError)


# -- the location lookup (RFC 3261 16.5) ---------------------------------------------------------------------------


@pytest.fixture
def lookup(store: MemoryLocationStore, clock: Clock) -> LocationLookup:
    return LocationLookup(store, ["example.com"], clock)


def test_lookup_provides_ipipelinestage(lookup: LocationLookup) -> None:
    assert verifyObject(IPipelineStage, lookup)
    assert lookup.name == "location"


def test_lookup_relays_to_every_binding_highest_q_first_with_path_and_source(registrar: Registrar, lookup: LocationLookup) -> None:
    run(registrar, from_edge(register(["<sip:alice@192.0.2.9>;q=0.5"], call_id="a@ua", extra=PATHS)))
    run(registrar, register(["<sip:alice@192.0.2.10;transport=tcp>;q=0.9"], call_id="b@ua", flow=TLSFlow()))
    decision = lookup.process(invite("sip:alice@example.com;user=phone"))
    assert isinstance(decision, Decision), "memory-store lookups are synchronous"
    assert decision.kind == "relay"
    first, second = decision.targets
    assert (first.uri, first.q, first.route, first.source) == (URI.parse("sip:alice@192.0.2.10;transport=tcp"), 0.9, (), ("TLS", "198.51.100.7", 40123))
    assert (second.uri, second.q) == (URI.parse("sip:alice@192.0.2.9"), 0.5)
    assert second.route == ("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>")
    assert second.source == ("UDP", "192.0.2.9", 5062)


def test_lookup_without_bindings_passes_on_by_default(lookup: LocationLookup) -> None:
    assert lookup.process(invite()) is CONTINUE


def test_lookup_without_bindings_answers_miss_status_when_configured(store: MemoryLocationStore, clock: Clock) -> None:
    decision = settled(LocationLookup(store, ["example.com"], clock, miss_status=480).process(invite()))
    assert (decision.status, decision.reason) == (480, "Temporarily Unavailable")


def test_lookup_ignores_lapsed_bindings(registrar: Registrar, lookup: LocationLookup, clock: Clock) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>"], expires=60))
    clock.advance(60)
    assert lookup.process(invite()) is CONTINUE


def test_sips_request_uri_is_relayed_to_sips_contacts_only(registrar: Registrar, lookup: LocationLookup) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>", "<sips:alice@192.0.2.10>"]))
    decision = settled(lookup.process(invite("sips:alice@example.com")))
    assert [str(t.uri) for t in decision.targets] == ["sips:alice@192.0.2.10"]
    assert len(settled(lookup.process(invite("sip:alice@example.com"))).targets) == 2


@pytest.mark.parametrize("uri", ["sip:example.com", "sip:alice@elsewhere.example.org", "tel:+15551234567"])
def test_lookup_passes_on_requests_it_does_not_own(registrar: Registrar, lookup: LocationLookup, uri: str) -> None:
    run(registrar, register(["<sip:alice@192.0.2.9>"]))
    assert lookup.process(invite(uri)) is CONTINUE


def test_lookup_passes_on_register(lookup: LocationLookup) -> None:
    assert lookup.process(register(["<sip:alice@192.0.2.9>"])) is CONTINUE


def test_lookup_with_the_store_down_gives_503(clock: Clock) -> None:
    decision = settled(LocationLookup(DownStore(), ["example.com"], clock).process(invite()))
    assert decision.status == 503 and header(decision, "Retry-After") == ["30"]


def test_lookup_waits_for_a_slow_store_and_times_out(clock: Clock) -> None:
    store = HangingStore()
    result = LocationLookup(store, ["example.com"], clock, store_timeout=1.0).process(invite())
    assert isinstance(result, Deferred)
    decisions: list[Decision] = []
    result.addCallback(decisions.append)
    store.calls[0].callback([Binding(AOR, "sip:alice@192.0.2.9", expires_at=clock.seconds() + 60)])
    assert decisions[0].kind == "relay"
    result = LocationLookup(store, ["example.com"], clock, store_timeout=1.0).process(invite())
    assert isinstance(result, Deferred)
    result.addCallback(decisions.append)
    clock.advance(1.0)
    assert decisions[1].status == 503


# -- the same stages over the SQL store (Deferreds that fire later) --------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_register_and_lookup_over_the_sqlite_store(tmp_path: Path):
    store = SQLLocationStore(f"sqlite:///{tmp_path / 'sipshield.db'}", reactor)
    yield store.start()
    try:
        registrar = Registrar(store, ["example.com"], reactor)
        result = registrar.process(from_edge(register(["<sip:alice@192.0.2.9>;q=0.7", "<sip:alice@192.0.2.10>"], expires=600, extra=PATHS)))
        assert isinstance(result, Deferred)
        decision = yield result
        assert decision.status == 200
        assert header(decision, "Contact") == ["<sip:alice@192.0.2.10>;expires=600", "<sip:alice@192.0.2.9>;expires=600;q=0.7"]
        out_of_order = yield registrar.process(register(["<sip:alice@192.0.2.9>"], expires=0))
        assert out_of_order.status == 400
        decision = yield LocationLookup(store, ["example.com"], reactor).process(invite())
        assert [str(t.uri) for t in decision.targets] == ["sip:alice@192.0.2.10", "sip:alice@192.0.2.9"]
        assert decision.targets[1].route == ("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>")
    finally:
        yield store.stop()
    decision = yield Registrar(store, ["example.com"], reactor).process(register(["<sip:alice@192.0.2.9>"], cseq=3))
    assert decision.status == 503


def test_stores_without_update_get_one_call_per_binding(clock: Clock) -> None:
    class PlainStore:
        """Only ILocationStore, no update(): the registrar falls back to put/remove."""

        def __init__(self) -> None:
            self.inner = MemoryLocationStore(clock)
            self.calls: list[str] = []

        def __getattr__(self, name: str) -> Any:
            if name == "update":
                raise AttributeError(name)
            self.calls.append(name)
            return getattr(self.inner, name)

    store = PlainStore()
    registrar = Registrar(store, ["example.com"], clock)
    run(registrar, register(["<sip:alice@192.0.2.9>", "<sip:alice@192.0.2.10>"], cseq=1))
    run(registrar, register(["<sip:alice@192.0.2.9>;expires=0"], cseq=2))
    assert [b.contact for b in store.inner.bindings_now(AOR)] == ["sip:alice@192.0.2.10"]
    assert store.calls.count("put") == 2 and store.calls.count("remove") == 1
