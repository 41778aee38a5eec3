"""Which remote VTEPs keep kernel FDB state, and until when (sans-IO).

A VTEP is a remote peer's IP.  While an established fastdp connection to it
exists, it has a flood entry (broadcast / unknown unicast reach it).  The
kernel state outlives the router on purpose: containers keep talking while it
restarts.  So when the last connection to a VTEP ends, its entries *linger*;
a new connection within the linger adopts them untouched, otherwise they are
removed -- the flood entry and every MAC learned behind that VTEP, the
counterpart of Weave's deleteFlows.  They go at once when the peer is gone
from the topology or turns up at another IP.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

# Long enough for a router restart (or the peer's) to reconnect; short enough
# that a vanished host's containers are flooded to others within a minute.
DEFAULT_LINGER = 60.0


@dataclass(frozen=True)
class AddFlood:
    ip: str


@dataclass(frozen=True)
class RemoveVtep:
    """Remove the flood entry and all MACs learned behind this IP."""
    ip: str


@dataclass
class _Vtep:
    peer: str | None = None             # None: found in the kernel at start, owner unknown
    flood: bool = False                 # the flood entry is installed
    claims: set = field(default_factory=set)    # established connections using it
    linger_until: float | None = None


class VtepTable:
    def __init__(self, linger: float = DEFAULT_LINGER):
        self.linger = linger
        self._vteps: dict[str, _Vtep] = {}

    def adopt(self, flood_ips, other_ips, now: float) -> None:
        """Kernel state found at start (a restart): it lingers until a connection claims it."""
        for ip in set(flood_ips) | set(other_ips):
            self._vteps[ip] = _Vtep(flood=ip in set(flood_ips), linger_until=now + self.linger)

    def established(self, conn: Hashable, peer: str, ip: str, now: float) -> list:
        out = []
        for other_ip, rec in list(self._vteps.items()):
            if other_ip != ip and rec.peer == peer and not rec.claims:
                out.append(self._remove(other_ip))      # the peer moved: its old IP holds nothing
        rec = self._vteps.setdefault(ip, _Vtep())
        if rec.peer not in (None, peer) and not rec.claims:
            out.append(self._remove(ip))                # another peer's leftovers at a reused IP
            rec = self._vteps.setdefault(ip, _Vtep())
        rec.peer = peer
        rec.claims.add(conn)
        rec.linger_until = None
        if not rec.flood:
            rec.flood = True
            out.append(AddFlood(ip))
        return out

    def withdrawn(self, conn: Hashable) -> list:
        """The connection's traffic moved to the sleeve (fastdp failing): its VTEP goes at once,
        flood entry and learnt MACs, unless another connection still uses it; no linger, or the
        kernel would keep taking frames to a path that does not carry them."""
        out = []
        for ip, rec in list(self._vteps.items()):
            if conn in rec.claims:
                rec.claims.discard(conn)
                if not rec.claims:
                    out.append(self._remove(ip))
        return out

    def released(self, conn: Hashable, now: float) -> None:
        """A connection ended: its VTEP lingers once no other connection claims it."""
        for rec in self._vteps.values():
            if conn in rec.claims:
                rec.claims.discard(conn)
                if not rec.claims:
                    rec.linger_until = now + self.linger

    def peer_gone(self, peer: str) -> list:
        return [self._remove(ip) for ip, rec in list(self._vteps.items()) if rec.peer == peer and not rec.claims]

    def tick(self, now: float) -> list:
        return [self._remove(ip) for ip, rec in list(self._vteps.items())
                if rec.linger_until is not None and now >= rec.linger_until]

    def next_deadline(self) -> float | None:
        return min((rec.linger_until for rec in self._vteps.values() if rec.linger_until is not None), default=None)

    def snapshot(self, now: float) -> dict:
        return {ip: {"peer": rec.peer, "flood": rec.flood, "connections": len(rec.claims),
                     **({"lingering_s": round(rec.linger_until - now, 1)} if rec.linger_until is not None else {})}
                for ip, rec in sorted(self._vteps.items())}

    def _remove(self, ip: str) -> RemoveVtep:
        del self._vteps[ip]
        return RemoveVtep(ip)
