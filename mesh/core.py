"""The mesh router's state, sans-IO: this peer, its connections, the topology and gossip.

The asyncio driver (mesh/driver.py) owns sockets and timers.  It tells the
core what happened -- a connection passed its handshake, was established by
its overlay, delivered a message, ended; time passed -- and then drains the
actions the core queued: messages to send on a connection, connections to
close, peers that went away.  Gossipers (the topology itself, IPAM, DNS) call
their channel's unicast/broadcast at any time; what they send is queued the
same way.  Nothing here touches a socket or reads a clock: `now` is passed in.

CONTRACT (the driver is written against it):

    core = MeshCore(name, nickname, uid, conn_limit=200)
    core.add_connection(conn_id, remote, outbound, remote_addr, conn_uid, now) -> str | None
        A handshake finished.  Returns None when the connection is registered
        (pending), or the reason it is refused (self-connection, name clash,
        connection limit, duplicate that lost the tie-break).  A refused
        connection is not registered; the driver sends the reason as a
        Goodbye message and closes it.  Registering may also queue a
        Close for an older duplicate, or a Probe (below).
    core.connection_established(conn_id, now)     the overlay proved the data path
    core.connection_lost(conn_id, now)            the socket ended (any reason); idempotent
    core.receive(conn_id, tag, payload, now)      a gossip-tagged message (wire.GOSSIP*, PROBE*, CLASH)
    core.tick(now)                                 timers: deferred topology flush (0.1 s),
                                                   periodic gossip (30 s), GC (1 s), probes (2 s)
    core.next_deadline() -> float | None           when tick() next has work
    core.drain() -> list[Action]                   everything queued since the last drain
    core.channel(name, gossiper) -> GossipChannel  IPAM and DNS plug in here
    core.peers, core.routes                        the topology and routes (status reads them)
    core.clashes -> list[Clash]                    name clashes reported to/detected by us

Actions: Send(conn_id, tag, payload), Close(conn_id, reason), PeerGone(name),
TopologyChanged().  conn_id is whatever hashable the driver uses.

How the contract is filled in, and what was added:

- `remote_addr` must be "ip:port" (ValueError otherwise: a driver bug).
- The core answers PROBE itself (with PROBE_REPLY, same nonce): the driver
  passes tags GOSSIP, GOSSIP_UNICAST, GOSSIP_BROADCAST, PROBE, PROBE_REPLY
  and CLASH to receive() and nothing else of the core's concern.
- Restart or clash.  A handshake from a name we already have a connection to,
  with a *different* UID, is either that peer restarted (the old TCP
  connection is dead but not yet noticed) or a clone.  add_connection returns
  None and holds the new connection aside (not in the topology; what arrives
  on it is kept, up to 64 messages, and replayed), and queues
  Send(old, PROBE, nonce).  A PROBE_REPLY on the old connection within
  PROBE_TIMEOUT (2 s, decided in receive()) proves two live routers share the
  name: the new connection gets Send(CLASH) then Close(clash message), the old
  one Send(CLASH), and a Clash is recorded.  No reply by then (tick()) or the
  old connection ending: the old one is closed and the new one registered.
- Clones that never meet at one peer are found in gossip (mesh/clash.py):
  after that, we record a Clash and stop racing the other clone's versions.
- `is_clash(reason)`: a Goodbye reason that is a name clash (never retry).
- `status()` -> Weave's report Router fields: Peers, UnicastRoutes, BroadcastRoutes.
- `connections` -> {conn_id: Connection}; `stats` -> Counter of dropped input
  ("malformed", "unroutable", "looped", "held_overflow", ...).
- `pause_sending(conn_id)` / `resume_sending(conn_id)`: optional
  back-pressure.  While paused, gossip for that connection is merged into
  one pending value per channel instead of becoming Send actions (asyncio's
  pause_writing/resume_writing map onto these).
- `core.on_queued`: set it to a callable (e.g. one scheduling a drain with
  loop.call_soon); it is called when a service's channel call queued
  something outside any core call, since the driver cannot see those.  It is
  called once until the next drain().
- `MeshCore(..., rng=random.Random(seed))` for reproducible simulations.
- Topology changes are flushed TOPOLOGY_FLUSH_DELAY (0.1 s, Weave: 1 s) after
  they happen; improved entries heard from others are relayed at once.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable

from . import wire
from .actions import Close, PeerGone, Send, TopologyChanged
from .clash import Clash, CloneWatch, clash_message, decode_report, encode_report, is_clash, who
from .gossip import GOSSIP_INTERVAL, Gossiper, GossipChannel, GossipRouter, PeerRefused
from .routes import Routes
from .topology import PeerInfo, Topology, TopologyUpdate, decode_peers, valid_address

__all__ = ["MeshCore", "RemotePeer", "Connection", "Clash", "Send", "Close", "PeerGone",
           "TopologyChanged", "is_clash", "clash_message"]

TOPOLOGY_CHANNEL = "topology"
PROBE_TIMEOUT = 2.0            # a live peer answers over a working TCP connection well within this
TOPOLOGY_FLUSH_DELAY = 0.1     # coalesce a burst of local changes; Weave waits 1 s (deferTopologyUpdateDuration)
HELD_MESSAGES = 64             # kept from a connection held aside while its peer is probed
KEPT_CLASHES = 16              # clash reports remembered (peers can send any number)
# Weave collects unreachable peers 1 s after an update.  Here a peer goes once
# it has been unreachable for that long: an update that names a peer before the
# link leading to it has arrived, or a connection swapped for its successor,
# does not make everyone drop the peer and relearn it.
GC_DELAY = 1.0
NO_PEER = "00:00:00:00:00:00"  # what Weave's status shows as the route to ourselves


@dataclass(frozen=True)
class RemotePeer:
    """Who the handshake says is at the other end."""
    name: str
    nickname: str
    uid: int


@dataclass
class Connection:
    conn_id: Hashable
    remote: RemotePeer
    outbound: bool
    remote_addr: str
    conn_uid: int
    established: bool = False


@dataclass
class _Probe:
    """A connection held aside until the old connection to the same name answers, or does not."""
    new: Connection
    old_id: Hashable
    nonce: bytes
    deadline: float
    held: list[tuple[int, bytes]]


class _TopologyGossiper:
    """Channel "topology": the topology merged like any other gossip (mesh/router.go OnGossip*)."""

    def __init__(self, core: "MeshCore"):
        self._core = core

    def on_unicast(self, src: str, data: bytes) -> None:
        pass   # nobody unicasts topology

    def on_broadcast(self, src: str, data: bytes) -> TopologyUpdate | None:
        return self.on_gossip(data)

    def gossip(self) -> TopologyUpdate:
        return TopologyUpdate(self._core.topology, self._core.topology.peers)

    def on_gossip(self, data: bytes) -> TopologyUpdate | None:
        return self._core._merge_topology(decode_peers(data, self._core.topology.is_stale))


class MeshCore:
    def __init__(self, name: str, nickname: str, uid: int, conn_limit: int = 200,
                 *, rng: random.Random | None = None):
        self.ourself = self.name = name
        self.nickname = nickname
        self.uid = uid
        self.conn_limit = conn_limit          # 0: unlimited, as --conn-limit
        self.topology = Topology(name, nickname, uid)
        self._us = who(name, nickname)
        self.stats: Counter = Counter()
        self.clashes: list[Clash] = []
        self._rng = rng or random.Random()
        self._connections: dict[Hashable, Connection] = {}
        self._by_name: dict[str, Hashable] = {}
        self._probes: dict[Hashable, _Probe] = {}
        self._actions: list = []
        self._changed = False
        self._routes: Routes | None = None
        self._now = 0.0
        self._flush_names: set[str] = set()
        self._flush_at: float | None = None
        self._next_gossip: float | None = None
        self._clones = CloneWatch()
        self._unreachable_since: dict[str, float] = {}
        self._reach_stale = False
        self.on_queued: Callable[[], None] | None = None
        self._woken = False
        self._gossip = GossipRouter(self, self._rng, self._actions.append, self.stats, lambda: self._now,
                                    self._wake)
        self._gossip.channel(TOPOLOGY_CHANNEL, _TopologyGossiper(self))

    # -- what status and the driver read -------------------------------------

    @property
    def peers(self) -> dict[str, PeerInfo]:
        return self.topology.peers

    @property
    def routes(self) -> Routes:
        if self._routes is None:
            self._routes = Routes(self.topology.peers, self.name)
        return self._routes

    @property
    def connections(self) -> dict[Hashable, Connection]:
        return self._connections

    def connection_to(self, name: str) -> Hashable | None:
        return self._by_name.get(name)

    def channel(self, name: str, gossiper: Gossiper) -> GossipChannel:
        return self._gossip.channel(name, gossiper)

    # -- connections -----------------------------------------------------------

    def add_connection(self, conn_id: Hashable, remote: RemotePeer, outbound: bool, remote_addr: str,
                       conn_uid: int, now: float) -> str | None:
        self._advance(now)
        if conn_id in self._connections or conn_id in self._probes:
            raise ValueError(f"connection {conn_id!r} added twice")
        if not valid_address(remote_addr):
            raise ValueError(f"remote address {remote_addr!r} is not ip:port")
        if len(remote.nickname.encode("utf-8")) > 255:
            return "nickname longer than 255 bytes"   # the topology's limit
        if remote.uid == 0:
            return "peer UID 0 is reserved for placeholders"
        if remote.name == self.name:
            if remote.uid == self.uid:
                return "cannot connect to ourself"
            message = clash_message(who(self.name, self.nickname, label="local "),
                                    who(remote.name, remote.nickname, remote_addr, label="remote "))
            self._record(Clash(self.name, (self.nickname, remote.nickname), remote_addr, message))
            return message
        conn = Connection(conn_id, remote, outbound, remote_addr, conn_uid)
        if any(p.new.remote.name == remote.name for p in self._probes.values()):
            return f"connection to {who(remote.name, remote.nickname)} refused: an earlier one is being checked"
        existing_id = self._by_name.get(remote.name)
        if existing_id is not None:
            existing = self._connections[existing_id]
            if existing.remote.uid != remote.uid:
                self._start_probe(conn, existing)
                return None
            if (refusal := self._break_tie(conn, existing)) is not None:
                return refusal
        if self.conn_limit > 0 and len(self._connections) + len(self._probes) >= self.conn_limit:
            return f"Connection limit reached ({self.conn_limit})"
        self._register(conn)
        return None

    def _break_tie(self, new: Connection, old: Connection) -> str | None:
        """Both ends dialled at once: the lower connection UID wins, the same on both ends (mesh/local_peer.go)."""
        reason = f"Multiple connections to {who(new.remote.name, new.remote.nickname)} added to {self._us}"
        if new.conn_uid <= old.conn_uid:
            self._close(old.conn_id, reason)
        return None if new.conn_uid < old.conn_uid else reason   # equal: both go

    def _register(self, conn: Connection) -> None:
        name = conn.remote.name
        known = self.peers.get(name)
        restarted = known is not None and not known.placeholder and known.uid != conn.remote.uid
        fresh = restarted or name not in self.routes.unicast_all
        self._connections[conn.conn_id] = conn
        self._by_name[name] = conn.conn_id
        self.topology.add_local_connection(name, conn.remote.nickname, conn.remote.uid,
                                           conn.remote_addr, conn.outbound)
        if conn.established:
            self.topology.set_local_established(name)
        self._topology_changed({name, self.name})
        if fresh:
            self._gossip.send_all_down(conn.conn_id)

    def connection_established(self, conn_id: Hashable, now: float) -> None:
        self._advance(now)
        if conn_id in self._probes:
            self._probes[conn_id].new.established = True
            return
        conn = self._connections.get(conn_id)
        if conn is None or conn.established:
            return
        conn.established = True
        self.topology.set_local_established(conn.remote.name)
        self._topology_changed({self.name})

    def connection_lost(self, conn_id: Hashable, now: float) -> None:
        self._advance(now)
        if self._probes.pop(conn_id, None) is not None:
            self._gossip.connection_gone(conn_id)
        elif conn_id in self._connections:
            self._remove(conn_id)

    def _close(self, conn_id: Hashable, reason: str) -> None:
        self._actions.append(Close(conn_id, reason))
        self._remove(conn_id)

    def _remove(self, conn_id: Hashable) -> None:
        conn = self._connections.pop(conn_id)
        del self._by_name[conn.remote.name]
        self.topology.remove_local_connection(conn.remote.name)
        self._gossip.connection_gone(conn_id)
        self._topology_changed({self.name})
        for probe in [p for p in self._probes.values() if p.old_id == conn_id]:
            self._promote(probe)

    # -- restart or clash --------------------------------------------------------

    def _start_probe(self, new: Connection, old: Connection) -> None:
        nonce = self._rng.getrandbits(64).to_bytes(8, "big")
        self._probes[new.conn_id] = _Probe(new, old.conn_id, nonce, self._now + PROBE_TIMEOUT, [])
        self._actions.append(Send(old.conn_id, wire.PROBE, nonce))

    def _promote(self, probe: _Probe) -> None:
        """The old connection is gone: the held one is the peer's new run."""
        del self._probes[probe.new.conn_id]
        self._register(probe.new)
        for tag, payload in probe.held:
            if probe.new.conn_id in self._connections:
                self._dispatch(probe.new.conn_id, tag, payload)

    def _probe_answered(self, conn_id: Hashable, nonce: bytes) -> None:
        probe = next((p for p in self._probes.values() if p.old_id == conn_id and p.nonce == nonce), None)
        if probe is None:
            self.stats["stray_probe_reply"] += 1
            return
        del self._probes[probe.new.conn_id]
        self._gossip.connection_gone(probe.new.conn_id)
        old, new = self._connections[conn_id], probe.new
        message = clash_message(who(old.remote.name, old.remote.nickname, old.remote_addr),
                                who(new.remote.name, new.remote.nickname, new.remote_addr),
                                f", both connected to {self._us},")
        name = new.remote.name
        self._record(Clash(name, (old.remote.nickname, new.remote.nickname), new.remote_addr, message))
        for told, other in ((old, new), (new, old)):
            report = Clash(name, (told.remote.nickname, other.remote.nickname), other.remote_addr, message)
            self._actions.append(Send(told.conn_id, wire.CLASH, encode_report(report)))
        self._actions.append(Close(new.conn_id, message))

    def _watch_clones(self, entries: list[PeerInfo]) -> None:
        for entry in entries:
            if self._clones.overtaken(entry.uid, self._now):
                self.topology.clone_uids.add(entry.uid)
                address = self._clone_address()
                message = clash_message(who(self.name, self.nickname, label="local "),
                                        who(entry.name, entry.nickname, address, label="remote "),
                                        " (seen in gossip)")
                self._record(Clash(self.name, (self.nickname, entry.nickname), address, message))

    def _clone_address(self) -> str:
        """A peer we are not connected to that lists a connection to our name is connected to the clone."""
        for name, peer in sorted(self.peers.items()):
            conn = peer.connections.get(self.name)
            if conn is not None and name not in self._by_name:
                return conn.address
        return ""

    def _record(self, clash: Clash) -> None:
        if clash not in self.clashes:
            self.clashes = (self.clashes + [clash])[-KEPT_CLASHES:]

    # -- messages ----------------------------------------------------------------

    def receive(self, conn_id: Hashable, tag: int, payload: bytes, now: float) -> None:
        self._advance(now)
        if tag == wire.PROBE and (conn_id in self._connections or conn_id in self._probes):
            if len(payload) == 8:
                self._actions.append(Send(conn_id, wire.PROBE_REPLY, payload))
            else:
                self.stats["malformed"] += 1
        elif (probe := self._probes.get(conn_id)) is not None:
            if len(probe.held) < HELD_MESSAGES:
                probe.held.append((tag, payload))
            else:
                self.stats["held_overflow"] += 1
        elif conn_id in self._connections:
            self._dispatch(conn_id, tag, payload)
        else:
            self.stats["unknown_connection"] += 1

    def _dispatch(self, conn_id: Hashable, tag: int, payload: bytes) -> None:
        try:
            if tag == wire.PROBE_REPLY:
                self._probe_answered(conn_id, payload)
            elif tag == wire.CLASH:     # a third peer saw another live router with our name
                self._record(decode_report(payload, self.name))
            elif tag in (wire.GOSSIP, wire.GOSSIP_UNICAST, wire.GOSSIP_BROADCAST):
                self._gossip.receive(conn_id, self._connections[conn_id].remote.name, tag, payload)
            else:
                self.stats["unknown_tag"] += 1
        except wire.ProtocolError:
            self.stats["malformed"] += 1
        except PeerRefused as exc:
            self.stats["refused"] += 1
            if conn_id in self._connections:
                self._close(conn_id, str(exc))

    def _merge_topology(self, update: list[PeerInfo]) -> TopologyUpdate | None:
        merged = self.topology.apply_update(update)
        if merged.ourself_bumped:
            self._defer_flush({self.name})   # our entry must now supersede the one we heard
        self._watch_clones(merged.overtaken_by)
        if merged.links_changed:
            self._dirty()
        elif merged.improved or merged.ourself_bumped:
            self._changed = True     # the same graph (a new address, a re-gossiped entry): routes stand
        return TopologyUpdate(self.topology, merged.improved) if merged.improved else None

    def _dirty(self) -> None:
        self._routes = None
        self._changed = True
        self._reach_stale = True

    def _topology_changed(self, names: set[str]) -> None:
        self._dirty()
        self._defer_flush(names)

    def _note_reachability(self) -> None:
        """Start the clock on peers that just became unreachable; stop it for those reachable again."""
        if not self._reach_stale:
            return
        self._reach_stale = False
        unreachable = self.topology.unreachable(self.routes.unicast_all)
        for name in list(self._unreachable_since):
            if name not in unreachable:
                del self._unreachable_since[name]
        for name in unreachable:
            self._unreachable_since.setdefault(name, self._now)

    def _collect_garbage(self) -> None:
        gone = sorted(n for n, since in self._unreachable_since.items() if since + GC_DELAY <= self._now)
        if gone:
            self.topology.forget(gone)
            for name in gone:
                del self._unreachable_since[name]
            self._actions.extend(PeerGone(name) for name in gone)
            self._routes = None
            self._changed = True

    def _defer_flush(self, names: set[str]) -> None:
        self._flush_names |= names
        if self._flush_at is None:
            self._flush_at = self._now + TOPOLOGY_FLUSH_DELAY

    # -- time ----------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        self._now = now
        if self._next_gossip is None:
            self._next_gossip = now + GOSSIP_INTERVAL

    def tick(self, now: float) -> None:
        self._advance(now)
        self._note_reachability()
        self._collect_garbage()
        for probe in [p for p in self._probes.values() if p.deadline <= now]:
            old = self._connections[probe.old_id]
            self._close(probe.old_id, f"{who(old.remote.name, old.remote.nickname)} did not answer on this "
                                      "connection: it restarted, and its new connection replaces this one")
        if self._flush_at is not None and now >= self._flush_at:
            names, self._flush_names, self._flush_at = self._flush_names | {self.name}, set(), None
            self._gossip.gossip_to_neighbours(TOPOLOGY_CHANNEL, TopologyUpdate(self.topology, names))
        if self._next_gossip is not None and now >= self._next_gossip:
            self._next_gossip = now + GOSSIP_INTERVAL
            self._gossip.gossip_periodic()

    def next_deadline(self) -> float | None:
        self._note_reachability()
        times = [t for t in (self._flush_at, self._next_gossip) if t is not None]
        times += [p.deadline for p in self._probes.values()]
        times += [since + GC_DELAY for since in self._unreachable_since.values()]
        return min(times, default=None)

    def _wake(self) -> None:
        if self.on_queued is not None and not self._woken:
            self._woken = True
            self.on_queued()

    def drain(self) -> list:
        self._note_reachability()
        self._woken = False
        actions = list(self._actions)
        self._actions.clear()
        if self._changed:
            actions.append(TopologyChanged())
            self._changed = False
        return actions + self._gossip.take_sends()

    def pause_sending(self, conn_id: Hashable) -> None:
        if conn_id in self._connections or conn_id in self._probes:
            self._gossip.pause(conn_id)

    def resume_sending(self, conn_id: Hashable) -> None:
        if conn_id in self._connections or conn_id in self._probes:
            self._gossip.resume(conn_id)

    # -- status --------------------------------------------------------------------

    def status(self) -> dict:
        """The Router section of Weave's report, less Connections and Targets (the driver's)."""
        def nickname(name: str) -> str:
            peer = self.peers.get(name)
            return peer.nickname if peer is not None else ""

        peers = [{"Name": p.name, "NickName": p.nickname, "UID": p.uid, "Version": p.version,
                  "Connections": [{"Name": r, "NickName": nickname(r), "Address": c.address,
                                   "Outbound": c.outbound, "Established": c.established}
                                  for r, c in sorted(p.connections.items())]}
                 for _, p in sorted(self.peers.items())]
        routes = self.routes
        unicast = [{"Dest": self.name, "Via": NO_PEER}]
        unicast += [{"Dest": dest, "Via": via} for dest, via in sorted(routes.unicast.items())]
        broadcast = [{"Source": src, "Via": hops} for src, hops in routes.computed_broadcasts().items()]
        return {"Peers": peers, "UnicastRoutes": unicast, "BroadcastRoutes": broadcast}
