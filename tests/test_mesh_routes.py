import random
from collections import Counter, deque

from hypothesis import given, strategies as st

from weavepy.mesh.routes import Routes, fan_out
from weavepy.mesh.topology import ConnSummary, PeerInfo


def table(links: dict[str, dict[str, bool]]) -> dict[str, PeerInfo]:
    """links: peer -> {remote: established} as that peer gossips its connections."""
    names = set(links) | {r for conns in links.values() for r in conns}
    return {n: PeerInfo(n, n, 1, 1, {r: ConnSummary("10.0.0.1:6783", True, e) for r, e in links.get(n, {}).items()})
            for n in names}


def symmetric(*edges: str, established=True) -> dict[str, dict[str, bool]]:
    links: dict[str, dict[str, bool]] = {}
    for edge in edges:
        a, b = edge
        links.setdefault(a, {})[b] = established
        links.setdefault(b, {})[a] = established
    return links


def test_ties_go_to_the_lowest_named_parent_so_every_peer_agrees():
    peers = table(symmetric("ab", "ac", "bd", "cd", "de"))
    routes = Routes(peers, "a")
    assert routes.unicast == {"b": "b", "c": "c", "d": "b", "e": "b"}
    assert Routes(peers, "e").unicast == {"d": "d", "b": "d", "c": "d", "a": "d"}


def test_data_routes_use_only_established_links_both_ends_list():
    links = symmetric("ab", "bc")
    links["c"]["b"] = False               # c has not seen the data path work yet
    links["a"]["d"] = True                # d does not list a at all
    links["d"] = {}
    routes = Routes(table(links), "a")
    assert routes.unicast == {"b": "b"}
    assert routes.unicast_all == {"b": "b", "c": "b", "d": "d"}   # gossip still gets through
    assert routes.broadcast("a") == ["b"] and sorted(routes.broadcast_all("a")) == ["b", "d"]


def test_a_pending_connection_carries_gossip_but_not_data():
    routes = Routes(table(symmetric("ab", established=False)), "a")
    assert routes.unicast == {} and routes.unicast_all == {"b": "b"}


def test_we_relay_a_broadcast_only_to_neighbours_the_source_has_not_reached():
    peers = table(symmetric("sa", "sb", "ab", "ac", "bd"))
    assert Routes(peers, "a").broadcast("s") == ["c"]
    assert Routes(peers, "b").broadcast("s") == ["d"]
    assert Routes(peers, "c").broadcast("s") == []
    assert Routes(peers, "a").broadcast("unknown") == []


graphs = st.integers(3, 14).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n),
    st.permutations(range(n))))


def _graph(n, extra, order):
    """A connected graph: a random tree plus extra edges, peers named in a shuffled order."""
    names = [f"p{order[i]:02d}" for i in range(n)]
    edges = {frozenset((names[i], names[random.Random(i).randrange(i)])) for i in range(1, n)}
    edges |= {frozenset((names[a], names[b])) for a, b in extra if a != b}
    links = {name: {} for name in names}
    for a, b in map(sorted, edges):
        links[a][b] = links[b][a] = True
    return names, links


@given(graphs)
def test_unicast_follows_shortest_paths_and_never_loops(graph):
    names, links = _graph(*graph)
    peers = table(links)
    tables = {n: Routes(peers, n).unicast for n in names}
    for src in names:
        distance, todo = {src: 0}, deque([src])
        while todo:
            cur = todo.popleft()
            for nxt in links[cur]:
                if nxt not in distance:
                    distance[nxt] = distance[cur] + 1
                    todo.append(nxt)
        for dst in names:
            cur, hops = src, 0
            while cur != dst:
                assert tables[cur][dst] in links[cur]
                cur, hops = tables[cur][dst], hops + 1
            assert hops == distance[dst]


@given(graphs)
def test_a_broadcast_reaches_every_peer_exactly_once(graph):
    names, links = _graph(*graph)
    peers = table(links)
    routes = {n: Routes(peers, n) for n in names}
    for src in names:
        received, todo = Counter({src: 1}), deque([src])
        while todo:
            for hop in routes[todo.popleft()].broadcast(src):
                received[hop] += 1
                todo.append(hop)
        assert received == Counter({n: 1 for n in names})


def test_gossip_goes_to_2_log2_n_neighbours_favouring_bottlenecks():
    # "a" has a leaf neighbour on each of 11 links and one neighbour "hub" in front of 40 more peers.
    links = symmetric(*(("a", f"l{i:02d}") for i in range(11)), ("a", "hub"),
                      *(("hub", f"x{i:02d}") for i in range(40)))
    routes = Routes(table(links), "a")
    rng = random.Random(1)
    assert fan_out(53) == 11
    picks = [routes.random_neighbours(rng) for _ in range(300)]
    assert all(len(p) == 11 and len(set(p)) == 11 for p in picks)
    assert sum("hub" in p for p in picks) > 290          # weight 41 against 1 per leaf
    assert all("hub" not in routes.random_neighbours(rng, exclude="hub") for _ in range(50))


def test_fewer_neighbours_than_the_fan_out_means_all_of_them():
    routes = Routes(table(symmetric("ab", "ac")), "a")
    assert sorted(routes.random_neighbours(random.Random(2))) == ["b", "c"]
    assert Routes(table({"a": {}}), "a").random_neighbours(random.Random(2)) == []
