"""This peer's allocator: hands out addresses from the ranges the ring says it owns.

Sans-IO: callers pass in the time and the facts (which containers run), and
persist `snapshot()` after every change before telling anyone about it.

With other peers (Weave's ipam/allocator.go), the ring is agreed once, by
Paxos among the initial peers (`quorum`) or from `seeds`, and then changes only
by its owners: a peer short of space asks the peer with the most free space in
that subnet, which donates a block.  Messages to other peers are queued in
`outbox` (see ipam/gossip.py for how they travel); a request that must wait for
the ring or for a donation raises Pending, and is simply asked again when
something changed (`on_change_hooks`) or a second later.
"""
from __future__ import annotations

import ipaddress
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from .paxos import Paxos
from .request import AddressError, host_range, check_allocatable
from .ring import Ring, RingError
from .space import Space

log = logging.getLogger(__name__)
ASK_AGAIN = 2.0   # seconds before a space request with no answer goes out again

DEAD_CONTAINER_GRACE = 30.0  # seconds a died container keeps its addresses, in case it restarts


class AllocationError(Exception):
    """The request was well formed but cannot be met (in use, out of space...)."""


class Pending(Exception):
    """Not yet: the ring is being agreed, or space was asked of another peer.  Ask again later."""


class RingConflict(Exception):
    """Another peer's ring cannot be merged with ours (different range or seeds, or it takes ours)."""


@dataclass
class Owned:
    is_container: bool
    cidrs: list[ipaddress.IPv4Interface] = field(default_factory=list)


SPACE_REQUEST, RING_UPDATE, SPACE_DENIED = 0, 1, 2   # unicast kinds, as Weave's first byte


def _full_range(subnet: ipaddress.IPv4Network) -> tuple[int, int]:
    """A space request names the whole subnet, network and broadcast addresses included."""
    return int(subnet.network_address), int(subnet.network_address) + subnet.num_addresses


class Allocator:
    def __init__(self, peer: str, universe: ipaddress.IPv4Network | None,
                 default_subnet: ipaddress.IPv4Network | None = None, nickname: str = "", *,
                 uid: int = 1, quorum: int = 1, seeds: list[str] | None = None, observer: bool = False,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.peer = peer
        self.nickname = nickname
        self.universe = universe
        if universe is None:
            # `--ipalloc-range ""`: no allocation, no ring (Weave's "IPAM disabled").  Explicit
            # addresses are still kept track of here, so one host never gives an address twice.
            self.default_subnet = None
            self.ring = Ring(0, 1, peer)      # never filled: nothing is in a universe
        else:
            check_allocatable(universe, f"--ipalloc-range {universe}")
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
        # the cluster
        self.uid, self.quorum, self.observer = uid, quorum, observer
        self.seeds = sorted(set(seeds or []))
        self.paxos: Paxos | None = None if observer else Paxos((peer, uid), 0)
        self.nicknames: dict[str, str] = {peer: nickname}
        self.outbox: list[tuple] = []        # ("broadcast", state) | ("unicast", peer, kind, body)
        self.on_change_hooks: list[Callable[[], None]] = []   # called when something is queued or the ring changed
        self.on_ring_hooks: list[Callable[[], None]] = []     # called when the ring changed (to persist it)
        self.reachable: Callable[[], set[str]] = set        # the peers we have a route to
        self.conflict: str | None = None
        self._clock = clock
        self._rng = rng or random.Random()
        self._asked: dict[tuple[int, int], float] = {}      # space requests out, and when
        self._ring_asked_at: float | None = None            # an observer's last request for a ring
        self._denied: set[tuple[int, int]] = set()

    # -- the ring -----------------------------------------------------------
    def establish_ring(self):
        """Start making the ring when it is first needed (Weave's establishRing).

        Seeds: at once, the same everywhere.  An observer asks the others for theirs.  An
        elector stands in the election with its quorum; alone (quorum 1) it owns all of it.
        """
        if not self.ring.empty() or self.universe is None:
            return
        if self.seeds:
            self._create_ring(self.seeds)
        elif self.paxos is None:
            asked = self._ring_asked_at             # an observer asks for a ring, now and then
            if asked is None or self._clock() - asked >= ASK_AGAIN:
                self._ring_asked_at = self._clock()
                self._send(("broadcast", {"nicknames": self.nicknames, "paxos": None, "ring": None}))
        elif not self.paxos.quorum:                  # once: then the election runs by gossip
            self.paxos.quorum = self.quorum
            self.paxos.propose()
            self._after_paxos()

    def tick(self):
        """Every 5 s (Weave's tickInterval): an election still running is proposed again, in a new
        round, so peers that missed it (connected later by a path that carried no full gossip, or
        lost the broadcast) hear it now rather than at the next periodic gossip (Weave's 340)."""
        if self.ring.empty() and self.paxos is not None and self.paxos.quorum:
            self.paxos.propose()
            self._after_paxos()

    def _after_paxos(self):
        value = self.paxos.consensus() if self.paxos is not None else None
        if value is not None:
            self._create_ring(list(value))
        else:
            self._send(("broadcast", self.gossip_state()))

    def _create_ring(self, peers: list[str]):
        self.ring.claim_for_peers(peers)
        log.info("IP allocation ring created for %s", ", ".join(peers))
        self.paxos = None
        self._ring_updated()
        self._send(("broadcast", self.gossip_state()))

    def _ring_updated(self):
        owned = self.ring.owned_ranges()
        self.space.keep_only(owned)          # space the ring gave away is no longer ours to hand out
        for lo, hi in owned:
            self.space.add(lo, hi)
        self.ring.report_free(self.space.num_free)
        for hook in list(self.on_ring_hooks):
            hook()
        self._changed()

    def _changed(self):
        for hook in list(self.on_change_hooks):
            hook()

    def _send(self, message: tuple):
        self.outbox.append(message)
        self._changed()

    def has_allocations(self, lo: int, hi: int) -> bool:
        return self.space.any_allocated(lo, hi)

    # -- messages from other peers (ipam/gossip.py decodes them) -------------
    def gossip_state(self) -> dict:
        """What we tell others: the ring once there is one, else our part in the election."""
        if not self.ring.empty():
            return {"nicknames": self.nicknames, "paxos": None, "ring": self.ring.to_dict()}
        return {"nicknames": self.nicknames, "paxos": self.paxos.to_list() if self.paxos else [], "ring": None}

    def receive(self, sender: str | None, state: dict) -> bool:
        """Another peer's state (`sender` None: periodic gossip).  Whether our ring changed.
        Raises RingConflict for a ring that cannot be ours, changing nothing."""
        try:
            theirs = Ring.from_dict(state["ring"], self.peer) if state["ring"] is not None else None
        except RingError as exc:                 # not a ring at all: a malformed message, taken in no part
            raise ValueError(f"malformed ring: {exc}") from None
        for name, nick in state["nicknames"].items():
            if name != self.peer:
                self.nicknames[name] = nick
        if theirs is not None:
            try:
                was_empty = self.ring.empty()
                updated = self.ring.merge(theirs, self.has_allocations)
            except RingError as exc:
                self.conflict = str(exc)
                raise RingConflict(str(exc)) from None
            self.conflict = None
            if updated or (was_empty and not self.ring.empty()):
                self.paxos = None
                self._ring_updated()
                return True
        elif not self.ring.empty():
            if sender is not None:                      # it has none: it gets ours
                self._send(("unicast", sender, RING_UPDATE, self.gossip_state()))
        elif state["paxos"] is not None:
            if self.paxos is not None and self.paxos.update(Paxos.from_list(state["paxos"])):
                if self.paxos.think():
                    self._send(("broadcast", self.gossip_state()))
                if (agreed := self.paxos.consensus()) is not None:
                    self._create_ring(list(agreed))
        elif sender is not None and self.paxos is not None:
            self.establish_ring()                       # an observer asks: stand for election
        return False

    def space_requested(self, requester: str, lo: int, hi: int):
        """Another peer wants space in [lo, hi): give it a block, or say no; either way, our ring."""
        if self.ring.empty():
            return                                       # it will ask again
        chunk = self.space.donate(lo, hi)
        if chunk is not None:
            self.ring.grant_range_to_host(*chunk, requester)
            log.info("gave %s-%s to %s", ipaddress.IPv4Address(chunk[0]), ipaddress.IPv4Address(chunk[1] - 1),
                     requester)
            self._ring_updated()
            self._send(("broadcast", self.gossip_state()))
        else:
            self._send(("unicast", requester, SPACE_DENIED, {"lo": lo, "hi": hi}))
        self._send(("unicast", requester, RING_UPDATE, self.gossip_state()))

    def space_denied(self, lo: int, hi: int):
        self._asked.pop((lo, hi), None)
        self._denied.add((lo, hi))
        self._changed()

    def _ask_for_space(self, lo: int, hi: int, only: str | None = None) -> str | None:
        """Ask a donor for space in [lo, hi) unless we asked lately; the donor asked, or None."""
        reachable = self.reachable()
        free: dict[str, int] = {}
        for e, a, b in self.ring.spans():
            if e.peer != self.peer and e.free and a < hi and lo < b and e.peer in reachable:
                free[e.peer] = free.get(e.peer, 0) + e.free
        if only is not None:
            free = {only: 1} if only in reachable else {}
        if not free:
            return None
        donor = max(sorted(free), key=lambda p: free[p] * self._rng.random())
        asked = self._asked.get((lo, hi))
        if asked is None or self._clock() - asked >= ASK_AGAIN:
            self._asked[(lo, hi)] = self._clock()
            self._send(("unicast", donor, SPACE_REQUEST, {"lo": lo, "hi": hi}))
        return donor

    def _waiting(self, what: str) -> Pending:
        quorum = f"consensus among {self.quorum} peers" if not self.seeds else "the seed peers"
        if self.paxos is None and not self.seeds:
            quorum = "a ring from another peer (observer)"
        return Pending(f"{what}: the IP allocation ring is not made yet (waiting for {quorum})")

    def in_universe(self, addr: int) -> bool:
        return self.universe is not None and self.ring.start <= addr < self.ring.end

    # -- requests -----------------------------------------------------------
    def allocate(self, ident: str, subnet: ipaddress.IPv4Network, is_container: bool) -> ipaddress.IPv4Interface:
        """An address in subnet for ident: the one it already has there, or the lowest free one."""
        if self.universe is None:
            raise AllocationError("IP address allocation must be enabled to use 'net:' "
                                  "(this router was launched with --ipalloc-range \"\")")
        check_allocatable(subnet)
        self.dead.pop(ident, None)
        for cidr in self.addresses_in(ident, subnet):
            return cidr
        lo, hi = host_range(subnet)
        lo, hi = max(lo, self.ring.start), min(hi, self.ring.end)
        if lo >= hi:
            raise AllocationError(f"subnet {subnet} is outside the allocation range {self.universe}")
        self.establish_ring()
        if self.ring.empty():
            raise self._waiting(f"allocation in {subnet}")
        addr = self.space.allocate(lo, hi)
        if addr is None:
            others = {e.peer for e in self.ring.entries} - {self.peer}
            if not others:
                raise AllocationError(f"no free address left in subnet {subnet}")
            donor = self._ask_for_space(*_full_range(subnet))
            raise Pending(f"no free address of ours in {subnet}: " +
                          (f"asked {self._who(donor)} for space" if donor else "waiting for a peer with space"))
        self._asked.pop(_full_range(subnet), None)
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
            if self.ring.empty():
                raise self._waiting(f"claim of {cidr.ip}")
            owner = self.ring.owner(addr)
            if owner != self.peer:
                # the owner may give exactly that address, if it is free there (Weave's claim.go)
                if (addr, addr + 1) in self._denied:
                    self._denied.discard((addr, addr + 1))
                    raise AllocationError(f"address {cidr.ip} is owned by other peer {self._who(owner)}")
                if self._ask_for_space(addr, addr + 1, only=owner) is None:
                    raise Pending(f"address {cidr.ip} is owned by {self._who(owner)}, which cannot be reached")
                raise Pending(f"address {cidr.ip} is owned by {self._who(owner)}: asked it for the address")
            self._asked.pop((addr, addr + 1), None)
            self.space.claim(addr)
        self._record(ident, cidr, is_container)

    # -- peers leaving -------------------------------------------------------
    def resolve_peer(self, given: str) -> str:
        """A peer named by name or nickname, as `rmpeer` takes it; AllocationError if unknown."""
        names = {e.peer for e in self.ring.entries} | set(self.nicknames)
        if given.lower() in names:
            return given.lower()
        by_nick = [name for name, nick in self.nicknames.items() if nick == given]
        if len(by_nick) == 1:
            return by_nick[0]
        raise AllocationError(f"unknown peer {given!r}" if not by_nick else
                              f"nickname {given!r} is ambiguous: {', '.join(sorted(by_nick))}")

    def take_over(self, given: str) -> int:
        """`rmpeer`: a dead peer's space becomes ours (Weave's AdminTakeoverRanges); how many addresses.

        Refused for ourselves and for a peer we can reach: two live owners of one range would
        hand out the same addresses.
        """
        peer = self.resolve_peer(given)
        if peer == self.peer:
            raise AllocationError("cannot remove the local peer: use `weavepy reset` to leave")
        if peer in self.reachable():
            raise AllocationError(f"peer {self._who(peer)} is still connected: stop it (or cut it off) first")
        taken = sum(hi - lo for lo, hi in self.ring.transfer(peer, self.peer))
        if taken:
            log.info("took over %d addresses from %s", taken, self._who(peer))
            self._ring_updated()
            self._send(("broadcast", self.gossip_state()))
        return taken

    def leave(self) -> str | None:
        """`reset`: hand all our space to the first reachable peer in ring order, so none is lost."""
        reachable = self.reachable()
        heir = next((e.peer for e in self.ring.entries if e.peer != self.peer and e.peer in reachable), None)
        if heir is None:
            return None
        self.ring.transfer(self.peer, heir)
        self.space.clear()
        self.owned.clear()
        self.by_addr.clear()
        log.info("handed our IP space to %s", self._who(heir))
        self._send(("broadcast", self.gossip_state()))
        return heir

    def _who(self, peer: str) -> str:
        nick = self.nicknames.get(peer)
        return f"{peer}({nick})" if nick else peer

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

    def status_word(self, waiting: bool = False) -> str:
        """Weave's Status line: idle until needed, then awaiting consensus, then ready (or waiting,
        while requests wait for space); and a peer's ring we refused (two clusters joined), which
        the user must settle (`reset` one)."""
        word = self._status_word(waiting)
        return word if self.conflict is None else f"{word}; refusing another peer's ring: {self.conflict}"

    def _status_word(self, waiting: bool) -> str:
        if not self.ring.empty():
            reachable = self.reachable() | {self.peer}
            if not any(e.peer in reachable for e, lo, hi in self.ring.spans() if hi > lo):
                return "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"
            return "waiting for IP(s) to become available" if waiting else "ready"
        if self.paxos is not None and self.paxos.quorum:
            return f"awaiting consensus (quorum: {self.paxos.quorum}, known: {len(self.paxos.knows)})"
        if self.paxos is None and self._ring_asked_at is not None:
            return "priming"
        return "idle"

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
            if self.universe is None:
                return f"persisted data is for IPAM range {data.get('range')}; IP address allocation is now disabled"
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
