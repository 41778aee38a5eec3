"""weaveDNS records on the mesh's gossip channel "DNS" (sans-IO: no sockets here).

Every peer holds every peer's entries (dns/records.py).  A local change is
broadcast as it happens; the whole set, tombstones included, goes to a few
neighbours every gossip interval and to each new neighbour, so a peer that
missed a broadcast (lost, partitioned, restarted) catches up.  Receivers merge
and pass on only what was new to them (weaveworks/weave nameserver/gossip.go).

The payload is JSON, `{"v": 1, "t": sent_at, "e": [[container, origin, addr,
hostname, version, tombstone], ...]}`, every field checked before anything is
merged: a peer's bad message is refused whole with ProtocolError, which the mesh
counts and drops.  A message from a peer whose clock is more than 15 minutes off
ours closes the connection it came on (PeerRefused; Weave's gossip.go): versions
and tombstones are times, and a skewed peer's would win every merge or expire at
once.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from typing import Callable, Iterable

from weavepy.mesh.gossip import PeerRefused
from weavepy.mesh.wire import ProtocolError

from .records import Entry, Key, Records, merge_sets, newer

log = logging.getLogger(__name__)
CHANNEL = "DNS"          # Weave's channel name
FORMAT = 1
MESSAGE_ENTRIES = 5000   # per message: about 0.5 MB of JSON, well under the mesh's frame limit
MAX_ENTRIES = 100_000    # per message we accept
MAX_CLOCK_SKEW = 900     # seconds; Weave's nameserver refuses gossip skewed by more than 15 minutes
_PEER_NAME = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_U63 = (1 << 63) - 1


class Entries:
    """GossipData: a set of entries; merging keeps the newer copy of each (merge_sets)."""

    def __init__(self, entries: dict[Key, Entry], clock: Callable[[], float] = time.time):
        self.entries = entries
        self._clock = clock      # stamps each message as it is sent

    @classmethod
    def of(cls, entries: Iterable[Entry], clock: Callable[[], float] = time.time) -> "Entries":
        return cls(_fold(entries), clock)

    def merge(self, other: "Entries") -> "Entries":
        return Entries(merge_sets(self.entries, other.entries), self._clock)

    def encode(self) -> list[bytes]:
        rows = [[e.container, e.origin, e.addr, e.hostname, e.version, e.tombstone]
                for _, e in sorted(self.entries.items())]
        now = int(self._clock())
        return [json.dumps({"v": FORMAT, "t": now, "e": rows[i:i + MESSAGE_ENTRIES]}, separators=(",", ":")).encode()
                for i in range(0, len(rows), MESSAGE_ENTRIES)]


def _fold(entries: Iterable[Entry]) -> dict[Key, Entry]:
    out: dict[Key, Entry] = {}
    for e in entries:
        out[e.key] = newer(out[e.key], e) if e.key in out else e
    return out


def decode(data: bytes) -> list[Entry]:
    """Parse and check one message's entries; raises ProtocolError, and nothing else, on any bad input."""
    return decode_message(data)[1]


def decode_message(data: bytes) -> tuple[int, list[Entry]]:
    """(when the sender sent it, by its clock; the entries)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ProtocolError("DNS gossip is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != FORMAT or not isinstance(doc.get("e"), list):
        raise ProtocolError("DNS gossip: not a format-1 entry list")
    if type(doc.get("t")) is not int or not 0 <= doc["t"] <= _U63:
        raise ProtocolError("DNS gossip: no send time")
    if len(doc["e"]) > MAX_ENTRIES:
        raise ProtocolError(f"DNS gossip with more than {MAX_ENTRIES} entries")
    return doc["t"], [_entry(row) for row in doc["e"]]


def _entry(row) -> Entry:
    if not (isinstance(row, list) and len(row) == 6 and all(isinstance(f, str) for f in row[:4])
            and all(type(f) is int and 0 <= f <= _U63 for f in row[4:])):
        raise ProtocolError(f"DNS gossip: malformed entry {str(row)[:80]}")
    container, origin, addr, hostname, version, tombstone = row
    if not container or len(container) > 128:
        raise ProtocolError("DNS gossip: bad container id")
    if not _PEER_NAME.fullmatch(origin):
        raise ProtocolError(f"DNS gossip: origin {origin[:40]!r} is not a peer name")
    try:
        if ipaddress.ip_address(addr).version != 4:
            raise ValueError
    except ValueError:
        raise ProtocolError(f"DNS gossip: {addr[:40]!r} is not an IPv4 address") from None
    # RFC 1035 2.3.4: 255 octets on the wire, so 253 characters plus the root dot here
    if not hostname.endswith(".") or len(hostname) > 254 or any(
            not 0 < len(label) <= 63 for label in hostname[:-1].split(".")):
        raise ProtocolError(f"DNS gossip: {hostname[:40]!r} is not a domain name")
    return Entry(container, origin, addr, hostname, version, tombstone)


class DNSGossiper:
    """The Gossiper of channel "DNS" (mesh/gossip.py's protocol) over one peer's Records."""

    def __init__(self, records: Records, clock: Callable[[], float] = time.time,
                 known_peer: Callable[[str], bool] = lambda name: True):
        self.records = records
        self._clock = clock
        # Entries of a peer the topology does not know are dropped (Weave's gossip.go): the
        # peer left and its entries went with it; a third peer's stale copy must not bring them
        # back for good.
        self._known_peer = known_peer
        self._skew_said = float("-inf")

    def on_unicast(self, src: str, data: bytes) -> None:
        pass   # nobody unicasts DNS

    def on_broadcast(self, src: str, data: bytes) -> Entries | None:
        return self.on_gossip(data)

    def gossip(self) -> Entries | None:
        return Entries(dict(self.records.entries), self._clock) if self.records.entries else None

    def wrap(self, entries: Iterable[Entry]) -> Entries:
        """Our own changes, to broadcast (Records.on_local_change)."""
        return Entries.of(entries, self._clock)

    def on_gossip(self, data: bytes) -> Entries | None:
        sent_at, entries = decode_message(data)
        now = self._clock()
        if abs(now - sent_at) > MAX_CLOCK_SKEW:
            if now - self._skew_said >= MAX_CLOCK_SKEW:     # said once in a while, not per message
                self._skew_said = now
                log.error("DNS: refusing gossip from a peer whose clock is %+d s off ours (over %d s): "
                          "synchronise the hosts' clocks (NTP)", sent_at - now, MAX_CLOCK_SKEW)
            raise PeerRefused(f"DNS gossip: clock skew of {int(sent_at - now)} s exceeds {MAX_CLOCK_SKEW} s")
        known = [e for e in entries if e.origin == self.records.peer or self._known_peer(e.origin)]
        if len(known) < len(entries):
            log.debug("DNS gossip: dropped %d entries of peers the topology does not know",
                      len(entries) - len(known))
        news = self.records.merge(known, int(now))
        return Entries.of(news, self._clock) if news else None
