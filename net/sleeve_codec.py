"""The sleeve's wire format, sans-IO: its UDP datagrams, its control messages, and frame reassembly.

Every datagram on UDP <port> (6783) starts `version u8 = 1 | type u8 | sender 6B` (the hop that sent
it), big-endian, then by type:
  FRAME      src 6B | dst 6B | flags u8 | hops u8 | frame id u32 | index u16 | count u16 | total u32 | data
  HEARTBEAT  conn_uid u64 | receiver 6B                                          (22 bytes)
  PMTU_PROBE conn_uid u64 | probe id u32 | size u16 | zeros up to size           (size bytes)
A datagram carries one frame or one chunk of one: unlike Weave's sleeve we never pack many frames
into a datagram, because the tap gives one frame per read and, with TSO, the frames that carry the
bytes are ~64 KiB already.  Such a super-frame (its virtio_net_hdr first when VNET is set) is *chunked
by bytes*, never segmented by TCP: every chunk but the last carries the same L bytes (offset =
index * L), so each datagram states where its bytes go, and the receiver writes the frame back whole,
vnet header included, and its own kernel segments it (GSO).  Chunk headers are packed into a buffer
the caller owns and sent beside memoryview slices of the frame (sendmsg iovec): nothing is joined.

Control messages travel over the TCP connection (overlay tag 7, sleeve index 1): ACK and HOLD as
fastdp's (`net/fastdp_heartbeat.py`), PMTU_ACK (probe id u32, size u16) for the path-MTU search.

`decode_datagram` raises only `SleeveDecodeError(kind)`; the caller counts by kind.  `Reassembler`
puts chunks back together in a bounded set of preallocated buffers, whatever arrives.
"""
from __future__ import annotations

import struct
from collections import Counter
from typing import NamedTuple

from ..mesh.wire import ProtocolError

VERSION = 1                  # reserved to change: a sealed per-frame AEAD would be version 2
FRAME, HEARTBEAT, PMTU_PROBE = 1, 2, 3

# FRAME flags
FLOOD = 0x01       # inject, and relay along broadcast(src)
DELIVERED = 0x02   # the kernel (fastdp) already delivered this copy: relay only
VNET = 0x04        # data starts with the 10-byte virtio_net_hdr (omitted when all zero)

VNET_HLEN = 10               # struct virtio_net_hdr without num_buffers (TUNSETVNETHDRSZ 10)
ZERO_VNET = bytes(VNET_HLEN)  # what the receiver writes to its tap when VNET is not set
ETH_HLEN = 14
MAX_HOPS = 16                # hops left at the origin; 0 is dropped (an IP TTL against a forwarding loop)
# 10 vnet + 14 Ethernet + 4 VLAN + 65535 (the largest IPv4 packet, the kernel's GSO limit), rounded up
MAX_FRAME = 65600
# The floor datagram (576 - 28 = 548, RFC 791's minimum reassembly size) fits 514 data bytes: a
# MAX_FRAME frame is 128 chunks there; 256 leaves a margin and is still a small bitmap.
MAX_CHUNKS = 256
MAX_DATAGRAM = 65507         # 65535 - 20 IPv4 - 8 UDP

_HEAD = struct.Struct("!BB6s")
_FRAME = struct.Struct("!BB6s6s6sBBIHHI")
_HEARTBEAT = struct.Struct("!BB6sQ6s")
_PROBE = struct.Struct("!BB6sQIH")
FRAME_HEAD = _FRAME.size     # 34
HEARTBEAT_SIZE = _HEARTBEAT.size   # 22
PROBE_MIN = _PROBE.size      # 22
HEADS_BUFFER = FRAME_HEAD * MAX_CHUNKS   # enough for every chunk header of one frame

# Control messages (TCP, overlay tag 7)
ACK = b"\x00"
HOLD = b"\x01"
PMTU_ACK = 0x02
_PMTU_ACK = struct.Struct("!BIH")

DECODE_ERRORS = ("short", "version", "type", "length", "chunk")


class SleeveDecodeError(ProtocolError):
    """A datagram or control message we cannot use; `kind` is one of DECODE_ERRORS."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Frame(NamedTuple):
    """One FRAME datagram: a chunk of `total` bytes at offset index * chunk_len (the whole frame if count == 1)."""
    sender: bytes
    src: bytes
    dst: bytes
    flags: int
    hops: int
    frame_id: int
    index: int
    count: int
    total: int
    chunk_len: int           # L, the data length of every chunk but the last
    data: memoryview


class Heartbeat(NamedTuple):
    sender: bytes
    conn_uid: int
    receiver: bytes


class Probe(NamedTuple):
    sender: bytes
    conn_uid: int
    probe_id: int
    size: int


class PmtuAck(NamedTuple):
    probe_id: int
    size: int


# -- encoding --------------------------------------------------------------------------------------

def chunk_plan(total: int, dgram_max: int) -> tuple[int, int]:
    """(count, L) for a frame of `total` bytes over datagrams of at most `dgram_max` bytes."""
    if not 0 < total <= MAX_FRAME:
        raise ValueError(f"frame of {total} bytes (limit {MAX_FRAME})")
    size = min(dgram_max, MAX_DATAGRAM) - FRAME_HEAD
    if size <= 0:
        raise ValueError(f"datagram size {dgram_max} leaves no room for data")
    count = -(-total // size)
    if count > MAX_CHUNKS:
        raise ValueError(f"{total} bytes in {dgram_max}-byte datagrams is {count} chunks (limit {MAX_CHUNKS})")
    return count, (size if count > 1 else total)


def pack_frame_head(buf, offset: int, sender: bytes, src: bytes, dst: bytes, flags: int, hops: int,
                    frame_id: int, index: int, count: int, total: int) -> None:
    """Write one chunk's 34-byte header at buf[offset:]."""
    _FRAME.pack_into(buf, offset, VERSION, FRAME, sender, src, dst, flags, hops, frame_id, index, count, total)


def pack_chunk_heads(heads, total: int, dgram_max: int, sender: bytes, src: bytes, dst: bytes, flags: int,
                     hops: int, frame_id: int) -> tuple[int, int]:
    """Write the headers of every chunk of one frame at heads[i * FRAME_HEAD] (a buffer of at least
    HEADS_BUFFER bytes, reused per frame); returns (count, L).  Chunk i is header i + frame[i*L:(i+1)*L]."""
    count, size = chunk_plan(total, dgram_max)
    for index in range(count):
        _FRAME.pack_into(heads, index * FRAME_HEAD, VERSION, FRAME, sender, src, dst, flags, hops, frame_id,
                         index, count, total)
    return count, size


def chunks(frame, dgram_max: int, *, sender: bytes, src: bytes, dst: bytes, flags: int = 0,
           hops: int = MAX_HOPS, frame_id: int = 0) -> list[tuple[memoryview, memoryview]]:
    """(header, data) per datagram, for tests and simple senders: sendmsg([header, data]) each."""
    frame = memoryview(frame)
    heads = memoryview(bytearray(HEADS_BUFFER))
    count, size = pack_chunk_heads(heads, len(frame), dgram_max, sender, src, dst, flags, hops, frame_id)
    return [(heads[i * FRAME_HEAD:(i + 1) * FRAME_HEAD], frame[i * size:(i + 1) * size]) for i in range(count)]


def encode_heartbeat(sender: bytes, conn_uid: int, receiver: bytes) -> bytes:
    return _HEARTBEAT.pack(VERSION, HEARTBEAT, sender, conn_uid, receiver)


def encode_probe(sender: bytes, conn_uid: int, probe_id: int, size: int) -> bytes:
    """A `size`-byte probe (the datagram length is what it tests)."""
    if not PROBE_MIN <= size <= MAX_DATAGRAM:
        raise ValueError(f"probe size {size} out of range {PROBE_MIN}..{MAX_DATAGRAM}")
    return _PROBE.pack(VERSION, PMTU_PROBE, sender, conn_uid, probe_id, size) + bytes(size - PROBE_MIN)


def encode_pmtu_ack(probe_id: int, size: int) -> bytes:
    return _PMTU_ACK.pack(PMTU_ACK, probe_id, size)


# -- decoding --------------------------------------------------------------------------------------

def decode_datagram(data) -> Frame | Heartbeat | Probe:
    """One received datagram (any bytes-like; a FRAME's data is a view into it, not a copy)."""
    mv = memoryview(data)
    n = len(mv)
    if n < _HEAD.size:
        raise SleeveDecodeError("short", f"{n}-byte datagram")
    version, kind, sender = _HEAD.unpack_from(mv)
    if version != VERSION:
        raise SleeveDecodeError("version", f"version {version}")
    if kind == FRAME:
        return _decode_frame(mv, n)
    if kind == HEARTBEAT:
        if n < HEARTBEAT_SIZE:
            raise SleeveDecodeError("short", f"{n}-byte heartbeat")
        if n != HEARTBEAT_SIZE:
            raise SleeveDecodeError("length", f"{n}-byte heartbeat")
        _, _, sender, conn_uid, receiver = _HEARTBEAT.unpack_from(mv)
        return Heartbeat(sender, conn_uid, receiver)
    if kind == PMTU_PROBE:
        if n < PROBE_MIN:
            raise SleeveDecodeError("short", f"{n}-byte probe")
        _, _, sender, conn_uid, probe_id, size = _PROBE.unpack_from(mv)
        if size != n:
            raise SleeveDecodeError("length", f"probe says {size} bytes, {n} arrived")
        return Probe(sender, conn_uid, probe_id, size)
    raise SleeveDecodeError("type", f"type {kind}")


def _decode_frame(mv: memoryview, n: int) -> Frame:
    if n <= FRAME_HEAD:
        raise SleeveDecodeError("short", f"{n}-byte frame chunk")
    _, _, sender, src, dst, flags, hops, frame_id, index, count, total = _FRAME.unpack_from(mv)
    if total > MAX_FRAME or total < ETH_HLEN + (VNET_HLEN if flags & VNET else 0):
        raise SleeveDecodeError("length", f"frame of {total} bytes")
    if not 0 < count <= MAX_CHUNKS or index >= count:
        raise SleeveDecodeError("chunk", f"chunk {index} of {count}")
    size = n - FRAME_HEAD
    if count == 1:
        if size != total:
            raise SleeveDecodeError("length", f"frame says {total} bytes, {size} arrived")
        return Frame(sender, src, dst, flags, hops, frame_id, 0, 1, total, total, mv[FRAME_HEAD:])
    if index < count - 1:          # L = size; the last chunk must hold 1..L bytes
        if not size * (count - 1) < total <= size * count:
            raise SleeveDecodeError("chunk", f"{count} chunks of {size} cannot make {total} bytes")
        chunk_len = size
    else:                          # the last: the others hold total - size in count - 1 chunks of L >= size
        rest = total - size
        chunk_len = rest // (count - 1)
        if rest <= 0 or rest % (count - 1) or chunk_len < size:
            raise SleeveDecodeError("chunk", f"last chunk of {size} cannot end {total} bytes in {count}")
    return Frame(sender, src, dst, flags, hops, frame_id, index, count, total, chunk_len, mv[FRAME_HEAD:])


def decode_control(data: bytes) -> bytes | PmtuAck:
    """ACK or HOLD (returned as is, for HeartbeatLink) or a PmtuAck."""
    if data in (ACK, HOLD):
        return bytes(data)
    if not data:
        raise SleeveDecodeError("short", "empty control message")
    if data[0] != PMTU_ACK:
        raise SleeveDecodeError("type", f"control message {bytes(data[:8]).hex()}")
    if len(data) != _PMTU_ACK.size:
        raise SleeveDecodeError("length", f"{len(data)}-byte PMTU ack")
    _, probe_id, size = _PMTU_ACK.unpack(data)
    return PmtuAck(probe_id, size)


# -- reassembly ------------------------------------------------------------------------------------

class _Slot:
    __slots__ = ("key", "view", "count", "total", "chunk_len", "have", "missing", "started")


class Reassembler:
    """Chunks back into frames, in at most `total` preallocated MAX_FRAME buffers (allocated as first
    needed, never more): memory <= 64 x 66 KB whatever arrives.  Keyed (sender, frame id); a bitmap
    of chunks seen, so chunks complete a frame in any order and a duplicate never does.  A slot older
    than `max_age`, a third frame from one sender, or a new frame when all slots are in use evicts
    the oldest (counted in `counters`).  `sender` is whatever identifies the authenticated hop.

    The view `add` returns lies in a slot buffer: valid until the next `add`.
    """

    def __init__(self, per_sender: int = 2, total: int = 64, max_age: float = 1.0):
        self.per_sender, self.total, self.max_age = per_sender, total, max_age
        self.counters: Counter[str] = Counter()   # evicted_{stale,per_sender,full,replaced}, duplicate, completed
        self._slots: dict[tuple, _Slot] = {}     # in creation order: the first is the oldest
        self._of_sender: dict[object, list[tuple]] = {}
        self._free: list[memoryview] = []
        self.allocated = 0

    @property
    def evicted(self) -> int:
        return sum(v for k, v in self.counters.items() if k.startswith("evicted_"))

    @property
    def in_use(self) -> int:
        return len(self._slots)

    def add(self, sender, chunk: Frame, now: float) -> memoryview | None:
        """The whole frame once its last missing chunk arrives, else None."""
        if chunk.count == 1:
            return chunk.data
        self.expire(now)
        key = (sender, chunk.frame_id)
        slot = self._slots.get(key)
        if slot is not None and (slot.count, slot.total, slot.chunk_len) != (chunk.count, chunk.total,
                                                                             chunk.chunk_len):
            self._evict(slot, "replaced")      # the frame id was reused (a restarted sender): start again
            slot = None
        if slot is None:
            slot = self._new_slot(key, sender, chunk, now)
        bit = 1 << chunk.index
        if slot.have & bit:
            self.counters["duplicate"] += 1
            return None
        offset = chunk.index * slot.chunk_len
        slot.view[offset:offset + len(chunk.data)] = chunk.data
        slot.have |= bit
        slot.missing -= 1
        if slot.missing:
            return None
        self._release(slot)
        self.counters["completed"] += 1
        return slot.view[:slot.total]

    def expire(self, now: float) -> None:
        while self._slots:
            oldest = next(iter(self._slots.values()))
            if now - oldest.started <= self.max_age:
                return
            self._evict(oldest, "stale")

    def _new_slot(self, key: tuple, sender, chunk: Frame, now: float) -> _Slot:
        mine = self._of_sender.get(sender)
        if mine is not None and len(mine) >= self.per_sender:
            self._evict(self._slots[mine[0]], "per_sender")
        if not self._free:
            if self.allocated < self.total:
                self._free.append(memoryview(bytearray(MAX_FRAME)))
                self.allocated += 1
            else:
                self._evict(next(iter(self._slots.values())), "full")
        slot = _Slot()
        slot.key, slot.view, slot.started = key, self._free.pop(), now
        slot.count, slot.total, slot.chunk_len = chunk.count, chunk.total, chunk.chunk_len
        slot.have, slot.missing = 0, chunk.count
        self._slots[key] = slot
        self._of_sender.setdefault(sender, []).append(key)
        return slot

    def _evict(self, slot: _Slot, why: str) -> None:
        self.counters["evicted_" + why] += 1
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        del self._slots[slot.key]
        sender = slot.key[0]
        mine = self._of_sender[sender]
        mine.remove(slot.key)
        if not mine:
            del self._of_sender[sender]
        self._free.append(slot.view)
