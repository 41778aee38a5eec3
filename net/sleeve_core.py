"""The sleeve's forwarding decisions (sans-IO): for each frame, which hops get a copy, or why none does.

Weave's router/network_router.go per frame: a frame captured from the bridge
goes to the peer its destination MAC was learned at, by the unicast route, or
along the broadcast routes when the MAC is unknown or a group address
(handleCapturedPacket, relay, relayBroadcast); a frame that arrives for
another peer is relayed by unicast route and teaches nothing; one for us
teaches "source MAC is at origin peer", is injected into the bridge and, if it
is a broadcast, relayed along broadcast(origin) as we compute it
(handleForwardedPacket).  A broadcast datagram names its receiver as
destination, so "for us" covers both.

What weavepy adds: the kernel fast path shares the bridge.  Per remote peer
there is one Path -- fastdp (direct, the kernel carries it), sleeve (direct),
or relay via a neighbour -- and the bridge floods to the kernel only towards
fastdp paths, while every sleeve decision is made here:

- a broadcast from the tap: fastdp neighbours already have the kernel's copy,
  so they get a sleeve copy only to pass on (FLOOD|DELIVERED), and only when
  onward(me, hop) is non-empty; other neighbours get FLOOD;
- a unicast from the tap to a MAC behind a fastdp neighbour is the bridge's
  flood copy of something the kernel carried: dropped (`kernel_carried`);
- relays always go by sleeve, even over a fastdp link (the kernel cannot send
  a frame back out of the port it came in), and need a sleeve hop that is up.

Each peer gets each frame once: kernel copies reach only the origin's direct
fastdp neighbours, all in layer 1 of the origin's widening, so no onward set
contains them; everything else follows the broadcast routes, which reach each
peer once (mesh/routes.py).  A hop limit (16) ends loops from views that
disagree while topology news spreads.

`from_tap`/`from_udp` are pure functions of a ForwardingState snapshot (the
event loop builds one and swaps it in) plus the MacCache; the counter says
why frames were dropped.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from ..mesh.routes import DataRoutes
from .sleeve_codec import DELIVERED, FLOOD, MAX_HOPS
from .sleeve_macs import MacCache

log = logging.getLogger("weavepy.sleeve")


FASTDP, SLEEVE, RELAY = "fastdp", "sleeve", "relay"
STP = b"\x01\x80\xc2\x00\x00\x00"   # bridge BPDUs stay on their host (Weave)

_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class Path:
    """How frames reach a remote peer: kind FASTDP/SLEEVE (hop is the peer) or RELAY via hop."""
    kind: str
    hop: str


@dataclass(frozen=True)
class Hop:
    """A neighbour's sleeve sub-connection: where to send, the largest datagram, whether it is up."""
    addr: tuple[str, int]
    dgram_max: int
    up: bool = True


@dataclass(frozen=True)
class Send:
    """One datagram (chunked by the sender) to neighbour `hop` for `dst_peer`."""
    hop: str
    dst_peer: str
    flags: int
    hops_left: int = MAX_HOPS


@dataclass(frozen=True)
class ForwardingState:
    me: str
    routes: DataRoutes
    paths: Mapping[str, Path] = field(default_factory=lambda: _EMPTY)
    hops: Mapping[str, Hop] = field(default_factory=lambda: _EMPTY)
    by_sender: Mapping[bytes, str] = field(default_factory=lambda: _EMPTY)   # wire name -> peer name (IO layer)

    @classmethod
    def empty(cls, me: str) -> ForwardingState:
        """Before the first topology: no routes, every frame dropped as no_route or sent nowhere."""
        return cls(me, DataRoutes({}, me))

    @classmethod
    def build(cls, routes: DataRoutes, active: Mapping[str, str | None], hops: Mapping[str, Hop],
              by_sender: Mapping[bytes, str] = _EMPTY) -> ForwardingState:
        """`active`: per direct neighbour, the overlay its connection uses (FASTDP, SLEEVE or None)."""
        paths = {peer: Path(RELAY if hop != peer else FASTDP if active.get(peer) == FASTDP else SLEEVE, hop)
                 for peer, hop in routes.unicast.items()}
        return cls(routes.ourself, routes, MappingProxyType(paths), MappingProxyType(dict(hops)),
                   MappingProxyType(dict(by_sender)))

    def fastdp(self, peer: str) -> bool:
        path = self.paths.get(peer)
        return path is not None and path.kind == FASTDP


class SleeveCore:
    def __init__(self, macs: MacCache | None = None):
        self.macs = MacCache() if macs is None else macs
        self.dropped: Counter[str] = Counter()

    def from_tap(self, dst_mac: bytes, src_mac: bytes, state: ForwardingState) -> list[Send]:
        """A frame the bridge gave the tap: the datagrams to send (empty: dropped, or the kernel has it)."""
        if dst_mac == STP:
            return self._drop("stp")
        if self.macs.lookup(src_mac) is not None:
            # Weave: a captured frame whose source lives at another peer is one we injected
            # coming back (a loop outside the bridge); discard it.
            return self._drop("remote_src_mac")
        owner = None if dst_mac[0] & 1 else self.macs.lookup(dst_mac)
        if owner is None:
            sends = []
            for hop in state.routes.broadcast(state.me):
                if not state.fastdp(hop):
                    sends.append(Send(hop, hop, FLOOD))
                elif state.routes.onward(state.me, hop):
                    sends.append(Send(hop, hop, FLOOD | DELIVERED))
            return self._up(state, sends)
        hop = state.routes.unicast.get(owner)
        if hop is None:
            return self._drop("no_route")
        if hop == owner and state.fastdp(owner):
            return self._drop("kernel_carried")
        return self._up(state, [Send(hop, owner, 0)])

    def from_udp(self, src: str, dst: str, flags: int, hops_left: int, src_mac: bytes,
                 state: ForwardingState, now: float) -> tuple[bool, list[Send]]:
        """A FRAME datagram from origin `src` for `dst`: (inject it into our bridge?, relays)."""
        if hops_left <= 0:
            return False, self._drop("ttl")
        if src == state.me:
            return False, self._drop("from_self")
        if src not in state.routes.peers or dst not in state.routes.peers:
            return False, self._drop("unknown_peer")
        if dst != state.me:
            if flags & FLOOD:       # a broadcast copy names its receiver: this one is not ours
                return False, self._drop("misdirected")
            hop = state.routes.unicast.get(dst)
            if hop is None:
                return False, self._drop("no_route")
            return False, self._up(state, [Send(hop, dst, flags, hops_left - 1)])
        if not src_mac[0] & 1:
            was = self.macs.learn(src_mac, src, now)
            if was is not None:
                log.info("Discovered remote MAC %s at %s (was at %s)", src_mac.hex(":"), src, was)
        relays = []
        if flags & FLOOD:
            relays = self._up(state, [Send(hop, hop, FLOOD, hops_left - 1) for hop in state.routes.broadcast(src)])
        return not flags & DELIVERED, relays

    def _up(self, state: ForwardingState, sends: list[Send]) -> list[Send]:
        """The sends that can go: a hop limit left and an established sleeve sub-connection."""
        ok = []
        for send in sends:
            hop = state.hops.get(send.hop)
            if send.hops_left <= 0:
                self.dropped["ttl"] += 1
            elif hop is None or not hop.up:
                self.dropped["no_sleeve_hop"] += 1
            else:
                ok.append(send)
        return ok

    def _drop(self, reason: str) -> list[Send]:
        self.dropped[reason] += 1
        return []
