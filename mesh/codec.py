"""Reading and writing the mesh's compact binary fields, with every read bounded.

Shared by the topology encoding (mesh/topology.py) and the gossip envelopes
(mesh/gossip.py).  A `Reader` raises wire.ProtocolError, never IndexError or
UnicodeDecodeError, so a decoder built from it fails one way on bad input.
"""
from __future__ import annotations

import struct

from .wire import ProtocolError

NAME_LEN = 6  # a peer name is a 48-bit MAC on the wire, as Weave's NameByte


def name_to_bytes(name: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' -> 6 bytes.  Our own names are always well formed (peer_name.parse)."""
    raw = bytes.fromhex(name.replace(":", ""))
    if len(raw) != NAME_LEN:
        raise ValueError(f"not a peer name: {name!r}")
    return raw


def name_from_bytes(raw: bytes) -> str:
    return raw.hex(":")  # in C: topology updates carry a name for every peer and every connection


def short_bytes(data: bytes, what: str) -> bytes:
    """A field of at most 255 bytes, prefixed by its length."""
    if len(data) > 255:
        raise ValueError(f"{what} longer than 255 bytes")
    return bytes([len(data)]) + data


def short_text(text: str, what: str) -> bytes:
    return short_bytes(text.encode("utf-8"), what)


class Reader:
    def __init__(self, data: bytes):
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, what: str = "field") -> bytes:
        if n > self.remaining:
            raise ProtocolError(f"truncated {what}: need {n} bytes, {self.remaining} left")
        chunk = self._data[self._pos:self._pos + n]
        self._pos += n
        return chunk

    def skip_records(self, count: int, fixed: int, what: str) -> None:
        """Step over `count` records of `fixed` bytes then a short field, without slicing any."""
        data, pos, end = self._data, self._pos, len(self._data)
        for _ in range(count):
            pos += fixed
            if pos >= end:
                raise ProtocolError(f"truncated {what}")
            pos += 1 + data[pos]
        if pos > end:
            raise ProtocolError(f"truncated {what}")
        self._pos = pos

    def u8(self, what: str = "byte") -> int:
        return self.take(1, what)[0]

    def u16(self, what: str = "u16") -> int:
        return struct.unpack(">H", self.take(2, what))[0]

    def u64(self, what: str = "u64") -> int:
        return struct.unpack(">Q", self.take(8, what))[0]

    def short_bytes(self, what: str) -> bytes:
        return self.take(self.u8(what), what)

    def short_text(self, what: str) -> str:
        raw = self.short_bytes(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not UTF-8") from None

    def name(self, what: str = "peer name") -> str:
        return name_from_bytes(self.take(NAME_LEN, what))

    def rest(self) -> bytes:
        chunk = self._data[self._pos:]
        self._pos = len(self._data)
        return chunk

    def end(self, what: str) -> None:
        if self.remaining:
            raise ProtocolError(f"{self.remaining} trailing bytes after {what}")
