import ipaddress as ip

import pytest

from weavepy.ipam.allocator import AllocationError, Allocator
from weavepy.ipam.request import AddressError

PEER = "02:00:00:00:00:01"
UNIVERSE = ip.IPv4Network("10.32.0.0/12")
DEFAULT = UNIVERSE
SUB24 = ip.IPv4Network("10.32.0.0/24")


def alloc():
    return Allocator(PEER, UNIVERSE, DEFAULT)


def test_first_address_and_lowest_free_reuse():
    a = alloc()
    assert str(a.allocate("c1", DEFAULT, True)) == "10.32.0.1/12"
    assert str(a.allocate("c2", DEFAULT, True)) == "10.32.0.2/12"
    a.free_all("c1")
    assert str(a.allocate("c3", DEFAULT, True)) == "10.32.0.1/12"


def test_same_container_same_subnet_gets_its_address_back():
    a = alloc()
    first = a.allocate("c1", DEFAULT, True)
    assert a.allocate("c1", DEFAULT, True) == first
    other = a.allocate("c1", SUB24, True)
    assert other != first and other.network.prefixlen == 24
    assert len(a.addresses("c1")) == 2


def test_claims_conflict_and_are_reclaimable_by_their_owner():
    a = alloc()
    a.claim("c4", ip.IPv4Interface("10.36.1.1/24"), True)
    a.claim("c4", ip.IPv4Interface("10.36.1.1/24"), True)
    with pytest.raises(AllocationError, match="already in use by c4"):
        a.claim("c9", ip.IPv4Interface("10.36.1.1/16"), True)
    # an allocation never hands out a claimed address
    a2 = alloc()
    a2.claim("x", ip.IPv4Interface("10.32.0.1/12"), True)
    assert str(a2.allocate("y", DEFAULT, True)) == "10.32.0.2/12"


def test_claim_outside_the_universe_is_local_bookkeeping():
    a = alloc()
    a.claim("c1", ip.IPv4Interface("192.168.7.1/24"), True)
    with pytest.raises(AllocationError):
        a.claim("c2", ip.IPv4Interface("192.168.7.1/24"), True)
    assert a.free_all("c1") == [ip.IPv4Interface("192.168.7.1/24")]
    a.claim("c2", ip.IPv4Interface("192.168.7.1/24"), True)


def test_subnet_outside_range_and_too_small():
    a = alloc()
    with pytest.raises(AllocationError, match="outside the allocation range"):
        a.allocate("c", ip.IPv4Network("10.99.0.0/24"), True)
    with pytest.raises(AddressError, match="too small"):
        a.allocate("c", ip.IPv4Network("10.32.0.0/31"), True)
    assert not a.owned


def test_never_network_or_broadcast_and_exhaustion():
    a = alloc()
    small = ip.IPv4Network("10.33.0.0/30")
    got = {str(a.allocate(f"c{i}", small, True)) for i in range(2)}
    assert got == {"10.33.0.1/30", "10.33.0.2/30"}
    with pytest.raises(AllocationError, match="no free address"):
        a.allocate("c9", small, True)


def test_died_containers_keep_addresses_for_the_grace_period():
    a = alloc()
    a.allocate("c1", DEFAULT, True)
    a.container_died("c1", now=100.0)
    assert a.remove_dead(now=120.0) == {}
    a.container_started("c1")
    assert a.remove_dead(now=200.0) == {}  # it came back: nothing freed
    a.container_died("c1", now=300.0)
    freed = a.remove_dead(now=330.0)
    assert list(freed) == ["c1"] and not a.addresses("c1")


def test_destroy_frees_at_once_and_prune_frees_the_vanished():
    a = alloc()
    a.allocate("c1", DEFAULT, True)
    a.allocate("c2", DEFAULT, True)
    a.allocate("weave:expose", DEFAULT, False)
    assert a.container_destroyed("c1") == [ip.IPv4Interface("10.32.0.1/12")]
    assert list(a.prune(running=set())) == ["c2"]
    assert a.addresses("weave:expose")  # not a container: only an explicit hide frees it


def test_snapshot_restores_exactly():
    a = alloc()
    a.allocate("c1", DEFAULT, True)
    a.allocate("c1", SUB24, True)
    a.claim("c4", ip.IPv4Interface("10.36.1.1/24"), True)
    b = alloc()
    assert b.restore(a.snapshot()) is None
    assert b.addresses("c1") == a.addresses("c1") and b.addresses("c4") == a.addresses("c4")
    # nothing is handed out twice after a restart
    assert str(b.allocate("c5", DEFAULT, True)) == "10.32.0.3/12"


def test_snapshot_of_another_peer_or_range_is_discarded():
    a = alloc()
    a.allocate("c1", DEFAULT, True)
    other_peer = Allocator("02:00:00:00:00:09", UNIVERSE, DEFAULT)
    assert "peer" in other_peer.restore(a.snapshot()) and not other_peer.owned
    other_range = Allocator(PEER, ip.IPv4Network("10.64.0.0/16"))
    assert "range" in other_range.restore(a.snapshot()) and not other_range.owned


def test_default_subnet_must_overlap_range():
    with pytest.raises(AddressError, match="does not overlap"):
        Allocator(PEER, UNIVERSE, ip.IPv4Network("192.168.0.0/24"))


def test_explicit_claim_takes_a_stopped_containers_address_at_once():
    """Weave's 300: after `docker stop c2`, c3 may claim c2's address without waiting for the grace."""
    a = alloc()
    outside = ip.IPv4Interface("10.2.1.44/24")
    a.claim("c2", outside, True)
    inside = a.allocate("c2", DEFAULT, True)
    a.container_died("c2", now=100.0)
    a.claim("c3", outside, True)                      # outside the range
    a.claim("c4", ip.IPv4Interface(f"{inside.ip}/12"), True)  # inside it
    assert a.addresses("c3") == [outside] and a.addresses("c4")[0].ip == inside.ip
    assert a.addresses("c2") == []
    assert sorted(map(str, a.take_displaced("c2"))) == sorted([str(outside), str(inside)])
    assert a.take_displaced("c2") == []               # told once
    # the address is not freed in between: automatic allocation never hands it out
    assert a.allocate("c5", DEFAULT, True).ip != inside.ip
    # and nothing expires later that would free c3's or c4's address
    assert a.remove_dead(now=1000.0) == {}
    assert a.addresses("c3") == [outside] and a.addresses("c4")[0].ip == inside.ip


def test_automatic_allocation_still_waits_for_a_dead_containers_grace():
    a = alloc()
    first = a.allocate("c1", SUB24, True)
    a.container_died("c1", now=0.0)
    assert a.allocate("c2", SUB24, True) != first
    a.remove_dead(now=30.0)
    assert a.allocate("c3", SUB24, True) == first


def test_explicit_claim_of_a_running_containers_address_is_still_refused():
    a = alloc()
    a.claim("c2", ip.IPv4Interface("10.2.1.44/24"), True)
    with pytest.raises(AllocationError, match="already in use by c2"):
        a.claim("c3", ip.IPv4Interface("10.2.1.44/24"), True)
    a.container_died("c2", now=0.0)
    a.container_started("c2")
    with pytest.raises(AllocationError, match="already in use by c2"):
        a.claim("c3", ip.IPv4Interface("10.2.1.44/24"), True)


def test_a_persisted_ring_that_breaks_the_invariants_is_discarded_whole():
    a = alloc()
    a.allocate("c1", DEFAULT, True)
    saved = a.snapshot()
    saved["ring"]["entries"].append(dict(saved["ring"]["entries"][0]))   # the same token twice
    b = alloc()
    assert "appears twice" in b.restore(saved) and not b.owned
