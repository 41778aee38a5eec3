"""The IPAM ring as a CRDT, without sockets: replicas merged in any order agree, bad input changes
nothing, and however replicas are passed around, no address is in two peers' pools."""
import copy
import random

import pytest
from hypothesis import given, settings, strategies as st

from weavepy.ipam.ring import Entry, Ring, RingError

PEERS = [f"02:00:00:00:00:0{i}" for i in range(1, 6)]
A, B, C = PEERS[:3]
SIZE = 1024


def replica(ring: Ring, peer: str) -> Ring:
    """Another peer's copy of the same ring."""
    other = copy.deepcopy(ring)
    other.peer = peer
    return other


def pools(replicas: dict[str, Ring]) -> dict[str, set[int]]:
    """Each peer's pool as its own replica says: what it may hand out."""
    return {p: {a for lo, hi in r.owned_ranges(p) for a in range(lo, hi)} for p, r in replicas.items()}


def assert_no_address_in_two_pools(replicas):
    seen: dict[int, str] = {}
    for peer, addresses in pools(replicas).items():
        for a in addresses:
            assert a not in seen, f"{a} in the pools of {seen[a]} and {peer}"
            seen[a] = peer


def donate(replicas, rng, donor, to):
    """The donor gives the upper half of one of its ranges, as a space request's answer."""
    ring = replicas[donor]
    ranges = [(lo, hi) for lo, hi in ring.owned_ranges(donor) if hi - lo >= 2]
    if not ranges:
        return
    lo, hi = rng.choice(ranges)
    mid = lo + (hi - lo) // 2
    ring.grant_range_to_host(mid, hi, to)
    replicas[to].merge(replica(ring, to))   # the donor unicasts its ring to the requester


def history(seed: int, steps: int = 40) -> dict[str, Ring]:
    """Replicas after random donations, free-count changes and partial syncs."""
    rng = random.Random(seed)
    first = Ring(0, SIZE, A)
    first.claim_for_peers(PEERS[:3])
    replicas = {p: replica(first, p) for p in PEERS}
    for p in PEERS[3:]:       # late joiners own nothing yet
        replicas[p].entries, replicas[p].seeds = [], []
    for _ in range(steps):
        what = rng.random()
        a, b = rng.sample(PEERS, 2)
        if what < 0.3:
            donate(replicas, rng, a, b)
        elif what < 0.5:
            replicas[a].report_free(lambda lo, hi: rng.randrange(hi - lo + 1))
        else:
            replicas[b].merge(replica(replicas[a], b))
        assert_no_address_in_two_pools(replicas)
    return replicas


@pytest.mark.parametrize("seed", range(60))
def test_no_address_is_ever_in_two_pools_and_full_syncs_agree(seed):
    replicas = history(seed)
    for _ in range(2):                     # everyone hears from everyone
        for a in PEERS:
            for b in PEERS:
                if a != b:
                    replicas[b].merge(replica(replicas[a], b))
    assert_no_address_in_two_pools(replicas)
    first = [(e.token, e.peer, e.version, e.free) for e in replicas[A].entries]
    assert all([(e.token, e.peer, e.version, e.free) for e in r.entries] == first for r in replicas.values())
    # the pools cover the whole range
    assert sum(len(p) for p in pools(replicas).values()) == SIZE


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.permutations(PEERS))
def test_merging_replicas_in_any_order_gives_the_same_ring(seed, order):
    replicas = history(seed, steps=25)
    observer = "02:00:00:00:00:09"         # a peer that owns nothing: only merges
    one, two = Ring(0, SIZE, observer), Ring(0, SIZE, observer)
    for p in PEERS:
        one.merge(replica(replicas[p], observer))
    for p in order:
        two.merge(replica(replicas[p], observer))
        two.merge(replica(replicas[p], observer))     # idempotent
    assert [(e.token, e.peer, e.version, e.free) for e in one.entries] == \
           [(e.token, e.peer, e.version, e.free) for e in two.entries]


def test_bad_rings_are_refused_and_change_nothing():
    ours = Ring(0, SIZE, A)
    ours.claim_for_peers([A, B])
    before = copy.deepcopy(ours.entries)
    bad = []
    for entries in ([Entry(512, B), Entry(0, A)],                        # not sorted
                    [Entry(0, A), Entry(0, B)],                          # a token twice
                    [Entry(0, A), Entry(SIZE, B)],                       # out of range
                    [Entry(0, A, 0, 600), Entry(512, B)]):               # more free than it spans
        theirs = Ring(0, SIZE, B)
        theirs.entries = entries
        bad.append(theirs)
    other_range = Ring(0, SIZE * 2, B)
    other_range.claim_for_peers([A, B])
    other_seeds = Ring(0, SIZE, B)
    other_seeds.claim_for_peers([B, C])
    for theirs, says in zip(bad + [other_range, other_seeds],
                            ["not sorted", "twice", "out of range", "too much free", "Incompatible", "seeded"]):
        with pytest.raises(RingError, match=says):
            ours.merge(theirs)
        assert ours.entries == before


def test_a_ring_that_takes_space_we_have_allocations_in_is_refused():
    ours = Ring(0, SIZE, A)
    ours.claim_for_peers([A, B])            # A: [0, 512)
    theirs = replica(ours, B)
    theirs.entries[0] = Entry(0, B, ours.entries[0].version + 1, 0)   # B says [0, 512) is B's
    in_use = lambda lo, hi: lo <= 7 < hi
    with pytest.raises(RingError, match="I own"):
        ours.merge(theirs, has_allocations=in_use)
    split = replica(ours, B)
    split.entries.insert(1, Entry(256, B))                           # a token cutting into ours
    split.entries[0].free = 0
    with pytest.raises(RingError, match="which I think I own"):
        ours.merge(split, has_allocations=lambda lo, hi: lo <= 300 < hi)
    assert ours.owned_ranges(A) == [(0, 512)]
    # space we hold nothing in may be repaired by a newer claim
    assert ours.merge(theirs, has_allocations=lambda lo, hi: False)
    assert ours.owned_ranges(A) == []


def test_gossip_naming_us_with_a_newer_version_is_reasserted_not_taken():
    ours = Ring(0, SIZE, A)
    ours.claim_for_peers([A, B])
    theirs = replica(ours, B)
    theirs.entries[0] = Entry(0, A, 7, 3)   # an earlier run of ours got further
    ours.merge(theirs)
    assert ours.entries[0].peer == A and ours.entries[0].version == 8


def test_persisted_or_gossiped_data_is_checked():
    r = Ring(0, SIZE, A)
    r.claim_for_peers([A, B])
    assert Ring.from_dict(r.to_dict(), A).entries == r.entries
    broken = r.to_dict()
    broken["entries"][1]["token"] = 0
    with pytest.raises(RingError):
        Ring.from_dict(broken, A)
    with pytest.raises(RingError, match="malformed"):
        Ring.from_dict({"start": 0, "end": "x"}, A)


def test_a_donation_keeps_the_tail_and_the_wrap_ours():
    r = Ring(0, SIZE, A)
    r.claim_for_peers([A])
    r.grant_range_to_host(256, 512, B)
    assert r.owned_ranges(A) == [(0, 256), (512, SIZE)] and r.owned_ranges(B) == [(256, 512)]
    r.grant_range_to_host(768, SIZE, C)
    assert r.owned_ranges(A) == [(0, 256), (512, 768)] and r.owned_ranges(C) == [(768, SIZE)]
    with pytest.raises(RingError, match="not all of it is ours"):
        r.grant_range_to_host(200, 300, C)
    r.check()
