"""Control-connection wire format: message tags (codecs follow; see mesh/handshake.py).

Tags are the first byte of every length-prefixed message after the handshake,
numbered as weaveworks/mesh numbers them where the meaning is the same
(protocol.go); 8 and up are weavepy's own.
"""
from __future__ import annotations

HEARTBEAT = 0          # empty; keeps the read deadline alive
GOSSIP = 4             # periodic / neighbour-subset gossip: channel, sender, payload
GOSSIP_UNICAST = 5     # channel, source, destination, payload (relayed hop by hop)
GOSSIP_BROADCAST = 6   # channel, originator, payload (relayed along the broadcast tree)
OVERLAY = 7            # an overlay connection's control message (e.g. fastdp heartbeat ack)
GOODBYE = 8            # UTF-8 reason, sent just before closing: the other end shows it
PROBE = 9              # 8-byte nonce: "are you still there?" (restart vs. name clash)
PROBE_REPLY = 10       # the same nonce back
CLASH = 11             # JSON: a third peer saw two live routers with our name


class ProtocolError(ValueError):
    """Malformed input from a peer: the message is dropped (and counted) or the connection ends."""
