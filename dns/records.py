"""weaveDNS records: who answers to which name, as a mergeable set (sans-IO).

An entry is identified by (container, origin peer, address, hostname); it
carries a version and a tombstone (0 = live, else the time it was deleted).
Only the origin changes its entries, raising the version each time, so two
copies of a record set merge by "higher version wins, and at equal versions the
larger tombstone wins" -- commutative, associative and idempotent, which is
what gossip needs.  Lookups ignore case; identity does not.

Gossip about our own entries is never taken as it comes: it is what an earlier
run of this peer said.  A name we still hold is re-asserted at a version above
it, one we no longer hold is retracted above it (Weave's nameserver does the
same; its test 215: a restarted peer's stale names go).  Tombstones are kept
TOMBSTONE_TIMEOUT, long enough to have reached every peer, then dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable

TOMBSTONE_TIMEOUT = 600   # seconds; Weave's nameserver: tombstoneTimeout = 10 minutes

Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class Entry:
    container: str
    origin: str
    addr: str
    hostname: str  # FQDN with trailing dot, case as registered
    version: int = 0
    tombstone: int = 0

    @property
    def key(self) -> Key:
        return (self.container, self.origin, self.addr, self.hostname)

    @property
    def live(self) -> bool:
        return self.tombstone == 0

    def to_dict(self) -> dict:
        return {"ContainerID": self.container, "Origin": self.origin, "Addr": self.addr,
                "Hostname": self.hostname, "Version": self.version, "Tombstone": self.tombstone}


def newer(a: Entry, b: Entry) -> Entry:
    """The copy that wins when two copies of one entry meet."""
    if a.version != b.version:
        return a if a.version > b.version else b
    return a if a.tombstone >= b.tombstone else b


def merge_sets(a: dict[Key, Entry], b: dict[Key, Entry]) -> dict[Key, Entry]:
    out = dict(a)
    for key, entry in b.items():
        out[key] = newer(out[key], entry) if key in out else entry
    return out


def fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def in_domain(name: str, domain: str) -> bool:
    n, d = fqdn(name).lower(), fqdn(domain).lower()
    return n == d or n.endswith("." + d)


@dataclass(frozen=True)
class View:
    """What lookups see, replaced whole on every change (one assignment).

    The name server answers from another thread: whoever takes `records.view`
    once gets names, addresses and the generation of one and the same state,
    so an answer can never be cached under a generation it does not belong to.
    """
    generation: int
    by_name: dict[str, tuple[str, ...]]
    by_addr: dict[str, str]

    def lookup(self, name: str) -> list[str]:
        """Addresses of every live entry under name (case-insensitive)."""
        return list(self.by_name.get(fqdn(name).lower(), ()))

    def reverse(self, addr: str) -> str | None:
        """The (alphabetically first) live name for an address."""
        return self.by_addr.get(addr)


class Records:
    def __init__(self, peer: str, domain: str):
        self.peer = peer
        self.domain = fqdn(domain)
        self.entries: dict[Key, Entry] = {}
        self.view = View(0, {}, {})
        # Called with every change this peer makes to its own entries: the one place they are
        # broadcast from (dns/gossip.py), whoever made the change.
        self.on_local_change: Callable[[list[Entry]], None] | None = None

    # -- local changes (this peer is the origin) -----------------------------
    def add(self, container: str, addr: str, hostname: str) -> list[Entry]:
        """Register hostname -> addr for container.  Names outside the domain are ignored."""
        if not in_domain(hostname, self.domain):
            return []
        key = (container, self.peer, addr, fqdn(hostname))
        old = self.entries.get(key)
        if old is not None and old.live:
            return []
        entry = Entry(*key) if old is None else replace(old, version=old.version + 1, tombstone=0)
        return self._local([entry])

    def tombstone(self, now: int, container: str | None = None, addr: str | None = None,
                  hostname: str | None = None) -> list[Entry]:
        """Delete our own live entries that match every given field (None matches anything)."""
        host = fqdn(hostname) if hostname else None
        doomed = [replace(e, version=e.version + 1, tombstone=max(int(now), 1))
                  for e in self.entries.values()
                  if e.origin == self.peer and e.live
                  and (container is None or e.container == container)
                  and (addr is None or e.addr == addr)
                  and (host is None or e.hostname == host)]
        return self._local(doomed)

    def _local(self, entries: list[Entry]) -> list[Entry]:
        changed = self._apply(entries)
        if changed and self.on_local_change is not None:
            self.on_local_change(changed)
        return changed

    # -- from other peers -----------------------------------------------------
    def merge(self, incoming: Iterable[Entry], now: int = 0) -> list[Entry]:
        """Take in entries from elsewhere; returns those of other peers that were new to us.

        The batch is folded by version first, so its order cannot matter.  Entries about
        ourselves are answered (see the module's docstring), not taken, and not returned:
        the answer goes out as a local change.
        """
        batch: dict[Key, Entry] = {}
        for e in incoming:
            batch[e.key] = newer(batch[e.key], e) if e.key in batch else e
        changed, ours, resend = [], [], []
        for key, e in batch.items():
            mine = self.entries.get(key)
            if e.origin == self.peer:
                if mine is not None and e.version < mine.version and e.live != mine.live:
                    # the sender holds an old copy of ours (it missed our broadcast while cut off):
                    # say ours again now rather than leave it stale until the next full gossip
                    resend.append(mine)
                elif mine is None or e.version >= mine.version:
                    if mine is not None and mine.live:
                        ours.append(replace(mine, version=e.version + 1))
                    elif e.live:
                        ours.append(replace(e, version=e.version + 1, tombstone=max(int(now), 1)))
                    elif mine is None or newer(mine, e) is e and mine != e:
                        ours.append(e)    # our own old tombstone: keep it, so it is not taken again
            elif mine is None or (newer(mine, e) is e and mine != e):
                changed.append(e)
        self._apply(changed)
        self._local(ours)
        if resend and self.on_local_change is not None:
            self.on_local_change(resend)
        return changed

    def peer_gone(self, peer: str) -> list[Entry]:
        """A peer left the mesh: its entries go with it (they come back if it does, by gossip)."""
        if peer == self.peer:
            return []
        gone = [e for e in self.entries.values() if e.origin == peer]
        for e in gone:
            del self.entries[e.key]
        if gone:
            self._reindex()
        return gone

    def expire_tombstones(self, now: int) -> int:
        """Drop tombstones older than TOMBSTONE_TIMEOUT; how many went."""
        old = [k for k, e in self.entries.items() if not e.live and e.tombstone + TOMBSTONE_TIMEOUT <= now]
        for k in old:
            del self.entries[k]
        return len(old)

    def _apply(self, entries: list[Entry]) -> list[Entry]:
        if not entries:
            return []
        for e in entries:
            self.entries[e.key] = e
        self._reindex()
        return entries

    def _reindex(self):
        by_name: dict[str, list[str]] = {}
        by_addr: dict[str, tuple] = {}
        for e in self.entries.values():
            if not e.live:
                continue
            by_name.setdefault(e.hostname.lower(), []).append(e.addr)
            order = (e.hostname.lower(), e.origin, e.container)
            if e.addr not in by_addr or order < by_addr[e.addr][0]:
                by_addr[e.addr] = (order, e.hostname)
        self.view = View(self.view.generation + 1, {n: tuple(a) for n, a in by_name.items()},
                         {a: h for a, (_, h) in by_addr.items()})

    # -- lookups ---------------------------------------------------------------
    @property
    def generation(self) -> int:
        """Bumped on every change."""
        return self.view.generation

    def lookup(self, name: str) -> list[str]:
        return self.view.lookup(name)

    def reverse(self, addr: str) -> str | None:
        return self.view.reverse(addr)

    def live(self) -> list[Entry]:
        return sorted((e for e in self.entries.values() if e.live),
                      key=lambda e: (e.hostname.lower(), e.origin, e.container, e.addr))

    def live_count(self) -> int:
        return sum(1 for e in self.entries.values() if e.live)
