"""sleeve: the userspace data path, as an overlay (Weave's router/sleeve.go).

Frames come up from the `weave` bridge through a tap (net/tap.py) and go to
the peer their destination MAC lives behind, as UDP datagrams on the control
port (6783): through firewalls that pass only that port, and relayed by
intermediate peers to peers we have no direct connection to.  The wire format
is net/sleeve_codec.py; which peer gets what is net/sleeve_core.py; both are
sans-IO.  This module is the I/O:

- two threads, one per direction (tap -> UDP, UDP -> tap), each waiting in
  poll and then draining what is ready: the research behind
  dataplane-performance.md measured threads as fast as the event loop's
  readers, with a lower round trip, and they keep the data path off the loop
  that runs gossip, DNS and the API;
- per connection, heartbeats over UDP acked over TCP (the fastdp heartbeat's
  state machine, net/fastdp_heartbeat.py), which also teach an inbound
  connection the peer's UDP address (NAT on the dialling side);
- the threads read one immutable forwarding state, rebuilt on the loop when a
  connection or the topology changes and swapped in by one assignment.

A TCP super-frame from the tap (up to 64 KiB, vnet header in front) is cut in
datagram-sized chunks and written back whole on the far side, where the kernel
segments it: Python never touches a frame per 1.4 KB segment.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import Counter

from ..mesh.overlay import ConnectionParams
from ..mesh.wire import ProtocolError
from . import tap
from .bridge import BRIDGE, DEFAULT_MTU
from .fastdp_heartbeat import HeartbeatLink, Timers, mac_bytes, mac_text
from .heartbeat_driver import HeartbeatDriver
from .sleeve_codec import (ACK, FRAME_HEAD, HEADS_BUFFER, MAX_FRAME, VNET, VNET_HLEN, ZERO_VNET, Frame,
                           Heartbeat, Reassembler, SleeveDecodeError, decode_control, decode_datagram,
                           encode_heartbeat, pack_chunk_heads)
from .sleeve_core import FASTDP, SLEEVE, ForwardingState, Hop, SleeveCore
from .sleeve_macs import MacCache

log = logging.getLogger("weavepy.sleeve")

IP_MTU = getattr(socket, "IP_MTU", 14)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
RELAYED_ID = 1 << 31           # frame ids this peer relays carry it; those it sends from its tap do not
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT, UDP_GRO = 103, 104   # linux/udp.h
GSO_SEGMENTS = 64                 # UDP_MAX_SEGMENTS on older kernels (128 since 5.x)
GSO_BYTES = 65507 - 1000          # one GSO send is one UDP datagram before it is cut: keep under 64 KiB
ROUTES_SETTLE = 0.1               # seconds: the threads' copy of the routes lags the mesh by at most this
SEND_WAIT = 0.01               # seconds a sender waits for room in a full send queue before dropping
DRAIN = 64                     # datagrams or frames handled per wakeup before polling again
SOCKET_BUFFER = 4 << 20        # bytes: a burst of super-frames must not overflow the receive queue
UDP_HEADERS = 28               # IPv4 + UDP
OVERHEAD = FRAME_HEAD + VNET_HLEN + 14    # what a datagram carries besides the container's IP packet


class SleeveUnavailable(Exception):
    """No tap or no UDP port: the router runs without the sleeve."""


class Sleeve:
    name = "sleeve"

    def __init__(self, local_name: str, port: int = 6783, mtu: int = DEFAULT_MTU, bridge: str = BRIDGE, *,
                 host: str = "", timers: Timers = Timers(), beside_fastdp: bool = False):
        self.local_name = local_name.lower()
        self.me = mac_bytes(self.local_name)
        self.port, self.mtu, self.bridge, self.host, self.timers = port, mtu, bridge, host, timers
        # With fastdp beside us, a neighbour whose connection is not ours is the kernel's to reach.
        self.beside_fastdp = beside_fastdp
        self.device = tap.device_name(port)
        self.metrics: Counter = Counter()            # the loop's (heartbeats, control)
        self.macs = MacCache()
        self.core = SleeveCore(self.macs)
        self.state = ForwardingState.empty(self.local_name)
        self._conns: dict[int, SleeveConnection] = {}
        self._routes = None
        self._routes_seen = None
        self._routes_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tap: int | None = None
        self._sock: socket.socket | None = None
        self._wake_r = self._wake_w = None
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._relayed = 0
        self._gso = True                  # until the kernel refuses UDP_SEGMENT
        self._tasks: set[asyncio.Task] = set()
        self._traffic: Counter = Counter()           # the threads' (frames, datagrams, drops)

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._tap = tap.open_tap(self.device, vnet=True)
            await asyncio.to_thread(tap.attach, self.device, self.bridge, self.mtu)   # netlink blocks
        except tap.TapError as exc:
            self._close_fds()
            raise SleeveUnavailable(str(exc)) from None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)   # never fragment: chunk
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            sock.bind((self.host, self.port))
            sock.setblocking(False)        # the loop sends heartbeats on it too: it must never block
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)   # receive chunks of one sender coalesced
            except OSError:
                log.info("sleeve: no UDP GRO on this kernel")
        except OSError as exc:
            sock.close()
            self._close_fds()
            raise SleeveUnavailable(f"cannot use UDP port {self.port}: {exc.strerror}") from None
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe()
        for target, name in ((self._tap_to_udp, "sleeve-tx"), (self._udp_to_tap, "sleeve-rx")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("sleeve: tap %s on %s, UDP port %d", self.device, self.bridge, self.port)

    def close(self) -> None:
        self._closing = True
        if self._routes_timer is not None:
            self._routes_timer.cancel()
        if self._wake_w is not None:
            os.write(self._wake_w, b"x")
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads.clear()
        for conn in list(self._conns.values()):
            conn._halt()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._tap, self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._tap = self._wake_r = self._wake_w = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the Overlay interface ---------------------------------------------------------------------------

    def features(self) -> dict[str, str]:
        return {}

    def prepare(self, params: ConnectionParams) -> "SleeveConnection":
        if self._loop is None:
            raise RuntimeError("Sleeve.start() has not run")
        conn = SleeveConnection(self, params)
        self._conns[params.conn_uid] = conn
        return conn

    def routes_changed(self, routes) -> None:
        """The topology changed: new routes for broadcasts and relays.  The mesh keeps one Routes
        object until a link changes, so most calls cost an identity check; and while a mesh
        forms, links change hundreds of times a second, so the frozen copy for the threads is
        made at most every ROUTES_SETTLE seconds (30 routers converged 3 s later without it)."""
        if routes is self._routes_seen:
            return
        self._routes_seen = routes
        if self._routes is None:
            self._apply_routes()             # the first: at once
        elif self._routes_timer is None:
            self._routes_timer = self._loop.call_later(ROUTES_SETTLE, self._apply_routes)

    def _apply_routes(self) -> None:
        self._routes_timer = None
        self._routes = self._routes_seen.data_plane()
        self._rebuild()

    def peer_gone(self, name: str) -> None:
        self.macs.purge(name.lower())

    def diagnostics(self) -> dict:
        return {"device": self.device, "udp_port": self.port, "mtu": self.mtu,
                "macs": len(self.macs), "metrics": dict(self.metrics), "dropped": dict(self.core.dropped),
                "traffic": dict(self._traffic)}

    # -- the forwarding state (the loop writes it, the threads read it) ---------------------------------

    def _rebuild(self) -> None:
        if self._routes is None:
            return
        carrying = [c for c in self._conns.values() if c.carrying]
        hops = {c.remote_name: Hop(c.addr, c.dgram_max) for c in carrying}
        # A neighbour's frames are ours to carry when its sleeve link is the active one; with fastdp
        # beside us, the kernel carries the rest (a standby sleeve link still carries relays).
        ours = {c.remote_name for c in self._conns.values() if c.active}
        active = {peer: SLEEVE if peer in ours else FASTDP if self.beside_fastdp else None
                  for peer in self._routes.neighbours(self.local_name)}
        self.state = ForwardingState.build(self._routes, active, hops,
                                           {mac_bytes(c.remote_name): c.remote_name for c in carrying})

    def _released(self, conn: "SleeveConnection") -> None:
        if self._conns.get(conn.uid) is conn:
            del self._conns[conn.uid]
        self._rebuild()

    def _forget_macs_of(self, peer: str, then) -> None:
        macs = [m.hex(":") for m in self.macs.macs_of(peer)]

        async def forget():
            try:
                await asyncio.to_thread(tap.forget_macs, self.device, macs)
            except Exception as exc:     # the tap went meanwhile: nothing to forget
                log.debug("sleeve: forgetting %s's MACs: %s", peer, exc)
            then()
        task = self._loop.create_task(forget())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _heartbeat(self, hb: Heartbeat, addr: tuple[str, int]) -> None:
        conn = self._conns.get(hb.conn_uid)
        if conn is None or hb.receiver != self.me or mac_bytes(conn.remote_name) != hb.sender:
            self.metrics["unknown_heartbeats"] += 1
            return
        conn._heartbeat_received(addr)

    # -- the threads --------------------------------------------------------------------------------

    def _poller(self, fd: int):
        """A poll on fd and the wake pipe, made once per thread."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        return poller

    def _wait(self, poller, fd: int) -> bool:
        """Until fd is readable (True) or we are closing (False)."""
        while not self._closing:
            for ready, _ in poller.poll(1000):
                if ready == fd:
                    return True
        return False

    def _tap_to_udp(self) -> None:
        buf = bytearray(MAX_FRAME)
        view = memoryview(buf)
        heads = bytearray(HEADS_BUFFER)
        frame_id = 0
        traffic = self._traffic
        poller = self._poller(self._tap)
        while self._wait(poller, self._tap):
            for _ in range(DRAIN):
                try:
                    n = os.readv(self._tap, [buf])
                except BlockingIOError:
                    break
                except OSError as exc:
                    if self._closing:
                        return
                    traffic["tap_read_errors"] += 1
                    log.warning("sleeve: reading %s: %s", self.device, exc)
                    time.sleep(0.1)
                    break
                if n < VNET_HLEN + 14:
                    continue
                state = self.state
                eth = view[VNET_HLEN:n]
                plain = buf[:VNET_HLEN] == ZERO_VNET
                data, flags = (eth, 0) if plain else (view[:n], VNET)
                try:
                    for send in self.core.from_tap(bytes(eth[0:6]), bytes(eth[6:12]), state):
                        frame_id = (frame_id + 1) & RELAYED_ID - 1
                        self._send(state, send.hop, self.me, mac_bytes(send.dst_peer), send.flags | flags,
                                   send.hops_left, frame_id, data, heads)
                except Exception:   # a bug must cost one frame, never the data path
                    traffic["tx_bugs"] += 1
                    if traffic["tx_bugs"] == 1:
                        log.exception("sleeve: sending a frame from the tap")
                traffic["frames_out"] += 1

    def _send(self, state: ForwardingState, hop: str, src: bytes, dst: bytes, flags: int, hops: int,
              frame_id: int, data: memoryview, heads: bytearray) -> None:
        """One frame to one hop, in as many datagrams as its path needs."""
        link = state.hops.get(hop)
        if link is None:
            self.core.dropped["no_sleeve_hop"] += 1
            return
        try:
            count, size = pack_chunk_heads(heads, len(data), link.dgram_max, self.me, src, dst, flags, hops,
                                           frame_id)
        except ValueError:
            self.core.dropped["too_big"] += 1
            return
        hv = memoryview(heads)
        seg = FRAME_HEAD + size
        if count > 1 and self._gso:
            # UDP GSO (UDP_SEGMENT): the kernel cuts one send into `seg`-byte datagrams, every
            # chunk's header and data laid out in turn; one syscall per ~64 KiB, not per chunk.
            per_call = min(GSO_SEGMENTS, GSO_BYTES // seg)
            cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))]
            for first in range(0, count, per_call):
                parts = []
                for i in range(first, min(first + per_call, count)):
                    parts += (hv[i * FRAME_HEAD:(i + 1) * FRAME_HEAD], data[i * size:(i + 1) * size])
                sent = self._sendmsg(parts, cmsg, link.addr)
                if sent is None:
                    if not self._gso:       # the kernel refused GSO: plain sends from now on
                        break
                    return
            else:
                self._traffic["datagrams_out"] += count
                return
        for i in range(count):
            if self._sendmsg([hv[i * FRAME_HEAD:(i + 1) * FRAME_HEAD], data[i * size:(i + 1) * size]], [],
                             link.addr) is None:
                return
        self._traffic["datagrams_out"] += count

    def _sendmsg(self, parts: list, cmsg: list, addr) -> int | None:
        """One sendmsg; on a full send queue wait a moment, once.  None: not sent (counted)."""
        try:
            try:
                return self._sock.sendmsg(parts, cmsg, 0, addr)
            except BlockingIOError:
                select.select([], [self._sock], [], SEND_WAIT)
                return self._sock.sendmsg(parts, cmsg, 0, addr)
        except BlockingIOError:
            self._traffic["send_queue_full"] += 1
        except OSError as exc:
            if cmsg and exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                self._gso = False
                log.warning("sleeve: UDP GSO refused (%s); sending a datagram per chunk", exc.strerror)
            self._traffic["send_too_big" if exc.errno == errno.EMSGSIZE else "send_errors"] += 1
        return None

    def _udp_to_tap(self) -> None:
        buf = bytearray(65536)
        view = memoryview(buf)
        heads = bytearray(HEADS_BUFFER)
        reassembler = Reassembler()
        traffic = self._traffic
        next_sweep = 0.0
        ancillary = socket.CMSG_SPACE(4)
        fd = self._sock.fileno()
        poller = self._poller(fd)
        while self._wait(poller, fd):
            for _ in range(DRAIN):
                try:
                    n, cmsgs, _, addr = self._sock.recvmsg_into([buf], ancillary)
                except BlockingIOError:
                    break
                except OSError:
                    if self._closing:
                        return
                    traffic["recv_errors"] += 1     # e.g. ICMP port unreachable for an earlier send
                    continue
                if n == 0:
                    traffic["decode_short"] += 1        # an empty datagram
                    continue
                # UDP GRO: datagrams of one sender coalesced, every one `seg` bytes but the last
                seg = next((int.from_bytes(data[:4], sys.byteorder) for level, kind, data in cmsgs
                            if level == SOL_UDP and kind == UDP_GRO), n) or n
                try:
                    for offset in range(0, n, seg):
                        self._datagram(view[offset:min(offset + seg, n)], addr, reassembler, heads)
                except Exception:   # a bug must cost one datagram, never the data path
                    traffic["rx_bugs"] += 1
                    if traffic["rx_bugs"] == 1:
                        log.exception("sleeve: handling a datagram from %s:%d", *addr)
            now = time.monotonic()
            reassembler.expire(now)
            if now >= next_sweep:
                next_sweep = now + 1.0
                for mac, peer in self.macs.expire(now):
                    log.debug("sleeve: expired MAC %s at %s", mac.hex(":"), peer)

    def _datagram(self, data: memoryview, addr, reassembler: Reassembler, heads: bytearray) -> None:
        traffic = self._traffic
        try:
            msg = decode_datagram(data)
        except SleeveDecodeError as exc:
            traffic["decode_" + exc.kind] += 1
            return
        if isinstance(msg, Heartbeat):
            self._loop.call_soon_threadsafe(self._heartbeat, msg, addr)
            return
        if not isinstance(msg, Frame):
            traffic["ignored"] += 1             # probes: path MTU discovery is to come
            return
        state = self.state
        sender = state.by_sender.get(msg.sender)
        if sender is None or state.hops[sender].addr != addr:
            traffic["unknown_sender"] += 1      # not a connected peer, or not from its address
            return
        whole = reassembler.add(msg.sender, msg, time.monotonic())
        if whole is not None:
            traffic["frames_in"] += 1
            self._deliver(state, sender, msg, whole, heads)

    def _deliver(self, state: ForwardingState, sender: str, msg: Frame, whole: memoryview, heads) -> None:
        eth = whole[VNET_HLEN:] if msg.flags & VNET else whole
        if len(eth) < 14:
            self.core.dropped["runt"] += 1
            return
        inject, relays = self.core.from_udp(mac_text(msg.src), mac_text(msg.dst), msg.flags, msg.hops,
                                            bytes(eth[6:12]), state, time.monotonic())
        for relay in relays:
            self._relayed = (self._relayed + 1) & RELAYED_ID - 1   # the next hop reassembles by our ids
            self._send(state, relay.hop, msg.src, mac_bytes(relay.dst_peer), relay.flags | (msg.flags & VNET),
                       relay.hops_left, RELAYED_ID | self._relayed, whole, heads)
        if inject:
            try:
                if msg.flags & VNET:
                    os.write(self._tap, whole)
                else:
                    os.writev(self._tap, [ZERO_VNET, eth])
            except OSError:
                self._traffic["tap_write_errors"] += 1


class SleeveConnection(HeartbeatDriver):
    """One control connection's sleeve link: heartbeats out over UDP, acks back over TCP."""

    def __init__(self, overlay: Sleeve, params: ConnectionParams):
        self.overlay = overlay
        self.params = params
        self.uid = params.conn_uid
        self.remote_name = params.remote_name.lower()
        # Outbound, the peer's UDP port is its TCP port; inbound it is assumed equal to ours until
        # its first heartbeat says where it really is (it may come through NAT).
        self.addr = (params.remote_ip, params.remote_port if params.outbound else overlay.port)
        self.learnt = params.outbound
        self.active = True          # carries this peer's frames (False: standby beside fastdp, relays only)
        self.dgram_max = _path_datagram_max(params.remote_ip)
        self._link = HeartbeatLink(f"{self.addr[0]}:{self.addr[1]}", overlay.timers)
        self._heartbeat_bytes = encode_heartbeat(overlay.me, params.conn_uid, mac_bytes(self.remote_name))
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    @property
    def carrying(self) -> bool:
        """Frames go over this link: it is proven both ways (and not stopped)."""
        return not self._stopped and self._link.established

    # -- OverlayConnection ---------------------------------------------------------------------------

    def confirm(self) -> None:
        if not self._stopped and not self._link.confirmed:
            self._run(self._link.confirm(self._now()))

    def control_message(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            decoded = decode_control(data)
            if not isinstance(decoded, bytes):
                return                              # a path MTU ack: discovery is to come
            actions = self._link.control_received(decoded, self._now())
        except ProtocolError as exc:
            self.overlay.metrics["bad_control"] += 1
            log.warning("sleeve: from %s: %s", self.remote_name, exc)
            return
        self.overlay.metrics["acks_received" if decoded == ACK else "holds_received"] += 1
        self._run(actions)

    def set_carrying(self, carrying: bool, then) -> None:
        """For the overlay switch: carry this peer's frames, or stand by (fastdp carries them) after
        the bridge forgets the peer's MACs behind the tap, so its next frames go to the kernel."""
        self.active = carrying
        self.overlay._rebuild()
        if carrying:
            then()
        else:
            self.overlay._forget_macs_of(self.remote_name, then)

    def attrs(self) -> dict:
        out = {"name": "sleeve", "mtu": self.dgram_max - OVERHEAD, "udp": f"{self.addr[0]}:{self.addr[1]}",
               "established": self._link.established, "healthy": self._link.established and self._link.healthy}
        if self._link.error:
            out["error"] = self._link.error
        return out

    # -- internals ------------------------------------------------------------------------------------

    def _halt(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _heartbeat_received(self, addr: tuple[str, int]) -> None:
        if self._stopped:
            return
        if addr != self.addr and not self.learnt:
            log.info("sleeve: %s's UDP address is %s:%d", self.remote_name, *addr)
            self.addr = addr
            self.overlay._rebuild()
        self.learnt = True
        self._run(self._link.heartbeat_received(self._now()))

    def _send_heartbeat(self) -> list:
        try:
            self.overlay._sock.sendto(self._heartbeat_bytes, self.addr)
        except BlockingIOError:
            return []
        except OSError as exc:
            self.overlay.metrics["heartbeat_send_errors"] += 1
            return self._link.send_failed(f"heartbeat to {self.addr[0]}:{self.addr[1]} failed: {exc.strerror}",
                                          self._now())
        self.overlay.metrics["heartbeats_sent"] += 1
        return []

    def _established(self) -> None:
        log.info("sleeve: %s at %s:%d established", self.remote_name, *self.addr)
        self.overlay._rebuild()
        self._callback(self.params.on_established)

    def _health(self, healthy: bool) -> None:
        self.overlay._rebuild()
        self._callback(self.params.on_health, healthy)


def _path_datagram_max(ip: str) -> int:
    """The largest UDP payload the route to ip carries unfragmented (its MTU less IPv4 and UDP)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((ip, 9))
        return probe.getsockopt(socket.IPPROTO_IP, IP_MTU) - UDP_HEADERS
    except OSError:
        return 1500 - UDP_HEADERS
    finally:
        probe.close()
