"""The ring: who owns which part of the IPAM universe (a CRDT, as in Weave Net).

The universe [start, end) is cut at tokens; the entry at a token owns the
addresses up to the next token (the last wraps round to start).  Tokens are
only ever added, and only an entry's owner changes it, raising its version, so
replicas merge by highest version, in any order (Weave's ipam/ring/ring.go).

Every input is checked before it is merged (`check`), and every change is
checked after (RingError): a bad ring from a peer is refused whole and changes
nothing; a merge that would hand away space we hold allocations in is refused
too.  No address is ever in two peers' pools.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

_PEER_NAME = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
MAX_ENTRIES = 1 << 16   # a ring that big has tens of thousands of peers' donations in it
TRANSFER_BOOST = 100   # Weave: versions of transferred entries jump by 100, so they win


class RingError(ValueError):
    """A ring that breaks the invariants, or a merge that would give away what we own."""


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
        """From persisted or gossiped data; RingError if it is not a valid ring."""
        try:
            ring = cls(int(data["start"]), int(data["end"]), peer)
            ring.seeds = [str(s) for s in data.get("seeds", [])]
            ring.entries = [Entry(int(e["token"]), str(e["peer"]), int(e.get("version", 0)), int(e.get("free", 0)))
                            for e in data.get("entries", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RingError(f"malformed ring: {exc}") from None
        if len(ring.entries) > MAX_ENTRIES or not all(_PEER_NAME.fullmatch(e.peer) for e in ring.entries):
            raise RingError("malformed ring: too many entries, or an owner that is not a peer name")
        ring.check()
        return ring

    # -- invariants ----------------------------------------------------------

    def check(self) -> None:
        """Raise RingError unless tokens are sorted, unique and in range, and free counts fit."""
        for i, e in enumerate(self.entries):
            if not self.start <= e.token < self.end:
                raise RingError(f"Token {e.token} is out of range")
            if i and e.token == self.entries[i - 1].token:
                raise RingError(f"Token {e.token} appears twice in ring")
            if i and e.token < self.entries[i - 1].token:
                raise RingError("Ring not sorted")
            if e.version < 0 or e.free < 0:
                raise RingError(f"Entry at {e.token} with a negative version or free count")
        for i, e in enumerate(self.entries):
            lo, hi = self._span(i)
            if e.free > hi - lo:
                raise RingError(f"Entry {lo}-{hi} reporting too much free space: {e.free} > {hi - lo}")

    # -- merging -------------------------------------------------------------

    def merge(self, theirs: "Ring", has_allocations=lambda lo, hi: False) -> bool:
        """Join `theirs` into ours (Weave's Ring.Merge); True if anything of theirs was taken.

        `has_allocations(lo, hi)` says whether we hold allocations in [lo, hi): space we use
        is never given up to a claim that contradicts ours.  On RingError nothing changes.
        """
        theirs.check()
        if (self.start, self.end) != (theirs.start, theirs.end):
            raise RingError(f"Incompatible IP allocation ranges (received: {theirs.start}-{theirs.end}, "
                            f"ours: {self.start}-{self.end})")
        if self.seeds and theirs.seeds and self.seeds != theirs.seeds:
            raise RingError(f"IP allocation was seeded by different peers (received: {theirs.seeds}, "
                            f"ours: {self.seeds})")
        ours = {e.token: e for e in self.entries}
        merged: dict[int, Entry] = dict(ours)
        updated = False
        for t in theirs.entries:
            mine = ours.get(t.token)
            if mine is None:
                if self.owner(t.token) == self.peer and t.peer != self.peer:
                    lo, hi = t.token, self._next_token(t.token)
                    if has_allocations(lo, hi):
                        raise RingError(f"Peer {t.peer} says it owns the IP range from {t.token}, which I think I own")
                merged[t.token] = replace(t)
                updated = True
            elif t.version > mine.version:
                if mine.peer != self.peer:
                    merged[t.token] = replace(t)
                    updated = True
                elif t.peer == self.peer:
                    merged[t.token] = replace(mine, version=t.version + 1)   # re-assert what is ours
                elif not has_allocations(t.token, self._next_token(t.token)):
                    merged[t.token] = replace(t)                           # an empty range: repair
                    updated = True
                else:
                    raise RingError(f"Received update for IP range I own at {t.token} v{mine.version}: "
                                    f"incoming message says owner {t.peer} v{t.version}")
            elif t.version == mine.version and t.peer != mine.peer:
                if mine.peer == self.peer and has_allocations(t.token, self._next_token(t.token)):
                    raise RingError(f"Inconsistent entries for {t.token}: owned by {mine.peer} but incoming "
                                    f"message says {t.peer}")
                if (t.free, t.peer) > (mine.free, mine.peer):   # Weave: the higher Free; then the name,
                    merged[t.token] = replace(t)                # so that every order agrees
                    updated = True
        candidate = Ring(self.start, self.end, self.peer)
        candidate.entries = [merged[k] for k in sorted(merged)]
        for i, e in enumerate(candidate.entries):   # a token of theirs may cut into one of ours
            lo, hi = candidate._span(i)
            if e.peer == self.peer and e.free > hi - lo:
                candidate.entries[i] = replace(e, free=hi - lo)
        try:
            candidate.check()
        except RingError as exc:
            raise RingError(f"Merge of incoming data causes: {exc}") from None
        self.entries = candidate.entries
        if not self.seeds:
            self.seeds = list(theirs.seeds)
        return updated

    def _next_token(self, token: int) -> int:
        later = [e.token for e in self.entries if e.token > token]
        return later[0] if later else self.end

    # -- changes by the owner --------------------------------------------------

    def grant_range_to_host(self, lo: int, hi: int, peer: str) -> None:
        """Give [lo, hi), all of it ours, to `peer` (a donation); at most two tokens are added."""
        inside = [e.token for e in self.entries if lo < e.token < hi]
        if not (self.start <= lo < hi <= self.end) or self.owner(lo) != self.peer or any(
                self.owner(t) != self.peer for t in inside):
            raise RingError(f"cannot grant {lo}-{hi}: not all of it is ours")
        by_token = {e.token: e for e in self.entries}
        if hi < self.end and hi not in by_token:
            by_token[hi] = Entry(hi, self.peer, 0, 0)          # [hi, next) stays ours
        elif hi == self.end and self.start not in by_token:
            by_token[self.start] = Entry(self.start, self.peer, 0, 0)   # so does the wrap past the end
        if lo in by_token:
            by_token[lo] = replace(by_token[lo], peer=peer, version=by_token[lo].version + 1)
        else:
            before = max((e for e in self.entries if e.token < lo), key=lambda e: e.token,
                         default=self.entries[-1])              # none before: the entry that wraps
            by_token[before.token] = replace(before, version=before.version + 1)
            by_token[lo] = Entry(lo, peer, 0, 0)
        for token in inside:
            by_token[token] = replace(by_token[token], peer=peer, version=by_token[token].version + 1)
        self.entries = [by_token[k] for k in sorted(by_token)]
        for i, e in enumerate(self.entries):                    # free counts fit the new spans
            span_lo, span_hi = self._span(i)
            if lo <= span_lo < hi or e.free > span_hi - span_lo:   # given away: all free
                self.entries[i] = replace(e, free=span_hi - span_lo)
        self.check()

    def transfer(self, from_peer: str, to_peer: str) -> list[tuple[int, int]]:
        """Every entry of `from_peer` to `to_peer` (rmpeer, reset), versions boosted to win."""
        ranges = []
        for i, e in enumerate(self.entries):
            if e.peer == from_peer:
                ranges.append(self._span(i))
                self.entries[i] = replace(e, peer=to_peer, version=e.version + TRANSFER_BOOST)
        return ranges


def peer_sort_key(name: str) -> int:
    """Peer names sort by their numeric value, as Weave's do."""
    return int(name.replace(":", ""), 16)
