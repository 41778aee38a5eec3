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


# ---------------------------------------------------------------------------
# Tagged messages (the connection driver, mesh/driver.py).  A message after the
# handshake is one tag byte and a payload; these read and write the payloads the
# driver itself handles.  Gossip envelopes (tags 4-6, 9-11) belong to the core.

GOODBYE_LIMIT = 1024   # a reason is one line of `status connections`; more is not a reason


def encode(tag: int, payload: bytes = b"") -> bytes:
    return bytes((tag,)) + payload


def decode(message: bytes) -> tuple[int, bytes]:
    """(tag, payload).  Empty messages carry nothing: weaveworks/mesh ignores them, we count them."""
    if not message:
        raise ProtocolError("empty message")
    return message[0], message[1:]


def encode_goodbye(reason: str) -> bytes:
    data = reason.encode("utf-8", "replace")
    if len(data) > GOODBYE_LIMIT:
        data = data[:GOODBYE_LIMIT].decode("utf-8", "ignore").encode()
    return data


def decode_goodbye(payload: bytes) -> str:
    if len(payload) > GOODBYE_LIMIT:
        raise ProtocolError(f"goodbye reason too long: {len(payload)} bytes (limit {GOODBYE_LIMIT})")
    try:
        reason = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("goodbye reason is not UTF-8") from None
    if not reason.isprintable():
        raise ProtocolError("goodbye reason has control characters")
    return reason


def encode_overlay(index: int, data: bytes) -> bytes:
    """Tag-7 payload: which of the connection's overlays (index into the dialler's
    order of the overlays both ends have) and that overlay's own bytes."""
    if not 0 <= index <= 255:
        raise ValueError(f"overlay index {index} out of range")
    return bytes((index,)) + data


def decode_overlay(payload: bytes) -> tuple[int, bytes]:
    if not payload:
        raise ProtocolError("overlay control message without an overlay index")
    return payload[0], payload[1:]
