"""fastdp's data-path heartbeat, sans-IO: the frame, the control messages, and one link's state.

The heartbeat proves the VXLAN path and its MTU (Weave `router/fastdp.go`):
each side sends, from userspace with DF set, a VXLAN datagram whose inner
Ethernet frame is exactly 14 + MTU bytes, addressed to the remote bridge's MAC
(= the remote peer name) so the remote bridge passes it up to the host and
never floods it to containers.  The receiver checks it and acks once over the
control connection.  A link is *established* when our heartbeat was acked and
we have heard the peer's: both directions carry a full-MTU frame.  A lost or
truncated full-size heartbeat is never acked: that is the MTU check.

Health after that: with heartbeats every `slow` seconds, `missed` of them
unheard (Weave: 6 x 10 s; we take 3, failing over twice as fast) make the link
unhealthy.  Unlike Weave, the side that stops hearing says so (HOLD over
TCP), so the sender also knows its direction is unproven and heartbeats fast
again: when the path comes back, both sides are healthy within `fast` seconds.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..mesh.wire import ProtocolError

ETH_HLEN = 14
# IEEE 802 "local experimental" EtherType 1: never used by container traffic,
# so a packet socket for it on the bridge sees nothing else.
ETHERTYPE = 0x88B5
MAGIC = b"WPHB"
_HEAD = struct.Struct("!6s6sH4sQH")   # dst, src, EtherType, magic, conn_uid, total frame length
_VXLAN = struct.Struct("!B3xI")       # RFC 7348 §5: flags (I bit), reserved, VNI << 8
VXLAN_FLAG_VNI = 0x08

# Control messages (wrapped by the router as overlay tag 7); subtag 0 is Weave's HeartbeatAck.
ACK = b"\x00"
HOLD = b"\x01"    # "I stopped hearing you": prove your direction again


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def encode_heartbeat(dst_mac: str, src_mac: str, conn_uid: int, mtu: int) -> bytes:
    """The inner Ethernet frame: 14 + mtu bytes, zero-padded."""
    total = ETH_HLEN + mtu
    if total < _HEAD.size or total > 0xFFFF:
        raise ValueError(f"MTU {mtu} out of range for a heartbeat")
    head = _HEAD.pack(mac_bytes(dst_mac), mac_bytes(src_mac), ETHERTYPE, MAGIC, conn_uid, total)
    return head + bytes(total - len(head))


def encode_vxlan(vni: int, frame: bytes) -> bytes:
    return _VXLAN.pack(VXLAN_FLAG_VNI, vni << 8) + frame


@dataclass(frozen=True)
class Heartbeat:
    dst: str
    src: str
    conn_uid: int


def decode_heartbeat(frame: bytes) -> Heartbeat:
    """A frame read from the bridge (Ethernet header included).  Raises ProtocolError."""
    if len(frame) < _HEAD.size:
        raise ProtocolError(f"heartbeat frame too short ({len(frame)} bytes)")
    dst, src, ethertype, magic, conn_uid, total = _HEAD.unpack_from(frame)
    if ethertype != ETHERTYPE or magic != MAGIC:
        raise ProtocolError("not a heartbeat")
    if total != len(frame):
        raise ProtocolError(f"heartbeat says {total} bytes, {len(frame)} arrived")
    return Heartbeat(mac_text(dst), mac_text(src), conn_uid)


def decode_control(data: bytes) -> bytes:
    """ACK or HOLD; anything else raises ProtocolError."""
    if data not in (ACK, HOLD):
        raise ProtocolError(f"unknown fastdp control message {data[:8].hex()}")
    return data


@dataclass(frozen=True)
class Timers:
    fast: float = 0.5      # Weave FastHeartbeat: until acked
    slow: float = 10.0     # Weave SlowHeartbeat: once acked, and after giving up
    give_up: float = 5.0   # never proven this long after confirm: attrs say why, heartbeats slow down
    missed: int = 3        # slow heartbeats unheard before unhealthy

    @property
    def timeout(self) -> float:
        return self.missed * self.slow


# Actions the driver carries out.
@dataclass(frozen=True)
class SendHeartbeat:
    pass


@dataclass(frozen=True)
class SendControl:
    data: bytes


@dataclass(frozen=True)
class Established:
    pass


@dataclass(frozen=True)
class Health:
    healthy: bool


class HeartbeatLink:
    """One connection's heartbeat state.  `now` is any monotonic clock, in seconds."""

    def __init__(self, remote: str, timers: Timers = Timers()):
        self.remote = remote            # "ip:port", for error texts
        self.timers = timers
        self.confirmed = False
        self.established = False
        self.healthy = False
        self.error: str | None = None
        self._acked = False             # our direction proven (since the last HOLD)
        self._ack_sent = False          # we acked the peer's current run
        self._last_heard: float | None = None
        self._run_started = 0.0         # when our current unproven run began
        self._give_up_at: float | None = None
        self._next_send = 0.0
        self._send_error: str | None = None

    def confirm(self, now: float) -> list:
        if self.confirmed:
            return []
        self.confirmed = True
        self._start_run(now)
        return self.tick(now)

    def heartbeat_received(self, now: float) -> list:
        self._last_heard = now
        out = []
        if not self._ack_sent:
            self._ack_sent = True
            out.append(SendControl(ACK))
        return out + self._settle(now)

    def control_received(self, data: bytes, now: float) -> list:
        if decode_control(data) == ACK:
            self._acked = True
            self._send_error = None
            self._next_send = max(self._next_send, now + self.timers.slow)
        elif self.confirmed:
            self._acked = False
            self._start_run(now)
        return self.tick(now) if self.confirmed else self._settle(now)

    def send_failed(self, reason: str, now: float) -> list:
        self._send_error = reason
        return self._settle(now)

    def tick(self, now: float) -> list:
        if not self.confirmed:
            return []
        out = []
        if now >= self._next_send:
            out.append(SendHeartbeat())
            # unproven: fast; a link never established slows down after give_up (Weave), one on
            # hold keeps probing fast so it is back within `fast` seconds of the path healing
            fast = not self._acked and (self.established or now - self._run_started < self.timers.give_up)
            self._next_send = now + (self.timers.fast if fast else self.timers.slow)
        if self._give_up_at is not None and now >= self._give_up_at:
            self._give_up_at = None     # _settle below explains what is missing
        if self._ack_sent and self._unheard(now):
            self._ack_sent = False      # ack its next heartbeat: that ends its HOLD
            out.append(SendControl(HOLD))
        return out + self._settle(now)

    def next_deadline(self) -> float | None:
        if not self.confirmed:
            return None
        times = [self._next_send]
        if self._give_up_at is not None:
            times.append(self._give_up_at)
        if self._ack_sent and self._last_heard is not None:
            times.append(self._last_heard + self.timers.timeout)
        return min(times)

    def _start_run(self, now: float) -> None:
        self._run_started = self._next_send = now
        self._give_up_at = now + self.timers.give_up

    def _unheard(self, now: float) -> bool:
        return self._last_heard is None or now - self._last_heard >= self.timers.timeout

    def _settle(self, now: float) -> list:
        proven = self._acked and not self._unheard(now)
        self.error = self._explain(now, proven)
        if not self.established:
            if not proven:
                return []
            self.established = self.healthy = True
            return [Established()]
        if proven != self.healthy:
            self.healthy = proven
            return [Health(proven)]
        return []

    def _explain(self, now: float, proven: bool) -> str | None:
        if self._send_error:
            return self._send_error
        if proven or not self.confirmed:
            return None
        waited = now - self._run_started >= self.timers.give_up
        if not self._acked:
            if self.established:
                return f"{self.remote} stopped hearing our heartbeats (UDP blocked or MTU too small)"
            return f"no heartbeat ack from {self.remote} (UDP blocked or MTU too small)" if waited else None
        if self.established or waited:
            return f"no heartbeat from {self.remote} reaches us (UDP blocked towards us or MTU too small)"
        return None
