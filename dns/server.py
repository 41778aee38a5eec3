"""The asyncio driver for the name server: UDP and TCP sockets around the sans-IO Responder."""
from __future__ import annotations

import asyncio
import logging
import struct

from .responder import Forward, Responder, servfail
from .upstream import ResolvConf, forward

log = logging.getLogger("weavepy.dns")


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: "DNSServer"):
        self.server = server
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        out = self.server.responder.handle(data, tcp=False)
        if out is None:
            return
        if isinstance(out, Forward):
            self.server.spawn(self.server.relay(out, lambda reply: self.transport.sendto(reply, addr)))
        else:
            self.transport.sendto(out, addr)

    def error_received(self, exc):
        pass  # a client went away (ICMP); nothing to do


class DNSServer:
    def __init__(self, responder: Responder, upstream: ResolvConf, host: str, port: int = 53,
                 fallback_timeout: float = 5.0):
        self.responder = responder
        self.upstream = upstream
        self.host, self.port = host, port
        self.fallback_timeout = fallback_timeout
        self._udp = None
        self._tcp = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self):
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), local_addr=(self.host, self.port))
        self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.port)

    async def close(self):
        if self._udp:
            self._udp.close()
        if self._tcp:
            self._tcp.close()
            await self._tcp.wait_closed()
        for t in list(self._tasks):
            t.cancel()

    def spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def relay(self, fwd: Forward, send):
        reply = await forward(self.upstream.current(), fwd.query, fwd.tcp, self.fallback_timeout)
        send(reply if reply is not None else servfail(fwd.query))

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                data = await reader.readexactly(size)
                out = self.responder.handle(data, tcp=True)
                if out is None:
                    break  # garbage on a stream: drop the connection
                if isinstance(out, Forward):
                    replies = []
                    await self.relay(out, replies.append)
                    out = replies[0]
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
