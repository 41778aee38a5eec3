"""Agreeing on the ring's first peers (ipam/paxos.py), without sockets: nodes exchanging their state at
random, with loss and partitions, never learn two different values, and learn one once a quorum talks."""
import json
import random

import pytest

from weavepy.ipam.paxos import Claims, Paxos


class Picky(Paxos):
    """Each proposer proposes a value of its own, so that learning two values would show."""

    def pick_value(self):
        return (self.me[0],)


def nodes(n, quorum, seed, kind=Paxos):
    rng = random.Random(seed)
    return [kind((f"02:00:00:00:00:{i:02x}", rng.getrandbits(32) | 1), quorum) for i in range(1, n + 1)]


def exchange(rng, group, loss=0.0):
    """One node's whole state to another, as a gossip message does (through JSON, as on the wire)."""
    a, b = rng.sample(group, 2)
    if rng.random() < loss:
        return
    if b.update(Paxos.from_list(json.loads(json.dumps(a.to_list())))):
        b.think()


def learned(group):
    return {p.consensus() for p in group} - {None}


@pytest.mark.parametrize("seed", range(40))
def test_one_value_is_learnt_whatever_the_order_loss_and_competing_proposers(seed):
    rng = random.Random(seed)
    group = nodes(rng.randint(2, 7), 0, seed, kind=Picky)
    quorum = len(group) // 2 + 1
    for p in group:
        p.quorum = quorum
    for p in rng.sample(group, rng.randint(1, len(group))):    # several propose at once
        p.propose()
    for step in range(4000):
        if step < 1500 and step % 20 == 0 and rng.random() < 0.5:
            rng.choice(group).propose()                          # proposers duel, then calm down
        exchange(rng, group, loss=0.2)
        assert len(learned(group)) <= 1, learned(group)
        if len(learned(group)) == 1 and all(p.consensus() for p in group):
            break
    (value,) = learned(group)
    assert all(p.consensus() == value for p in group)
    assert len(value) == 1 and value[0] in {p.me[0] for p in group}


def test_a_fresh_value_names_every_peer_heard_of():
    a, b, c = nodes(3, 2, 3)
    a.update(Paxos.from_list(b.to_list()))
    a.update(Paxos.from_list(c.to_list()))
    a.propose()
    for x, y in ((a, b), (b, a), (a, b), (b, a)):
        if y.update(Paxos.from_list(x.to_list())):
            y.think()
    assert a.consensus() == tuple(sorted(p.me[0] for p in (a, b, c)))


def test_a_minority_cut_off_learns_nothing_until_it_hears_from_the_majority():
    rng = random.Random(5)
    group = nodes(5, 3, 5)
    minority, majority = group[:2], group[2:]
    for p in group:
        p.propose()
    for _ in range(2000):
        exchange(rng, minority)
        exchange(rng, majority)
    assert learned(minority) == set()
    (value,) = learned(majority)
    for _ in range(3000):
        exchange(rng, group)
    assert all(p.consensus() == value for p in group)


def test_a_quorum_of_one_agrees_at_once_and_an_unstanding_node_never_decides():
    alone = nodes(1, 1, 1)[0]
    alone.propose()
    assert alone.consensus() == (alone.me[0],)
    a, b = nodes(2, 0, 2)
    a.quorum = 2
    a.propose()
    for _ in range(4):
        for x, y in ((a, b), (b, a)):
            if y.update(Paxos.from_list(x.to_list())):
                y.think()
    assert a.consensus() == tuple(sorted([a.me[0], b.me[0]]))
    assert b.consensus() is None        # quorum 0: it learns the ring by gossip instead


@pytest.mark.parametrize("bad", [
    "x", [["a", 1, [1, "a", 1], [0, "", 0]]], [["a", "1", [1, "a", 1], [0, "", 0], None]],
    [["a", 1, [1, "a"], [0, "", 0], None]], [["a", 1, [-1, "a", 1], [0, "", 0], None]],
    [["a", 1, [1, "a", 1], [0, "", 0], [1, 2]]], [["a", True, [1, "a", 1], [0, "", 0], None]],
])
def test_malformed_state_is_refused(bad):
    with pytest.raises(ValueError):
        Paxos.from_list(bad)


def test_state_survives_the_wire():
    p = nodes(3, 2, 9)[0]
    p.propose()
    p.update({("02:00:00:00:00:09", 7): Claims((3, "02:00:00:00:00:09", 7), (3, "02:00:00:00:00:09", 7), ("x",))})
    assert Paxos.from_list(json.loads(json.dumps(p.to_list()))) == p.knows
