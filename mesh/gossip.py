"""Gossip channels: the one seam the topology, IPAM and DNS share (mesh/gossip.go, gossip_channel.go).

A service implements `Gossiper` and gets a `GossipChannel` from
`MeshCore.channel(name, gossiper)`.  What it sends is a `GossipData`: a value
that can encode itself (several messages, so big state goes in pieces) and
merge another of its kind.  The `GossipRouter` here relays what arrives:

- unicast (tag 5): delivered when it is for us, else passed on, bytes
  unchanged, to the next hop over all links;
- broadcast (tag 6): the gossiper merges it and returns what to pass on along
  the originator's broadcast tree;
- gossip (tag 4): the gossiper merges it and returns *only what was new*,
  which goes on to a few random neighbours, never back to the sender -- so
  gossip dies out once everyone knows.

A message for a channel nobody here serves gets a *surrogate* gossiper that
only relays (surrogate_gossiper.go): gossip crosses peers that run no IPAM or
DNS.  Outgoing gossip and broadcasts wait per connection in one slot per
channel (and per originator) and are merged while they wait; the slots are
emptied into Send actions at `take_sends()` unless the driver has paused the
connection because its socket is not keeping up (back-pressure by merging,
gossip_sender.go).

Envelopes, after the tag byte the driver frames:
    tag 4: u8 len + channel name, payload
    tag 5: u8 len + channel name, source[6], destination[6], payload
    tag 6: u8 len + channel name, originator[6], payload
(Weave's tag 4 also names the sender; here the connection says who that is.)
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable, Protocol

from . import wire
from .codec import Reader, name_to_bytes, short_text
from .actions import Send
from .routes import Routes

GOSSIP_INTERVAL = 30.0   # defaultGossipInterval (mesh/gossip.go); also the surrogate's dedupe window
# Weave runs three channels (topology, IPallocation, nameserver): a peer naming
# more than this many unknown ones is not gossiping, it is filling our memory.
MAX_CHANNELS = 64
SURROGATE_SEEN = 1024     # distinct gossip payloads a surrogate remembers for its dedupe window
SURROGATE_PENDING = 64    # relayed messages one surrogate slot holds while its connection is paused


class PeerRefused(Exception):
    """A service will not take this neighbour's state, for a reason that lasts (another cluster's
    IP ring, a clock far off): the connection the message came on is closed, as Weave's mesh
    closes a connection whose message a gossiper returned an error for.  It is dialled again
    with backoff, so the refusal is said again until the user settles it."""


class GossipData(Protocol):
    def encode(self) -> list[bytes]:
        """One message per element."""

    def merge(self, other: "GossipData") -> "GossipData":
        ...


class Gossiper(Protocol):
    """What a service implements.  Malformed `data` must raise wire.ProtocolError (dropped and
    counted); state it refuses for good, PeerRefused (the connection goes)."""

    def on_unicast(self, src: str, data: bytes) -> None:
        ...

    def on_broadcast(self, src: str, data: bytes) -> GossipData | None:
        """Merge; return what to relay on, or None."""

    def gossip(self) -> GossipData | None:
        """Complete state: sent every gossip interval and to new neighbours."""

    def on_gossip(self, data: bytes) -> GossipData | None:
        """Merge; return only what was new to us, or None."""


class NoRoute(LookupError):
    """A unicast to a peer we have no route to."""


# -- envelopes ---------------------------------------------------------------

def _read_channel(reader: Reader) -> str:
    name = reader.short_text("channel name")
    if not name:
        raise wire.ProtocolError("empty channel name")
    return name


def encode_gossip(channel: str, payload: bytes) -> bytes:
    return short_text(channel, "channel name") + payload


def decode_gossip(data: bytes) -> tuple[str, bytes]:
    reader = Reader(data)
    return _read_channel(reader), reader.rest()


def encode_unicast(channel: str, src: str, dst: str, payload: bytes) -> bytes:
    return short_text(channel, "channel name") + name_to_bytes(src) + name_to_bytes(dst) + payload


def decode_unicast(data: bytes) -> tuple[str, str, str, bytes]:
    reader = Reader(data)
    return _read_channel(reader), reader.name("source"), reader.name("destination"), reader.rest()


def encode_broadcast(channel: str, src: str, payload: bytes) -> bytes:
    return short_text(channel, "channel name") + name_to_bytes(src) + payload


def decode_broadcast(data: bytes) -> tuple[str, str, bytes]:
    reader = Reader(data)
    return _read_channel(reader), reader.name("originator"), reader.rest()


# -- surrogates --------------------------------------------------------------

class SurrogateData:
    """Messages relayed as received; merging keeps each distinct one, the newest SURROGATE_PENDING."""

    def __init__(self, messages: list[bytes]):
        self.messages = messages

    def encode(self) -> list[bytes]:
        return list(self.messages)

    def merge(self, other: "SurrogateData") -> "SurrogateData":
        merged = self.messages + [m for m in other.messages if m not in self.messages]
        return SurrogateData(merged[-SURROGATE_PENDING:])


class SurrogateGossiper:
    """Relays for a channel with no local service; never originates gossip."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._seen: dict[bytes, float] = {}   # payload -> when relayed (dict order = age order)

    def on_unicast(self, src: str, data: bytes) -> None:
        pass

    def on_broadcast(self, src: str, data: bytes) -> SurrogateData:
        return SurrogateData([data])

    def gossip(self) -> None:
        return None

    def on_gossip(self, data: bytes) -> SurrogateData | None:
        now = self._clock()
        for old, when in list(self._seen.items()):
            if now - when < GOSSIP_INTERVAL and len(self._seen) < SURROGATE_SEEN:
                break
            del self._seen[old]
        if data in self._seen:
            return None
        self._seen[data] = now
        return SurrogateData([data])


# -- channels and the router -------------------------------------------------

class Links(Protocol):
    """What the router needs from the core: who we are, routes, and which connection reaches a neighbour."""
    ourself: str

    @property
    def routes(self) -> Routes:
        ...

    def connection_to(self, name: str) -> Hashable | None:
        ...


class GossipChannel:
    def __init__(self, router: "GossipRouter", name: str, gossiper: Gossiper):
        self._router = router
        self.name = name
        self.gossiper = gossiper
        self.surrogate = isinstance(gossiper, SurrogateGossiper)

    def unicast(self, dst: str, data: bytes) -> None:
        """Send bytes to one peer, hop by hop over all links.  Raises NoRoute."""
        self._router.send_unicast(encode_unicast(self.name, self._router.ourself, dst, data), dst)
        self._router.wake()

    def broadcast(self, data: GossipData) -> None:
        """To every peer, along our broadcast tree over all links."""
        self._router.relay_broadcast(self.name, self._router.ourself, data)
        self._router.wake()

    def gossip_neighbours(self, data: GossipData) -> None:
        """To a few random neighbours, who pass on what is new to them."""
        self._router.gossip_to_neighbours(self.name, data)
        self._router.wake()


@dataclass
class _Outbox:
    """One connection's waiting gossip: a slot per channel, and per (channel, originator) for broadcasts."""
    gossip: dict[str, GossipData] = field(default_factory=dict)
    broadcasts: dict[tuple[str, str], GossipData] = field(default_factory=dict)
    paused: bool = False


def _merge_into(slots: dict, key, data: GossipData) -> None:
    waiting = slots.get(key)
    slots[key] = data if waiting is None else waiting.merge(data)


class GossipRouter:
    def __init__(self, links: Links, rng: random.Random, emit: Callable[[Send], None],
                 stats: Counter, clock: Callable[[], float], wake: Callable[[], None] = lambda: None):
        self._links = links
        self.wake = wake   # a service queued something: the driver should drain soon
        self._rng = rng
        self._emit = emit
        self._stats = stats
        self._clock = clock
        self.channels: dict[str, GossipChannel] = {}
        self._outboxes: dict[Hashable, _Outbox] = {}
        # News heard by gossip, passed on once per drain rather than once per message: each
        # pass picks neighbours from the routes, which a burst of news recomputes every time.
        self._news: dict[str, tuple[GossipData, set[str]]] = {}

    @property
    def ourself(self) -> str:
        return self._links.ourself

    def channel(self, name: str, gossiper: Gossiper) -> GossipChannel:
        """Register a service; it takes over a surrogate that was relaying its channel."""
        known = self.channels.get(name)
        if known is not None and not known.surrogate:
            raise ValueError(f"gossip channel {name!r} already has a gossiper")
        short_text(name, "channel name")   # fits the envelope
        channel = self.channels[name] = GossipChannel(self, name, gossiper)
        return channel

    def _channel_for_input(self, name: str) -> GossipChannel | None:
        channel = self.channels.get(name)
        if channel is None:
            if len(self.channels) >= MAX_CHANNELS:
                self._stats["too_many_channels"] += 1
                return None
            channel = self.channels[name] = GossipChannel(self, name, SurrogateGossiper(self._clock))
        return channel

    # -- receiving ---------------------------------------------------------

    def receive(self, conn_id: Hashable, sender: str, tag: int, payload: bytes) -> None:
        """One gossip message from neighbour `sender`.  Raises ProtocolError on malformed input."""
        if tag == wire.GOSSIP_UNICAST:
            name, src, dst, data = decode_unicast(payload)
            if dst != self.ourself:
                self._relay_unicast(payload, dst)
            elif (channel := self._channel_for_input(name)) is not None:
                channel.gossiper.on_unicast(src, data)
        elif tag == wire.GOSSIP_BROADCAST:
            name, src, data = decode_broadcast(payload)
            if src == self.ourself:   # our own broadcast came round while routes were changing
                self._stats["looped"] += 1
            elif (channel := self._channel_for_input(name)) is not None:
                relay = channel.gossiper.on_broadcast(src, data)
                if relay is not None:
                    self.relay_broadcast(name, src, relay)
        elif tag == wire.GOSSIP:
            name, data = decode_gossip(payload)
            if (channel := self._channel_for_input(name)) is not None:
                news = channel.gossiper.on_gossip(data)
                if news is not None:
                    waiting = self._news.get(name)
                    self._news[name] = (news, {sender}) if waiting is None else \
                        (waiting[0].merge(news), waiting[1] | {sender})
        else:
            raise wire.ProtocolError(f"tag {tag} is not gossip")

    # -- sending -----------------------------------------------------------

    def send_unicast(self, envelope: bytes, dst: str) -> None:
        if not self._relay_unicast(envelope, dst):
            raise NoRoute(f"no route to {dst}")

    def _relay_unicast(self, envelope: bytes, dst: str) -> bool:
        hop = self._links.routes.unicast_all.get(dst)
        conn_id = None if hop is None else self._links.connection_to(hop)
        if conn_id is None:
            self._stats["unroutable"] += 1
            return False
        self._emit(Send(conn_id, wire.GOSSIP_UNICAST, envelope))
        return True

    def relay_broadcast(self, channel: str, src: str, data: GossipData) -> None:
        for hop in self._links.routes.broadcast_all(src):
            if (conn_id := self._links.connection_to(hop)) is not None:
                _merge_into(self._outbox(conn_id).broadcasts, (channel, src), data)

    def gossip_to_neighbours(self, channel: str, data: GossipData, exclude: str | None = None) -> None:
        for hop in self._links.routes.random_neighbours(self._rng, exclude):
            if (conn_id := self._links.connection_to(hop)) is not None:
                _merge_into(self._outbox(conn_id).gossip, channel, data)

    def gossip_periodic(self) -> None:
        """Every channel's complete state to random neighbours (every GOSSIP_INTERVAL)."""
        for name, channel in list(self.channels.items()):
            if (data := channel.gossiper.gossip()) is not None:
                self.gossip_to_neighbours(name, data)

    def send_all_down(self, conn_id: Hashable) -> None:
        """A new or restarted neighbour gets every channel's complete state (sendAllGossipDown)."""
        for name, channel in list(self.channels.items()):
            if (data := channel.gossiper.gossip()) is not None:
                _merge_into(self._outbox(conn_id).gossip, name, data)

    # -- per-connection slots ----------------------------------------------

    def _outbox(self, conn_id: Hashable) -> _Outbox:
        box = self._outboxes.get(conn_id)
        if box is None:
            box = self._outboxes[conn_id] = _Outbox()
        return box

    def pause(self, conn_id: Hashable) -> None:
        self._outbox(conn_id).paused = True

    def resume(self, conn_id: Hashable) -> None:
        self._outbox(conn_id).paused = False

    def connection_gone(self, conn_id: Hashable) -> None:
        self._outboxes.pop(conn_id, None)

    def take_sends(self) -> list[Send]:
        """Empty every unpaused slot into Send actions: gossip first, then broadcasts (gossip_sender.go)."""
        news, self._news = self._news, {}
        for name, (data, senders) in news.items():
            # Not back to the one that told us; news from several goes to whomever is picked.
            self.gossip_to_neighbours(name, data, exclude=next(iter(senders)) if len(senders) == 1 else None)
        sends: list[Send] = []
        for conn_id, box in list(self._outboxes.items()):
            if box.paused:
                continue
            for name, data in box.gossip.items():
                sends += [Send(conn_id, wire.GOSSIP, encode_gossip(name, p)) for p in data.encode()]
            for (name, src), data in box.broadcasts.items():
                sends += [Send(conn_id, wire.GOSSIP_BROADCAST, encode_broadcast(name, src, p)) for p in data.encode()]
            del self._outboxes[conn_id]
        return sends
