"""Cluster-wide IPAM without sockets: allocators on a simulated mesh (tests/mesh_sim.py) agree on a
ring, donate space, and never hand out one address twice, through partitions and loss."""
import ipaddress
import json
import random

import pytest

from mesh_sim import SimNet, peer_name
from weavepy.ipam.allocator import AllocationError, Allocator, Pending
from weavepy.ipam.gossip import CHANNEL, IPAMGossiper, State, encode
from weavepy.mesh.gossip import PeerRefused
from weavepy.mesh.wire import ProtocolError

UNIVERSE = ipaddress.IPv4Network("10.32.0.0/12")


class IPAMNet(SimNet):
    """SimNet with an Allocator on every peer, and requests that wait as the daemon's do: asked
    again whenever the allocator says something changed, and every half second."""

    def __post_init__(self):
        super().__post_init__()
        self.alloc: dict[str, Allocator] = {}
        self.quorum: dict[str, int] = {}
        self.waiting: dict[str, list] = {}
        self.got: dict[str, dict[str, ipaddress.IPv4Interface]] = {}
        self.errors: dict[str, list] = {}
        self.checking = True

    def add_peer(self, name, *args, **kwargs):
        core = super().add_peer(name, *args, **kwargs)
        a = self.alloc[name] = Allocator(name, UNIVERSE, UNIVERSE, f"n{name[-2:]}", uid=core.uid,
                                         quorum=self.quorum.get(name, 1), clock=lambda: self.now,
                                         rng=random.Random(core.uid))
        a.reachable = lambda: set(core.routes.unicast_all)
        gossiper = IPAMGossiper(a)
        gossiper.attach(core.channel(CHANNEL, gossiper))
        a.on_change_hooks.append(lambda: self._at(self.now, self._retry, name))
        self.waiting.setdefault(name, [])
        self.got.setdefault(name, {})
        self.errors.setdefault(name, [])
        return core

    def request(self, name, ident, claim=None):
        self.waiting[name].append((ident, claim))
        self._retry(name)

    def _retry(self, name):
        if name not in self.alive or self.alloc[name] is None:
            return
        a, still = self.alloc[name], []
        for ident, claim in self.waiting[name]:
            try:
                if claim is None:
                    self.got[name][ident] = a.allocate(ident, UNIVERSE, True)
                else:
                    a.claim(ident, claim, True)
                    self.got[name][ident] = claim
            except Pending:
                still.append((ident, claim))
            except AllocationError as exc:
                self.errors[name].append((ident, str(exc)))
        self.waiting[name] = still
        self.check_unique()

    def tick_requests(self, every=0.5):
        for name in list(self.waiting):
            if self.waiting[name]:
                self._retry(name)
        self._at(self.now + every, self.tick_requests, every)

    def check_unique(self):
        if not self.checking:
            return
        seen = {}
        for name, got in self.got.items():
            for ident, cidr in got.items():
                assert cidr.ip not in seen, f"{cidr.ip} given to {seen.get(cidr.ip)} and {name}/{ident}"
                seen[cidr.ip] = f"{name}/{ident}"
        # and no address is in two pools, each as its own peer sees it
        pools = []
        for name, a in self.alloc.items():
            if name in self.alive:
                mine = a.ring.owned_ranges()
                for other, olo, ohi in pools:
                    assert not any(lo < ohi and olo < hi for lo, hi in mine), f"{name} and {other} share space"
                pools += [(name, lo, hi) for lo, hi in mine]


def cluster(n, quorum, seed=1, **kwargs):
    net = IPAMNet(seed=seed, **kwargs)
    names = [peer_name(i) for i in range(1, n + 1)]
    for name in names:
        net.quorum[name] = quorum
        net.add_peer(name)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            net.want(a, b)
    net.maintain()
    net.tick_requests()
    return net, names


def test_the_walkthrough_the_first_host_owns_everything_and_the_second_is_given_a_quarter():
    net = IPAMNet(seed=3)
    h1, h2 = peer_name(1), peer_name(2)
    net.quorum = {h1: 1, h2: 2}          # `launch` and `launch H1`
    net.add_peer(h1)
    net.request(h1, "c1")
    assert str(net.got[h1]["c1"]) == "10.32.0.1/12"
    net.add_peer(h2)
    net.want(h1, h2)
    net.maintain()
    net.tick_requests()
    net.run(2)
    net.request(h2, "c2")
    net.run(2)
    assert str(net.got[h2]["c2"]) == "10.44.0.0/12"     # the walkthrough's address
    assert net.alloc[h1].ring.owned_ranges(h2) == [(int(ipaddress.IPv4Address("10.44.0.0")),
                                                    int(ipaddress.IPv4Address("10.48.0.0")))]


@pytest.mark.parametrize("seed", range(4))
def test_three_peers_launched_with_each_other_allocate_at_once_and_never_twice(seed):
    net, names = cluster(3, quorum=2, seed=seed)
    net.run(1)
    for i in range(100):
        for name in names:
            net.request(name, f"{name}-c{i}")
    net.run(10)
    assert all(len(net.got[n]) == 100 for n in names), {n: len(net.waiting[n]) for n in names}
    owners = lambda n: [(e.token, e.peer) for e in net.alloc[n].ring.entries]
    assert all(owners(n) == owners(names[0]) for n in names)        # donations are broadcast
    net.run(35)                                                      # free counts go with the gossip
    assert all(net.alloc[n].ring.to_dict()["entries"] == net.alloc[names[0]].ring.to_dict()["entries"]
               for n in names)


def test_a_peer_that_owns_nothing_waits_through_a_partition_and_gets_space_after_the_heal():
    net = IPAMNet(seed=9)
    h1, h2, h3 = (peer_name(i) for i in (1, 2, 3))
    net.quorum = {h1: 2, h2: 2, h3: 3}
    for name in (h1, h2):
        net.add_peer(name)
    net.want(h1, h2)
    net.maintain()
    net.tick_requests()
    net.run(1)
    net.request(h1, "a")
    net.run(2)
    net.add_peer(h3)
    for other in (h1, h2):
        net.want(h3, other)
    net.run(3)
    net.partition({h3})
    net.run(70)                          # the links across time out
    for i in range(20):
        net.request(h1, f"a{i}")
        net.request(h2, f"b{i}")
        net.request(h3, f"c{i}")
    net.run(5)
    assert len(net.got[h3]) == 0 and len(net.waiting[h3]) == 20    # waits: it never guesses
    assert len(net.got[h1]) == 21 and len(net.got[h2]) == 20
    net.heal()
    net.run(10)
    assert len(net.got[h3]) == 20 and not net.waiting[h3]


def test_a_claim_of_an_address_another_peer_owns_is_given_by_it_or_refused_with_its_name():
    net, (h1, h2) = cluster(2, quorum=2, seed=5)
    net.run(1)
    net.request(h1, "first")
    net.run(3)
    owned_by_2 = ipaddress.IPv4Address(net.alloc[h1].ring.owned_ranges(h2)[0][0]) + 5
    net.request(h1, "claimer", claim=ipaddress.IPv4Interface(f"{owned_by_2}/12"))
    net.run(3)
    assert net.got[h1]["claimer"].ip == owned_by_2
    taken = net.got[h1]["first"]
    net.request(h2, "thief", claim=taken)
    net.run(3)
    assert [e for i, e in net.errors[h2] if i == "thief"] and "owned by other peer" in net.errors[h2][0][1]


def test_conflicting_rings_are_refused_and_nobody_loses_what_it_has():
    net = IPAMNet(seed=4)
    net.checking = False                 # two clusters made apart (Weave's 360): that is the point
    h1, h2 = peer_name(1), peer_name(2)
    for name in (h1, h2):
        net.add_peer(name)
        net.request(name, "x")          # each alone: each a ring of its own
    assert net.got[h1]["x"] == net.got[h2]["x"]   # (two clusters: the same first address)
    net.want(h1, h2)
    net.maintain()
    net.run(3)
    for name in (h1, h2):
        assert "seeded by different peers" in net.alloc[name].conflict
        assert net.alloc[name].status_word().startswith("ready; refusing another peer's ring: IP allocation "
                                                        "was seeded by different peers")
        assert net.alloc[name].ring.owned_ranges() == [(int(UNIVERSE.network_address),
                                                        int(UNIVERSE.broadcast_address) + 1)]


@pytest.mark.parametrize("bad", [
    b"", b"not json", b'{"nicknames": 5}', encode({"nicknames": {}, "paxos": "x", "ring": None}),
    encode({"nicknames": {}, "paxos": None, "ring": {"start": 0, "end": 10, "entries": [{"token": 20, "peer": "x"}]}}),
    encode({"nicknames": {}, "paxos": [["a", 1, [1, "a", 1], [0, "", 0], 7]], "ring": None}),
])
def test_malformed_gossip_is_refused_and_changes_nothing(bad):
    a = Allocator(peer_name(1), UNIVERSE, UNIVERSE)
    g = IPAMGossiper(a)
    with pytest.raises(ProtocolError):
        g.on_gossip(bad)
    for kind in (0, 1, 2, 9):
        with pytest.raises(ProtocolError):
            g.on_unicast(peer_name(2), bytes([kind]) + bad)
    assert a.ring.empty() and not a.space.num_free()


def test_random_gossip_bytes_raise_only_protocol_errors():
    rng = random.Random(3)
    a = Allocator(peer_name(1), UNIVERSE, UNIVERSE)
    a.allocate("c", UNIVERSE, True)
    g = IPAMGossiper(a)
    good = g.gossip().encode()[0]
    for i in range(5000):
        data = bytearray(good[:rng.randrange(len(good) + 1)])
        for _ in range(rng.randint(0, 3) if data else 0):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            g.on_gossip(bytes(data))
            g.on_unicast(peer_name(2), bytes([i % 3]) + bytes(data))
        except (ProtocolError, PeerRefused):     # a corrupted range or seed reads as another cluster's ring
            pass
    a.ring.check()
    assert str(a.allocate("d", UNIVERSE, True)).startswith("10.32.0.2")


def test_rmpeer_takes_over_a_dead_peers_space_and_is_refused_while_it_lives():
    net, (h1, h2, h3) = cluster(3, quorum=2, seed=6)
    net.run(1)
    for name in (h1, h2, h3):
        net.request(name, f"{name}-c")
    net.run(3)
    theirs = sum(hi - lo for lo, hi in net.alloc[h1].ring.owned_ranges(h3))
    assert theirs > 0
    with pytest.raises(AllocationError, match="still connected"):
        net.alloc[h1].take_over(h3)
    with pytest.raises(AllocationError, match="local peer"):
        net.alloc[h1].take_over(h1)
    with pytest.raises(AllocationError, match="unknown peer"):
        net.alloc[h1].take_over("02:00:00:00:09:99")
    net.crash(h3)
    net.run(70)                                     # its connections time out: it is unreachable
    assert net.alloc[h1].take_over(f"n{h3[-2:]}") == theirs      # by nickname
    net.run(2)
    for name in (h1, h2):                           # everyone sees it: h3 is out of the ring
        assert net.alloc[name].ring.owned_ranges(h3) == []
    net.request(h2, "after")
    net.run(3)
    assert "after" in net.got[h2]


def test_a_peer_that_leaves_hands_its_space_to_another_and_none_is_lost():
    net, (h1, h2) = cluster(2, quorum=2, seed=8)
    net.run(1)
    net.request(h1, "x")
    net.run(3)
    size = lambda peer: sum(hi - lo for lo, hi in net.alloc[h2].ring.owned_ranges(peer))
    before = size(h1) + size(h2)
    heir = net.alloc[h1].leave()
    net.run(2)
    assert heir == h2 and size(h1) == 0 and size(h2) == before == 1 << 20


def test_an_election_nobody_heard_is_proposed_again_on_the_tick():
    """Weave's 340: a peer that joined by a path carrying no full gossip hears the election at the
    next 5 s tick, not the next periodic gossip."""
    a_name, b_name = peer_name(1), peer_name(2)
    a = Allocator(a_name, UNIVERSE, quorum=2, uid=1)
    b = Allocator(b_name, UNIVERSE, quorum=2, uid=2)
    with pytest.raises(Pending):
        a.allocate("c1", UNIVERSE, True)
    a.outbox.clear()                         # the broadcast went out before b was there
    b.tick()
    assert b.outbox == []                    # b stands in no election: it has nothing to say
    a.tick()
    for _ in range(10):                      # deliver until both are quiet
        for sender, receiver in ((a, b), (b, a)):
            out, sender.outbox = sender.outbox, []
            for message in out:
                state = message[1] if message[0] == "broadcast" else message[3]
                receiver.receive(sender.peer, state)
    assert not a.ring.empty() and a.ring.peer_sizes() == b.ring.peer_sizes()
    assert a.allocate("c1", UNIVERSE, True) in UNIVERSE
