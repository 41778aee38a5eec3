"""A simulated network of MeshCore instances: an in-memory message bus, a simulated clock, no sockets.

Each connection has two ends (conn ids `(owner, serial)`).  Messages take a
random latency; by default each direction keeps TCP's order, `reorder=True`
drops that, `loss` drops messages at random.  A peer can crash silently (its
ends go dead; the other ends notice only by the 60 s read timeout, or the
core's probe), restart with a new UID, and links can be partitioned and
healed.  A maintainer redials the wanted edges, as the connection maker would.
Also the grow-only set gossiper the convergence tests use.
"""
from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from weavepy.mesh import wire
from weavepy.mesh.core import Close, MeshCore, PeerGone, RemotePeer, Send

READ_TIMEOUT = 60.0


class GSetData:
    def __init__(self, items):
        self.items = frozenset(items)

    def encode(self) -> list[bytes]:
        return ["\n".join(sorted(self.items)).encode("ascii")]

    def merge(self, other: "GSetData") -> "GSetData":
        return GSetData(self.items | other.items)


class GSet:
    """A grow-only set CRDT as a Gossiper: broadcasts what it adds, gossips what is new."""

    def __init__(self):
        self.items: set[str] = set()
        self.channel = None
        self.unicasts: list[tuple[str, bytes]] = []

    def add(self, item: str) -> None:
        self.items.add(item)
        self.channel.broadcast(GSetData({item}))

    def _merge(self, data: bytes):
        try:
            items = set(data.decode("ascii").split("\n"))
        except UnicodeDecodeError:
            raise wire.ProtocolError("not ASCII") from None
        if "" in items:
            raise wire.ProtocolError("empty item")
        new = items - self.items
        self.items |= new
        return GSetData(new) if new else None

    def on_unicast(self, src: str, data: bytes) -> None:
        self.unicasts.append((src, data))

    def on_broadcast(self, src: str, data: bytes):
        return self._merge(data)

    def gossip(self):
        return GSetData(self.items) if self.items else None

    def on_gossip(self, data: bytes):
        return self._merge(data)


def peer_name(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 0xff:02x}"


@dataclass
class End:
    owner: str
    other: tuple
    remote: str
    alive: bool = True
    registered: bool = False
    last_delivery: float = 0.0


@dataclass
class SimNet:
    seed: int
    latency: tuple[float, float] = (0.001, 0.02)
    loss: float = 0.0
    reorder: bool = False
    with_gset: bool = True
    rng: random.Random = field(init=False)
    now: float = 0.0

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.cores: dict[str, MeshCore] = {}
        self.gsets: dict[str, GSet] = {}
        self.nicknames: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self.alive: set[str] = set()
        self.ends: dict[tuple, End] = {}
        self.wanted: set[frozenset] = set()
        self.blocked: set[frozenset] = set()
        self.dialling: set[frozenset] = set()
        self.never_retry: set[frozenset] = set()
        self.goodbyes: list[tuple[str, str]] = []
        self.gone: list[tuple[str, str]] = []
        self.sent: Counter = Counter()
        self._events: list = []
        self._seq = itertools.count()
        self._serial = itertools.count(1)
        self._tick_at: dict[str, float] = {}

    # -- peers ---------------------------------------------------------------

    def add_peer(self, name: str, nickname: str | None = None, address: str | None = None,
                 peer_name: str | None = None) -> MeshCore:
        """`name` is the simulation's key for the host; `peer_name` differs for a clone."""
        uid = self.rng.getrandbits(64) | 1
        nickname = nickname or f"host{len(self.nicknames) + 1}"
        self.nicknames.setdefault(name, nickname)
        n = len(self.addresses)
        self.addresses.setdefault(name, address or f"10.0.{n // 250}.{n % 250 + 1}:6783")
        core = MeshCore(peer_name or name, nickname, uid, rng=random.Random(self.rng.getrandbits(64)))
        self.cores[name] = core
        core.on_queued = lambda: self._at(self.now, self._drain_woken, name, core)
        self.alive.add(name)
        if self.with_gset:
            gset = self.gsets[name] = GSet()
            gset.channel = core.channel("gset", gset)
        self._after(name)
        return core

    def crash(self, name: str) -> None:
        """The process dies without closing its sockets: the far ends notice only by read timeout."""
        self.alive.discard(name)
        for cid, end in self.ends.items():
            if end.owner == name and end.alive:
                end.alive = False
                self._at(self.now + READ_TIMEOUT, self._lost, end.other)

    def restart(self, name: str) -> MeshCore:
        self.crash(name)
        return self.add_peer(name, self.nicknames[name], self.addresses[name])

    # -- links ---------------------------------------------------------------

    def want(self, a: str, b: str) -> None:
        self.wanted.add(frozenset((a, b)))

    def connected(self, a: str, b: str) -> bool:
        return any(e.alive and e.registered and e.owner == a and e.remote == b
                   and self.ends[e.other].alive and self.ends[e.other].registered for e in self.ends.values())

    def dial(self, a: str, b: str) -> None:
        if a not in self.alive or b not in self.alive or frozenset((a, b)) in self.blocked:
            return
        n = next(self._serial)
        ida, idb = (a, n), (b, n)
        self.ends[ida] = End(a, idb, b)
        self.ends[idb] = End(b, ida, a)
        self.dialling.add(frozenset((a, b)))
        self._at(self.now + self._delay(), self._handshake, ida, idb, self.rng.getrandbits(64))

    def _handshake(self, ida, idb, conn_uid) -> None:
        self.dialling.discard(frozenset((ida[0], idb[0])))
        ea, eb = self.ends[ida], self.ends[idb]
        if not (ea.alive and eb.alive):
            return
        a, b = self.cores[ea.owner], self.cores[eb.owner]
        ephemeral = self.addresses[ea.owner].rsplit(":", 1)[0] + f":{40000 + ida[1] % 20000}"
        for end, cid, core, remote, addr, outbound in (
                (ea, ida, a, b, self.addresses[eb.owner], True), (eb, idb, b, a, ephemeral, False)):
            refusal = core.add_connection(cid, RemotePeer(remote.name, remote.nickname, remote.uid),
                                          outbound, addr, conn_uid, self.now)
            self._after(end.owner)
            if refusal is not None:
                self._close(cid, refusal)
            else:
                end.registered = True
        if ea.alive and eb.alive:
            for cid in (ida, idb):
                self._at(self.now + 2 * self._delay(), self._established, cid)

    def _established(self, cid) -> None:
        end = self.ends[cid]
        if end.alive and end.owner in self.alive:
            self.cores[end.owner].connection_established(cid, self.now)
            self._after(end.owner)

    def _close(self, cid, reason: str) -> None:
        """This end sends a Goodbye and closes; the far end sees the reason, then EOF."""
        end = self.ends[cid]
        if not end.alive:
            return
        end.alive = False
        self.goodbyes.append((end.remote, reason))
        if "peer name collision" in reason:
            self.never_retry.add(frozenset((end.owner, end.remote)))
        if end.registered:
            self._at(self.now, self._lost, cid)
        # The far end reads what was sent before the close, then EOF.
        self._at(max(self.now + self._delay(), end.last_delivery), self._lost, end.other)

    def _lost(self, cid) -> None:
        end = self.ends[cid]
        end.alive = False
        if end.owner in self.alive:
            self.cores[end.owner].connection_lost(cid, self.now)
            self._after(end.owner)

    def hang_up(self, a: str, b: str, reason: str = "bye") -> None:
        """a closes its connection to b, as when its operator runs `forget` and the link drops."""
        self.wanted.discard(frozenset((a, b)))
        for cid, end in list(self.ends.items()):
            if end.alive and end.owner == a and end.remote == b:
                self._close(cid, reason)

    def partition(self, side: set[str]) -> None:
        """Cut every link between `side` and the rest; both ends time out a little later."""
        for a in side:
            for b in self.alive - side:
                self.blocked.add(frozenset((a, b)))
        for cid, end in self.ends.items():
            if end.alive and frozenset((end.owner, end.remote)) in self.blocked:
                self._at(self.now + 5.0, self._lost, cid)

    def heal(self) -> None:
        self.blocked.clear()

    def maintain(self, every: float = 1.0, both_ways: bool = False) -> None:
        """Redial wanted edges that are down, as the connection maker does (both ends at once if asked)."""
        for pair in sorted(self.wanted, key=sorted):
            a, b = sorted(pair)
            if (pair not in self.blocked and pair not in self.dialling and pair not in self.never_retry
                    and a in self.alive and b in self.alive and not self._any_end(a, b)):
                self.dial(*self.rng.sample([a, b], 2))
                if both_ways:
                    self.dial(b, a)
        self._at(self.now + every, self.maintain, every, both_ways)

    def _any_end(self, a: str, b: str) -> bool:
        """A connection between a and b that neither end knows to be dead."""
        return any(e.alive and self.ends[e.other].alive and {e.owner, e.remote} == {a, b}
                   for e in self.ends.values())

    # -- the bus -------------------------------------------------------------

    def _delay(self) -> float:
        return self.rng.uniform(*self.latency)

    def _at(self, when: float, fn, *args) -> None:
        heapq.heappush(self._events, (when, next(self._seq), fn, args))

    def _after(self, name: str) -> None:
        """Carry out what the core queued, and make sure it is ticked when it asks."""
        core = self.cores[name]
        for action in core.drain():
            if isinstance(action, Send):
                self._send(action)
            elif isinstance(action, Close):
                self._close(action.conn_id, action.reason)
            elif isinstance(action, PeerGone):
                self.gone.append((name, action.name))
        deadline = core.next_deadline()
        if deadline is not None and deadline < self._tick_at.get(name, float("inf")):
            self._tick_at[name] = deadline
            self._at(deadline, self._tick, name, core)

    def _drain_woken(self, name: str, core: MeshCore) -> None:
        if self.cores.get(name) is core and name in self.alive:
            self._after(name)

    def _tick(self, name: str, core: MeshCore) -> None:
        if self.cores.get(name) is not core or name not in self.alive:
            return
        if self._tick_at.get(name) == self.now:
            del self._tick_at[name]
        deadline = core.next_deadline()
        if deadline is not None and deadline <= self.now:
            core.tick(self.now)
            after = core.next_deadline()
            assert after is None or after > self.now, f"{name}: tick({self.now}) left work due at {after}"
        self._after(name)

    def _send(self, action: Send) -> None:
        end = self.ends[action.conn_id]
        if not end.alive:
            return
        self.sent[action.tag] += 1
        if self.loss and self.rng.random() < self.loss:
            return
        when = self.now + self._delay()
        if not self.reorder:
            when = max(when, end.last_delivery)   # TCP keeps each direction in order
            end.last_delivery = when
        self._at(when, self._deliver, end.other, action.tag, action.payload)

    def _deliver(self, cid, tag: int, payload: bytes) -> None:
        end = self.ends[cid]
        if end.alive and end.owner in self.alive:
            self.cores[end.owner].receive(cid, tag, payload, self.now)
            self._after(end.owner)

    def run(self, duration: float) -> None:
        until = self.now + duration
        while self._events and self._events[0][0] <= until:
            when, _, fn, args = heapq.heappop(self._events)
            self.now = max(self.now, when)
            fn(*args)
        self.now = until

    # -- what a converged network looks like -----------------------------------

    def live_links(self) -> dict[str, set[str]]:
        links = {n: set() for n in self.alive}
        for end in self.ends.values():
            far = self.ends[end.other]
            if end.alive and far.alive and end.registered and far.registered and end.owner in self.alive:
                links[end.owner].add(end.remote)
        return links

    def components(self) -> list[set[str]]:
        links, seen, parts = self.live_links(), set(), []
        for start in sorted(self.alive):
            if start in seen:
                continue
            part, todo = {start}, deque([start])
            while todo:
                for nxt in links[todo.popleft()]:
                    if nxt not in part:
                        part.add(nxt)
                        todo.append(nxt)
            seen |= part
            parts.append(part)
        return parts

    def check_converged(self) -> None:
        """Every peer's view is the truth of its component; routes are shortest and loop-free."""
        links = self.live_links()
        for part in self.components():
            truth = {}
            for name in part:
                me = self.cores[name].topology.ourself
                assert set(me.connections) == links[name], (name, set(me.connections), links[name])
                assert all(c.established for c in me.connections.values()), name
                truth[name] = (me.uid, me.version, dict(me.connections))
            for name in part:
                core = self.cores[name]
                view = {p.name: (p.uid, p.version, dict(p.connections)) for p in core.peers.values()}
                wrong = {n: (view.get(n), truth.get(n)) for n in set(view) | set(truth) if view.get(n) != truth.get(n)}
                assert not wrong, f"{name} sees, against the truth: {wrong}"
                self._check_routes(name, part, links)
            for src in part:
                self._check_broadcast(src, part)
            if self.with_gset:
                sets = {frozenset(self.gsets[n].items) for n in part}
                assert len(sets) == 1, f"gsets differ: {[len(s) for s in sets]}"

    def _check_routes(self, name: str, part: set[str], links) -> None:
        distance = {name: 0}
        todo = deque([name])
        while todo:
            cur = todo.popleft()
            for nxt in links[cur]:
                if nxt not in distance:
                    distance[nxt] = distance[cur] + 1
                    todo.append(nxt)
        for dest in part - {name}:
            cur, hops = name, 0
            while cur != dest:
                nxt = self.cores[cur].routes.unicast[dest]
                assert nxt in links[cur], (cur, dest, nxt)
                cur, hops = nxt, hops + 1
            assert hops == distance[dest], (name, dest, hops, distance[dest])

    def _check_broadcast(self, src: str, part: set[str]) -> None:
        received = Counter({src: 1})
        todo = deque([src])
        while todo:
            cur = todo.popleft()
            for hop in self.cores[cur].routes.broadcast(src):
                received[hop] += 1
                todo.append(hop)
        assert set(received) == part and set(received.values()) == {1}, (src, received)
