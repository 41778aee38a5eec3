"""Which remote peer each remote MAC lives behind, for the sleeve (sans-IO).

Weave's router/mac_cache.go: a frame delivered to us over the sleeve teaches
"its source MAC is at its origin peer"; a MAC seen at a new peer moves there
at once (AddForced: "Discovered remote MAC ... (was at ...)"); an entry not
seen for 10 minutes -- longer than ARP caches live -- expires; refreshing the
time stamp happens at most once a minute (Weave: maxAge/10), so a busy MAC
costs one dict lookup per frame.  Entries of a peer that left go with it.

Unlike Weave: only remote MACs (a unicast addressed to us is injected, never
relayed, so local ones are never looked up); never learned from relayed
unicast; and a hard limit of 16384 entries, the oldest evicted and counted,
so forged source MACs cannot grow it without bound.

Threads: written by one thread only (the sleeve's rx); `lookup` from another
(tx) is one dict read, never sees a MAC missing while it is refreshed
(OrderedDict.move_to_end instead of delete + insert).  Oldest-first order is
the order of last refresh, so `expire` and eviction look at the front only.
MACs are 6-byte `bytes` (not memoryviews of a receive buffer).
"""
from __future__ import annotations

from collections import OrderedDict

MAX_AGE = 600.0
REFRESH = 60.0
LIMIT = 16384


class MacCache:
    def __init__(self, max_age: float = MAX_AGE, refresh: float = REFRESH, limit: int = LIMIT):
        self.max_age, self.refresh, self.limit = max_age, refresh, limit
        self._table: OrderedDict[bytes, tuple[str, float]] = OrderedDict()   # mac -> (peer, last seen)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._table)

    def learn(self, mac: bytes, peer: str, now: float) -> str | None:
        """`mac` was seen as the source of a frame from `peer`; returns the peer it was at if it moved."""
        entry = self._table.get(mac)
        if entry is None:
            if len(self._table) >= self.limit:
                self._table.popitem(last=False)
                self.evicted += 1
            self._table[mac] = (peer, now)
            return None
        was, seen = entry
        if was == peer and now - seen < self.refresh:
            return None
        self._table[mac] = (peer, now)
        self._table.move_to_end(mac)
        return was if was != peer else None

    def lookup(self, mac: bytes) -> str | None:
        entry = self._table.get(mac)
        return entry[0] if entry is not None else None

    def macs_of(self, peer: str) -> list[bytes]:
        return [mac for mac, (owner, _) in tuple(self._table.items()) if owner == peer]

    def purge(self, peer: str) -> list[bytes]:
        """The peer is gone: forget its MACs, returned."""
        gone = self.macs_of(peer)
        for mac in gone:
            del self._table[mac]
        return gone

    def expire(self, now: float) -> list[tuple[bytes, str]]:
        """Drop entries not seen for max_age; returns (mac, peer) for "Expired MAC ... at ..."."""
        expired = []
        while self._table:
            mac, (peer, seen) = next(iter(self._table.items()))
            if now - seen <= self.max_age:
                break
            del self._table[mac]
            expired.append((mac, peer))
        return expired
