"""A token bucket, sans-IO: how long to wait before the next accept (mesh/token_bucket.go).

Weave's listener takes a token after every accepted connection: 20 may come
at once, then one per 50 ms (20/s sustained), which blunts online password
guessing and a flood of handshakes without slowing a mesh forming.
"""
from __future__ import annotations


class TokenBucket:
    def __init__(self, capacity: int, interval: float, now: float):
        self.interval = interval
        self.span = (capacity - 1) * interval     # a full bucket's tokens fall due over this long
        self._next_token = now - self.span        # when the next unspent token fell (or falls) due

    def take(self, now: float) -> float:
        """Spend a token; returns how long to wait for it (0: one was there)."""
        # However long the bucket sat unused, it holds at most `capacity` tokens.
        self._next_token = max(self._next_token, now - self.span)
        delay = max(0.0, self._next_token - now)
        self._next_token += self.interval
        return delay
