"""Length-prefixed messages: how a control connection's byte stream is cut after the header.

Each message is a u32 big-endian length and that many payload bytes, as
weaveworks/mesh frames them (protocol.go, lengthPrefixTCPSender).  Sans-IO:
`MessageDecoder` takes whatever a read returned and gives back the complete
messages in it, one at a time; the rest waits for the next read.
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
    """Reassembles messages from reads of any size; an over-long length is a ProtocolError.

    `feed` what a read returned, then take `next_message()` until it gives None:
    the messages before a bad length are still delivered, and the error comes
    where the stream went wrong.
    """

    def __init__(self, max_size: int = MAX_MESSAGE):
        self.max_size = max_size
        self._buffer = bytearray()
        self._start = 0            # where the next message begins: the consumed part is dropped at the next feed

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a message."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> None:
        if self._start:
            del self._buffer[:self._start]
            self._start = 0
        self._buffer += data

    def next_message(self) -> bytes | None:
        available = len(self._buffer) - self._start
        if available < LENGTH.size:
            return None
        (length,) = LENGTH.unpack_from(self._buffer, self._start)
        if length > self.max_size:
            # The stream cannot be resynchronised: the connection must end.
            self._buffer.clear()
            self._start = 0
            raise ProtocolError(f"message too long: {length} bytes (limit {self.max_size})")
        if available - LENGTH.size < length:
            return None
        body = self._start + LENGTH.size
        self._start = body + length
        return bytes(self._buffer[body:self._start])

    def messages(self, data: bytes = b"") -> list[bytes]:
        """Feed `data` and take every complete message (raising at a bad length)."""
        self.feed(data)
        out = []
        while (message := self.next_message()) is not None:
            out.append(message)
        return out
