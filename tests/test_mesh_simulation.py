"""Dozens of MeshCore instances on a simulated network (tests/mesh_sim.py): convergence, and nothing echoing forever."""
import random

from mesh_sim import SimNet, peer_name
from weavepy.mesh import wire
from weavepy.mesh.clash import CLONE_SPAN
from weavepy.mesh.core import is_clash
from weavepy.mesh.gossip import GOSSIP_INTERVAL
from weavepy.mesh.routes import fan_out

N = 40


def mesh(seed: int, extra_edges: int = 30, **options) -> tuple[SimNet, list[str]]:
    """N peers wired as a random tree plus extra random edges, each edge dialled by the connection maker."""
    net = SimNet(seed=seed, **options)
    names = [peer_name(i) for i in range(1, N + 1)]
    for name in names:
        net.add_peer(name)
    rng = random.Random(seed)
    for i, name in enumerate(names[1:], 1):
        net.want(name, names[rng.randrange(i)])
    for _ in range(extra_edges):
        net.want(*rng.sample(names, 2))
    return net, names


def add_items(net: SimNet, names, prefix: str) -> set[str]:
    for name in names:
        net.gsets[name].add(f"{prefix}-{name}")
    return {f"{prefix}-{name}" for name in names}


def test_forty_peers_converge_and_then_only_the_periodic_gossip_is_left():
    net, names = mesh(seed=1)
    net.maintain()
    net.run(5)
    items = add_items(net, names, "a")
    net.run(2)
    net.check_converged()
    assert net.gsets[names[0]].items == items
    assert not net.gone and all(not core.stats for core in net.cores.values())
    # Quiet: every peer gossips each channel's state to at most fan-out neighbours every 30 s,
    # and a converged network relays none of it on.
    links = net.live_links()
    per_round = sum(2 * min(fan_out(N), len(links[n])) for n in names)   # two channels: topology, gset
    before = net.sent.copy()
    net.run(3 * GOSSIP_INTERVAL)
    quiet = net.sent - before
    assert set(quiet) == {wire.GOSSIP}
    assert per_round * 2 <= quiet[wire.GOSSIP] <= per_round * 4
    net.check_converged()


def test_a_change_reaches_every_peer_within_a_second():
    net, names = mesh(seed=2)
    net.maintain()
    net.run(8)
    net.check_converged()
    a, b = names[3], names[30]
    assert not net.connected(a, b)
    net.dial(a, b)
    net.run(1.0)
    assert net.connected(a, b)
    net.check_converged()
    net.hang_up(a, b)
    net.run(1.0)
    assert not net.connected(a, b)
    net.check_converged()


def test_a_partition_splits_the_view_and_a_heal_joins_it_again():
    net, names = mesh(seed=3, extra_edges=40)
    net.maintain()
    net.run(6)
    side = set(names[:15])
    net.partition(side)
    net.run(8)
    items = add_items(net, names[::3], "during")
    net.run(3)
    net.check_converged()
    parts = net.components()
    assert len(parts) > 1 and max(len(p) for p in parts) < N
    [ours] = [p for p in parts if names[0] in p]
    assert {gone for at, gone in net.gone if at == names[0]} == set(names) - ours
    net.heal()
    net.run(6)
    net.check_converged()
    assert len(net.components()) == 1
    assert all(items <= net.gsets[n].items for n in names)


def test_restarted_peers_come_back_with_new_uids_and_everything_they_lost():
    net, names = mesh(seed=4)
    net.maintain()
    net.run(5)
    items = add_items(net, names, "before")
    net.run(2)
    restarted = names[5:10]
    old_uids = {n: net.cores[n].uid for n in restarted}
    for name in restarted:
        net.restart(name)       # silently: the far ends still think the old connections are up
    net.run(8)
    net.check_converged()
    for name in restarted:
        assert net.cores[name].uid != old_uids[name]
        assert net.cores[names[0]].peers[name].uid == net.cores[name].uid
        assert net.gsets[name].items == items
    assert any("did not answer" in reason for _, reason in net.goodbyes)   # the probe found the dead ones


def test_loss_and_reordering_only_delay_convergence():
    net, names = mesh(seed=5, loss=0.05, reorder=True)
    net.maintain()
    net.run(5)
    items = add_items(net, names, "lossy")
    net.run(2 * GOSSIP_INTERVAL + 5)
    net.check_converged()
    assert all(net.gsets[n].items == items for n in names)


def test_peers_dialling_each_other_at_once_keep_one_connection():
    net, names = mesh(seed=6)
    net.maintain(both_ways=True)
    net.run(8)
    net.check_converged()
    assert any(reason.startswith("Multiple connections") for _, reason in net.goodbyes)
    links = net.live_links()
    assert all(len(links[n]) == len(net.cores[n].connections) for n in names)


def test_a_clone_reaching_a_peer_its_twin_is_on_is_turned_away_and_both_are_told():
    net = SimNet(seed=7)
    a, c, d = peer_name(1), peer_name(3), peer_name(4)
    net.add_peer(a, "clone1")
    net.add_peer(c, "hostC")
    net.add_peer(d, "hostD")
    net.want(a, c)
    net.want(c, d)
    net.maintain()
    net.run(3)
    twin = net.add_peer("twin", "clone2", peer_name=a)
    net.want("twin", c)
    net.run(10)
    assert net.connected(a, c) and not net.connected("twin", c)
    for core in (net.cores[c], net.cores[a], twin):
        [clash] = core.clashes
        assert {"clone1", "clone2"} == set(clash.nicknames) and is_clash(clash.message)
    assert net.cores[a].clashes[0].address.startswith(net.addresses["twin"].split(":")[0])
    assert frozenset(("twin", c)) in net.never_retry
    assert net.cores[c].peers[a].uid == net.cores[a].uid


def test_clones_far_apart_notice_each_other_in_gossip_and_stop_racing():
    net = SimNet(seed=8)
    a, c, d = peer_name(1), peer_name(3), peer_name(4)
    for name, nick in ((a, "clone1"), (c, "hostC"), (d, "hostD")):
        net.add_peer(name, nick)
    net.add_peer("twin", "clone2", peer_name=a)
    net.want(a, c)
    net.want(c, d)
    net.want(d, "twin")
    net.maintain()
    net.run(CLONE_SPAN + 5)
    for key in (a, "twin"):
        [clash] = net.cores[key].clashes
        assert "seen in gossip" in clash.message
    before = sum(net.sent.values())
    net.run(GOSSIP_INTERVAL)
    # Periodic topology gossip only (the sets are empty): at most two rounds on each end of each link.
    links = sum(len(ends) for ends in net.live_links().values())
    assert 0 < sum(net.sent.values()) - before <= 2 * links
