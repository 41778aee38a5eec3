"""The mesh router, asyncio: listener, dialling, connections and timers around the sans-IO parts.

`MeshRouter` owns the sockets and the clock (loop.time()).  It feeds MeshCore
(topology, gossip; mesh/core.py) and the ConnectionMaker (targets;
mesh/targets.py) what happens, and carries out what they ask: each call into
the core is followed by `pump()`, which drains the core's actions (Send,
Close, PeerGone, TopologyChanged), redials if needed and re-arms the single
timer for the core's and the maker's next deadline.

Per connection (mesh/connection.py): handshake (mesh/handshake.py) within
10 s; then, as weaveworks/mesh orders it (connection.go), the overlay
prepares its connection, the core registers it, the overlay is confirmed; the
connection is *established* when the overlay says its data path works.

Timers differ from Weave's on purpose: a heartbeat every 2 s and a 10 s read
timeout (Weave: 30 s and 60 s), a 1.5 s TCP connect timeout, and targets
retried 1-3 s apart for the first ten minutes (mesh/targets.py).  A peer cut
off for 30 s is then redialled within about 3 s of the network healing, and
a restarted one within as long -- Weave can take minutes.

Sockets are closed gracefully, not with Weave's SO_LINGER 0 (an RST that
discards unsent data): the goodbye saying why must reach the peer.  A socket
that does not drain within 2 s is aborted.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from . import wire
from .connection import ControlConnection, Phase
from .core import Close, MeshCore, PeerGone, RemotePeer, Send, TopologyChanged, is_clash
from .handshake import MAX_VERSION, MIN_VERSION, ROUTER_FEATURES, Handshake
from .overlay import ConnectionParams, NullOverlay, Overlay
from .targets import ConnectionMaker, Dial, Link, parse_address, render_connection
from .token_bucket import TokenBucket
from .wire import ProtocolError

log = logging.getLogger("weavepy.mesh")

DEFAULT_PORT = 6783
ACCEPT_BURST = 20            # mesh/router.go: token bucket of 20 ...
ACCEPT_INTERVAL = 0.05       # ... refilled one per 50 ms
CORE_TAGS = frozenset((wire.GOSSIP, wire.GOSSIP_UNICAST, wire.GOSSIP_BROADCAST,
                       wire.PROBE, wire.PROBE_REPLY, wire.CLASH))
STOP_GRACE = 2.0             # for goodbyes to reach the peers when stopping
REFRESH_INTERVAL = 0.1       # at most ten redial passes a second
COUNTERS = ("messages_in", "messages_out", "bytes_in", "bytes_out",
            "malformed_dropped",     # tagged messages we could not read (dropped; the connection carries on)
            "unknown_tags", "protocol_errors",   # protocol_errors: a bad length, which ends the connection
            "gossiper_errors", "handshake_failures", "accepts", "accept_throttled", "dials", "dial_failures")


@dataclass(frozen=True)
class Timing:
    heartbeat: float = 2.0           # Weave: 30 s
    read_timeout: float = 10.0       # Weave: 60 s
    handshake_timeout: float = 10.0  # Weave's headerTimeout
    connect_timeout: float = 1.5     # covers one SYN retransmit (Linux: after 1 s)
    resolve_timeout: float = 5.0     # the resolver's own default for one try


class ListenError(Exception):
    """The router cannot listen on its port."""


def _random_u64() -> int:
    return secrets.randbits(64) or 1


class MeshRouter:
    def __init__(self, name: str, nickname: str, *, port: int = DEFAULT_PORT, host: str = "",
                 conn_limit: int = 200, discovery: bool = True, overlays: Sequence[Overlay] | None = None,
                 on_targets_changed: Callable[[list[str]], None] | None = None,
                 uid: int | None = None, timing: Timing = Timing()):
        self.name = name
        self.nickname = nickname
        self.uid = uid or _random_u64()
        self.port = port
        self.host = host
        self.discovery = discovery
        self.timing = timing
        self.overlays: dict[str, Overlay] = {o.name: o for o in (overlays or [NullOverlay()])}
        self.on_targets_changed = on_targets_changed
        # Services holding per-peer state (DNS records, IPAM) drop a peer's share when the
        # topology forgets it (mesh: Peers.OnGC).
        self.peer_gone_listeners: list[Callable[[str], None]] = []
        self.core = MeshCore(name, nickname, self.uid, conn_limit)
        self.maker = ConnectionMaker(name, port, discovery=discovery, conn_limit=conn_limit)
        self.counters: Counter = Counter()
        self.termination_count = 0
        self._features = {key: value for overlay in self.overlays.values()
                          for key, value in overlay.features().items() if key not in ROUTER_FEATURES}
        self._conns: dict[int, ControlConnection] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None   # uvloop's timer handles have no when()
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._last_refresh = float("-inf")
        self._pumping = False
        self._pump_again = False
        self._refresh_wanted = False
        self._running = False

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen for peers on host:port (port 0: any free port, then self.port says which)."""
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # restart through TIME_WAIT
            sock.bind((self.host or "0.0.0.0", self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ListenError(f"cannot listen for peers on {self.host or '*'}:{self.port}: "
                              f"{exc.strerror or exc}") from None
        sock.setblocking(False)
        self._listener = sock
        self.port = self.maker.port = sock.getsockname()[1]
        self.core.on_queued = lambda: self._loop.call_soon(self.pump)
        self._running = True
        self._spawn(self._accept_loop())
        self._refresh_wanted = True
        self.pump()

    async def stop(self) -> None:
        """Say goodbye to every peer and close; overlays keep their kernel state."""
        self._running = False
        for timer in (self._timer, self._refresh_timer):
            if timer is not None:
                timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for conn in list(self._conns.values()):
            conn.close(f"{self.name}({self.nickname}) is shutting down")
        deadline = self._loop.time() + STOP_GRACE
        while self._conns and self._loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.abort()
        for overlay in self.overlays.values():
            overlay.close()

    # -- what the daemon and the HTTP API call --------------------------------------

    def connect(self, peers: Iterable[str], replace: bool = False) -> None:
        """Add targets (`weavepy connect [--replace]`); ValueError names a bad address, nothing changes."""
        self.maker.initiate(list(peers), self._now(), replace)
        self._targets_changed()

    def forget(self, peers: Iterable[str]) -> None:
        """Remove targets; connections to them stay up until they end."""
        self.maker.forget(list(peers))
        self._targets_changed()

    def targets(self) -> list[str]:
        return self.maker.targets()

    def channel(self, name: str, gossiper):
        return self.core.channel(name, gossiper)

    # -- status ------------------------------------------------------------------------

    def connection_rows(self) -> list[dict]:
        """Weave's LocalConnectionStatus: live connections, then targets not connected."""
        rows = []
        for conn in sorted(self._live(), key=lambda c: c.remote_addr):
            attrs = conn.overlay_conn.attrs() if conn.overlay_conn is not None else {"name": "none"}
            rows.append({"Address": conn.remote_addr, "Outbound": conn.outbound,
                         "State": "established" if conn.established else "pending",
                         "Info": f"{attrs.get('name', 'none'):<6} {conn.remote.name}({conn.remote.nickname})",
                         "Attrs": attrs})
        rows += self.maker.rows(self._now())
        # A clash seen on an inbound connection, or reported by a third peer, has no target row: show it
        # as a failed connection, as the dialling clone's target shows it (steady: nobody retries).
        shown = {row["Address"] for row in rows}
        for clash in self.core.clashes:
            if clash.address not in shown:
                shown.add(clash.address)
                rows.append({"Address": clash.address, "Outbound": False, "State": "failed",
                             "Info": f"{clash.message}, retry: never", "Attrs": {}})
        return rows

    def status_connections(self) -> str:
        """`weavepy status connections`."""
        return "".join(render_connection(row) + "\n" for row in self.connection_rows())

    def report(self) -> dict:
        """The Router section of Weave's report."""
        return {"Protocol": "weave", "ProtocolMinVersion": MIN_VERSION, "ProtocolMaxVersion": MAX_VERSION,
                "Encryption": False, "PeerDiscovery": self.discovery,
                "Name": self.name, "NickName": self.nickname, "Port": self.port,
                **self.core.status(),
                "Connections": self.connection_rows(),
                "TerminationCount": self.termination_count,
                "Targets": self.targets(),
                "OverlayDiagnostics": {name: o.diagnostics() for name, o in self.overlays.items()},
                "Clashes": [clash.message for clash in self.core.clashes]}

    def metrics(self) -> dict:
        """Counters for /metrics: connections by (state, type) as weave_connections, and traffic."""
        by_state: Counter = Counter()
        for row in self.connection_rows():
            kind = (row["Attrs"] or {}).get("name", "unknown")
            by_state[(row["State"], kind)] += 1
        return {"connections": [{"state": s, "type": t, "count": n} for (s, t), n in sorted(by_state.items())],
                "terminations": self.termination_count,
                **{key: self.counters[key] for key in COUNTERS},
                "core_dropped": dict(self.core.stats)}

    # -- the pump: after every call into the core ---------------------------------------

    def pump(self) -> None:
        """Carry out the core's actions, redial if something changed, re-arm the timer."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            while True:
                self._pump_again = False
                for action in self.core.drain():
                    self._act(action)
                if self._refresh_wanted and self._running:
                    self._refresh_soon()
                if not self._pump_again:
                    break
        finally:
            self._pumping = False
        self._rearm()

    def _act(self, action) -> None:
        if isinstance(action, Send):
            conn = self._conns.get(action.conn_id)
            if conn is not None:
                conn.send(action.tag, action.payload)
        elif isinstance(action, Close):
            conn = self._conns.get(action.conn_id)
            if conn is not None:
                conn.never_retry |= is_clash(action.reason)
                conn.close(action.reason)
        elif isinstance(action, PeerGone):
            for overlay in self.overlays.values():
                hook = getattr(overlay, "peer_gone", None)
                if hook is not None:
                    hook(action.name)
            for listener in self.peer_gone_listeners:
                try:
                    listener(action.name)
                except Exception:   # a service's bug: the router carries on
                    log.exception("handling the departure of %s", action.name)
        elif isinstance(action, TopologyChanged):
            self._refresh_wanted = True
            for overlay in self.overlays.values():     # the sleeve forwards along the routes
                hook = getattr(overlay, "routes_changed", None)
                if hook is not None:
                    hook(self.core.routes)

    def _refresh(self) -> None:
        ours = [Link(c.remote.name, c.target if c.outbound else c.remote_addr, c.outbound) for c in self._live()]
        topology = {}
        if self.discovery:
            topology = {name: [Link(remote, summary.address, summary.outbound)
                               for remote, summary in peer.connections.items()]
                        for name, peer in self.core.peers.items()}
        for dial in self.maker.refresh(self._now(), ours, topology):
            self._spawn(self._dial(dial))

    def _refresh_soon(self) -> None:
        """Redial now, or once REFRESH_INTERVAL after the last time: while a mesh forms, every
        gossip message changes the topology, and each refresh walks every peer's connections."""
        now = self._now()
        if now - self._last_refresh >= REFRESH_INTERVAL:
            self._refresh_wanted = False
            self._last_refresh = now
            self._refresh()
        elif self._refresh_timer is None:
            self._refresh_timer = self._loop.call_at(self._last_refresh + REFRESH_INTERVAL, self._deferred_refresh)

    def _deferred_refresh(self) -> None:
        self._refresh_timer = None
        self.pump()

    def _rearm(self) -> None:
        if not self._running:
            return
        deadlines = [t for t in (self.core.next_deadline(), self.maker.next_deadline()) if t is not None]
        when = min(deadlines, default=None)
        if self._timer is not None:
            if when is not None and self._timer_at == when:
                return
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        self.core.tick(self._now())
        self._refresh_wanted = True
        self.pump()

    # -- connections -------------------------------------------------------------------

    def _new_connection(self, outbound: bool, target: str | None = None, direct: bool = True) -> ControlConnection:
        conn_id = next(self._ids)
        handshake = Handshake(self.name, self.nickname, self.uid, _random_u64(),
                              overlays=list(self.overlays), features=self._features)
        conn = ControlConnection(self, conn_id, handshake, outbound=outbound, target=target, direct=direct)
        self._conns[conn_id] = conn
        return conn

    async def _accept_loop(self) -> None:
        bucket = TokenBucket(ACCEPT_BURST, ACCEPT_INTERVAL, self._loop.time())
        while True:
            try:
                client, _ = await self._loop.sock_accept(self._listener)
            except OSError as exc:      # e.g. out of file descriptors: let some close
                log.warning("accepting a peer connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            self.counters["accepts"] += 1
            conn = self._new_connection(outbound=False)
            try:
                await self._loop.connect_accepted_socket(lambda: conn, client)
            except OSError as exc:
                client.close()
                self._conns.pop(conn.conn_id, None)
                log.info("<-[?] accepting: %s", exc)
            delay = bucket.take(self._loop.time())
            if delay:
                self.counters["accept_throttled"] += 1
                await asyncio.sleep(delay)

    async def _dial(self, dial: Dial) -> None:
        """Resolve (at each try: names may start resolving later), connect, and hand over."""
        if not self._running:
            return
        self.counters["dials"] += 1
        host, port = parse_address(dial.address)
        timing = self.timing
        try:
            ip = await asyncio.wait_for(self._resolve(host, port), timing.resolve_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            why = "timed out" if isinstance(exc, asyncio.TimeoutError) else exc.strerror or str(exc)
            return self._dial_failed(dial, f"lookup {host}: {why}")
        conn = self._new_connection(outbound=True, target=dial.address, direct=dial.direct)
        try:
            await asyncio.wait_for(self._loop.create_connection(
                lambda: conn, ip, port, local_addr=(self.host, 0) if self.host else None),
                timing.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            # asyncio's own text ("Connect call failed ...") says less than the errno's.
            why = ("i/o timeout" if isinstance(exc, asyncio.TimeoutError) else
                   os.strerror(exc.errno).lower() if exc.errno else str(exc))
            self._dial_failed(dial, f"dial tcp4 {ip}:{port}: connect: {why}")
        finally:
            if conn.transport is None:      # failed, or cancelled by stop()
                self._conns.pop(conn.conn_id, None)

    async def _resolve(self, host: str, port: int) -> str:
        infos = await self._loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        return infos[0][4][0]

    def _dial_failed(self, dial: Dial, error: str) -> None:
        self.counters["dial_failures"] += 1
        log.debug("->[%s] error during connection attempt: %s", dial.address, error)
        self.maker.ended(dial.address, error, self._now())
        self._refresh_wanted = True
        self.pump()

    def handshake_done(self, conn: ControlConnection) -> None:
        """Choose the overlay, register with the core, confirm the overlay (mesh connection.go's order)."""
        remote = conn.remote
        if not self._running:
            return self._refuse(conn, f"{self.name}({self.nickname}) is shutting down")
        if remote.name == self.name:
            conn.never_retry = True    # ourselves, or a clone: retrying cannot help
        if conn.outbound and not conn.direct and remote.name not in self.core.peers:
            # Discovery dials only peers the topology knows (mesh: acceptNewPeer=false).
            return self._refuse(conn, f"Found unknown remote name: {remote.name} at {conn.remote_addr}")
        overlay_name = self._common_overlay(conn)
        if overlay_name is None:
            return self._refuse(conn, f"no overlay in common: ours {' '.join(self.overlays) or 'none'}, "
                                      f"theirs {' '.join(remote.overlays) or 'none'}")
        conn.overlay_name = overlay_name
        host, _, port = conn.remote_addr.rpartition(":")
        params = ConnectionParams(
            local_name=self.name, remote_name=remote.name, remote_nickname=remote.nickname,
            local_ip=conn.local_ip, remote_ip=host, remote_port=int(port), outbound=conn.outbound,
            conn_uid=remote.conn_uid, remote_features=dict(remote.features),
            send_control=lambda data: conn.send(wire.OVERLAY, wire.encode_overlay(0, data)),
            on_established=lambda: self._overlay_established(conn),
            on_error=lambda reason: self._overlay_failed(conn, reason))
        try:
            conn.overlay_conn = self.overlays[overlay_name].prepare(params)
        except Exception as exc:   # an overlay's failure is this connection's, not the router's
            log.exception("overlay %s preparing a connection to %s", overlay_name, remote.name)
            return self._refuse(conn, f"overlay {overlay_name}: {exc}")
        refusal = self.core.add_connection(conn.conn_id, RemotePeer(remote.name, remote.nickname, remote.uid),
                                           conn.outbound, conn.remote_addr, remote.conn_uid, self._now())
        if refusal is not None:
            return self._refuse(conn, refusal)
        conn.registered = True
        if conn.outbound:
            self.maker.connected(conn.target, remote.name)
        log.info("%s connection added to %s(%s) at %s", "->" if conn.outbound else "<-",
                 remote.name, remote.nickname, conn.remote_addr)
        try:
            conn.overlay_conn.confirm()
        except Exception as exc:
            log.exception("overlay %s confirming a connection to %s", overlay_name, remote.name)
            conn.close(f"overlay {overlay_name}: {exc}")
        self._refresh_wanted = True
        self.pump()

    def _common_overlay(self, conn: ControlConnection) -> str | None:
        """The first overlay both ends have, in the dialler's order: both ends choose the same one."""
        ours, theirs = list(self.overlays), conn.remote.overlays
        dialler, other = (ours, theirs) if conn.outbound else (theirs, ours)
        return next((name for name in dialler if name in other), None)

    def _refuse(self, conn: ControlConnection, reason: str) -> None:
        conn.never_retry |= is_clash(reason)
        if conn.overlay_conn is not None:
            conn.overlay_conn.stop()
        log.info("%s[%s] connection refused: %s", "->" if conn.outbound else "<-", conn.remote_addr, reason)
        conn.close(reason)
        self.pump()

    def _overlay_established(self, conn: ControlConnection) -> None:
        if conn.registered and conn.phase is Phase.OPEN and not conn.established:
            conn.established = True
            self.core.connection_established(conn.conn_id, self._now())
            self.pump()

    def _overlay_failed(self, conn: ControlConnection, reason: str) -> None:
        conn.close(f"overlay {conn.overlay_name}: {reason}")

    def messages(self, conn: ControlConnection, messages: list[bytes]) -> None:
        now = self._now()
        for message in messages:
            if conn.phase is not Phase.OPEN:
                return
            self.counters["messages_in"] += 1
            try:
                tag, payload = wire.decode(message)
                if tag in CORE_TAGS:
                    if conn.registered:
                        self._into_core(conn, tag, payload, now)
                elif tag == wire.OVERLAY:
                    index, data = wire.decode_overlay(payload)
                    if index != 0 or conn.overlay_conn is None:
                        raise ProtocolError(f"overlay control message for overlay {index}, which we do not run")
                    self._into_overlay(conn, data)
                elif tag == wire.GOODBYE:
                    reason = wire.decode_goodbye(payload)
                    conn.never_retry |= is_clash(reason)
                    conn.close(reason, goodbye=False)
                elif tag != wire.HEARTBEAT:
                    self.counters["unknown_tags"] += 1
            except ProtocolError as exc:
                self.counters["malformed_dropped"] += 1
                log.debug("[%s] dropped a malformed message: %s", conn.remote_addr, exc)
        self.pump()

    def _into_core(self, conn: ControlConnection, tag: int, payload: bytes, now: float) -> None:
        try:
            self.core.receive(conn.conn_id, tag, payload, now)
        except Exception:   # a service's gossiper failing is its bug: the connection carries on
            self.counters["gossiper_errors"] += 1
            log.exception("handling a tag-%d message from %s", tag, conn.remote.name)

    def _into_overlay(self, conn: ControlConnection, data: bytes) -> None:
        try:
            conn.overlay_conn.control_message(data)
        except ProtocolError:
            raise
        except Exception as exc:   # the overlay's failure ends this connection, not the router
            log.exception("overlay %s handling a control message from %s", conn.overlay_name, conn.remote.name)
            conn.close(f"overlay {conn.overlay_name}: {exc}")

    def connection_ended(self, conn: ControlConnection) -> None:
        now = self._now()
        self._conns.pop(conn.conn_id, None)
        if conn.overlay_conn is not None:
            conn.overlay_conn.stop()
        if conn.registered:
            self.core.connection_lost(conn.conn_id, now)
        remote = conn.remote
        to_ourself = remote is not None and remote.name == self.name and remote.uid == self.uid
        if not to_ourself:       # Weave leaves connect-to-self out of TerminationCount
            self.termination_count += 1
        if conn.outbound:
            self.maker.ended(conn.target, conn.reason, now, retry=not conn.never_retry,
                             peer=remote.name if remote else None)
        who = f"{remote.name}({remote.nickname})" if remote else "?"
        log.info("%s[%s|%s]: connection shutting down due to error%s: %s", "->" if conn.outbound else "<-",
                 conn.remote_addr, who, "" if remote else " during handshake", conn.reason)
        self._refresh_wanted = True
        self.pump()

    # -- helpers --------------------------------------------------------------------------

    def _live(self) -> list[ControlConnection]:
        return [c for c in self._conns.values() if c.registered and c.phase is Phase.OPEN]

    def _targets_changed(self) -> None:
        if self.on_targets_changed is not None:
            self.on_targets_changed(self.maker.targets())
        self._refresh_wanted = True
        if self._running:
            self.pump()

    def _now(self) -> float:
        # Before start() there is no clock yet: every target is simply due.
        return self._loop.time() if self._loop is not None else 0.0

    def _spawn(self, coro) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
