"""This peer's allocator: hands out addresses from the ranges the ring says it owns.

Sans-IO: callers pass in the time and the facts (which containers run), and
persist `snapshot()` after every change before telling anyone about it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .request import AddressError, host_range, check_allocatable
from .ring import Ring, RingError
from .space import Space

DEAD_CONTAINER_GRACE = 30.0  # seconds a died container keeps its addresses, in case it restarts


class AllocationError(Exception):
    """The request was well formed but cannot be met (in use, out of space...)."""


@dataclass
class Owned:
    is_container: bool
    cidrs: list[ipaddress.IPv4Interface] = field(default_factory=list)


class Allocator:
    def __init__(self, peer: str, universe: ipaddress.IPv4Network,
                 default_subnet: ipaddress.IPv4Network | None = None, nickname: str = ""):
        check_allocatable(universe, f"--ipalloc-range {universe}")
        self.peer = peer
        self.nickname = nickname
        self.universe = universe
        self.default_subnet = default_subnet or universe
        if not self.default_subnet.overlaps(universe):
            raise AddressError(f"IP address allocation default subnet {self.default_subnet} "
                               f"does not overlap with allocation range {universe}")
        start = int(universe.network_address)
        self.ring = Ring(start, start + universe.num_addresses, peer)
        self.space = Space()
        self.owned: dict[str, Owned] = {}
        self.by_addr: dict[int, str] = {}  # every recorded address -> ident
        self.dead: dict[str, float] = {}   # container ident -> time it died
        # container ident -> addresses an explicit claim took from it while it was stopped
        self.displaced: dict[str, list[ipaddress.IPv4Interface]] = {}

    # -- the ring -----------------------------------------------------------
    def establish_ring(self):
        """Create the ring when it is first needed.  Alone, this peer owns all of it."""
        if self.ring.empty():
            self.ring.claim_for_peers([self.peer])
            self._ring_updated()

    def _ring_updated(self):
        for lo, hi in self.ring.owned_ranges():
            self.space.add(lo, hi)
        self.ring.report_free(self.space.num_free)

    def in_universe(self, addr: int) -> bool:
        return self.ring.start <= addr < self.ring.end

    # -- requests -----------------------------------------------------------
    def allocate(self, ident: str, subnet: ipaddress.IPv4Network, is_container: bool) -> ipaddress.IPv4Interface:
        """An address in subnet for ident: the one it already has there, or the lowest free one."""
        check_allocatable(subnet)
        self.dead.pop(ident, None)
        for cidr in self.addresses_in(ident, subnet):
            return cidr
        lo, hi = host_range(subnet)
        lo, hi = max(lo, self.ring.start), min(hi, self.ring.end)
        if lo >= hi:
            raise AllocationError(f"subnet {subnet} is outside the allocation range {self.universe}")
        self.establish_ring()
        addr = self.space.allocate(lo, hi)
        if addr is None:
            raise AllocationError(f"no free address left in subnet {subnet}")
        cidr = ipaddress.IPv4Interface((addr, subnet.prefixlen))
        self._record(ident, cidr, is_container)
        return cidr

    def claim(self, ident: str, cidr: ipaddress.IPv4Interface, is_container: bool):
        """Exactly this address for ident.  Claiming one's own address again is fine."""
        self.dead.pop(ident, None)
        addr = int(cidr.ip)
        holder = self.by_addr.get(addr)
        if holder == ident:
            self._record(ident, cidr, is_container)  # same address, maybe another prefix
            return
        if holder is not None and holder in self.dead:
            # Weave's 300: a stopped container's address goes to whoever names it explicitly.  The grace
            # only keeps *automatic* allocation from handing it out while the container may restart.
            self._hand_over(holder, addr)
            self._record(ident, cidr, is_container)
            return
        if holder is not None:
            raise AllocationError(f"address {cidr.ip} is already in use by {holder}")
        if self.in_universe(addr):
            self.establish_ring()
            owner = self.ring.owner(addr)
            if owner != self.peer:
                raise AllocationError(f"address {cidr.ip} is owned by other peer {owner}")
            self.space.claim(addr)
        self._record(ident, cidr, is_container)

    def _hand_over(self, holder: str, addr: int):
        """Take addr from a stopped holder without freeing it (the claimant records it next)."""
        owned = self.owned[holder]
        lost = next(c for c in owned.cidrs if int(c.ip) == addr)
        owned.cidrs.remove(lost)
        self.displaced.setdefault(holder, []).append(lost)
        if not owned.cidrs:
            del self.owned[holder]
            self.dead.pop(holder, None)
        del self.by_addr[addr]

    def take_displaced(self, ident: str) -> list[ipaddress.IPv4Interface]:
        """The addresses claimed away from ident while it was stopped (asked once, when it starts again)."""
        return self.displaced.pop(ident, [])

    def free(self, ident: str, addr: ipaddress.IPv4Address) -> ipaddress.IPv4Interface:
        owned = self.owned.get(ident)
        match = next((c for c in (owned.cidrs if owned else []) if c.ip == addr), None)
        if match is None:
            raise AllocationError(f"address {addr} is not allocated to {ident}")
        owned.cidrs.remove(match)
        if not owned.cidrs:
            del self.owned[ident]
            self.dead.pop(ident, None)
        del self.by_addr[int(addr)]
        if int(addr) in self.space.allocated:
            self.space.free(int(addr))
            self.ring.report_free(self.space.num_free)
        return match

    def free_all(self, ident: str) -> list[ipaddress.IPv4Interface]:
        owned = self.owned.get(ident)
        return [self.free(ident, c.ip) for c in list(owned.cidrs)] if owned else []

    def addresses(self, ident: str) -> list[ipaddress.IPv4Interface]:
        owned = self.owned.get(ident)
        return list(owned.cidrs) if owned else []

    def addresses_in(self, ident: str, subnet: ipaddress.IPv4Network) -> list[ipaddress.IPv4Interface]:
        return [c for c in self.addresses(ident) if c.ip in subnet and c.network.prefixlen == subnet.prefixlen]

    def _record(self, ident: str, cidr: ipaddress.IPv4Interface, is_container: bool):
        owned = self.owned.setdefault(ident, Owned(is_container))
        owned.is_container = owned.is_container or is_container
        owned.cidrs = [c for c in owned.cidrs if c.ip != cidr.ip] + [cidr]
        self.by_addr[int(cidr.ip)] = ident
        self.ring.report_free(self.space.num_free)

    # -- container life cycle ----------------------------------------------
    def container_died(self, ident: str, now: float):
        owned = self.owned.get(ident)
        if owned and owned.is_container:
            self.dead.setdefault(ident, now)

    def container_started(self, ident: str):
        self.dead.pop(ident, None)

    def container_destroyed(self, ident: str) -> list[ipaddress.IPv4Interface]:
        self.displaced.pop(ident, None)
        owned = self.owned.get(ident)
        return self.free_all(ident) if owned and owned.is_container else []

    def remove_dead(self, now: float, grace: float = DEAD_CONTAINER_GRACE) -> dict[str, list]:
        """Free the addresses of containers that died more than `grace` seconds ago."""
        expired = [ident for ident, t in self.dead.items() if now - t >= grace]
        for ident in expired:
            self.displaced.pop(ident, None)
        return {ident: self.free_all(ident) for ident in expired}

    def prune(self, running: set[str]) -> dict[str, list]:
        """Free container addresses whose container no longer runs (it went while we were down)."""
        gone = [ident for ident, o in self.owned.items() if o.is_container and ident not in running]
        for ident in [i for i in self.displaced if i not in running]:
            del self.displaced[ident]
        return {ident: self.free_all(ident) for ident in gone}

    # -- status -----------------------------------------------------------
    def active_count(self) -> int:
        return len(self.space.allocated)

    def status_word(self) -> str:
        return "idle" if self.ring.empty() else "ready"

    # -- persistence -------------------------------------------------------
    def snapshot(self) -> dict:
        return {
            "peer": self.peer,
            "range": str(self.universe),
            "ring": self.ring.to_dict() if not self.ring.empty() else None,
            "owned": {ident: {"is_container": o.is_container, "cidrs": [str(c) for c in o.cidrs]}
                      for ident, o in self.owned.items()},
        }

    def restore(self, data: dict) -> str | None:
        """Load a snapshot; returns why it was discarded, or None when it was used."""
        if data.get("peer") != self.peer:
            return f"persisted data belongs to peer {data.get('peer')}, not {self.peer}"
        if data.get("range") != str(self.universe):
            return f"persisted data is for IPAM range {data.get('range')}; our range is {self.universe}"
        if data.get("ring"):
            try:
                ring = Ring.from_dict(data["ring"], self.peer)
            except RingError as exc:
                return f"persisted ring is not valid ({exc})"
            if (ring.start, ring.end) != (self.ring.start, self.ring.end):
                return "persisted ring is for another range"
            self.ring = ring
            self._ring_updated()
        for ident, o in data.get("owned", {}).items():
            for text in o["cidrs"]:
                cidr = ipaddress.IPv4Interface(text)
                if self.in_universe(int(cidr.ip)) and self.space.is_free(int(cidr.ip)):
                    self.space.claim(int(cidr.ip))
                elif self.in_universe(int(cidr.ip)):
                    continue  # not ours any more, or recorded twice: drop it
                self._record(ident, cidr, o["is_container"])
        return None
