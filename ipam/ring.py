"""The ring: who owns which part of the IPAM universe (a CRDT, as in Weave Net).

The universe [start, end) is cut at tokens; the entry at a token owns the
addresses up to the next token (the last wraps round to start).  Tokens are
only ever added, and only an entry's owner changes it, raising its version, so
replicas can later be merged by highest version.  This issue uses the ring on a
single peer; merging replicas arrives with the mesh.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Entry:
    token: int
    peer: str
    version: int = 0
    free: int = 0


class Ring:
    def __init__(self, start: int, end: int, peer: str):
        if end <= start:
            raise ValueError("empty ring range")
        self.start, self.end, self.peer = start, end, peer
        self.entries: list[Entry] = []
        self.seeds: list[str] = []

    def empty(self) -> bool:
        return not self.entries

    def claim_for_peers(self, peers: list[str]):
        """Divide the whole universe among peers deterministically (only on an empty ring).

        Every peer that decides on the same list builds an identical ring, so the
        initial division needs no further agreement than the list itself.
        """
        if self.entries:
            raise RuntimeError("claim_for_peers on a ring that already has entries")
        peers = sorted(set(peers), key=peer_sort_key)
        self._subdivide(self.start, self.end, peers)
        self.entries.sort(key=lambda e: e.token)
        self.seeds = list(peers)

    def _subdivide(self, lo: int, hi: int, peers: list[str]):
        share = hi - lo
        if share == 1 or len(peers) == 1:
            self.entries.append(Entry(lo, peers[0], 0, share))
            return
        mid = lo + share // 2
        half = len(peers) // 2
        self._subdivide(lo, mid, peers[:half])
        self._subdivide(mid + share % 2, hi, peers[half:])

    def spans(self):
        """(entry, start, end) for every entry, in token order."""
        for i, e in enumerate(self.entries):
            yield (e, *self._span(i))

    def _span(self, i: int) -> tuple[int, int]:
        lo = self.entries[i].token
        hi = self.entries[i + 1].token if i + 1 < len(self.entries) else self.end
        return lo, hi

    def owned_ranges(self, peer: str | None = None) -> list[tuple[int, int]]:
        peer = peer or self.peer
        out: list[tuple[int, int]] = []
        for i, e in enumerate(self.entries):
            if e.peer == peer:
                lo, hi = self._span(i)
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
        # the last entry wraps round to the start
        if self.entries and self.entries[0].token != self.start and self.entries[-1].peer == peer:
            out.insert(0, (self.start, self.entries[0].token))
        return out

    def owner(self, addr: int) -> str | None:
        if not self.entries or not (self.start <= addr < self.end):
            return None
        owner = self.entries[-1].peer  # wrap-around owner for addresses before the first token
        for e in self.entries:
            if e.token > addr:
                break
            owner = e.peer
        return owner

    def report_free(self, free_in: "callable") -> bool:
        """Record our free counts in our entries; returns whether anything changed."""
        changed = False
        for i, e in enumerate(self.entries):
            if e.peer != self.peer:
                continue
            lo, hi = self._span(i)
            free = free_in(lo, hi)
            if free != e.free:
                e.free = free
                e.version += 1
                changed = True
        return changed

    def peer_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for i, e in enumerate(self.entries):
            lo, hi = self._span(i)
            sizes[e.peer] = sizes.get(e.peer, 0) + (hi - lo)
        return sizes

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "peer": self.peer, "seeds": self.seeds,
                "entries": [asdict(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, data: dict, peer: str) -> "Ring":
        ring = cls(data["start"], data["end"], peer)
        ring.seeds = list(data.get("seeds", []))
        ring.entries = [Entry(**e) for e in data.get("entries", [])]
        return ring


def peer_sort_key(name: str) -> int:
    """Peer names sort by their numeric value, as Weave's do."""
    return int(name.replace(":", ""), 16)
