import struct

import pytest
from hypothesis import given, settings, strategies as st

from weavepy.mesh import wire
from weavepy.mesh.topology import (MAX_PEER_CONNECTIONS, MAX_PEERS, ConnSummary, PeerInfo, Topology,
                                   TopologyUpdate, decode_peers, encode_peers, valid_address)

US = "02:00:00:00:00:01"


def name(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 0xff:02x}"


def entry(i: int, uid: int, version: int, *links: int, established=True) -> PeerInfo:
    return PeerInfo(name(i), f"host{i}", uid, version,
                    {name(j): ConnSummary(f"10.0.0.{j}:6783", True, established) for j in links})


# -- encoding ------------------------------------------------------------------

conn_summaries = st.builds(ConnSummary, st.sampled_from(["10.0.0.1:6783", "[fe80::1]:1", "192.168.1.2:65535"]),
                           st.booleans(), st.booleans())
peer_infos = st.builds(
    lambda i, nick, uid, version, conns: PeerInfo(
        name(i), nick, uid, version, {name(j): c for j, c in conns.items() if j != i}),
    st.integers(2, 60), st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255),
    st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.dictionaries(st.integers(1, 60), conn_summaries, max_size=6))
updates = st.lists(peer_infos, min_size=1, max_size=10, unique_by=lambda p: p.name)


@given(updates)
def test_an_update_decodes_to_what_was_encoded(peers):
    [message] = encode_peers(peers)
    assert decode_peers(message) == peers


def test_big_updates_are_split_into_messages_of_whole_entries():
    peers = [entry(i, i, 1, *(j for j in range(2, 40) if j != i)) for i in range(2, 60)]
    messages = encode_peers(peers, message_size=4000)
    assert len(messages) > 5 and all(len(m) <= 4000 for m in messages)
    assert [p for m in messages for p in decode_peers(m)] == peers


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_random_bytes_fail_only_with_protocol_error(data):
    try:
        decode_peers(data)
    except wire.ProtocolError:
        pass


@settings(max_examples=300)
@given(updates, st.data())
def test_cut_or_damaged_updates_fail_only_with_protocol_error(peers, data):
    [message] = encode_peers(peers)
    cut = data.draw(st.integers(0, len(message) - 1))
    at = data.draw(st.integers(0, len(message) - 1))
    damaged = bytearray(message)
    damaged[at] ^= data.draw(st.integers(1, 255))
    for bad in (message[:cut], bytes(damaged)):
        try:
            decode_peers(bad)
        except wire.ProtocolError:
            pass


def _raw_peer(peer_name: bytes, uid=5, version=1, conns=b"", count=0, nick=b"n") -> bytes:
    return peer_name + bytes([len(nick)]) + nick + struct.pack(">QQH", uid, version, count) + conns


def _raw_conn(remote: bytes, flags=1, address=b"10.0.0.1:6783") -> bytes:
    return remote + bytes([flags, len(address)]) + address


P1, P2 = bytes.fromhex("020000000002"), bytes.fromhex("020000000003")


@pytest.mark.parametrize("message, complaint", [
    (b"", "truncated"),
    (b"\x02" + _raw_peer(P1), "unknown topology format"),
    (b"\x01", "empty"),
    (b"\x01" + _raw_peer(P1) + _raw_peer(P1), "twice in one"),
    (b"\x01" + _raw_peer(P1, uid=0), "UID 0"),
    (b"\x01" + _raw_peer(P1, conns=_raw_conn(P1), count=1), "to itself"),
    (b"\x01" + _raw_peer(P1, conns=_raw_conn(P2) * 2, count=2), "twice"),
    (b"\x01" + _raw_peer(P1, conns=_raw_conn(P2, flags=4), count=1), "flags"),
    (b"\x01" + _raw_peer(P1, conns=_raw_conn(P2, address=b"host:6783"), count=1), "not ip:port"),
    (b"\x01" + _raw_peer(P1, count=MAX_PEER_CONNECTIONS + 1), "connections, more than"),
    (b"\x01" + _raw_peer(P1, nick=b"\xff\xfe"), "not UTF-8"),
    (b"\x01" + _raw_peer(P1, count=1), "truncated"),
])
def test_malformed_updates_say_what_is_wrong(message, complaint):
    with pytest.raises(wire.ProtocolError, match=complaint):
        decode_peers(message)


def test_an_update_may_not_carry_more_peers_than_a_mesh_can_hold():
    message = b"\x01" + b"".join(_raw_peer(i.to_bytes(6, "big"), uid=1) for i in range(1, MAX_PEERS + 2))
    with pytest.raises(wire.ProtocolError, match=f"more than {MAX_PEERS} peers"):
        decode_peers(message)


@pytest.mark.parametrize("address, ok", [
    ("10.0.0.1:6783", True), ("[fe80::1]:6783", True), ("10.0.0.1:65535", True),
    ("10.0.0.1:65536", False), ("10.0.0.1", False), ("weave.example:6783", False), ("10.0.0.1:+1", False),
    ("10.0.0.1:٣", False), (":6783", False)])
def test_addresses_are_ip_and_port(address, ok):
    assert valid_address(address) is ok


# -- merging -------------------------------------------------------------------

def _honest(i: int, uid: int, version: int) -> PeerInfo:
    """What a real peer would say at (uid, version): content is a function of them."""
    links = [j for j in range(2, 9) if j != i and (uid * 31 + version * 7 + j) % 3 == 0]
    return entry(i, uid, version, *links)


honest_entries = st.builds(_honest, st.integers(2, 8), st.integers(1, 3), st.integers(0, 4))
honest_updates = st.lists(honest_entries, max_size=6, unique_by=lambda p: p.name)


def _spoken(topology: Topology) -> dict:
    """The entries peers gave themselves (placeholders only stand for mentions)."""
    return {n: p for n, p in topology.peers.items() if not p.placeholder}


def _after(*batches) -> dict:
    topology = Topology(US, "us", 99)
    for batch in batches:
        topology.apply_update(batch)
    return _spoken(topology)


@given(honest_updates, honest_updates, honest_updates)
def test_merge_is_commutative_associative_and_idempotent(a, b, c):
    assert _after(a, b) == _after(b, a)
    assert _after(a, b, c) == _after(c, b, a) == _after(b, c, a)
    assert _after(a, a) == _after(a)


def test_the_newer_entry_wins_by_version_then_uid():
    topology = Topology(US, "us", 99)
    topology.apply_update([entry(2, 5, 3, 4)])
    assert topology.apply_update([entry(2, 9, 2, 5)]).improved == set()     # older version, any UID
    assert topology.apply_update([entry(2, 4, 3, 6)]).improved == set()     # same version, lower UID
    assert topology.apply_update([entry(2, 6, 3, 7)]).improved == {name(2)}
    assert set(topology.peers[name(2)].connections) == {name(7)}
    assert topology.apply_update([entry(2, 6, 3, 7)]).improved == set()     # the same again: no news


def test_peers_only_mentioned_are_placeholders_until_they_speak():
    topology = Topology(US, "us", 99)
    merged = topology.apply_update([entry(2, 5, 1, 3)])
    assert merged.improved == {name(2)}
    placeholder = topology.peers[name(3)]
    assert placeholder.placeholder and placeholder.version == 0 and not placeholder.connections
    assert topology.encode([name(2), name(3)]) == encode_peers([topology.peers[name(2)]])   # never gossiped
    assert topology.apply_update([entry(3, 7, 0)]).improved == {name(3)}
    assert topology.peers[name(3)].uid == 7


def test_a_connection_fills_in_a_placeholder_from_the_handshake():
    topology = Topology(US, "us", 99)
    topology.apply_update([entry(2, 5, 1, 3)])
    topology.add_local_connection(name(3), "three", 33, "10.0.0.3:6783", outbound=True)
    assert (topology.peers[name(3)].uid, topology.peers[name(3)].nickname) == (33, "three")


def test_gossip_about_an_old_run_of_us_makes_us_take_a_version_beyond_it():
    topology = Topology(US, "us", 99)
    topology.add_local_connection(name(2), "two", 2, "10.0.0.2:6783", outbound=True)
    assert topology.ourself.version == 1
    old_run = PeerInfo(US, "us", 12345, 7, {name(5): ConnSummary("10.0.0.5:6783", True, True)})
    merged = topology.apply_update([old_run])
    assert merged.ourself_bumped and merged.overtaken_by == [old_run] and merged.improved == set()
    assert topology.ourself.version == 8 and topology.ourself.uid == 99
    assert set(topology.ourself.connections) == {name(2)}             # our entry is still ours
    assert not topology.apply_update([old_run]).ourself_bumped        # already beyond it
    assert not topology.apply_update([PeerInfo(US, "us", 99, 8)]).ourself_bumped   # our own echo
    assert topology.apply_update([PeerInfo(US, "us", 99, 20)]).ourself_bumped      # a newer copy of us
    assert topology.ourself.version == 21


def test_an_update_that_would_overfill_the_table_changes_nothing():
    topology = Topology(US, "us", 99)
    topology.apply_update([PeerInfo(name(i), "", i, 1) for i in range(2, MAX_PEERS + 1)])
    assert len(topology.peers) == MAX_PEERS
    before = dict(topology.peers)
    with pytest.raises(wire.ProtocolError, match="past 4096 peers"):
        topology.apply_update([entry(2, 2, 5, MAX_PEERS + 5)])
    assert topology.peers == before


def test_local_changes_bump_our_version_and_show_in_our_entry():
    topology = Topology(US, "us", 99)
    topology.add_local_connection(name(2), "two", 2, "10.0.0.2:6783", outbound=False)
    topology.set_local_established(name(2))
    topology.set_local_established(name(2))            # no change, no bump
    assert topology.ourself.version == 2
    assert topology.ourself.connections[name(2)] == ConnSummary("10.0.0.2:6783", False, True)
    topology.remove_local_connection(name(2))
    assert topology.ourself.version == 3 and not topology.ourself.connections


def test_unreachable_peers_are_the_ones_routes_do_not_reach():
    topology = Topology(US, "us", 99)
    topology.apply_update([entry(2, 2, 1, 3), entry(4, 4, 1)])
    assert topology.unreachable([name(2), name(3)]) == {name(4)}
    topology.forget([name(4), US])
    assert set(topology.peers) == {US, name(2), name(3)}


def test_a_waiting_update_is_encoded_from_the_newest_entries():
    topology = Topology(US, "us", 99)
    waiting = TopologyUpdate(topology, [US]).merge(TopologyUpdate(topology, [name(2)]))
    topology.add_local_connection(name(2), "two", 2, "10.0.0.2:6783", outbound=True)
    [message] = waiting.encode()
    assert {p.name: p.version for p in decode_peers(message)} == {US: 1, name(2): 0}


@settings(max_examples=200)
@given(updates, updates)
def test_stepping_over_stale_entries_merges_exactly_as_decoding_them_all(known, incoming):
    """The fast path for gossip we already have: the same table as a full decode would give."""
    full, fast = Topology(US, "us", 1), Topology(US, "us", 1)
    for t in (full, fast):
        t.apply_update(known)
    data = b"".join(encode_peers(incoming))
    full.apply_update(decode_peers(data))
    fast.apply_update(decode_peers(data, fast.is_stale))
    assert full.peers == fast.peers
    skipped = [p for p in decode_peers(data) if fast.is_stale(p.name, p.uid, p.version)]
    assert all(p.name not in {q.name for q in decode_peers(data, fast.is_stale)} for p in skipped)
