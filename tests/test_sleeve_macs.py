from hypothesis import given, strategies as st

from weavepy.net.sleeve_macs import LIMIT, MAX_AGE, MacCache

A, B, C = (bytes([2, 0, 0, 0, 0, i]) for i in (1, 2, 3))


def test_a_mac_moves_to_the_last_peer_it_came_from_and_says_where_it_was():
    cache = MacCache()
    assert cache.learn(A, "h1", 0.0) is None and cache.lookup(A) == "h1"
    assert cache.learn(A, "h1", 1.0) is None
    assert cache.learn(A, "h2", 2.0) == "h1" and cache.lookup(A) == "h2"
    assert cache.lookup(B) is None


def test_entries_expire_after_ten_minutes_refreshed_at_most_once_a_minute():
    cache = MacCache()
    cache.learn(A, "h1", 0.0)
    cache.learn(A, "h1", 59.0)              # too soon: the stamp stays at 0
    cache.learn(B, "h1", 0.0)
    cache.learn(B, "h1", 61.0)              # refreshed
    assert cache.expire(MAX_AGE) == []
    assert cache.expire(MAX_AGE + 0.5) == [(A, "h1")]
    assert cache.expire(661.5) == [(B, "h1")] and len(cache) == 0


def test_a_moved_mac_is_fresh_again():
    cache = MacCache()
    cache.learn(A, "h1", 0.0)
    cache.learn(B, "h1", 10.0)
    cache.learn(A, "h2", 20.0)
    assert cache.expire(615.0) == [(B, "h1")] and cache.lookup(A) == "h2"


def test_the_oldest_entry_makes_room_and_is_counted():
    cache = MacCache()
    for i in range(LIMIT + 1):
        cache.learn(i.to_bytes(6, "big"), "h1", float(i))
    assert len(cache) == LIMIT and cache.evicted == 1
    assert cache.lookup((0).to_bytes(6, "big")) is None and cache.lookup((1).to_bytes(6, "big")) == "h1"


def test_macs_of_and_purge_a_peer():
    cache = MacCache()
    cache.learn(A, "h1", 0.0)
    cache.learn(B, "h2", 0.0)
    cache.learn(C, "h1", 0.0)
    assert sorted(cache.macs_of("h1")) == [A, C]
    assert sorted(cache.purge("h1")) == [A, C]
    assert cache.lookup(A) is None and cache.lookup(B) == "h2" and cache.macs_of("h1") == []


ops = st.lists(st.one_of(
    st.tuples(st.just("learn"), st.integers(0, 7), st.sampled_from("pqr"), st.floats(0, 200)),
    st.tuples(st.just("expire"), st.floats(0, 900)),
    st.tuples(st.just("purge"), st.sampled_from("pqr"))), max_size=60)


@given(ops)
def test_matches_a_plain_model(ops):
    """Against a list of [mac, peer, stamp] kept in refresh order; time only moves forward."""
    cache, model, evicted, now = MacCache(max_age=300.0, refresh=60.0, limit=5), [], 0, 0.0
    for op in ops:
        if op[0] == "learn":
            now += op[3]
            mac, peer = bytes(6) + bytes([op[1]]), op[2]
            entry = next((e for e in model if e[0] == mac), None)
            moved = None
            if entry is None:
                if len(model) == 5:
                    model.pop(0)
                    evicted += 1
                model.append([mac, peer, now])
            elif entry[1] != peer or now - entry[2] >= 60.0:
                moved = entry[1] if entry[1] != peer else None
                model.remove(entry)
                model.append([mac, peer, now])
            assert cache.learn(mac, peer, now) == moved
        elif op[0] == "expire":
            now += op[1]
            gone = [(m, p) for m, p, seen in model if now - seen > 300.0]
            model = [e for e in model if now - e[2] <= 300.0]
            assert cache.expire(now) == gone
        else:
            assert sorted(cache.purge(op[1])) == sorted(m for m, p, _ in model if p == op[1])
            model = [e for e in model if e[1] != op[1]]
        assert len(cache) == len(model) and cache.evicted == evicted
        assert all(cache.lookup(m) == p for m, p, _ in model)
