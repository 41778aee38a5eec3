"""Upstream servers from resolv.conf, and forwarding a query to them over the client's transport."""
from __future__ import annotations

import asyncio
import os
import random
import struct
import time

from dnslib import DNSRecord

RECHECK_SECONDS = 1.0


def parse_resolv_conf(text: str, exclude: set[str]) -> list[str]:
    servers = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver" and words[1] not in exclude:
            servers.append(words[1])
    return servers


class ResolvConf:
    """The upstream list, re-read when the file's mtime changes (checked at most once a second)."""

    def __init__(self, path: str, exclude: set[str]):
        self.path = path
        self.exclude = exclude
        self.servers: list[str] = []
        self._mtime = None
        self._checked = 0.0

    def current(self) -> list[str]:
        now = time.monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            try:
                mtime = os.stat(self.path).st_mtime_ns
                if mtime != self._mtime:
                    with open(self.path) as f:
                        self.servers = parse_resolv_conf(f.read(), self.exclude)
                    self._mtime = mtime
            except OSError:
                pass  # keep what we had
        return self.servers


class _UDPQuery(asyncio.DatagramProtocol):
    def __init__(self, qid: int):
        self.qid = qid
        self.done = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        if len(data) >= 2 and struct.unpack_from("!H", data)[0] == self.qid and not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc):  # e.g. ICMP port unreachable: fail now, not at the timeout
        if not self.done.done():
            self.done.set_exception(exc)


async def ask_one(server: str, query: DNSRecord, tcp: bool, timeout: float, port: int = 53) -> bytes:
    """One upstream exchange with a fresh random ID; returns the reply with the client's ID restored."""
    client_id = query.header.id
    qid = random.randrange(1, 65536)
    query.header.id = qid
    try:
        packed = query.pack()
    finally:
        query.header.id = client_id
    if tcp:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(server, port), timeout)
        try:
            writer.write(struct.pack("!H", len(packed)) + packed)
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), timeout))[0]
            reply = await asyncio.wait_for(reader.readexactly(size), timeout)
        finally:
            writer.close()
    else:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(lambda: _UDPQuery(qid), remote_addr=(server, port))
        try:
            transport.sendto(packed)
            reply = await asyncio.wait_for(proto.done, timeout)
        finally:
            transport.close()
    return struct.pack("!H", client_id) + reply[2:]


async def forward(servers: list[str], query: DNSRecord, tcp: bool, timeout: float) -> bytes | None:
    """The first upstream reply (relayed as it is, even truncated), or None when all failed."""
    for server in servers:
        try:
            return await ask_one(server, query, tcp, timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, struct.error):
            continue
    return None
