from dnslib import DNSRecord, EDNS0, RCODE
from hypothesis import given, settings, strategies as st

from weavepy.dns.records import Records
from weavepy.dns.responder import Forward, Responder

ME = "02:00:00:00:00:01"


def responder(n=3, name="c1.weave.local"):
    r = Records(ME, "weave.local")
    for i in range(n):
        r.add(f"c{i}", f"10.32.0.{i + 1}", name)
    return Responder(r, ttl=1), r


def ask(resp, name, qtype="A", tcp=False, edns=None):
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=edns))
    out = resp.handle(q.pack(), tcp=tcp)
    return q, (DNSRecord.parse(out) if isinstance(out, bytes) else out)


def test_all_addresses_shuffled_and_question_echoed():
    resp, _ = responder(3)
    orders = set()
    for _ in range(30):
        q, a = ask(resp, "C1.Weave.Local")
        assert a.header.id == q.header.id and a.header.aa and a.header.rcode == RCODE.NOERROR
        assert str(a.q.qname) == "C1.Weave.Local." and {str(rr.rname) for rr in a.rr} == {"C1.Weave.Local."}
        assert all(rr.ttl == 1 for rr in a.rr)
        orders.add(tuple(str(rr.rdata) for rr in a.rr))
    assert {frozenset(o) for o in orders} == {frozenset({"10.32.0.1", "10.32.0.2", "10.32.0.3"})}
    assert len(orders) > 1


def test_unknown_is_nxdomain_other_type_is_empty_bare_label_gets_domain():
    resp, _ = responder(1)
    assert ask(resp, "nope.weave.local")[1].header.rcode == RCODE.NXDOMAIN
    _, a = ask(resp, "c1.weave.local", "AAAA")
    assert a.header.rcode == RCODE.NOERROR and not a.rr
    _, a = ask(resp, "c1")
    assert [str(rr.rdata) for rr in a.rr] == ["10.32.0.1"]


def test_reverse_lookup_and_forwarding():
    resp, _ = responder(1)
    _, a = ask(resp, "1.0.32.10.IN-ADDR.ARPA", "PTR")
    assert str(a.rr[0].rdata) == "c1.weave.local."
    assert isinstance(ask(resp, "9.9.32.10.in-addr.arpa", "PTR")[1], Forward)
    assert isinstance(ask(resp, "example.com")[1], Forward)
    assert ask(resp, "0.32.10.in-addr.arpa", "PTR")[1].header.rcode == RCODE.NXDOMAIN


def test_answers_follow_record_changes():
    resp, records = responder(1)
    assert ask(resp, "c1.weave.local")[1].rr
    records.tombstone(now=5, container="c0")
    assert ask(resp, "c1.weave.local")[1].header.rcode == RCODE.NXDOMAIN


def test_udp_truncation_and_tcp_whole():
    resp, _ = responder(50)
    _, udp = ask(resp, "c1.weave.local")
    assert udp.header.tc and 1 <= len(udp.rr) < 50 and len(udp.pack()) <= 512
    _, big = ask(resp, "c1.weave.local", edns=700)
    assert big.header.tc and len(udp.rr) < len(big.rr) < 50
    _, tcp = ask(resp, "c1.weave.local", tcp=True)
    assert not tcp.header.tc and len(tcp.rr) == 50


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises(data):
    resp, _ = responder(2)
    out = resp.handle(data)
    assert out is None or isinstance(out, (bytes, Forward))


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 40))
def test_truncated_real_queries_never_raise(cut):
    resp, _ = responder(2)
    data = DNSRecord.question("c1.weave.local").pack()
    out = resp.handle(data[:cut])
    assert out is None or isinstance(out, (bytes, Forward))


def test_repeated_queries_served_from_cache_still_follow_ids_sizes_and_changes():
    resp, records = responder(50)
    for _ in range(3):
        q, udp = ask(resp, "c1.weave.local")
        assert udp.header.id == q.header.id and udp.header.tc and len(udp.pack()) <= 512
        _, tcp = ask(resp, "c1.weave.local", tcp=True)
        assert len(tcp.rr) == 50 and not tcp.header.tc
    records.tombstone(now=5)
    assert ask(resp, "c1.weave.local")[1].header.rcode == RCODE.NXDOMAIN


def answers(resp, name="c1.weave.local"):
    return sorted(str(rr.rdata) for rr in ask(resp, name)[1].rr)


def test_a_change_while_a_query_is_answered_never_leaves_a_stale_answer_cached():
    """The UDP thread answers while the event loop changes records: a change landing between the
    lookup and the caching of its answer must not keep the old answer alive."""
    records = Records(ME, "weave.local")
    records.add("c1", "10.32.0.1", "c1.weave.local")
    resp = Responder(records)
    assert answers(resp) == ["10.32.0.1"]

    view = records.view
    real_lookup = view.lookup

    def lookup_then_change(name):  # the loop thread runs between the lookup and the cache fill
        found = real_lookup(name)
        records.tombstone(1, container="c1")
        records.add("c2", "10.32.0.2", "c1.weave.local")
        return found
    object.__setattr__(view, "lookup", lookup_then_change)
    ask(resp, "c1.weave.local", edns=1232)  # another query form, so it is not answered from the fast path
    assert answers(resp) == ["10.32.0.2"]
    assert answers(resp, "C1.weave.local") == ["10.32.0.2"]


def test_answers_stay_current_under_concurrent_changes():
    import sys
    import threading
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show within a few rounds
    records = Records(ME, "weave.local")
    records.add("c0", "10.32.0.100", "c1.weave.local")
    resp = Responder(records)
    stop = threading.Event()
    queries = [DNSRecord.question(n).pack() for n in ("c1.weave.local", "C1.weave.local", "c1")]

    def hammer():
        while not stop.is_set():
            for q in queries:
                resp.handle(q)
    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 300):
            records.tombstone(i, container=f"c{i - 1}")
            records.add(f"c{i}", f"10.32.{i // 250}.{i % 250 + 1}", "c1.weave.local")
            expected = [f"10.32.{i // 250}.{i % 250 + 1}"]
            for q in queries:
                got = sorted(str(rr.rdata) for rr in DNSRecord.parse(resp.handle(q)).rr)
                assert got == expected, f"round {i}: {got} after the change to {expected}"
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(interval)
