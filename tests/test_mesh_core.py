import json
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mesh_sim import GSet, GSetData
from weavepy.mesh import wire
from weavepy.mesh.clash import CLONE_SPAN, CloneWatch, decode_report, encode_report
from weavepy.mesh.core import (PROBE_TIMEOUT, Clash, Close, MeshCore, PeerGone, RemotePeer, Send, TopologyChanged,
                               is_clash)
from weavepy.mesh.gossip import PeerRefused, encode_broadcast, encode_gossip, encode_unicast
from weavepy.mesh.topology import encode_peers


def name(i: int) -> str:
    return f"02:00:00:00:00:{i:02x}"


def make(i: int, nickname: str | None = None, uid: int | None = None, **kw) -> MeshCore:
    return MeshCore(name(i), nickname or f"host{i}", uid or 1000 + i, rng=random.Random(i), **kw)


def address(core: MeshCore) -> str:
    return f"10.0.0.{int(core.name[-2:], 16)}:6783"


def remote(core: MeshCore) -> RemotePeer:
    return RemotePeer(core.name, core.nickname, core.uid)


class Bus:
    """Connections between cores by hand: conn id -> (owning core, the far end's conn id)."""

    def __init__(self):
        self.ends: dict = {}
        self.closed: list[tuple[str, str]] = []   # (conn id, reason)
        self.events: dict[str, list] = {}

    def connect(self, a: MeshCore, b: MeshCore, conn_uid: int = 7, now: float = 0.0, established=True):
        ida, idb = f"{a.nickname}>{b.nickname}#{conn_uid}", f"{b.nickname}<{a.nickname}#{conn_uid}"
        self.ends[ida], self.ends[idb] = (a, idb), (b, ida)
        refusals = (a.add_connection(ida, remote(b), True, address(b), conn_uid, now),
                    b.add_connection(idb, remote(a), False, address(a), conn_uid, now))
        if established and refusals == (None, None):
            a.connection_established(ida, now)
            b.connection_established(idb, now)
        return ida, idb, refusals

    def pump(self, now: float, *cores: MeshCore, rounds: int = 200) -> None:
        """Deliver everything queued, ticking the cores at `now`, until nothing moves."""
        for _ in range(rounds):
            moved = False
            for core in cores:
                core.tick(now)
                for action in core.drain():
                    if isinstance(action, Send):
                        _, far = self.ends[action.conn_id]
                        if far in self.ends:
                            self.ends[far][0].receive(far, action.tag, action.payload, now)
                            moved = True
                    elif isinstance(action, Close):
                        self.closed.append((action.conn_id, action.reason))
                        self.cut(action.conn_id, now)
                        moved = True
                    else:
                        self.events.setdefault(core.nickname, []).append(action)
            if not moved:
                return
        raise AssertionError("gossip never settled")

    def cut(self, conn_id: str, now: float) -> None:
        """Both ends see the socket end."""
        if conn_id in self.ends:
            core, far = self.ends.pop(conn_id)
            core.connection_lost(conn_id, now)
            if far in self.ends:
                far_core, _ = self.ends.pop(far)
                far_core.connection_lost(far, now)


def view(core: MeshCore) -> dict:
    return {p.name: (p.uid, p.version, dict(p.connections)) for p in core.peers.values()}


# -- who may connect -------------------------------------------------------------------

def test_a_connection_to_ourself_is_refused():
    a = make(1)
    assert a.add_connection("c", remote(a), True, "127.0.0.1:6783", 1, 0.0) == "cannot connect to ourself"
    assert not a.connections and not a.clashes


def test_a_clone_dialling_us_is_told_what_it_is_and_how_to_fix_it():
    a1, a2 = make(1, "vm-one", uid=11), make(1, "vm-two", uid=22)
    reason = a1.add_connection("c", remote(a2), False, "192.168.0.9:41000", 1, 0.0)
    assert is_clash(reason) and "\n" not in reason
    for part in (name(1), "vm-one", "vm-two", "192.168.0.9", "/etc/machine-id", "systemd-machine-id-setup",
                 "weavepy reset"):
        assert part in reason
    assert a1.clashes == [Clash(name(1), ("vm-one", "vm-two"), "192.168.0.9:41000", reason)]
    assert not a1.connections


def test_both_ends_keep_the_same_one_of_two_simultaneous_connections():
    a, b = make(1), make(2)
    # a dialled b (conn uid 5) and b dialled a (conn uid 3); each end learns of them in a different order.
    x_a, x_b = "x@a", "x@b"
    y_a, y_b = "y@a", "y@b"
    assert a.add_connection(x_a, remote(b), True, address(b), 5, 0.0) is None
    assert a.add_connection(y_a, remote(b), False, "10.0.0.2:40000", 3, 0.0) is None
    assert b.add_connection(y_b, remote(a), True, address(a), 3, 0.0) is None
    refusal = b.add_connection(x_b, remote(a), False, "10.0.0.1:40000", 5, 0.0)
    assert refusal == f'Multiple connections to "{name(1)}(host1)" added to "{name(2)}(host2)"'
    assert [x for x in a.drain() if isinstance(x, Close)] == [
        Close(x_a, f'Multiple connections to "{name(2)}(host2)" added to "{name(1)}(host1)"')]
    assert list(a.connections) == [y_a] and list(b.connections) == [y_b]


def test_two_connections_with_the_same_uid_are_both_dropped():
    a, b = make(1), make(2)
    assert a.add_connection("one", remote(b), True, address(b), 5, 0.0) is None
    reason = a.add_connection("two", remote(b), False, address(b), 5, 0.0)
    assert "Multiple connections" in reason
    assert Close("one", reason) in a.drain() and not a.connections


def test_the_connection_limit_refuses_one_more():
    a = make(1, conn_limit=2)
    for i in (2, 3):
        assert a.add_connection(f"c{i}", remote(make(i)), True, "10.0.0.9:6783", i, 0.0) is None
    assert a.add_connection("c4", remote(make(4)), True, "10.0.0.9:6783", 4, 0.0) == "Connection limit reached (2)"
    assert MeshCore(name(9), "n", 9, conn_limit=0).add_connection(
        "c", remote(make(4)), True, "10.0.0.9:6783", 4, 0.0) is None   # 0: unlimited


def test_a_bad_address_from_the_driver_is_a_bug_not_a_refusal():
    with pytest.raises(ValueError, match="ip:port"):
        make(1).add_connection("c", remote(make(2)), True, "somewhere", 1, 0.0)


# -- restart or clash: the probe ----------------------------------------------------------

@pytest.fixture
def c_with_a1():
    """C is connected to A (run 1); the bus has delivered everything."""
    c, a1 = make(3, "hostC"), make(1, "clone1", uid=11)
    bus = Bus()
    old, _, _ = bus.connect(c, a1)
    bus.pump(0.0, c, a1)
    return bus, c, a1, old


def _second_run(bus, c, a2, conn_uid=9):
    """A with a new UID dials C; returns C's end of it and C's actions."""
    new_c, new_a = "new@c", "new@a2"
    bus.ends[new_c], bus.ends[new_a] = (c, new_a), (a2, new_c)
    assert a2.add_connection(new_a, remote(c), True, address(c), conn_uid, 0.5) is None
    assert c.add_connection(new_c, remote(a2), False, "10.0.0.2:40001", conn_uid, 0.5) is None
    return new_c, new_a


def test_a_clone_reaching_a_peer_the_other_clone_is_on_is_refused_and_both_are_told(c_with_a1):
    bus, c, a1, old = c_with_a1
    a2 = make(1, "clone2", uid=22)
    new_c, _ = _second_run(bus, c, a2)
    [probe] = [x for x in c.drain() if isinstance(x, Send)]
    assert (probe.conn_id, probe.tag, len(probe.payload)) == (old, wire.PROBE, 8)
    assert list(c.connections) == [old] and c.peers[name(1)].uid == 11
    a1.receive(bus.ends[old][1], wire.PROBE, probe.payload, 0.6)      # a1 is alive and answers
    [reply] = a1.drain()
    assert (reply.tag, reply.payload) == (wire.PROBE_REPLY, probe.payload)
    c.receive(old, wire.PROBE_REPLY, reply.payload, 0.7)
    actions = c.drain()
    [closed] = [x for x in actions if isinstance(x, Close)]
    assert closed.conn_id == new_c and is_clash(closed.reason)
    assert "clone1" in closed.reason and "clone2" in closed.reason and "10.0.0.2:40001" in closed.reason
    reports = {x.conn_id: json.loads(x.payload) for x in actions if isinstance(x, Send) and x.tag == wire.CLASH}
    assert reports[old]["address"] == "10.0.0.2:40001" and reports[new_c]["nicknames"] == ["clone2", "clone1"]
    assert actions.index(closed) > max(actions.index(x) for x in actions if isinstance(x, Send))
    assert list(c.connections) == [old] and c.clashes[0].nicknames == ("clone1", "clone2")
    a1.receive(bus.ends[old][1], wire.CLASH, json.dumps(reports[old]).encode(), 0.8)
    a2.receive("new@a2", wire.CLASH, json.dumps(reports[new_c]).encode(), 0.8)
    assert a1.clashes[0].address == "10.0.0.2:40001" and a2.clashes[0].nicknames == ("clone2", "clone1")
    assert is_clash(a1.clashes[0].message)


def test_a_restarted_peer_replaces_its_dead_connection_when_the_probe_goes_unanswered(c_with_a1):
    bus, c, a1, old = c_with_a1
    a2 = make(1, "host1-again", uid=22)
    new_c, new_a = _second_run(bus, c, a2)
    c.drain()
    a2.connection_established(new_a, 0.5)
    # What the new run says at once is kept until C knows it is the peer's new run.
    for action in a2.drain():
        if isinstance(action, Send):
            c.receive(new_c, action.tag, action.payload, 0.6)
    assert c.peers[name(1)].uid == 11
    c.tick(0.5 + PROBE_TIMEOUT - 0.01)
    assert not [x for x in c.drain() if isinstance(x, Close)]
    assert c.next_deadline() == pytest.approx(0.5 + PROBE_TIMEOUT)
    c.tick(0.5 + PROBE_TIMEOUT)
    closes = [x for x in c.drain() if isinstance(x, Close)]
    assert [x.conn_id for x in closes] == [old] and "restarted" in closes[0].reason
    assert list(c.connections) == [new_c]
    assert c.peers[name(1)].uid == 22 and c.peers[name(1)].nickname == "host1-again"
    assert not c.clashes


def test_the_old_connection_ending_during_the_probe_lets_the_new_one_in(c_with_a1):
    bus, c, a1, old = c_with_a1
    new_c, _ = _second_run(bus, c, make(1, uid=22))
    c.connection_lost(old, 1.0)
    assert list(c.connections) == [new_c]
    c.connection_lost(old, 1.0)     # idempotent
    c.connection_lost(new_c, 1.1)
    assert not c.connections


def test_a_third_connection_while_probing_is_refused_for_now(c_with_a1):
    bus, c, a1, old = c_with_a1
    _second_run(bus, c, make(1, uid=22))
    assert "being checked" in c.add_connection("third", RemotePeer(name(1), "x", 33), False,
                                               "10.0.0.2:40002", 12, 0.6)


def test_probes_are_answered_and_bad_ones_counted(c_with_a1):
    bus, c, a1, old = c_with_a1
    c.receive(old, wire.PROBE, b"12345678", 1.0)
    c.receive(old, wire.PROBE, b"short", 1.0)
    c.receive(old, wire.PROBE_REPLY, b"87654321", 1.0)
    assert c.drain() == [Send(old, wire.PROBE_REPLY, b"12345678")]
    assert c.stats["malformed"] == 1 and c.stats["stray_probe_reply"] == 1


@pytest.mark.parametrize("report", [
    b"not json", b"[]", b'{"name": "02:00:00:00:00:09", "nicknames": ["a", "b"], "address": "", "message": "x"}',
    json.dumps({"name": name(1), "nicknames": ["a"], "address": "", "message": "peer name collision"}).encode(),
    json.dumps({"name": name(1), "nicknames": ["a", "b"], "address": "", "message": "hello"}).encode(),
    b"{" * 5000])
def test_a_bad_clash_report_is_counted_not_believed(c_with_a1, report):
    bus, c, a1, old = c_with_a1
    a1.receive(bus.ends[old][1], wire.CLASH, report, 1.0)
    assert not a1.clashes and a1.stats["malformed"] == 1


def test_a_clash_report_says_the_same_at_the_other_end():
    clash = Clash(name(1), ("vm-one", "vm-two"), "10.0.0.2:6783", "peer name collision: ...")
    assert decode_report(encode_report(clash), name(1)) == clash


def test_updates_of_an_old_run_still_in_flight_are_no_clone_but_a_uid_racing_us_is():
    watch = CloneWatch()
    assert not any(watch.overtaken(5, 0.01 * i) for i in range(50))   # a burst, then the old run is silent
    verdicts = [watch.overtaken(7, t) for t in range(int(CLONE_SPAN) + 3)]
    assert verdicts.index(True) == CLONE_SPAN


# -- topology, routes, gossip between cores ------------------------------------------------

def test_a_line_of_peers_learns_the_whole_topology_and_routes_over_it():
    a, b, c = make(1), make(2), make(3)
    bus = Bus()
    bus.connect(a, b)
    bus.connect(b, c)
    bus.pump(0.0, a, b, c)
    bus.pump(0.2, a, b, c)
    assert view(a) == view(b) == view(c)
    assert a.routes.unicast == {name(2): name(2), name(3): name(2)}
    assert c.routes.broadcast(name(1)) == [] and b.routes.broadcast(name(1)) == [name(3)]


def test_data_routes_wait_for_both_ends_to_be_established():
    a, b = make(1), make(2)
    bus = Bus()
    ida, idb, _ = bus.connect(a, b, established=False)
    bus.pump(0.0, a, b)
    assert a.routes.unicast == {} and a.routes.unicast_all == {name(2): name(2)}
    a.connection_established(ida, 0.1)
    bus.pump(0.3, a, b)
    assert a.routes.unicast == {}
    b.connection_established(idb, 0.4)
    bus.pump(0.6, a, b)
    assert a.routes.unicast == {name(2): name(2)} and b.routes.unicast == {name(1): name(1)}


def test_a_new_neighbour_gets_every_channels_state_at_once():
    a, b = make(1), make(2)
    gset = GSet()
    gset.channel = a.channel("gset", gset)
    gset.items = {"x"}
    ida = "a>b"
    a.add_connection(ida, remote(b), True, address(b), 1, 0.0)
    sent = {(s.conn_id, s.payload[1:1 + s.payload[0]]) for s in a.drain() if isinstance(s, Send)}
    assert sent == {(ida, b"topology"), (ida, b"gset")}


def test_local_changes_go_out_after_a_short_delay_and_state_every_30_s():
    a, b = make(1), make(2)
    bus = Bus()
    ida, idb, _ = bus.connect(a, b)
    bus.pump(0.0, a, b)
    assert a.next_deadline() == pytest.approx(0.1)
    a.tick(0.1)
    [update] = a.drain()
    assert update.tag == wire.GOSSIP and update.conn_id == ida
    assert a.next_deadline() == pytest.approx(30.0)
    a.tick(29.9)
    assert a.drain() == []
    a.tick(30.0)
    assert [s.tag for s in a.drain()] == [wire.GOSSIP]


def test_peers_out_of_reach_are_forgotten_after_a_second_not_at_once():
    a, b, c = make(1), make(2), make(3)
    bus = Bus()
    bus.connect(a, b)
    _, idc, _ = bus.connect(b, c)
    bus.pump(0.0, a, b, c)
    bus.pump(0.2, a, b, c)
    bus.events.clear()
    bus.cut(idc, 1.0)
    bus.pump(1.2, a, b, c)
    assert name(3) in a.peers and PeerGone(name(3)) not in bus.events.get("host1", [])
    bus.pump(2.1, a, b)
    bus.pump(2.3, a, b)
    assert PeerGone(name(3)) in bus.events["host1"] and PeerGone(name(3)) in bus.events["host2"]
    assert set(a.peers) == {name(1), name(2)} and a.routes.unicast == {name(2): name(2)}


def test_a_restarted_peer_takes_a_version_beyond_its_old_run():
    a, b = make(1), make(2)
    bus = Bus()
    _, idb, _ = bus.connect(a, b)
    bus.pump(0.0, a, b)
    bus.pump(0.2, a, b)
    old_version = b.peers[name(1)].version
    bus.cut(idb, 1.0)
    a2 = make(1, uid=77)
    bus.connect(a2, b, conn_uid=8, now=1.5)
    bus.pump(1.5, a2, b)
    bus.pump(1.7, a2, b)
    assert b.peers[name(1)].uid == 77 and a2.topology.ourself.version > old_version
    assert view(a2) == view(b)


def test_status_has_weaves_router_fields():
    a, b = make(1), make(2)
    bus = Bus()
    bus.connect(a, b)
    bus.pump(0.0, a, b)
    bus.pump(0.2, a, b)
    status = a.status()
    assert [p["Name"] for p in status["Peers"]] == [name(1), name(2)]
    me = status["Peers"][0]
    assert (me["NickName"], me["UID"], me["Version"]) == ("host1", 1001, 2)
    assert me["Connections"] == [{"Name": name(2), "NickName": "host2", "Address": "10.0.0.2:6783",
                                  "Outbound": True, "Established": True}]
    assert status["UnicastRoutes"] == [{"Dest": name(1), "Via": "00:00:00:00:00:00"},
                                       {"Dest": name(2), "Via": name(2)}]
    assert status["BroadcastRoutes"] == [{"Source": name(1), "Via": [name(2)]}]
    json.dumps(status)


def test_a_service_sending_outside_a_core_call_wakes_the_driver_once():
    a, b = make(1), make(2)
    bus = Bus()
    bus.connect(a, b)
    bus.pump(0.0, a, b)
    woken = []
    a.on_queued = lambda: woken.append(1)
    channel = a.channel("gset", GSet())
    channel.broadcast(GSetData({"1"}))
    channel.broadcast(GSetData({"2"}))
    assert woken == [1]
    [sent] = a.drain()
    assert sent.tag == wire.GOSSIP_BROADCAST and sent.payload.endswith(b"1\n2")
    channel.gossip_neighbours(GSetData({"3"}))
    assert woken == [1, 1]


def test_a_paused_connection_gets_one_merged_update_when_resumed():
    a, b = make(1), make(2)
    bus = Bus()
    ida, _, _ = bus.connect(a, b)
    bus.pump(0.0, a, b)
    channel = a.channel("gset", GSet())
    a.pause_sending(ida)
    for item in "123":
        channel.broadcast(GSetData({item}))
    assert a.drain() == []
    a.resume_sending(ida)
    [sent] = a.drain()
    assert sent.payload.endswith(b"1\n2\n3")


# -- malformed input -----------------------------------------------------------------------

def _connected_pair():
    a, b = make(1), make(2)
    bus = Bus()
    ida, idb, _ = bus.connect(a, b)
    bus.pump(0.0, a, b)
    bus.pump(0.2, a, b)
    return a, idb, b


payloads = st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=60).map(lambda p: encode_gossip("topology", p)),
    st.binary(max_size=60).map(lambda p: encode_broadcast("topology", name(5), p)),
    st.binary(max_size=60).map(lambda p: encode_unicast("topology", name(5), name(2), p)),
    st.binary(max_size=60).map(lambda p: encode_gossip("topology", b"\x01" + p)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([wire.GOSSIP, wire.GOSSIP_UNICAST, wire.GOSSIP_BROADCAST, wire.CLASH,
                        wire.PROBE_REPLY, 99]), payloads)
def test_malformed_messages_are_dropped_and_counted_and_change_nothing(tag, payload):
    a, idb, b = _connected_pair()
    before = view(b), set(b.connections)
    b.receive(idb, tag, payload, 1.0)      # never raises
    b.drain()
    if b.stats["malformed"]:
        assert view(b) == before[0]
    assert set(b.connections) == before[1] and b.topology.ourself.uid == 1002


def test_a_malformed_topology_update_is_counted_and_the_table_untouched():
    a, idb, b = _connected_pair()
    before = view(b)
    good = encode_peers([b.peers[name(1)]])[0]
    for bad in (good[:-1], good + b"\x00", b"\x01" + good[1:7]):
        b.receive(idb, wire.GOSSIP, encode_gossip("topology", bad), 1.0)
    assert b.stats["malformed"] == 3 and view(b) == before
    b.receive(idb, 42, b"", 1.0)
    b.receive("nobody", wire.GOSSIP, b"", 1.0)
    assert b.stats["unknown_tag"] == 1 and b.stats["unknown_connection"] == 1
    assert TopologyChanged() not in b.drain()


class Refusing:
    """A service that will not take this neighbour's state (another cluster's ring, a skewed clock)."""

    def on_unicast(self, src, data):
        pass

    def on_broadcast(self, src, data):
        return self.on_gossip(data)

    def gossip(self):
        return None

    def on_gossip(self, data):
        raise PeerRefused("IPAM: IP allocation was seeded by different peers")


def test_a_service_refusing_a_neighbours_state_closes_that_connection_and_only_that():
    a, idb, b = _connected_pair()
    b.channel("IPallocation", Refusing())
    b.receive(idb, wire.GOSSIP, encode_gossip("IPallocation", b"{}"), 1.0)
    actions = b.drain()
    assert Close(idb, "IPAM: IP allocation was seeded by different peers") in actions
    assert idb not in b.connections and b.stats["refused"] == 1 and b.stats["malformed"] == 0
