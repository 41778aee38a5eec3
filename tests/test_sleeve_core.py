"""SleeveCore over a model network, and DataRoutes against brute-force definitions.

The model: one SleeveCore per peer over the same topology, each link fastdp or
sleeve.  A host's bridge learns source MACs per port (tap, or the VXLAN port
with the VTEP); a container's frame to a MAC learned behind the VXLAN port is
carried by the kernel alone, anything else reaches the tap, and a flood also
goes by the kernel to every direct neighbour whose path is fastdp (flood
entries, design §2 rule 1).  Kernel copies and injected frames are delivered
to the receiving host's containers and never reach its tap (isolated ports).
"""
from collections import Counter, deque

import pytest
from hypothesis import given, strategies as st

from weavepy.mesh.routes import DataRoutes, Routes
from weavepy.mesh.topology import ConnSummary, PeerInfo
from weavepy.net.sleeve_core import (DELIVERED, FASTDP, FLOOD, MAX_HOPS, RELAY, STP, ForwardingState, Hop,
                                     Path, Send, SleeveCore)

BCAST = b"\xff" * 6
UP = Hop(("10.0.0.9", 6783), 1438, True)


def mac(name: str) -> bytes:
    return bytes([2, 0, 0, 0, 0, int(name[1:])])


def table(links: dict[str, dict[str, bool]]) -> dict[str, PeerInfo]:
    """links: peer -> {remote: established} as that peer gossips its connections."""
    return {n: PeerInfo(n, n, 1, 1, {r: ConnSummary("10.0.0.1:6783", True, e) for r, e in conns.items()})
            for n, conns in links.items()}


def state(me: str, edges, fastdp=(), down=()) -> ForwardingState:
    """me's view of a symmetric topology; `fastdp`, `down`: me's neighbours with fastdp active / sleeve down."""
    links: dict[str, dict[str, bool]] = {}
    for a, b in edges:
        links.setdefault(a, {})[b] = links.setdefault(b, {})[a] = True
    routes = Routes(table(links), me).data_plane()
    return ForwardingState.build(routes, {p: FASTDP for p in fastdp},
                                 {p: Hop(UP.addr, UP.dgram_max, p not in down) for p in routes.neighbours(me)})


# Random connected topologies: a tree (node i hangs off an earlier node) plus extra edges, each link
# labelled fastdp or not.
topologies = st.integers(2, 9).flatmap(lambda n: st.tuples(
    st.tuples(*(st.integers(0, i - 1) for i in range(1, n))),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n),
    st.lists(st.booleans(), min_size=3 * n, max_size=3 * n)))


def graph(parents, extra, labels):
    names = [f"h{i}" for i in range(len(parents) + 1)]
    edges = {tuple(sorted((names[i + 1], names[p]))) for i, p in enumerate(parents)}
    edges |= {tuple(sorted((names[a], names[b]))) for a, b in extra if a != b}
    edges = sorted(edges)
    return names, edges, {e for e, fast in zip(edges, labels) if fast}


class Net:
    def __init__(self, names, edges, fastdp):
        self.fastdp = fastdp
        self.states = {n: state(n, edges, fastdp=[b if a == n else a for a, b in fastdp if n in (a, b)])
                       for n in names}
        self.cores = {n: SleeveCore() for n in names}
        self.fdb = {n: {} for n in names}             # host -> {mac: "tap" | VTEP peer}
        self.got: Counter = Counter()                  # host -> copies delivered into its bridge
        self.datagrams: list[tuple[str, Send]] = []   # (sending hop, datagram)

    def kernel(self, origin: str, to: str):
        assert tuple(sorted((origin, to))) in self.fastdp, "the kernel only carries fastdp links"
        self.got[to] += 1
        self.fdb[to][mac(origin)] = origin

    def send(self, origin: str, dst_mac: bytes):
        """A frame from origin's container (source mac(origin)) to dst_mac."""
        self.got.clear()
        self.datagrams.clear()
        port = None if dst_mac[0] & 1 else self.fdb[origin].get(dst_mac)
        if port not in (None, "tap"):
            return self.kernel(origin, port)
        if port is None:
            for hop in self.states[origin].routes.neighbours(origin):
                if self.states[origin].paths[hop].kind == FASTDP:
                    self.kernel(origin, hop)
        todo = deque((origin, s) for s in self.cores[origin].from_tap(dst_mac, mac(origin), self.states[origin]))
        while todo:
            sender, dgram = todo.popleft()
            self.datagrams.append((sender, dgram))
            at = dgram.hop
            inject, relays = self.cores[at].from_udp(origin, dgram.dst_peer, dgram.flags, dgram.hops_left,
                                                     mac(origin), self.states[at], 0.0)
            if inject:
                self.got[at] += 1
                self.fdb[at][mac(origin)] = "tap"
            todo.extend((at, r) for r in relays)

    def check_routes_followed(self, origin: str):
        for sender, dgram in self.datagrams:
            routes = self.states[sender].routes
            if dgram.flags & FLOOD:
                assert dgram.hop == dgram.dst_peer and dgram.hop in routes.onward(origin, sender)
            else:
                assert dgram.hop == routes.unicast[dgram.dst_peer]

    def drops(self) -> Counter:
        return sum((core.dropped for core in self.cores.values()), Counter())


@given(topologies, st.lists(st.booleans(), min_size=81, max_size=81))
def test_every_frame_reaches_every_peer_once_over_any_mix_of_fastdp_and_sleeve(topology, forget):
    names, edges, fastdp = graph(*topology)
    net = Net(names, edges, fastdp)
    for origin in names:                       # every container says hello (ARP): everyone learns
        net.send(origin, BCAST)
        assert net.got == Counter({n: 1 for n in names if n != origin})
        net.check_routes_followed(origin)
    assert net.drops() == Counter()
    forget = iter(forget)
    for sender in names:                       # then each talks to each, bridges having forgotten some MACs
        for owner in names:
            if owner == sender:
                continue
            if next(forget):
                net.fdb[sender].pop(mac(owner), None)
            net.send(sender, mac(owner))
            assert net.got[owner] == 1
            net.check_routes_followed(sender)
            if net.cores[sender].macs.lookup(mac(owner)):
                assert all(not d.flags & FLOOD for _, d in net.datagrams)
    assert set(net.drops()) <= {"kernel_carried"}


def test_h1_h2_h3_chain_with_fastdp_to_h2():
    """Design §4: c1's ARP goes by the kernel to h2 and by sleeve through h2 to h3; c3's reply comes back by relay."""
    edges = [("h1", "h2"), ("h2", "h3")]
    h1, h2, h3 = state("h1", edges, fastdp=["h2"]), state("h2", edges, fastdp=["h1"]), state("h3", edges)
    c1, c2, c3 = SleeveCore(), SleeveCore(), SleeveCore()
    assert h1.paths == {"h2": Path(FASTDP, "h2"), "h3": Path(RELAY, "h2")}
    assert c1.from_tap(BCAST, mac("h1"), h1) == [Send("h2", "h2", FLOOD | DELIVERED)]
    assert c2.from_udp("h1", "h2", FLOOD | DELIVERED, MAX_HOPS, mac("h1"), h2, 0.0) == (
        False, [Send("h3", "h3", FLOOD, MAX_HOPS - 1)])
    assert c3.from_udp("h1", "h3", FLOOD, MAX_HOPS - 1, mac("h1"), h3, 0.0) == (True, [])
    assert c3.macs.lookup(mac("h1")) == "h1"
    assert c3.from_tap(mac("h1"), mac("h3"), h3) == [Send("h2", "h1", 0)]
    assert c2.from_udp("h3", "h1", 0, MAX_HOPS, mac("h3"), h2, 0.0) == (False, [Send("h1", "h1", 0, MAX_HOPS - 1)])
    assert c2.macs.lookup(mac("h3")) is None                   # relayed unicast teaches nothing
    assert c1.from_udp("h3", "h1", 0, MAX_HOPS - 1, mac("h3"), h1, 0.0) == (True, [])
    assert c1.from_tap(BCAST, mac("h1"), state("h1", [("h1", "h2")], fastdp=["h2"])) == []   # onward empty


def test_a_loop_from_disagreeing_views_ends_at_the_hop_limit():
    # h0 sends to h3 through h1; h1 thinks h3 is behind h2, h2 thinks it is behind h1: the datagram
    # bounces between them until it runs out of hops.
    views = {"h0": state("h0", [("h0", "h1"), ("h1", "h3")]),
             "h1": state("h1", [("h0", "h1"), ("h1", "h2"), ("h2", "h3")]),
             "h2": state("h2", [("h0", "h1"), ("h1", "h2"), ("h1", "h3")])}
    cores = {n: SleeveCore() for n in views}
    cores["h0"].macs.learn(mac("h3"), "h3", 0.0)
    todo, sent, injected = deque(cores["h0"].from_tap(mac("h3"), mac("h0"), views["h0"])), [], 0
    while todo:
        dgram = todo.popleft()
        sent.append(dgram.hop)
        inject, relays = cores[dgram.hop].from_udp("h0", "h3", dgram.flags, dgram.hops_left, mac("h0"),
                                                   views[dgram.hop], 0.0)
        injected += inject
        todo.extend(relays)
    assert sent == ["h1", "h2"] * (MAX_HOPS // 2) and injected == 0
    assert sum((c.dropped for c in cores.values()), Counter()) == Counter(ttl=1)


@pytest.mark.parametrize("case, reason", [
    (lambda core, s: core.from_udp("h2", "h1", 0, 0, mac("h2"), s, 0.0), "ttl"),
    (lambda core, s: core.from_udp("h1", "h2", 0, 5, mac("h1"), s, 0.0), "from_self"),
    (lambda core, s: core.from_udp("h7", "h1", 0, 5, mac("h7"), s, 0.0), "unknown_peer"),
    (lambda core, s: core.from_udp("h2", "h9", 0, 5, mac("h2"), s, 0.0), "unknown_peer"),
    (lambda core, s: core.from_udp("h2", "h3", FLOOD, 5, mac("h2"), s, 0.0), "misdirected"),
    (lambda core, s: core.from_udp("h2", "h4", 0, 5, mac("h2"), s, 0.0), "no_route"),
    (lambda core, s: core.from_udp("h2", "h3", 0, 1, mac("h2"), s, 0.0), "ttl"),
    (lambda core, s: core.from_udp("h3", "h2", 0, 5, mac("h3"), s, 0.0), "no_sleeve_hop"),
    (lambda core, s: core.from_tap(mac("h4"), mac("h1"), s), "no_route"),
    (lambda core, s: core.from_tap(mac("h2"), mac("h1"), s), "kernel_carried"),
    (lambda core, s: core.from_tap(mac("h3"), mac("h2"), s), "remote_src_mac"),
    (lambda core, s: core.from_tap(STP, mac("h1"), s), "stp"),
])
def test_drops_are_counted_by_reason(case, reason):
    # h1 knows h2 (fastdp, sleeve down), h3 (sleeve), and h4 only as a placeholder with no data path.
    links = {"h1": {"h2": True, "h3": True}, "h2": {"h1": True}, "h3": {"h1": True}, "h4": {"h1": False}}
    routes = Routes(table(links), "h1").data_plane()
    s = ForwardingState.build(routes, {"h2": FASTDP}, {"h2": Hop(UP.addr, 1438, False), "h3": UP})
    core = SleeveCore()
    for peer in ("h2", "h3", "h4"):
        core.macs.learn(mac(peer), peer, 0.0)
    assert case(core, s) in ([], (False, []))
    assert core.dropped == Counter({reason: 1})


def test_a_broadcast_to_a_neighbour_without_sleeve_is_counted_and_the_rest_still_go():
    s = state("h1", [("h1", "h2"), ("h1", "h3")], down=["h2"])
    core = SleeveCore()
    assert core.from_tap(BCAST, mac("h1"), s) == [Send("h3", "h3", FLOOD)]
    assert core.dropped == Counter(no_sleeve_hop=1)


def test_before_any_topology_nothing_goes_anywhere():
    s, core = ForwardingState.empty("h1"), SleeveCore()
    core.macs.learn(mac("h2"), "h2", 0.0)
    assert core.from_tap(BCAST, mac("h1"), s) == [] and core.from_tap(mac("h2"), mac("h1"), s) == []
    assert core.from_udp("h2", "h1", 0, 5, mac("h2"), s, 0.0) == (False, [])
    assert core.dropped == Counter(no_route=1, unknown_peer=1)


# DataRoutes: links may be one-sided or not yet established, which the data plane ignores.
links_st = st.integers(2, 9).flatmap(lambda n: st.lists(
    st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.sampled_from(["both", "both", "one", "pending"])),
    max_size=3 * n).map(lambda edges: (n, edges)))


def _links(n, edges):
    links = {f"h{i}": {} for i in range(n)}
    for a, b, kind in edges:
        if a != b:
            links[f"h{a}"][f"h{b}"] = kind != "pending"
            if kind != "one":
                links[f"h{b}"][f"h{a}"] = kind != "pending"
    return links


def children(adjacent, src, via):
    """Brute force: via's neighbours whose BFS parent from src (the lowest-named one a layer nearer) is via."""
    dist, todo = {src: 0}, deque([src])
    while todo:
        cur = todo.popleft()
        for nxt in adjacent[cur]:
            if nxt not in dist:
                dist[nxt] = dist[cur] + 1
                todo.append(nxt)
    if via not in dist:
        return ()
    return tuple(x for x in sorted(adjacent[via]) if dist[x] == dist[via] + 1
                 and min(p for p in adjacent[x] if dist.get(p) == dist[x] - 1) == via)


@given(links_st)
def test_data_routes_agree_with_routes_and_onward_with_brute_force(graph):
    links = _links(*graph)
    peers = table(links)
    adjacent = {a: {b for b, e in conns.items() if e and links[b].get(a)} for a, conns in links.items()}
    for me in links:
        routes, data = Routes(peers, me), DataRoutes(peers, me)
        assert data.unicast == routes.unicast == routes.data_plane().unicast
        assert data.neighbours(me) == tuple(sorted(adjacent[me]))
        for src in links:
            assert list(data.broadcast(src)) == routes.broadcast(src)
            assert data.onward(src, me) == children(adjacent, src, me)
            for via in links:
                assert data.onward(src, via) == tuple(Routes(peers, via).broadcast(src))
    assert DataRoutes(peers, "h0").broadcast("nobody") == () and DataRoutes(peers, "h0").onward("h0", "nobody") == ()


def test_data_routes_are_a_copy_that_later_topology_changes_do_not_reach():
    links = {"a": {"b": True}, "b": {"a": True}}
    peers = table(links)
    data = Routes(peers, "a").data_plane()
    peers["c"] = PeerInfo("c", "c", 1, 1, {"b": ConnSummary("x:1", True, True)})
    peers["b"] = PeerInfo("b", "b", 1, 1, {"a": ConnSummary("x:1", True, True), "c": ConnSummary("x:1", True, True)})
    assert dict(data.unicast) == {"b": "b"} and data.onward("a", "b") == () and "c" not in data.peers
    with pytest.raises(TypeError):
        data.unicast["c"] = "b"
