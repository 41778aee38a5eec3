"""One control connection, asyncio: the socket, its handshake, framing, heartbeats and goodbye.

The router (mesh/driver.py) decides everything about a connection's meaning;
this protocol object only turns bytes into handshake results and tagged
messages and back, and keeps time: the handshake deadline, a heartbeat every
`heartbeat` seconds, and the read timeout.  It tells the router:

    router.handshake_done(conn)          the features arrived (conn.remote)
    router.messages(conn, [message])     tagged messages, in order
    router.connection_ended(conn)        the socket is gone; conn.reason says why
"""
from __future__ import annotations

import asyncio
import enum
import socket
from typing import TYPE_CHECKING

from . import wire
from .framing import MessageDecoder, frame
from .handshake import Handshake, HandshakeError, Remote, State as HandshakeState
from .wire import ProtocolError

if TYPE_CHECKING:
    from .driver import MeshRouter

# A peer that reads nothing while we keep writing is gone in all but name; past
# this much unsent data (more than a full 10 MiB message and then some) we stop.
WRITE_BUFFER_LIMIT = 32 * 1024 * 1024
CLOSE_GRACE = 2.0          # for a goodbye to drain before the socket is cut


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ControlConnection(asyncio.Protocol):
    def __init__(self, router: "MeshRouter", conn_id: int, handshake: Handshake, *, outbound: bool,
                 target: str | None = None, direct: bool = True):
        self.router = router
        self.conn_id = conn_id
        self.handshake = handshake
        self.outbound = outbound
        self.target = target            # the address we dialled (outbound only)
        self.direct = direct            # a target the user named (not discovered)
        self.phase = Phase.HANDSHAKE
        self.remote: Remote | None = None
        self.remote_addr = ""           # ip:port of the far end
        self.local_ip = ""
        self.reason: str | None = None  # why it ended (ours, or the peer's goodbye)
        self.never_retry = False
        self.registered = False         # the core took it (add_connection returned None)
        self.established = False
        self.overlay_name = ""
        self.overlay_conn = None
        self.transport: asyncio.Transport | None = None
        self._decoder = MessageDecoder()
        self._last_received = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Small control messages, latency-bound (handshake, heartbeats, probes).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.remote_addr = f"{peer[0]}:{peer[1]}"
        self.local_ip = local[0]
        loop = asyncio.get_running_loop()
        self._last_received = loop.time()
        self._timer = loop.call_later(self.router.timing.handshake_timeout, self._handshake_expired)
        self._write(self.handshake.data_to_send())

    def data_received(self, data: bytes) -> None:
        self._last_received = asyncio.get_running_loop().time()
        self.router.counters["bytes_in"] += len(data)
        if self.phase is Phase.HANDSHAKE:
            try:
                self.handshake.receive_data(data)
            except HandshakeError as exc:
                self.router.counters["handshake_failures"] += 1
                self.close(str(exc))
                return
            self._write(self.handshake.data_to_send())
            if self.handshake.state is not HandshakeState.DONE:
                return
            self._handshake_finished()
            data = self.handshake.trailing
        if self.phase is not Phase.OPEN or not data:
            return
        self._decoder.feed(data)
        messages, error = [], None
        try:
            while (message := self._decoder.next_message()) is not None:
                messages.append(message)
        except ProtocolError as exc:
            error = exc       # what came before the bad length is still delivered
        if messages:
            self.router.messages(self, messages)
        if error is not None:
            self.router.counters["protocol_errors"] += 1
            self.close(str(error))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase is Phase.CLOSED:
            return
        if self.reason is None:
            self.reason = (f"read: {exc.strerror or exc}" if isinstance(exc, OSError) else
                           str(exc) if exc else "connection closed by the peer")
        self.phase = Phase.CLOSED
        if self._timer is not None:
            self._timer.cancel()
        self.router.connection_ended(self)

    # Back-pressure: while the socket is behind, the core merges this connection's gossip.
    def pause_writing(self) -> None:
        if self.registered:
            self.router.core.pause_sending(self.conn_id)

    def resume_writing(self) -> None:
        if self.registered:
            self.router.core.resume_sending(self.conn_id)
            self.router.pump()

    # -- what the router does with it --------------------------------------------

    def send(self, tag: int, payload: bytes = b"") -> None:
        if self.phase is not Phase.OPEN:
            return
        self.router.counters["messages_out"] += 1
        self._write(frame(wire.encode(tag, payload)))
        if self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self.close(f"the peer is not reading: over {WRITE_BUFFER_LIMIT >> 20} MiB unsent")

    def close(self, reason: str, *, goodbye: bool = True) -> None:
        """End the connection; after the handshake the peer is told why."""
        if self.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        if self.reason is None:
            self.reason = reason
        if goodbye and self.phase is Phase.OPEN:
            self.send(wire.GOODBYE, wire.encode_goodbye(reason))
        self.phase = Phase.CLOSING
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()
            self._timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, self.transport.abort)

    # -- internals ------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.router.counters["bytes_out"] += len(data)
            self.transport.write(data)

    def _handshake_finished(self) -> None:
        self._timer.cancel()
        self.remote = self.handshake.remote
        self.phase = Phase.OPEN
        self._timer = asyncio.get_running_loop().call_later(self.router.timing.heartbeat, self._beat)
        self.router.handshake_done(self)

    def _handshake_expired(self) -> None:
        self.router.counters["handshake_failures"] += 1
        self.close(f"no handshake within {self.router.timing.handshake_timeout:g} s "
                   f"({self.handshake.state.value})")

    def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        timing = self.router.timing
        if loop.time() - self._last_received > timing.read_timeout:
            self.close(f"nothing received for {timing.read_timeout:g} s: the peer or the network is down")
            return
        self.send(wire.HEARTBEAT)
        if self.phase is Phase.OPEN:
            self._timer = loop.call_later(timing.heartbeat, self._beat)
