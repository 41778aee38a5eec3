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
    core.tick(now)                                 timers: deferred topology flush (1 s),
                                                   periodic gossip (30 s), GC
    core.next_deadline() -> float | None           when tick() next has work
    core.drain() -> list[Action]                   everything queued since the last drain
    core.channel(name, gossiper) -> GossipChannel  IPAM and DNS plug in here
    core.peers, core.routes                        the topology and routes (status reads them)
    core.clashes -> list[Clash]                    name clashes reported to/detected by us

Actions: Send(conn_id, tag, payload), Close(conn_id, reason), PeerGone(name),
TopologyChanged().  conn_id is whatever hashable the driver uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class RemotePeer:
    """Who the handshake says is at the other end."""
    name: str
    nickname: str
    uid: int


@dataclass(frozen=True)
class Send:
    conn_id: Hashable
    tag: int
    payload: bytes


@dataclass(frozen=True)
class Close:
    conn_id: Hashable
    reason: str


@dataclass(frozen=True)
class PeerGone:
    """A peer was garbage-collected from the topology: overlays drop its kernel state."""
    name: str


@dataclass(frozen=True)
class TopologyChanged:
    pass


@dataclass(frozen=True)
class Clash:
    """Two live routers share one peer name (cloned VMs)."""
    name: str
    nicknames: tuple[str, str]
    address: str          # where the other clone was seen (ip:port), as far as we know
    message: str          # the full text users see; names machine-id and how to regenerate it
