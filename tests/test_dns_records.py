
from hypothesis import given, strategies as st

from weavepy.dns.records import Entry, Records, merge_sets

ME, OTHER = "02:00:00:00:00:01", "02:00:00:00:00:02"


def test_add_lookup_case_insensitive_and_reverse():
    r = Records(ME, "weave.local")
    r.add("c1", "10.32.0.1", "C1.weave.local")
    r.add("c2", "10.32.0.2", "c1.weave.local.")
    assert sorted(r.lookup("c1.WEAVE.local")) == ["10.32.0.1", "10.32.0.2"]
    assert r.reverse("10.32.0.1") == "C1.weave.local."
    assert r.add("x", "10.32.0.9", "x.example.com") == []  # outside the domain
    assert r.lookup("x.example.com") == []


def test_tombstone_only_touches_our_own_and_revives_with_a_new_version():
    r = Records(ME, "weave.local.")
    r.add("c1", "10.32.0.1", "c1.weave.local")
    r.merge([Entry("c9", OTHER, "10.32.0.9", "c1.weave.local.")])
    r.tombstone(now=100, hostname="c1.weave.local")
    assert r.lookup("c1.weave.local") == ["10.32.0.9"]
    revived = r.add("c1", "10.32.0.1", "c1.weave.local")
    assert revived[0].version == 2 and revived[0].live


def test_merge_keeps_the_newest_and_deletes_win_ties():
    r = Records(ME, "weave.local.")
    live = Entry("c9", OTHER, "10.32.0.9", "a.weave.local.", version=3)
    assert r.merge([live]) == [live]
    assert r.merge([Entry("c9", OTHER, "10.32.0.9", "a.weave.local.", version=2, tombstone=5)]) == []
    dead = Entry("c9", OTHER, "10.32.0.9", "a.weave.local.", version=3, tombstone=5)
    assert r.merge([dead]) == [dead] and r.lookup("a.weave.local") == []


entries = st.builds(Entry, container=st.sampled_from(["c1", "c2"]), origin=st.sampled_from([ME, OTHER]),
                    addr=st.sampled_from(["10.32.0.1", "10.32.0.2"]), hostname=st.sampled_from(["a.", "b."]),
                    version=st.integers(0, 3), tombstone=st.sampled_from([0, 0, 7, 9]))
entry_sets = st.lists(entries, max_size=8).map(lambda es: {e.key: e for e in es})


@given(entry_sets, entry_sets, entry_sets)
def test_merge_is_commutative_associative_idempotent(a, b, c):
    assert merge_sets(a, b) == merge_sets(b, a)
    assert merge_sets(merge_sets(a, b), c) == merge_sets(a, merge_sets(b, c))
    assert merge_sets(a, a) == a
    assert merge_sets(merge_sets(a, b), b) == merge_sets(a, b)
