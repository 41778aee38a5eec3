"""Unicast and broadcast routes over the topology, computed as Weave computes them.

Breadth-first widening from a start peer, one layer at a time; each layer is
sorted by name and a peer is claimed by the first parent that reaches it, so
every peer computing over the same topology gets the same answer -- what
keeps broadcasts from looping and unicasts from cycling (mesh/peer.go routes,
mesh/routes.go).  Two variants of every table:

- data plane (`symmetric=True`): a link counts only when it is established
  and both ends list it established (forEachConnectedPeer);
- gossip (`symmetric=False`): every listed connection, pending ones too, so
  gossip reaches a peer before its data path is proven.

`peers` is any mapping name -> entry with a `.connections` mapping
remote name -> summary with `.established`; mesh/topology.py's PeerInfo.

`DataRoutes` is the data-plane half frozen for the sleeve's threads (issue 12).
"""
from __future__ import annotations

import math
import random
from collections import Counter
from types import MappingProxyType
from typing import Iterator, Mapping


def _linked(peers: Mapping, name: str, symmetric: bool, exclude) -> Iterator[str]:
    """The peers `name` has a usable link to, skipping `exclude`.

    In no particular order: every peer one parent claims gets the same next
    hop, and the next layer is sorted before it is widened.
    """
    for remote, conn in peers[name].connections.items():
        if remote in exclude or remote not in peers:
            continue
        if symmetric:
            back = peers[remote].connections.get(name)
            if not (conn.established and back is not None and back.established):
                continue
        yield remote


def bfs(peers: Mapping, start: str, symmetric: bool, stop_at: str | None = None) -> tuple[bool, dict[str, str]]:
    """Next hops from `start`: {peer: neighbour of start to send through}; start maps to "".

    With `stop_at`, widening stops when that peer is dequeued; the bool says
    whether it was, and the table then holds what was reached by that moment.
    """
    return _widen(lambda name, reached: _linked(peers, name, symmetric, reached), start, stop_at)


def _widen(linked, start: str, stop_at: str | None) -> tuple[bool, dict[str, str]]:
    """bfs over `linked(name, reached)`: the neighbours of `name` not in `reached`."""
    routes: dict[str, str] = {start: ""}
    layer = [start]
    while layer:
        layer.sort()
        next_layer = []
        for current in layer:
            if current == stop_at:
                return True, routes
            for remote in linked(current, routes):
                next_layer.append(remote)
                routes[remote] = remote if current == start else routes[current]
        layer = next_layer
    return False, routes


def fan_out(n_peers: int) -> int:
    """How many neighbours get each gossip: 2*log2(N), at least 1 -- twice mesh/routes.go's log2(N),
    so news needs fewer relay rounds to cover a sparse mesh."""
    return max(1, int(2 * math.log2(n_peers))) if n_peers > 1 else 0


class Routes:
    """The four tables for one peer (`ourself`) over one snapshot of the topology."""

    def __init__(self, peers: Mapping, ourself: str):
        self._peers = peers
        self.ourself = ourself
        self.unicast = self._unicast(True)
        self.unicast_all = self._unicast(False)
        self._broadcast: dict[tuple[str, bool], list[str]] = {}

    def _unicast(self, symmetric: bool) -> dict[str, str]:
        _, table = bfs(self._peers, self.ourself, symmetric)
        del table[self.ourself]
        return table

    def broadcast(self, source: str) -> list[str]:
        """Data plane: the neighbours we pass a broadcast from `source` on to."""
        return self._broadcast_hops(source, True)

    def broadcast_all(self, source: str) -> list[str]:
        """Gossip: the same over every link."""
        return self._broadcast_hops(source, False)

    def _broadcast_hops(self, source: str, symmetric: bool) -> list[str]:
        # Entries for other sources are computed on demand and kept with this snapshot (mesh/routes.go).
        key = (source, symmetric)
        if key not in self._broadcast:
            hops: list[str] = []
            if source in self._peers:
                found, reached = bfs(self._peers, source, symmetric, stop_at=self.ourself)
                if found:
                    hops = sorted(_linked(self._peers, self.ourself, symmetric, reached))
            self._broadcast[key] = hops
        return self._broadcast[key]

    def computed_broadcasts(self) -> dict[str, list[str]]:
        """The data-plane broadcast entries computed so far (ours always): what Weave's status shows."""
        self.broadcast(self.ourself)
        return {src: hops for (src, symmetric), hops in sorted(self._broadcast.items()) if symmetric}

    def data_plane(self) -> DataRoutes:
        """This snapshot's data-plane tables, frozen for readers on other threads."""
        return DataRoutes(self._peers, self.ourself, self.unicast)

    def random_neighbours(self, rng: random.Random, exclude: str | None = None) -> list[str]:
        """min(2*log2 N, neighbours) distinct neighbours, each weighted by how many peers it routes to.

        The weighting favours neighbours at the far end of bottleneck links (mesh/routes.go).
        """
        weights = Counter(self.unicast_all.values())
        weights.pop(exclude, None)
        candidates = sorted(weights)
        chosen: list[str] = []
        for _ in range(min(fan_out(len(self.unicast_all) + 1), len(candidates))):
            pick = rng.choices(candidates, weights=[weights[c] for c in candidates])[0]
            chosen.append(pick)
            candidates.remove(pick)
        return chosen


class DataRoutes:
    """The data-plane tables of one peer over a frozen copy of the symmetric adjacency.

    Built on the event loop (an O(E) copy, so later topology changes never show
    through) and handed to the sleeve's threads whole.  Nothing in it changes
    after construction except caches of values that are a pure function of the
    copy: two threads racing on an entry compute and store the same tuple.

    - `unicast`: {peer: next hop}, as Routes.unicast;
    - `broadcast(src)`: the neighbours we pass a broadcast from `src` on to, as Routes.broadcast;
    - `onward(src, via)`: broadcast(src) as `via` computes it -- via's neighbours the
      widening from `src` has not reached when `via` is dequeued.  Hence
      broadcast(src) == onward(src, ourself), and onward(me, hop) says whether a
      neighbour that got a copy from us must pass it on.
    """

    def __init__(self, peers: Mapping, ourself: str, unicast: Mapping[str, str] | None = None):
        self.ourself = ourself
        self.peers = frozenset(peers)
        self._adjacent = {name: tuple(sorted(_linked(peers, name, True, ()))) for name in peers}
        self._unicast = None if unicast is None else MappingProxyType(dict(unicast))
        self._onward: dict[tuple[str, str], tuple[str, ...]] = {}

    def _widen(self, start: str, stop_at: str | None = None) -> tuple[bool, dict[str, str]]:
        adjacent = self._adjacent
        return _widen(lambda name, reached: (r for r in adjacent[name] if r not in reached), start, stop_at)

    @property
    def unicast(self) -> Mapping[str, str]:
        if self._unicast is None:
            table = self._widen(self.ourself)[1] if self.ourself in self._adjacent else {self.ourself: ""}
            del table[self.ourself]
            self._unicast = MappingProxyType(table)
        return self._unicast

    def neighbours(self, name: str) -> tuple[str, ...]:
        return self._adjacent.get(name, ())

    def broadcast(self, src: str) -> tuple[str, ...]:
        return self.onward(src, self.ourself)

    def onward(self, src: str, via: str) -> tuple[str, ...]:
        hops = self._onward.get((src, via))
        if hops is None:
            hops = ()
            if src in self._adjacent and via in self._adjacent:
                found, reached = self._widen(src, stop_at=via)
                if found:
                    hops = tuple(r for r in self._adjacent[via] if r not in reached)
            self._onward[(src, via)] = hops
        return hops
