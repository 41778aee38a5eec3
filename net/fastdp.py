"""fastdp: the kernel VXLAN data path as an overlay (the asyncio driver).

Containers' frames never reach Python: the `weave` bridge hands them to the
kernel device `vxlan-<port+1>` (net/vxlan.py).  This overlay only
- proves each connection's path with full-MTU heartbeats (net/fastdp_heartbeat.py):
  sent from a UDP socket with DF set, read back on the remote host from a
  packet socket bound to the bridge for one EtherType (so it costs the other
  traffic nothing), acked over the control connection;
- keeps the kernel FDB in step with the connections (net/fastdp_vteps.py):
  a flood entry per established peer, removed -- with the MACs learned behind
  it -- when the peer is gone for good.

The kernel state is left in place when the router stops or dies: a restarted
router takes the device and its entries over, so container traffic never
stops.  Netlink calls block, so they run one after another on a worker thread.

Limits of a single fixed-VNI device (docs: weave-router-mesh §5.7): it carries
traffic to directly connected peers only (the bridge never sends a frame back
out of the port it came in on, so no multi-hop relay), and the remote VXLAN
port must equal ours.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter

from ..mesh.overlay import ConnectionParams
from ..mesh.wire import ProtocolError
from . import vxlan
from .bridge import BRIDGE, DEFAULT_MTU
from .fastdp_heartbeat import ACK, ETHERTYPE, HeartbeatLink, Timers, decode_heartbeat, encode_heartbeat, encode_vxlan
from .fastdp_vteps import DEFAULT_LINGER, AddFlood, VtepTable
from .heartbeat_driver import HeartbeatDriver

log = logging.getLogger("weavepy.fastdp")

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
MAX_FRAME = 65536
DRAIN_BATCH = 64                    # frames read per wakeup, so a flood cannot starve the loop


class FastDPUnavailable(Exception):
    """VXLAN cannot be used on this host: the router should run without fastdp."""


class FastDP:
    name = "fastdp"

    def __init__(self, local_name: str, port: int = 6783, mtu: int = DEFAULT_MTU, bridge: str = BRIDGE, *,
                 timers: Timers = Timers(), linger: float = DEFAULT_LINGER):
        if not 68 <= mtu <= 65000:
            raise ValueError(f"MTU {mtu} out of range (68-65000)")
        self.local_name = local_name.lower()
        self.port = port
        self.udp_port = port + 1
        self.mtu = mtu
        self.bridge = bridge
        self.device = vxlan.device_name(port)
        self.vni = vxlan.VNI
        self.timers = timers
        self.metrics: Counter = Counter()
        self.created: bool | None = None     # after start: False when an existing device was taken over
        self._vteps = VtepTable(linger)
        self._conns: dict[int, FastDPConnection] = {}   # by conn_uid, which heartbeats carry
        self._packet_sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ops: asyncio.Queue = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._vtep_timer: asyncio.TimerHandle | None = None
        self._fdb: list[vxlan.FdbEntry] = []

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take over or create the device, adopt its FDB, listen for heartbeats.
        Raises FastDPUnavailable with a reason the router can show."""
        self._loop = asyncio.get_running_loop()
        try:
            dev = await asyncio.to_thread(vxlan.ensure_device, self.device, self.vni, self.udp_port,
                                          self.mtu, self.bridge)
            self._fdb = await asyncio.to_thread(vxlan.fdb_entries, self.device)
        except vxlan.VxlanError as exc:
            raise FastDPUnavailable(f"fastdp unavailable: {exc}") from exc
        self.created = dev.created
        flood = {e.dst for e in self._fdb if e.mac == vxlan.FLOOD_MAC}
        self._vteps.adopt(flood, {e.dst for e in self._fdb}, self._loop.time())
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        except OSError as exc:
            raise FastDPUnavailable(f"fastdp unavailable: no packet socket for heartbeats: {exc.strerror}") from exc
        try:
            sock.bind((self.bridge, ETHERTYPE))   # this EtherType on the bridge only: no cost to other traffic
        except OSError as exc:
            sock.close()
            raise FastDPUnavailable(f"fastdp unavailable: cannot listen on bridge {self.bridge}: {exc.strerror}") from exc
        sock.setblocking(False)
        self._packet_sock = sock
        self._loop.add_reader(sock.fileno(), self._read_heartbeats)
        self._worker = asyncio.create_task(self._apply_kernel_ops())
        self._schedule_vteps()
        log.info("fastdp: %s %s (VNI %d, UDP %d, MTU %d, %d FDB entries adopted)", self.device,
                 "created" if dev.created else "taken over", self.vni, self.udp_port, self.mtu, len(self._fdb))

    def close(self) -> None:
        """The router is stopping: the device and its FDB stay, so containers keep talking."""
        for conn in list(self._conns.values()):
            conn._halt()
        self._conns.clear()
        if self._packet_sock is not None:
            self._loop.remove_reader(self._packet_sock.fileno())
            self._packet_sock.close()
            self._packet_sock = None
        if self._vtep_timer is not None:
            self._vtep_timer.cancel()
        if self._worker is not None:
            self._worker.cancel()

    # -- the Overlay interface ------------------------------------------------------------------------

    def features(self) -> dict[str, str]:
        return {"Overlays": "fastdp"}

    def prepare(self, params: ConnectionParams) -> "FastDPConnection":
        if self._loop is None:
            raise RuntimeError("FastDP.start() has not run")
        conn = FastDPConnection(self, params)
        self._conns[params.conn_uid] = conn
        return conn

    def peer_gone(self, name: str) -> None:
        """The peer left the topology: its kernel state goes now, not after the linger."""
        self._queue(self._vteps.peer_gone(name.lower()))

    def diagnostics(self) -> dict:
        if self._worker is not None and self._ops.empty():
            self._ops.put_nowait(None)      # refresh the FDB listing for the next call
        return {"device": self.device, "vni": self.vni, "udp_port": self.udp_port, "mtu": self.mtu,
                "taken_over": self.created is False,
                "vteps": self._vteps.snapshot(self._loop.time()) if self._loop else {},
                "fdb": [{"mac": e.mac, "dst": e.dst, "permanent": e.permanent} for e in self._fdb],
                "metrics": dict(self.metrics)}

    async def settled(self) -> None:
        """Wait until every queued kernel change is applied (tests, shutdown)."""
        await self._ops.join()

    # -- heartbeats in -----------------------------------------------------------------------------

    def _read_heartbeats(self) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frame = self._packet_sock.recv(MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("fastdp: heartbeat socket: %s", exc)
                return
            self._heartbeat_frame(frame)

    def _heartbeat_frame(self, frame: bytes) -> None:
        try:
            hb = decode_heartbeat(frame)
        except ProtocolError:
            self.metrics["bad_heartbeats"] += 1
            return
        conn = self._conns.get(hb.conn_uid)
        if conn is None or hb.src != conn.remote_name or hb.dst != self.local_name:
            self.metrics["bad_heartbeats"] += 1     # forged, stale, or for another host
            return
        self.metrics["heartbeats_received"] += 1
        conn._heartbeat_received()

    # -- kernel state --------------------------------------------------------------------------------

    def _established(self, conn: "FastDPConnection", then) -> None:
        """Install the peer's flood entry, then call `then`: established means the kernel path is ready."""
        self._queue(self._vteps.established(conn.uid, conn.remote_name, conn.params.remote_ip, self._loop.time()))
        self._ops.put_nowait(then)

    def _withdrawn(self, conn: "FastDPConnection", then) -> None:
        """Take the peer's kernel state away, then call `then` (the sleeve carries it now)."""
        self._queue(self._vteps.withdrawn(conn.uid))
        self._ops.put_nowait(then)

    def _released(self, conn: "FastDPConnection") -> None:
        if self._conns.get(conn.uid) is conn:
            del self._conns[conn.uid]
        self._vteps.released(conn.uid, self._loop.time())
        self._schedule_vteps()

    def _queue(self, ops: list) -> None:
        for op in ops:
            self._ops.put_nowait(op)
        self._schedule_vteps()

    def _schedule_vteps(self) -> None:
        if self._vtep_timer is not None:
            self._vtep_timer.cancel()
            self._vtep_timer = None
        deadline = self._vteps.next_deadline()
        if deadline is not None:
            self._vtep_timer = self._loop.call_at(deadline, self._vtep_tick)

    def _vtep_tick(self) -> None:
        self._vtep_timer = None
        self._queue(self._vteps.tick(self._loop.time()))

    async def _apply_kernel_ops(self) -> None:
        while True:
            op = await self._ops.get()
            try:
                if callable(op):
                    op()
                elif isinstance(op, AddFlood):
                    await asyncio.to_thread(vxlan.add_flood, self.device, op.ip)
                    log.info("fastdp: flooding to %s", op.ip)
                elif op is not None:
                    removed = await asyncio.to_thread(vxlan.remove_vtep, self.device, op.ip)
                    log.info("fastdp: forgot VTEP %s (%d FDB entries)", op.ip, removed)
                if self._ops.empty():
                    self._fdb = await asyncio.to_thread(vxlan.fdb_entries, self.device)
            except Exception as exc:        # the device was removed under us, netlink refused, ...
                self.metrics["kernel_errors"] += 1
                log.warning("fastdp: %s failed: %s", op, exc)
            finally:
                self._ops.task_done()


class FastDPConnection(HeartbeatDriver):
    """One control connection's fastdp link: heartbeats out, acks in, callbacks to the router."""

    def __init__(self, overlay: FastDP, params: ConnectionParams):
        self.overlay = overlay
        self.params = params
        self.uid = params.conn_uid
        self.remote_name = params.remote_name.lower()
        # Weave: outbound, the remote VXLAN port is its TCP port + 1; inbound it is assumed equal to ours.
        remote_udp = params.remote_port + 1 if params.outbound else overlay.udp_port
        self.remote = f"{params.remote_ip}:{remote_udp}"
        self._link = HeartbeatLink(self.remote, overlay.timers)
        self._refused = None if remote_udp == overlay.udp_port else (
            f"peer's VXLAN port is {remote_udp}, ours {overlay.udp_port}: fastdp needs the same --port on both hosts")
        self._frame = encode_vxlan(overlay.vni, encode_heartbeat(self.remote_name, overlay.local_name,
                                                                 params.conn_uid, overlay.mtu))
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    # -- OverlayConnection ---------------------------------------------------------------------------

    def confirm(self) -> None:
        if self._stopped or self._refused or self._link.confirmed:
            return
        try:
            self._sock = self._open_socket()
        except OSError as exc:
            self._refused = f"cannot send heartbeats to {self.remote}: {exc.strerror}"
            return
        self._run(self._link.confirm(self._now()))

    def control_message(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            actions = self._link.control_received(data, self._now())
        except ProtocolError as exc:
            self.overlay.metrics["bad_control"] += 1
            log.warning("fastdp: from %s: %s", self.remote, exc)
            return
        self.overlay.metrics["acks_received" if data == ACK else "holds_received"] += 1
        self._run(actions)

    def set_carrying(self, carrying: bool, then) -> None:
        """For the overlay switch: give the kernel this peer's traffic (flood entry installed, then
        `then`), or take it away (its VTEP removed, then `then`)."""
        if self._stopped:
            return
        if carrying:
            self.overlay._established(self, then)
        else:
            self.overlay._withdrawn(self, then)

    def attrs(self) -> dict:
        out = {"name": "fastdp", "mtu": self.overlay.mtu, "vxlan": self.remote,
               "established": self._link.established, "healthy": self._link.established and self._link.healthy}
        error = self._refused or self._link.error
        if error:
            out["error"] = error
        return out

    # -- internals ------------------------------------------------------------------------------------

    def _halt(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)  # DF: the MTU check
            if self.params.local_ip:
                sock.bind((self.params.local_ip, 0))    # the source the peer's kernel learns us by
            host, port = self.remote.rsplit(":", 1)
            sock.connect((host, int(port)))             # ICMP errors come back on this socket
        except OSError:
            sock.close()
            raise
        return sock

    def _heartbeat_received(self) -> None:
        if not self._stopped:
            self._run(self._link.heartbeat_received(self._now()))

    def _send_heartbeat(self) -> list:
        try:
            self._sock.send(self._frame)
        except BlockingIOError:
            return []
        except OSError as exc:
            self.overlay.metrics["heartbeat_send_errors"] += 1
            return self._link.send_failed(self._explain_send_error(exc), self._now())
        self.overlay.metrics["heartbeats_sent"] += 1
        return []

    def _explain_send_error(self, exc: OSError) -> str:
        ip = self.params.remote_ip
        if exc.errno == errno.EMSGSIZE:
            return (f"the path to {ip} cannot carry {len(self._frame) + 28}-byte packets: "  # + IPv4 + UDP
                    f"MTU {self.overlay.mtu} is too big for the underlay")
        if exc.errno == errno.ECONNREFUSED:
            return f"{self.remote} refused heartbeats (ICMP port unreachable): is fastdp running there?"
        return f"heartbeat to {self.remote} failed: {exc.strerror}"

    def _established(self) -> None:
        log.info("fastdp: %s established (MTU %d proven both ways)", self.remote, self.overlay.mtu)
        self.overlay._established(self, self._report_established)

    def _health(self, healthy: bool) -> None:
        log.info("fastdp: %s %s", self.remote, "healthy again" if healthy else f"unhealthy: {self._link.error}")
        self._callback(self.params.on_health, healthy)

    def _report_established(self) -> None:
        if not self._stopped:
            self._callback(self.params.on_established)
