"""weaveDNS records replicated over the gossip channel, without sockets: the merge's algebra, what a
restarted peer does with gossip about itself, the wire format against bad input, and peers on a
simulated network (tests/mesh_sim.py) with loss, a partition and restarts."""
import ipaddress
import json
import random
import re
from itertools import permutations

import pytest
from hypothesis import given, settings, strategies as st

from mesh_sim import SimNet, peer_name
from weavepy.dns.gossip import CHANNEL, DNSGossiper, Entries, decode
from weavepy.dns.records import TOMBSTONE_TIMEOUT, Entry, Records
from weavepy.mesh.gossip import PeerRefused
from weavepy.mesh.wire import ProtocolError

US, P2, P3 = "aa:00:00:00:00:01", "bb:00:00:00:00:02", "cc:00:00:00:00:03"


def records(peer=US):
    return Records(peer, "weave.local.")


def state(r: Records):
    return dict(r.entries)


entries = st.builds(Entry, container=st.sampled_from(["c1", "c2"]), origin=st.sampled_from([P2, P3]),
                    addr=st.sampled_from(["10.32.0.1", "10.32.0.2"]),
                    hostname=st.sampled_from(["a.weave.local.", "b.weave.local."]),
                    version=st.integers(0, 4), tombstone=st.sampled_from([0, 0, 7, 9]))
batches = st.lists(entries, max_size=8)


@settings(max_examples=300, deadline=None)
@given(batches, batches, batches)
def test_merging_is_commutative_associative_and_idempotent(a, b, c):
    results = []
    for order in permutations([a, b, c]):
        r = records()
        for batch in order:
            r.merge(batch)
        results.append((state(r), {name: sorted(addrs) for name, addrs in r.view.by_name.items()}))
    assert all(res == results[0] for res in results)
    # (a then b) then c is a merged with (b merged with c) sent as one batch
    r = records()
    r.merge(a)
    r.merge(list(Entries.of(b).merge(Entries.of(c)).entries.values()))
    assert state(r) == results[0][0]
    before = state(r)
    assert r.merge(a + b + c) == [] and state(r) == before


@settings(max_examples=200, deadline=None)
@given(batches)
def test_the_order_within_a_batch_never_beats_the_version(batch):
    forward, backward = records(), records()
    forward.merge(batch)
    backward.merge(list(reversed(batch)))
    assert state(forward) == state(backward)


def test_a_newer_tombstone_before_an_older_live_copy_leaves_the_name_dead():
    r = records()
    live = Entry("c1", P2, "10.32.0.1", "a.weave.local.", version=1)
    dead = Entry("c1", P2, "10.32.0.1", "a.weave.local.", version=3, tombstone=50)
    assert r.merge([dead, live]) == [dead]
    assert r.lookup("a.weave.local") == []


def test_a_restarted_peer_reasserts_the_names_it_still_has_and_retracts_the_rest():
    # Before the restart, other peers learnt c1 at version 2 and c2 at version 1 from us.
    r, sent = records(), []
    r.on_local_change = sent.extend
    r.add("c1", "10.32.0.1", "a.weave.local")       # after the restart c1 runs again: version 0
    sent.clear()
    old_c1 = Entry("c1", US, "10.32.0.1", "a.weave.local.", version=2)
    old_c2 = Entry("c2", US, "10.32.0.2", "b.weave.local.", version=1)
    assert r.merge([old_c1, old_c2], now=1000) == []        # nothing of ours is passed on as heard
    by_container = {e.container: e for e in sent}
    assert by_container["c1"].version == 3 and by_container["c1"].live
    assert by_container["c2"].version == 2 and by_container["c2"].tombstone == 1000
    assert r.lookup("a.weave.local") == ["10.32.0.1"] and r.lookup("b.weave.local") == []
    # Those answers win wherever they go.
    other = records(P2)
    other.merge([old_c1, old_c2])
    other.merge(sent)
    assert other.lookup("a.weave.local") == ["10.32.0.1"] and other.lookup("b.weave.local") == []
    # Older gossip about us changes nothing and says nothing.
    sent.clear()
    assert r.merge([old_c1]) == [] and sent == []


def test_a_peer_still_holding_a_name_we_retracted_is_told_again_at_once():
    # Weave's 215 with a third peer: it was cut off when we retracted c2, and now gossips its old copy
    r, sent = records(), []
    r.on_local_change = sent.extend
    old_c2 = Entry("c2", US, "10.32.0.2", "b.weave.local.", version=1)
    r.merge([old_c2], now=1000)
    [retracted] = sent
    sent.clear()
    assert r.merge([old_c2], now=1001) == [] and sent == [retracted]      # ours again, unchanged
    stale = records(P2)
    stale.merge([old_c2])
    stale.merge(sent)
    assert stale.lookup("b.weave.local") == []


def test_local_changes_are_announced_and_merges_are_not():
    r, sent = records(), []
    r.on_local_change = sent.extend
    r.add("c1", "10.32.0.1", "a.weave.local")
    r.tombstone(5, container="c1")
    assert [(e.version, e.tombstone) for e in sent] == [(0, 0), (1, 5)]
    sent.clear()
    r.merge([Entry("c9", P2, "10.32.0.9", "x.weave.local.")])
    assert sent == []


def test_entries_of_a_peer_the_topology_no_longer_knows_are_not_taken_back():
    r = records()
    known = {P2}
    gossiper = DNSGossiper(r, clock=lambda: 0, known_peer=known.__contains__)
    message = Entries.of([Entry("c2", P2, "10.32.0.2", "a.weave.local."),
                          Entry("c3", P3, "10.32.0.3", "a.weave.local.")], clock=lambda: 0).encode()[0]
    gossiper.on_gossip(message)
    assert r.lookup("a.weave.local") == ["10.32.0.2"]


def test_a_departed_peer_takes_its_names_and_old_tombstones_expire():
    r = records()
    r.add("c1", "10.32.0.1", "a.weave.local")
    r.merge([Entry("c9", P2, "10.32.0.9", "a.weave.local."), Entry("c8", P3, "10.32.0.8", "b.weave.local.")])
    assert sorted(r.lookup("a.weave.local")) == ["10.32.0.1", "10.32.0.9"]
    assert len(r.peer_gone(P2)) == 1 and r.lookup("a.weave.local") == ["10.32.0.1"]
    assert r.peer_gone(US) == [] and r.lookup("a.weave.local") == ["10.32.0.1"]
    r.tombstone(100, container="c1")
    assert r.expire_tombstones(100 + TOMBSTONE_TIMEOUT - 1) == 0
    assert r.expire_tombstones(100 + TOMBSTONE_TIMEOUT) == 1 and ("c1", US, "10.32.0.1", "a.weave.local.") not in r.entries
    assert r.lookup("b.weave.local") == ["10.32.0.8"]


# -- the wire format ---------------------------------------------------------------------------------

GOOD = Entries.of([Entry("c1", P2, "10.32.0.1", "a.weave.local.", 3, 0),
                   Entry("c2", P2, "10.32.0.2", "b.weave.local.", 4, 77)], clock=lambda: 1000)


def test_entries_travel_intact_and_big_sets_are_split():
    [message] = GOOD.encode()
    assert Entries.of(decode(message)).entries == GOOD.entries
    many = Entries.of(Entry(f"c{i}", P2, "10.32.0.1", "a.weave.local.") for i in range(12_000))
    messages = many.encode()
    assert len(messages) == 3 and sum(len(decode(m)) for m in messages) == 12_000


@pytest.mark.parametrize("row", [
    ["c1", P2, "10.32.0.1", "a.weave.local.", -1, 0],            # negative version
    ["c1", P2, "10.32.0.1", "a.weave.local.", 1 << 63, 0],       # past 63 bits
    ["c1", P2, "10.32.0.1", "a.weave.local.", True, 0],          # a bool is no version
    ["c1", "not-a-peer", "10.32.0.1", "a.weave.local.", 1, 0],
    ["c1", P2, "::1", "a.weave.local.", 1, 0],
    ["c1", P2, "10.32.0.300", "a.weave.local.", 1, 0],
    ["c1", P2, "10.32.0.1", "no-root-dot.weave.local", 1, 0],
    ["c1", P2, "10.32.0.1", "a..weave.local.", 1, 0],
    ["c1", P2, "10.32.0.1", "x" * 64 + ".weave.local.", 1, 0],
    ["", P2, "10.32.0.1", "a.weave.local.", 1, 0],
    ["c1", P2, "10.32.0.1", "a.weave.local.", 1],
])
def test_a_malformed_entry_refuses_the_whole_message(row):
    good = ["c2", P2, "10.32.0.2", "b.weave.local.", 1, 0]
    with pytest.raises(ProtocolError):
        decode(json.dumps({"v": 1, "t": 1000, "e": [good, row]}).encode())
    assert len(decode(json.dumps({"v": 1, "t": 1000, "e": [good, good]}).encode())) == 2   # the rest is fine


@pytest.mark.parametrize("t", [None, "1000", -1, 1.5, True])
def test_a_message_without_a_proper_send_time_is_refused(t):
    with pytest.raises(ProtocolError, match="send time"):
        decode(json.dumps({"v": 1, "t": t, "e": []}).encode())


def test_gossip_from_a_peer_whose_clock_is_over_15_minutes_off_is_refused_and_said(caplog):
    r = records()
    gossiper = DNSGossiper(r, clock=lambda: 1000 + 901)
    [message] = GOOD.encode()                                  # sent at 1000 by the peer's clock
    for _ in range(3):
        with pytest.raises(PeerRefused, match="clock skew of -901 s exceeds 900 s"):
            gossiper.on_gossip(message)
    assert r.entries == {}
    said = [rec for rec in caplog.records if "clock is -901 s off ours" in rec.getMessage()]
    assert len(said) == 1                                      # once, not per message
    assert DNSGossiper(r, clock=lambda: 1000 - 900).on_gossip(message) is not None   # 15 min: still fine
    assert r.lookup("a.weave.local") == ["10.32.0.1"]


def test_random_truncated_and_corrupted_messages_raise_only_protocol_errors():
    rng = random.Random(11)
    [good] = GOOD.encode()
    r, refused = records(), 0
    gossiper = DNSGossiper(r, clock=lambda: 1000)
    for i in range(20_000):
        how = i % 3
        if how == 0:
            data = rng.randbytes(rng.randrange(0, 120))
        else:
            data = bytearray(good[:rng.randrange(len(good) + 1)] if how == 1 else good)
            for _ in range(rng.randint(1, 3) if data else 0):
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            gossiper.on_gossip(bytes(data))
        except (ProtocolError, PeerRefused):     # a corrupted send time reads as a skewed clock
            refused += 1
    assert refused > 15_000
    # whatever got in is well formed (a corrupted byte can still make a valid peer name or address)
    assert all(re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", e.origin) and e.hostname.endswith(".")
               and str(ipaddress.IPv4Address(e.addr)) == e.addr for e in r.entries.values())


# -- peers on a simulated network -----------------------------------------------------------------------

class DNSNet(SimNet):
    """SimNet with a Records + DNSGossiper on every peer; the topology's PeerGone reaches the records."""

    def __post_init__(self):
        super().__post_init__()
        self.dns: dict[str, Records] = {}
        self.running: dict[str, set[tuple[str, str, str]]] = {}   # what each host's containers are

    def add_peer(self, name, *args, **kwargs):
        core = super().add_peer(name, *args, **kwargs)
        r = self.dns[name] = Records(name, "weave.local.")
        gossiper = DNSGossiper(r, clock=lambda: self.now, known_peer=lambda peer: peer in core.peers)
        channel = core.channel(CHANNEL, gossiper)
        r.on_local_change = lambda entries: channel.broadcast(gossiper.wrap(entries))
        for container, addr, host in sorted(self.running.get(name, ())):   # re-registered at start
            r.add(container, addr, host)
        return core

    def _after(self, name):
        seen = len(self.gone)
        super()._after(name)
        for at, gone in self.gone[seen:]:
            self.dns[at].peer_gone(gone)

    def start(self, name, container, addr, host):
        self.running.setdefault(name, set()).add((container, addr, host))
        self.dns[name].add(container, addr, host)

    def stop(self, name, container):
        self.running[name] = {c for c in self.running[name] if c[0] != container}
        self.dns[name].tombstone(int(self.now), container=container)

    def expected(self, among) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        for name in among:
            for _, addr, host in self.running.get(name, ()):
                names.setdefault(host.lower() + ".", []).append(addr)
        return {k: sorted(v) for k, v in names.items()}

    def seen_by(self, name) -> dict[str, list[str]]:
        return {k: sorted(v) for k, v in self.dns[name].view.by_name.items()}


def test_names_from_every_peer_resolve_everywhere_through_loss_a_partition_and_restarts():
    net = DNSNet(seed=21)
    names = [peer_name(i) for i in range(1, 13)]
    for name in names:
        net.add_peer(name)
    rng = random.Random(21)
    for i, name in enumerate(names[1:], 1):
        net.want(name, names[rng.randrange(i)])
    for _ in range(8):
        net.want(*rng.sample(names, 2))
    net.maintain()
    net.run(3)
    for i, name in enumerate(names):
        net.start(name, f"c{i}", f"10.32.0.{i + 1}", f"h{i}.weave.local")
        net.start(name, f"d{i}", f"10.32.1.{i + 1}", "shared.weave.local")   # one name, a dozen hosts
    net.run(2)
    for name in names:    # broadcast: everywhere within a couple of seconds of being made
        assert net.seen_by(name) == net.expected(names), name
    net.loss = 0.05       # from here on, lost broadcasts are made good by the periodic gossip
    # A partition: each side keeps its own names, and the other side's once the peers are forgotten.
    side = set(names[:5])
    net.partition(side)
    net.run(70)   # past the read timeout: the links across are gone, and with them the far peers
    net.stop(names[0], "c0")
    net.start(names[6], "late", "10.32.2.1", "late.weave.local")
    net.run(35)
    parts = net.components()
    assert len(parts) > 1
    for part in parts:      # each piece the cut left, on its own
        for name in part:
            assert net.seen_by(name) == net.expected(part), name
    net.heal()
    net.run(35)     # a gossip interval at most brings the rest
    for name in names:
        assert net.seen_by(name) == net.expected(names), name
    # Restarts: each host forgets what it knew, re-registers what still runs; what stopped while
    # it was down goes everywhere, because the restarted peer retracts it (Weave's 215).
    for name in names[8:11]:
        i = names.index(name)
        net.running[name] = {c for c in net.running[name] if c[0] != f"c{i}"}   # died during the restart
        net.restart(name)
    net.run(70)
    for name in names:
        assert net.seen_by(name) == net.expected(names), name
    assert all(not net.seen_by(n).get(f"h{names.index(r)}.weave.local.") for n in names for r in names[8:11])
