"""Length-prefixed messages: how a control connection's byte stream is cut after the header.

Each message is a u32 big-endian length and that many payload bytes, as
weaveworks/mesh frames them (protocol.go, lengthPrefixTCPSender).  Sans-IO:
`MessageDecoder.feed` takes whatever a read returned and gives back the
complete messages in it; the rest waits for the next read.
"""
from __future__ import annotations

import struct

from .wire import ProtocolError

LENGTH = struct.Struct(">I")

# weaveworks/mesh maxTCPMsgSize: no gossip message (a full IPAM ring or DNS
# table for ~100 peers) comes near it, and it bounds what a peer can make us buffer.
MAX_MESSAGE = 10 * 1024 * 1024


def frame(payload: bytes) -> bytes:
    """The bytes to write for one message."""
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"message of {len(payload)} bytes exceeds the {MAX_MESSAGE}-byte limit")
    return LENGTH.pack(len(payload)) + payload


class MessageDecoder:
    """Reassembles messages from reads of any size; an over-long length is a ProtocolError."""

    def __init__(self, max_size: int = MAX_MESSAGE):
        self.max_size = max_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of a message not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages = []
        start = 0
        end = len(self._buffer)
        while end - start >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._buffer, start)
            if length > self.max_size:
                # The stream cannot be resynchronised: the connection must end.
                self._buffer.clear()
                raise ProtocolError(f"message too long: {length} bytes (limit {self.max_size})")
            if end - start - LENGTH.size < length:
                break
            body = start + LENGTH.size
            messages.append(bytes(self._buffer[body:body + length]))
            start = body + length
        if start:
            del self._buffer[:start]
        return messages
