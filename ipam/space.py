"""The addresses this peer owns: which are free and which are handed out.

Free space is kept as sorted, coalesced [start, end) intervals of integers so
that "lowest free address in a range" is a bisect, and a /12 costs a handful of
intervals rather than a million set entries.
"""
from __future__ import annotations

import bisect


class SpaceError(Exception):
    pass


class Space:
    def __init__(self):
        self._starts: list[int] = []   # interval starts, sorted
        self._ends: list[int] = []     # matching exclusive ends
        self.allocated: set[int] = set()
        self._allocated_in_order: list[int] = []   # the same, sorted: "any allocated in a range" is a bisect

    # -- ownership ----------------------------------------------------------
    def add(self, start: int, end: int):
        """Take ownership of [start, end): every address in it that is not allocated becomes free."""
        for lo, hi in _subtract((start, end), self._allocated_between(start, end)):
            self._insert_free(lo, hi)

    def owned_ranges(self) -> list[tuple[int, int]]:
        points = sorted(list(zip(self._starts, self._ends)) + [(a, a + 1) for a in self.allocated])
        merged: list[list[int]] = []
        for lo, hi in points:
            if merged and merged[-1][1] >= lo:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return [tuple(r) for r in merged]

    def keep_only(self, ranges: list[tuple[int, int]]) -> None:
        """Forget free addresses outside `ranges` (the ring says they are no longer ours).
        Allocated ones stay: they are the allocator's to account for."""
        kept_s, kept_e = [], []
        for lo, hi in zip(self._starts, self._ends):
            for r_lo, r_hi in ranges:
                a, b = max(lo, r_lo), min(hi, r_hi)
                if a < b:
                    kept_s.append(a)
                    kept_e.append(b)
        order = sorted(zip(kept_s, kept_e))
        self._starts, self._ends = [a for a, _ in order], [b for _, b in order]

    def donate(self, start: int, end: int) -> tuple[int, int] | None:
        """A block to give away for a space request over [start, end) (Weave's Space.Donate).

        The biggest CIDR-aligned free block (the later one on a tie); if it is more than half
        of all that is free there, only its upper half.  It leaves this space.  None: nothing free.
        """
        best = None
        for lo, hi in zip(self._starts, self._ends):
            lo, hi = max(lo, start), min(hi, end)
            size = 1 << ((hi - lo).bit_length() - 1) if hi > lo else 0
            while size:
                first = -(-lo // size) * size
                if first + size <= hi:
                    last = (hi // size) * size - size      # the later aligned block of that size
                    if best is None or (size, last) > best:
                        best = (size, last)
                    break
                size >>= 1
        if best is None:
            return None
        size, lo = best
        if size > 1 and size * 2 > self.num_free(start, end):
            lo, size = lo + size // 2, size // 2
        self._remove_free(lo, lo + size)
        return lo, lo + size

    def _remove_free(self, lo: int, hi: int) -> None:
        kept = []
        for a, b in zip(self._starts, self._ends):
            if a < lo:
                kept.append((a, min(b, lo)))
            if b > hi:
                kept.append((max(a, hi), b))
        self._starts, self._ends = [a for a, _ in kept], [b for _, b in kept]

    def clear(self):
        self._starts.clear()
        self._ends.clear()
        self.allocated.clear()
        self._allocated_in_order.clear()

    # -- queries ----------------------------------------------------------
    def is_free(self, addr: int) -> bool:
        i = bisect.bisect_right(self._starts, addr) - 1
        return i >= 0 and addr < self._ends[i]

    def _allocated_between(self, start: int, end: int) -> list[int]:
        order = self._allocated_in_order
        return order[bisect.bisect_left(order, start):bisect.bisect_left(order, end)]

    def any_allocated(self, start: int, end: int) -> bool:
        """Whether an address in [start, end) is handed out (the ring's merge asks it of every entry)."""
        i = bisect.bisect_left(self._allocated_in_order, start)
        return i < len(self._allocated_in_order) and self._allocated_in_order[i] < end

    def is_owned(self, addr: int) -> bool:
        return addr in self.allocated or self.is_free(addr)

    def num_free(self, start: int | None = None, end: int | None = None) -> int:
        total = 0
        for lo, hi in zip(self._starts, self._ends):
            if start is not None:
                lo, hi = max(lo, start), min(hi, end)
            if hi > lo:
                total += hi - lo
        return total

    def lowest_free(self, start: int, end: int) -> int | None:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while i < len(self._starts) and self._starts[i] < end:
            lo = max(self._starts[i], start)
            if lo < self._ends[i] and lo < end:
                return lo
            i += 1
        return None

    # -- changes ----------------------------------------------------------
    def allocate(self, start: int, end: int) -> int | None:
        """The lowest free address in [start, end), now allocated; None when there is none."""
        addr = self.lowest_free(start, end)
        if addr is not None:
            self.claim(addr)
        return addr

    def claim(self, addr: int):
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0 or addr >= self._ends[i]:
            raise SpaceError(f"address {addr} is not free to claim")
        lo, hi = self._starts[i], self._ends[i]
        del self._starts[i], self._ends[i]
        if addr + 1 < hi:
            self._starts.insert(i, addr + 1)
            self._ends.insert(i, hi)
        if lo < addr:
            self._starts.insert(i, lo)
            self._ends.insert(i, addr)
        self.allocated.add(addr)
        bisect.insort(self._allocated_in_order, addr)

    def free(self, addr: int):
        if addr not in self.allocated:
            raise SpaceError(f"address {addr} is not allocated")
        self.allocated.discard(addr)
        del self._allocated_in_order[bisect.bisect_left(self._allocated_in_order, addr)]
        self._insert_free(addr, addr + 1)

    def _insert_free(self, lo: int, hi: int):
        i = bisect.bisect_left(self._starts, lo)
        # coalesce with the neighbour before and after
        if i > 0 and self._ends[i - 1] >= lo:
            i -= 1
            lo = self._starts[i]
            hi = max(hi, self._ends[i])
            del self._starts[i], self._ends[i]
        while i < len(self._starts) and self._starts[i] <= hi:
            hi = max(hi, self._ends[i])
            del self._starts[i], self._ends[i]
        self._starts.insert(i, lo)
        self._ends.insert(i, hi)


def _subtract(rng: tuple[int, int], points: list[int]):
    lo, hi = rng
    for p in points:
        if lo < p:
            yield lo, p
        lo = p + 1
    if lo < hi:
        yield lo, hi
