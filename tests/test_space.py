from hypothesis import given, strategies as st
from weavepy.ipam.space import Space, SpaceError

import pytest


def test_lowest_free_first_and_reuse_after_free():
    s = Space()
    s.add(100, 200)
    assert [s.allocate(100, 200) for _ in range(3)] == [100, 101, 102]
    s.free(101)
    assert s.allocate(100, 200) == 101
    assert s.allocate(150, 160) == 150


def test_exhaustion_and_bounds():
    s = Space()
    s.add(0, 3)
    assert [s.allocate(0, 3) for _ in range(3)] == [0, 1, 2]
    assert s.allocate(0, 3) is None
    assert s.num_free() == 0


def test_claim_splits_and_free_coalesces():
    s = Space()
    s.add(0, 10)
    s.claim(5)
    assert not s.is_free(5) and s.is_free(4) and s.is_free(6)
    with pytest.raises(SpaceError):
        s.claim(5)
    s.free(5)
    assert s.owned_ranges() == [(0, 10)]
    assert len(s._starts) == 1  # coalesced back into one interval


def test_add_keeps_allocations():
    s = Space()
    s.add(0, 10)
    s.claim(3)
    s.add(0, 20)
    assert not s.is_free(3) and s.num_free() == 19


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 63)), max_size=60),
       st.integers(0, 64), st.integers(0, 64))
def test_any_allocated_agrees_with_the_addresses_handed_out(ops, lo, hi):
    s = Space()
    s.add(0, 64)
    for take, addr in ops:
        if take and s.is_free(addr):
            s.claim(addr)
        elif not take and addr in s.allocated:
            s.free(addr)
    assert s.any_allocated(lo, hi) == any(lo <= a < hi for a in s.allocated)
