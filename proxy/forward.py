"""Forwarding Docker API requests unchanged: streamed bodies, streamed responses, hijacked streams.

Ordinary requests go through an aiohttp client (a pooled connection to
dockerd): method, raw path and query, headers and body as received, nothing
added; the response's headers are sent as soon as they arrive and each body
chunk as it comes, so `docker events`, `logs -f` and `wait` behave as direct.

attach and exec-start take over the connection (101 UPGRADED, or the older
200 raw-stream form).  aiohttp's server cannot hand over a socket, so the
client's transport is taken from it and bytes are piped both ways to a raw
upstream socket, each direction half-closed on its own: stdin EOF must reach
the container while its output keeps flowing.
"""
from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from aiohttp import web
from yarl import URL

log = logging.getLogger("weavepy.proxy")

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}
STREAM_TYPES = ("application/vnd.docker.raw-stream", "application/vnd.docker.multiplexed-stream")
PIPE_HIGH_WATER = 4 * 1024 * 1024


def error(status: int, message: str) -> web.Response:
    """An error as dockerd words them, so clients print it as 'Error response from daemon: ...'.

    Content-Type must be exactly application/json (no charset) or the CLI prints the raw JSON.
    """
    return web.Response(status=status, body=json.dumps({"message": message}).encode(),
                        headers={"Content-Type": "application/json"})


class Upstream:
    def __init__(self, docker_host: str):
        if not docker_host.startswith("unix://"):
            raise ValueError(f"the proxy needs dockerd on a unix socket, not {docker_host}")
        self.docker_host = docker_host
        self.path = docker_host[len("unix://"):]
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.path, limit=0),
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))

    async def close(self):
        await self.session.close()

    def unreachable(self, exc: Exception) -> web.Response:
        return error(500, f"Cannot connect to the Docker daemon at {self.docker_host}: {exc}")

    # -- ordinary requests -------------------------------------------------
    def _request(self, request: web.Request, body):
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        if body is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            data = body
        elif request.body_exists:
            data = request.content  # streamed: build contexts and cp archives are never held whole
        else:
            data = None
        return self.session.request(
            request.method, URL("http://docker" + request.raw_path, encoded=True), headers=headers,
            data=data, allow_redirects=False, compress=None,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))

    async def forward(self, request: web.Request, body: bytes | None = None) -> web.StreamResponse:
        try:
            async with self._request(request, body) as resp:
                out = web.StreamResponse(status=resp.status, reason=resp.reason)
                for k, v in resp.headers.items():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        out.headers.add(k, v)
                length = resp.headers.get("Content-Length")
                if length is not None and "Transfer-Encoding" not in resp.headers:
                    out.content_length = int(length)
                await out.prepare(request)  # headers now: the CLI waits on them for /wait and /events
                if request.method != "HEAD":
                    try:
                        async for chunk in resp.content.iter_any():
                            await out.write(chunk)
                    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                        return out  # the client went away; leaving the block closes upstream too
                await out.write_eof()
                return out
        except aiohttp.ClientConnectorError as exc:
            return self.unreachable(exc)

    async def call(self, request: web.Request, body: bytes | None = None) -> tuple[int, dict, bytes]:
        """Forward and read the whole (small) response, for the calls the proxy must look at."""
        async with self._request(request, body) as resp:
            data = await resp.read()
            headers = {k: v for k, v in resp.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"}
            return resp.status, headers, data

    # -- hijacked streams ---------------------------------------------------
    async def hijack(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError as exc:
            return self.unreachable(exc)
        head = [f"{request.method} {request.raw_path} HTTP/1.1".encode()]
        for k, v in request.raw_headers:
            if k.lower() not in (b"content-length", b"transfer-encoding"):
                head.append(k + b": " + v)
        head.append(b"Content-Length: %d" % len(body))
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        try:
            resp_head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            writer.close()
            return error(500, f"Docker closed the connection: {exc}")
        status, headers = _parse_head(resp_head)
        if status != 101 and not headers.get("content-type", "").startswith(STREAM_TYPES):
            # not a stream after all (an error, or a detached exec): an ordinary response
            length = int(headers.get("content-length", "0") or 0)
            data = await reader.readexactly(length) if length else b""
            writer.close()
            out = web.Response(status=status, body=data)
            for line in resp_head.split(b"\r\n")[1:]:
                if b":" in line:
                    k, v = line.decode("latin-1").split(":", 1)
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        out.headers.add(k.strip(), v.strip())
            return out
        await pipe(request.transport, resp_head, reader, writer)
        raise asyncio.CancelledError()  # the connection is no longer aiohttp's: it must write nothing


def _parse_head(head: bytes) -> tuple[int, dict]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


class _ClientSide(asyncio.Protocol):
    """Takes the client's connection over from aiohttp: stdin goes upstream, EOF becomes a half-close."""

    def __init__(self, transport, upstream: asyncio.StreamWriter):
        self.transport = transport
        self.upstream = upstream
        self.done = asyncio.Event()
        self.can_write = asyncio.Event()
        self.can_write.set()

    def data_received(self, data):
        self.upstream.write(data)
        if self.upstream.transport.get_write_buffer_size() > PIPE_HIGH_WATER:
            self.transport.pause_reading()
            asyncio.ensure_future(self._resume_when_drained())

    async def _resume_when_drained(self):
        try:
            await self.upstream.drain()
        finally:
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def eof_received(self):
        if self.upstream.can_write_eof() and not self.upstream.is_closing():
            self.upstream.write_eof()
        self.done.set()
        return True  # keep our side open: output is still flowing to the client

    def connection_lost(self, exc):
        self.done.set()
        self.can_write.set()

    def pause_writing(self):
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()


async def pipe(transport, resp_head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    client = _ClientSide(transport, writer)
    transport.set_protocol(client)
    transport.resume_reading()
    transport.write(resp_head)
    try:
        while True:
            data = await reader.read(65536)  # includes anything read together with the head
            if not data:
                break
            if transport.is_closing():
                break
            transport.write(data)
            await client.can_write.wait()
        if not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
        try:
            await asyncio.wait_for(client.done.wait(), 5)
        except asyncio.TimeoutError:
            pass
    finally:
        transport.close()
        writer.close()
