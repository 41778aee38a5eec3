"""MeshRouters on 127.0.0.1 in one process: connections, discovery, duplicates, restarts, targets, clashes."""
import asyncio
import re
import select
import socket

import pytest

from weavepy.mesh import wire
from weavepy.mesh.driver import ListenError, MeshRouter, Timing
from weavepy.mesh.overlay import NullOverlay
from weavepy.mesh.token_bucket import TokenBucket

LOOPBACK = "127.0.0.1"


def name(i: int) -> str:
    return f"0a:00:00:00:00:{i:02x}"


async def until(condition, timeout=5.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
    return loop.time()


def states(router):
    return sorted(row["State"] for row in router.connection_rows())


def established(router):
    return [row for row in router.connection_rows() if row["State"] == "established"]


def address(router):
    return f"{LOOPBACK}:{router.port}"


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request):
    """Every driver test on both loops: the daemon runs uvloop, whose handles differ from asyncio's."""
    if request.param == "uvloop":
        import uvloop
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture
async def mesh():
    routers = []

    async def start(i, *, port=0, nickname=None, **kwargs):
        router = MeshRouter(name(i), nickname or f"host{i}", port=port, host=LOOPBACK, **kwargs)
        await router.start()
        routers.append(router)
        return router

    yield start
    await asyncio.gather(*(r.stop() for r in routers if r._running))


async def test_two_routers_connect_and_both_see_one_established_connection(mesh):
    a, b = await mesh(1), await mesh(2)
    seen = []
    a.on_targets_changed = seen.append
    a.connect([address(b)])
    await until(lambda: states(a) == states(b) == ["established"], what="one established connection each")
    assert seen == [[address(b)]]
    assert a.targets() == [address(b)]
    [row_a], [row_b] = a.connection_rows(), b.connection_rows()
    assert row_a["Outbound"] and not row_b["Outbound"]
    assert row_a["Address"] == address(b)
    assert a.status_connections() == f"-> {address(b):<21} established none   {name(2)}(host2)\n"
    assert b.status_connections().startswith(f"<- {LOOPBACK}:")
    report = a.report()
    assert report["Name"] == name(1) and report["Port"] == a.port and report["Targets"] == [address(b)]
    assert (report["ProtocolMinVersion"], report["ProtocolMaxVersion"], report["Encryption"]) == (2, 2, False)
    await until(lambda: len(a.report()["Peers"]) == 2, what="both peers in the topology")
    metrics = a.metrics()
    assert metrics["connections"] == [{"state": "established", "type": "none", "count": 1}]
    assert metrics["messages_in"] > 0 and metrics["bytes_out"] > 0


@pytest.mark.parametrize("discovery", [True, False])
async def test_discovery_makes_a_full_mesh_and_without_it_only_the_given_links(mesh, discovery):
    a, b, c = [await mesh(i, discovery=discovery) for i in (1, 2, 3)]
    a.connect([address(b), address(c)])
    if discovery:
        await until(lambda: all(len(established(r)) == 2 for r in (a, b, c)), what="a full mesh")
        # a discovered target that lost a simultaneous dial goes at the next redial pass
        await until(lambda: len(b.connection_rows()) == 2, what="the lost dial's target gone")
        assert {row["Info"].split()[-1] for row in b.connection_rows()} == {f"{name(1)}(host1)", f"{name(3)}(host3)"}
    else:
        await until(lambda: len(established(a)) == 2, what="a's two connections")
        await until(lambda: all(len(r.report()["Peers"]) == 3 for r in (a, b, c)), what="gossiped topology")
        await asyncio.sleep(1.0)
        assert len(b.connection_rows()) == len(c.connection_rows()) == 1


async def test_both_ends_dialling_at_once_end_with_one_connection_that_stays(mesh):
    a, b = await mesh(1), await mesh(2)
    a.connect([address(b)])
    b.connect([address(a)])
    await until(lambda: states(a) == states(b) == ["established"], what="one connection each")
    terminations = a.termination_count + b.termination_count
    await asyncio.sleep(2.5)
    assert states(a) == states(b) == ["established"]
    assert a.termination_count + b.termination_count == terminations     # no flapping


async def test_a_restarted_peer_is_reconnected_within_seconds(mesh):
    a, b = await mesh(1), await mesh(2)
    a.connect([address(b)])
    await until(lambda: states(a) == ["established"])
    port = b.port
    await b.stop()
    target = a.maker.target(address(b))
    await until(lambda: target.last_error is not None, what="the goodbye")
    assert target.last_error == f"{name(2)}(host2) is shutting down"
    await asyncio.sleep(4)                                  # down a while: a keeps retrying
    assert target.last_error.endswith("connection refused")
    b2 = await mesh(2, port=port)
    started = asyncio.get_running_loop().time()
    reconnected = await until(lambda: states(a) == states(b2) == ["established"], timeout=10)
    assert reconnected - started < 5                         # retries are 1-3 s apart
    assert b2.uid != b.uid


async def test_forget_keeps_the_connection_but_no_reconnection_follows(mesh):
    a, b = await mesh(1), await mesh(2)
    with pytest.raises(ValueError, match='invalid peer name "nohost:port"'):
        a.connect([address(b), "nohost:port"])
    assert a.targets() == []
    a.connect([address(b)])
    await until(lambda: states(a) == ["established"])
    a.forget([address(b)])
    assert a.targets() == []
    await asyncio.sleep(0.3)
    assert states(a) == ["established"]                     # forgetting closes nothing
    port = b.port
    await b.stop()
    b2 = await mesh(2, port=port)
    await asyncio.sleep(3.5)
    assert a.connection_rows() == [] and b2.connection_rows() == []


async def test_connect_replace(mesh):
    a, b, c = await mesh(1), await mesh(2), await mesh(3)
    a.connect([address(b)])
    a.connect([address(c)], replace=True)
    assert a.targets() == [address(c)]
    await until(lambda: len(established(a)) >= 1)


async def test_a_name_clash_is_reported_and_never_retried(mesh):
    a = await mesh(1, nickname="vm-one")
    clone = await mesh(1, nickname="vm-two")          # the same peer name: a cloned machine
    a.connect([address(clone)])
    await until(lambda: any(r["State"] == "failed" for r in a.connection_rows()), what="a failed target")
    [row] = a.connection_rows()
    assert row["Info"].startswith("peer name collision: ")
    assert row["Info"].endswith(", retry: never")
    assert '"0a:00:00:00:00:01(vm-one)"' in row["Info"] and '"0a:00:00:00:00:01(vm-two)"' in row["Info"]
    assert a.report()["Clashes"] and clone.report()["Clashes"]
    dials = a.counters["dials"]
    await asyncio.sleep(3.5)
    assert a.counters["dials"] == dials == 1                  # no flapping
    # the accepting clone shows the clash as a failed inbound connection, just as steady
    [inbound] = clone.connection_rows()
    assert inbound["State"] == "failed" and not inbound["Outbound"]
    assert inbound["Info"].startswith("peer name collision: ") and "machine-id" in inbound["Info"]
    assert a.targets(), "the target stays, shown as failed"


async def test_connecting_to_ourselves(mesh):
    a = await mesh(1)
    a.connect([address(a)])
    await until(lambda: any(r["State"] == "failed" for r in a.connection_rows()))
    assert [r["Info"] for r in a.connection_rows()] == ["cannot connect to ourself, retry: never"]
    assert a.termination_count == 0


async def test_bogus_targets_show_why_and_when_and_block_nothing(mesh):
    a, b = await mesh(1), await mesh(2)

    async def resolve(host, port):
        if host == "nowhere.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return host
    a._resolve = resolve
    closed = socket.socket()
    closed.bind((LOOPBACK, 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    a.connect(["nowhere.example", f"{LOOPBACK}:{closed_port}", address(b)])
    # Between tries (1-3 s apart) both show as failed, with the reason and the next try's time.
    await until(lambda: len(established(a)) == 1 and
                [r["State"] for r in a.connection_rows()].count("failed") == 2, what="two failed targets")
    infos = sorted(r["Info"] for r in a.connection_rows() if r["State"] == "failed")
    assert re.fullmatch(rf"dial tcp4 {LOOPBACK}:{closed_port}: connect: connection refused, "
                        r"retry: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", infos[0]), infos[0]
    assert re.fullmatch(r"lookup nowhere.example: Name or service not known, retry: .* UTC", infos[1]), infos[1]
    await until(lambda: states(b) == ["established"], what="b's end of the one good connection")


async def test_a_silent_peer_is_dropped_by_the_read_timeout_and_redialled(mesh):
    quick = Timing(heartbeat=0.2, read_timeout=0.8)
    a, b = await mesh(1, timing=quick), await mesh(2, timing=quick)
    a.connect([address(b)])
    await until(lambda: states(a) == ["established"])
    await asyncio.sleep(1.5)
    assert states(a) == ["established"] and a.termination_count == 0    # heartbeats keep it up
    # Stop b's heartbeats: to a it looks like a peer behind a dead network.
    for conn in list(b._conns.values()):
        conn._timer.cancel()
    target = a.maker.target(address(b))
    await until(lambda: target.last_error is not None, what="the read timeout")
    assert target.last_error == "nothing received for 0.8 s: the peer or the network is down"
    await until(lambda: states(a) == ["established"], timeout=5, what="the redial")


def black_hole():
    """A listening port whose accept queue is full: the kernel drops SYNs to it, as iptables DROP does."""
    hole = socket.socket()
    hole.bind((LOOPBACK, 0))
    hole.listen(0)
    port = hole.getsockname()[1]
    held = []
    while True:
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex((LOOPBACK, port))
        _, writable, _ = select.select([], [client], [], 0.3)
        if not writable:
            client.close()
            return port, [hole] + held
        held.append(client)


async def test_a_peer_cut_off_is_redialled_within_seconds_of_the_heal(mesh):
    a = await mesh(1)
    port, hole = black_hole()
    a.connect([f"{LOOPBACK}:{port}"])
    target = a.maker.target(f"{LOOPBACK}:{port}")
    await until(lambda: target.last_error is not None, what="a connect timeout")
    assert target.last_error == f"dial tcp4 {LOOPBACK}:{port}: connect: i/o timeout"
    await until(lambda: a.counters["dials"] >= 2, what="a retry")     # still cut off: retried, timing out
    await asyncio.sleep(1)
    for sock in hole:
        sock.close()
    b = await mesh(2, port=port)                  # the network heals, the peer is there
    healed = asyncio.get_running_loop().time()
    reconnected = await until(lambda: states(a) == states(b) == ["established"], timeout=10)
    assert reconnected - healed < 5


async def test_the_port_in_use_is_a_clear_error(mesh):
    a = await mesh(1)
    with pytest.raises(ListenError, match=f"cannot listen for peers on {LOOPBACK}:{a.port}: Address already in use"):
        await mesh(2, port=a.port)


class ProvingOverlay:
    """Established only when the counterpart's control message arrives (as fastdp's heartbeat ack)."""

    def __init__(self, name):
        self.name = name
        self.prepared = []

    def features(self):
        return {f"{self.name}-feature": "1"}

    def prepare(self, params):
        overlay = self

        class Conn:
            def confirm(self):
                params.send_control(b"hello from " + params.local_name.encode())

            def control_message(self, data):
                self.got = data
                params.on_established()

            def stop(self):
                pass

            def attrs(self):
                return {"name": overlay.name, "mtu": 1376}
        self.prepared.append(params)
        return Conn()

    def diagnostics(self):
        return {}

    def close(self):
        pass


async def test_the_dialler_picks_the_overlay_and_control_messages_reach_it(mesh):
    a = await mesh(1, overlays=[ProvingOverlay("x"), ProvingOverlay("y")])
    b = await mesh(2, overlays=[ProvingOverlay("y"), ProvingOverlay("x")])
    a.connect([address(b)])
    await until(lambda: states(a) == states(b) == ["established"])
    assert a.status_connections() == f"-> {address(b):<21} established x      {name(2)}(host2) mtu=1376\n"
    assert b.connection_rows()[0]["Attrs"]["name"] == "x"
    [params] = b.overlays["x"].prepared
    assert params.remote_features["x-feature"] == "1" and not params.outbound


async def test_no_overlay_in_common_is_refused(mesh):
    a = await mesh(1, overlays=[ProvingOverlay("x")])
    b = await mesh(2, overlays=[NullOverlay()])
    a.connect([address(b)])
    await until(lambda: any(r["State"] in ("failed", "retrying") for r in a.connection_rows()))
    assert a.connection_rows()[0]["Info"].startswith("no overlay in common: ours x, theirs none")


class Items:
    """A grow-only set, gossiped."""

    def __init__(self):
        self.items = set()

    class Data:
        def __init__(self, items):
            self.items = set(items)

        def encode(self):
            return ["\n".join(sorted(self.items)).encode()]

        def merge(self, other):
            return Items.Data(self.items | other.items)

    def _merge(self, data):
        new = set(data.decode().split("\n")) - self.items
        self.items |= new
        return Items.Data(new) if new else None

    def on_unicast(self, src, data):
        self.items.add(data.decode())

    def on_broadcast(self, src, data):
        return self._merge(data)

    def gossip(self):
        return Items.Data(self.items) if self.items else None

    def on_gossip(self, data):
        return self._merge(data)


async def test_gossip_crosses_the_connections(mesh):
    routers = [await mesh(i) for i in (1, 2, 3)]
    sets = [Items() for _ in routers]
    channels = [r.channel("items", s) for r, s in zip(routers, sets)]
    routers[0].connect([address(routers[1])])
    routers[1].connect([address(routers[2])])
    await until(lambda: all(len(r.report()["Peers"]) == 3 for r in routers), what="topology")
    await until(lambda: name(3) in dict((u["Dest"], u["Via"]) for u in routers[0].report()["UnicastRoutes"]))
    await until(lambda: name(1) in dict((u["Dest"], u["Via"]) for u in routers[2].report()["UnicastRoutes"]))
    sets[0].items.add("from-1")
    channels[0].broadcast(Items.Data({"from-1"}))
    channels[2].unicast(name(1), b"to-1")
    await until(lambda: "from-1" in sets[2].items and "to-1" in sets[0].items, what="gossip delivery")
    assert routers[1].metrics()["messages_in"] > 0


async def test_a_goodbye_reason_is_what_the_other_end_shows(mesh):
    a, b = await mesh(1), await mesh(2)
    a.connect([address(b)])
    await until(lambda: states(b) == ["established"])
    [conn] = b._conns.values()
    conn.close("testing: go away")
    target = a.maker.target(address(b))
    await until(lambda: target.last_error is not None)
    assert target.last_error == "testing: go away"
    assert wire.GOODBYE == 8


def test_the_accept_bucket_lets_twenty_through_then_one_per_50_ms():
    bucket = TokenBucket(20, 0.05, now=100.0)
    assert [bucket.take(100.0) for _ in range(20)] == [0.0] * 20
    assert bucket.take(100.0) == pytest.approx(0.05)
    assert bucket.take(100.05) == pytest.approx(0.05)      # the one due then went to the waiter before
    assert bucket.take(101.0) == 0.0                       # refilling ...
    assert [bucket.take(1000.0) for _ in range(20)] == [0.0] * 20
    assert bucket.take(1000.0) > 0                         # ... but never past twenty
