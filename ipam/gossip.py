"""The allocator on the mesh's gossip channel "IPallocation" (sans-IO: no sockets here).

Gossip and broadcasts carry the allocator's whole state, never a delta
(Weave's ipam/gossip.go): the ring once there is one, else its part in the
election.  Unicasts start with a kind byte: 0 a space request, 1 a ring sent
to one peer, 2 a space request refused.  The body is JSON, checked before
anything is merged (the ring by Ring.check, the election by Paxos.from_list):
a peer's bad message is refused whole with ProtocolError, which the mesh counts
and drops.  A ring that cannot be merged (another range or other seeds) is a
RingConflict: logged, shown in `status`, and the connection it came on closed
(PeerRefused), as Weave drops it: two clusters with one address space must not
share a network.
"""
from __future__ import annotations

import json
import logging

from weavepy.mesh.gossip import GossipChannel, NoRoute, PeerRefused
from weavepy.mesh.wire import ProtocolError

from .allocator import RING_UPDATE, SPACE_DENIED, SPACE_REQUEST, Allocator, RingConflict

log = logging.getLogger(__name__)
CHANNEL = "IPallocation"     # Weave's channel name
MAX_MESSAGE = 4 << 20


class State:
    """GossipData: one peer's whole state; merging keeps the later one."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def encode(self) -> list[bytes]:
        return [self.payload]

    def merge(self, other: "State") -> "State":
        return other


def encode(state: dict) -> bytes:
    return json.dumps(state, separators=(",", ":")).encode()


def decode_state(data: bytes) -> dict:
    doc = _json(data)
    if not (isinstance(doc, dict) and isinstance(doc.get("nicknames"), dict)
            and all(isinstance(k, str) and isinstance(v, str) and len(k) < 64 and len(v) < 256
                    for k, v in doc["nicknames"].items()) and len(doc["nicknames"]) <= 4096
            and (doc.get("ring") is None or isinstance(doc["ring"], dict))
            and (doc.get("paxos") is None or isinstance(doc["paxos"], list))):
        raise ProtocolError("IPAM gossip: not an allocator state")
    return {"nicknames": doc["nicknames"], "paxos": doc.get("paxos"), "ring": doc.get("ring")}


def _json(data: bytes):
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("IPAM gossip message too big")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ProtocolError("IPAM gossip is not JSON") from None


def _span(data: bytes) -> tuple[int, int]:
    doc = _json(data)
    if not (isinstance(doc, dict) and type(doc.get("lo")) is int and type(doc.get("hi")) is int
            and 0 <= doc["lo"] < doc["hi"] <= 1 << 32):
        raise ProtocolError("IPAM space request: not a range")
    return doc["lo"], doc["hi"]


class IPAMGossiper:
    """The Gossiper of channel "IPallocation" (mesh/gossip.py's protocol) over one Allocator."""

    def __init__(self, allocator: Allocator):
        self.allocator = allocator
        self.channel: GossipChannel | None = None

    def attach(self, channel: GossipChannel) -> None:
        """From now on, whatever the allocator queues goes out at once (its change hook)."""
        self.channel = channel
        self.allocator.on_change_hooks.append(self.flush)

    def flush(self) -> None:
        """Send what the allocator queued."""
        if self.channel is None:
            return
        outbox, self.allocator.outbox = self.allocator.outbox, []
        for message in outbox:
            if message[0] == "broadcast":
                self.channel.broadcast(State(encode(message[1])))
            else:
                _, peer, kind, body = message
                try:
                    self.channel.unicast(peer, bytes([kind]) + encode(body))
                except NoRoute:
                    log.debug("no route to %s for an IPAM message; it will be asked again", peer)

    def _receive(self, sender: str | None, data: bytes) -> bool:
        state = decode_state(data)
        try:
            return self.allocator.receive(sender, state)
        except ValueError as exc:            # a malformed election state (Paxos.from_list)
            raise ProtocolError(f"IPAM gossip: {exc}") from None
        except RingConflict as exc:
            log.error("IPAM: %s", exc)
            raise PeerRefused(f"IPAM: {exc}") from None

    def on_unicast(self, src: str, data: bytes) -> None:
        if not data:
            raise ProtocolError("empty IPAM unicast")
        kind, body = data[0], data[1:]
        if kind == SPACE_REQUEST:
            self.allocator.space_requested(src, *_span(body))
        elif kind == RING_UPDATE:
            self._receive(src, body)
        elif kind == SPACE_DENIED:
            self.allocator.space_denied(*_span(body))
        else:
            raise ProtocolError(f"unknown IPAM unicast kind {kind}")

    def on_broadcast(self, src: str, data: bytes) -> State | None:
        self._receive(src, data)
        return State(data)                  # passed on down the broadcast tree as it came

    def gossip(self) -> State:
        return State(encode(self.allocator.gossip_state()))

    def on_gossip(self, data: bytes) -> State | None:
        return self.gossip() if self._receive(None, data) else None
