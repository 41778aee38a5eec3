from weavepy.ipam.ring import Ring

A, B, C = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"


def test_single_peer_owns_everything():
    r = Ring(0, 1024, A)
    r.claim_for_peers([A])
    assert r.owned_ranges() == [(0, 1024)]
    assert r.owner(0) == A and r.owner(1023) == A and r.owner(1024) is None


def test_division_is_deterministic_whatever_the_order():
    r1, r2 = Ring(0, 1024, A), Ring(0, 1024, B)
    r1.claim_for_peers([C, A, B])
    r2.claim_for_peers([B, C, A, A])
    assert r1.to_dict()["entries"] == r2.to_dict()["entries"]
    sizes = r1.peer_sizes()
    assert sizes == {A: 512, B: 256, C: 256}
    assert sum(hi - lo for lo, hi in r1.owned_ranges(A)) == 512


def test_free_counts_are_versioned():
    r = Ring(0, 16, A)
    r.claim_for_peers([A])
    v = r.entries[0].version
    assert r.report_free(lambda lo, hi: 10)
    assert r.entries[0].free == 10 and r.entries[0].version == v + 1
    assert not r.report_free(lambda lo, hi: 10)


def test_round_trip():
    r = Ring(0, 1024, A)
    r.claim_for_peers([A, B])
    again = Ring.from_dict(r.to_dict(), A)
    assert again.owned_ranges() == r.owned_ranges() and again.seeds == r.seeds
