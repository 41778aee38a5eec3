"""Forwarding Docker API requests unchanged: streamed bodies, streamed responses, hijacked streams.

Most plain calls never get here: passthrough.py relays them around aiohttp.
What does (requests with a body, and body-less ones the relay did not take)
goes to dockerd with method, raw path and query, headers and body as received,
nothing added; the response's headers are sent as soon as they arrive and each
body chunk as it comes, so `docker events`, `logs -f` and `wait` behave as
direct.  Requests with a body (create, build contexts, cp archives) go through
an aiohttp ClientSession, which streams them.  Body-less ones skip its
per-request machinery: they are written to a pooled dockerd connection driven
by aiohttp's own client protocol, whose C parser reads the response.

attach and exec-start take over the connection (101 UPGRADED, or the older
200 raw-stream form).  aiohttp's server cannot hand over a socket, so the
client's transport is taken from it and, after the head, the bytes are spliced
both ways to a raw upstream socket in the kernel, each direction half-closed on
its own: stdin EOF must reach the container while its output keeps flowing.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import select
import socket
import struct
import threading

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from .unwrap import BodyRewrite

log = logging.getLogger("weavepy.proxy")

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}
SPLICE_CHUNK = 1 << 20
# dockerd writes its output 32 KiB at a time.  Moving each write on by itself costs
# a wakeup and two splices on both ends; waiting for 128 KiB (or 1 ms, whichever comes
# first) moves a quarter as many.  It must stay below what a unix socket lets dockerd
# queue (its send buffer, 208 KiB by default), or every batch would wait the full 1 ms.
BATCH_BYTES = 128 * 1024
BATCH_WAIT = struct.pack("ll", 0, 1000)  # struct timeval: 1 ms
SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
STREAM_TYPES = ("application/vnd.docker.raw-stream", "application/vnd.docker.multiplexed-stream")
HOP_BY_HOP_RAW = frozenset(h.encode() for h in HOP_BY_HOP)
BODY_FRAMING = frozenset((b"content-length", b"transfer-encoding"))
IDLE_CONNECTIONS = 16  # kept open to dockerd for body-less requests
SIOCOUTQ = 0x5411  # ioctl: bytes sent on a unix socket that its peer has not read yet
HEAD_READ_WAIT = 0.05  # seconds a stream's output waits for the client to read the head alone
CLIENT_CHECK_INTERVAL = 1.0  # seconds between looks at whether a quiet stream's client is still there


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
        self.idle: list[ResponseHandler] = []

    async def close(self):
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        await self.session.close()

    def unreachable(self, exc: Exception) -> web.Response:
        return error(500, f"Cannot connect to the Docker daemon at {self.docker_host}: {exc}")

    # -- ordinary requests -------------------------------------------------
    def _request(self, request: web.BaseRequest, body, content_type: str | None = None):
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        if body is not None:
            dropped = ("content-length", "content-type") if content_type else ("content-length",)
            headers = [(k, v) for k, v in headers if k.lower() not in dropped]
            if content_type:
                headers.append(("Content-Type", content_type))
            data = body
        elif request.body_exists:
            data = request.content  # streamed: build contexts and cp archives are never held whole
        else:
            data = None
        return self.session.request(
            request.method, URL("http://docker" + request.raw_path, encoded=True), headers=headers,
            data=data, allow_redirects=False, compress=None,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))

    async def forward(self, request: web.BaseRequest, body: bytes | None = None, *,
                      rewrite: BodyRewrite | None = None, content_type: str | None = None) -> web.StreamResponse:
        """Pass the request on (with body instead of the client's, if given); rewrite: of a 200 answer's body."""
        if body is None and not request.body_exists:
            return await self._forward_bodyless(request, rewrite)
        try:
            async with self._request(request, body, content_type) as resp:
                return await _relay_response(request, resp.status, resp.reason, resp.headers, resp.content, rewrite)
        except aiohttp.ClientConnectorError as exc:
            return self.unreachable(exc)

    async def _forward_bodyless(self, request: web.BaseRequest, rewrite: BodyRewrite | None) -> web.StreamResponse:
        head = _request_head(request)
        for attempt in (1, 2):
            try:
                conn, reused = await self._connection()
            except OSError as exc:
                return self.unreachable(exc)
            conn.set_response_params(skip_payload=request.method == "HEAD", auto_decompress=False)
            conn.transport.write(head)
            try:
                message, payload = await conn.read()
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                conn.close()
                # dockerd may close an idle connection just as it is reused: once more on a fresh one
                if not reused or attempt == 2:
                    return error(500, f"Docker closed the connection: {exc}")
            except BaseException:
                conn.close()  # an answer aiohttp cannot parse, or cancellation: never reuse it
                raise
        try:
            out = await _relay_response(request, message.code, message.reason, message.headers, payload, rewrite)
        except BaseException:
            conn.close()
            raise
        # unread output (the client left mid-stream) leaves should_close set: never reused then
        if not conn.should_close and len(self.idle) < IDLE_CONNECTIONS:
            self.idle.append(conn)
        else:
            conn.close()
        return out

    async def _connection(self) -> tuple[ResponseHandler, bool]:
        while self.idle:
            conn = self.idle.pop()
            if conn.is_connected() and not conn.should_close:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_unix_connection(lambda: ResponseHandler(loop), self.path)
        return conn, False

    async def call(self, request: web.BaseRequest, body: bytes | None = None) -> tuple[int, dict, bytes]:
        """Forward and read the whole (small) response, for the calls the proxy must look at."""
        async with self._request(request, body) as resp:
            data = await resp.read()
            headers = {k: v for k, v in resp.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"}
            return resp.status, headers, data

    # -- hijacked streams ---------------------------------------------------
    async def hijack(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        loop = asyncio.get_running_loop()
        try:
            upstream, side = await loop.create_unix_connection(_UpstreamSide, self.path)
        except OSError as exc:
            return self.unreachable(exc)
        # Connection and Upgrade stay: they ask for the switch; the body was read whole
        head = _request_head(request, BODY_FRAMING, b"Content-Length: %d" % len(body))
        upstream.write(head + body)
        try:
            await side.head_done
        except ConnectionError as exc:
            upstream.close()
            return error(500, f"Docker closed the connection: {exc}")
        resp_head, rest = side.take_head()
        status, headers = _parse_head(resp_head)
        if status != 101 and not headers.get("content-type", "").startswith(STREAM_TYPES):
            # not a stream after all (an error, or a detached exec): an ordinary response
            data = await side.read_body(rest, int(headers.get("content-length", "0") or 0))
            upstream.close()
            out = web.Response(status=status, body=data)
            for line in resp_head.split(b"\r\n")[1:]:
                if b":" in line:
                    k, v = line.decode("latin-1").split(":", 1)
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        out.headers.add(k.strip(), v.strip())
            return out
        await pipe(request.transport, upstream, side, resp_head, rest)
        raise asyncio.CancelledError()  # the connection is no longer aiohttp's: it must write nothing


def _request_head(request: web.BaseRequest, dropped: frozenset = HOP_BY_HOP_RAW, *extra: bytes) -> bytes:
    """The client's request line and headers as received, less the dropped ones, plus extra."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.raw_path.encode())]
    lines += [k + b": " + v for k, v in request.raw_headers if k.lower() not in dropped]
    lines += extra
    if "Host" not in request.headers:
        lines.append(b"Host: docker")  # an HTTP/1.0 client may omit it; dockerd needs one
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _relay_response(request: web.BaseRequest, status: int, reason: str, headers, content,
                          rewrite: BodyRewrite | None = None) -> web.StreamResponse:
    """Send dockerd's response on: headers at once, then each chunk as it arrives.

    rewrite: the body of a 200 answer is read whole and goes through it first (see unwrap.py).
    """
    kept = [(k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
    length = headers.get("Content-Length")
    if length is not None and "Transfer-Encoding" in headers:
        length = None
    whole = rewrite is not None and status == 200
    if request.method != "HEAD" and (whole or (length is not None and content.is_eof())):
        # all of it is here already (most small calls): headers and body in one write
        body = await content.read()
        out = web.Response(status=status, reason=reason, body=(rewrite(body) if whole else None) or body)
        out.headers.extend(kept)
        return out
    out = web.StreamResponse(status=status, reason=reason)
    out.headers.extend(kept)
    if length is not None:
        out.content_length = int(length)
    await out.prepare(request)  # headers now: the CLI waits on them for /wait and /events
    if request.method != "HEAD":
        try:
            while True:
                try:
                    async with asyncio.timeout(CLIENT_CHECK_INTERVAL):
                        chunk = await content.readany()
                except TimeoutError:
                    # a quiet stream (events, logs -f): a client that left must not keep it open
                    if request.transport is None or request.transport.is_closing():
                        return out
                    continue
                if not chunk:
                    break
                await out.write(chunk)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return out  # the client went away; the unread rest keeps upstream from being reused
    await out.write_eof()
    return out


def _parse_head(head: bytes) -> tuple[int, dict]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


class _UpstreamSide(asyncio.Protocol):
    """dockerd's end: collects the response head, then writes straight through to the client."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.head_done = loop.create_future()
        self.more = asyncio.Event()
        self.buf = bytearray()
        self.client = None
        self.eof = asyncio.Event()
        self.transport = None
        self.client_side = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.client is not None:
            self.client.write(data)
            return
        self.buf += data
        self.more.set()
        if not self.head_done.done() and b"\r\n\r\n" in self.buf:
            self.head_done.set_result(None)

    def take_head(self) -> tuple[bytes, bytes]:
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf.clear()
        return head + b"\r\n\r\n", rest

    async def read_body(self, first: bytes, length: int) -> bytes:
        self.buf += first
        while len(self.buf) < length and not self.eof.is_set():
            self.more.clear()
            await self.more.wait()
        return bytes(self.buf[:length])

    def eof_received(self):
        if self.client is not None and not self.client.is_closing() and self.client.can_write_eof():
            self.client.write_eof()
        self._ended()
        return True

    def connection_lost(self, exc):
        self._ended()

    def _ended(self):
        self.eof.set()
        self.more.set()
        if not self.head_done.done():
            self.head_done.set_exception(ConnectionError("no response"))

    # dockerd cannot take stdin as fast as the client sends it: stop reading the client
    def pause_writing(self):
        if self.client_side:
            self.client_side.transport.pause_reading()

    def resume_writing(self):
        if self.client_side and not self.client_side.transport.is_closing():
            self.client_side.transport.resume_reading()


class _ClientSide(asyncio.Protocol):
    """The client's connection, taken over from aiohttp: stdin goes upstream, EOF becomes a half-close."""

    def __init__(self, transport, upstream: asyncio.Transport):
        self.transport = transport
        self.upstream = upstream
        self.done = asyncio.Event()

    def data_received(self, data):
        self.upstream.write(data)

    def eof_received(self):
        if not self.upstream.is_closing() and self.upstream.can_write_eof():
            self.upstream.write_eof()
        self.done.set()
        return True  # keep our side open: output is still flowing to the client

    def connection_lost(self, exc):
        self.done.set()
        if not self.upstream.is_closing():
            self.upstream.close()

    # the client reads output slower than dockerd sends it: stop reading dockerd
    def pause_writing(self):
        self.upstream.pause_reading()

    def resume_writing(self):
        if not self.upstream.is_closing():
            self.upstream.resume_reading()


async def pipe(transport, upstream: asyncio.Transport, side: _UpstreamSide, head: bytes, rest: bytes):
    """Join the two connections until dockerd's output ends and the client is done (or 5 s pass).

    After the head, the bytes never enter Python: each direction is spliced
    kernel-side (socket -> pipe -> socket) by a thread of its own, so a
    500 MB `docker exec cat` costs the proxy almost nothing.  Where splice is
    missing, or the client speaks TLS, the two protocols relay the bytes instead.
    """
    close_docker_side = getattr(transport.get_protocol(), "close_docker_side", None)
    if close_docker_side is not None:
        close_docker_side()  # no more plain calls on this connection: its relay to dockerd can go
    # not under TLS: the socket underneath carries ciphertext that only the transport can make
    if hasattr(os, "splice") and transport.get_extra_info("ssl_object") is None:
        client_sock, up_sock = transport.get_extra_info("socket"), upstream.get_extra_info("socket")
        if client_sock is not None and up_sock is not None:
            await _splice_pipe(transport, upstream, side, head, rest, client_sock.fileno(), up_sock.fileno())
            return
    client = _ClientSide(transport, upstream)
    transport.set_protocol(client)
    side.client_side = client
    transport.write(head)
    if rest:  # output read with the head
        await _head_read(transport.get_extra_info("socket"))
        transport.write(rest + bytes(side.buf))  # and any that came meanwhile
        side.buf.clear()
    side.client = transport
    transport.resume_reading()
    try:
        await side.eof.wait()
        try:
            await asyncio.wait_for(client.done.wait(), 5)
        except asyncio.TimeoutError:
            pass
    finally:
        transport.close()
        upstream.close()


async def _splice_pipe(transport, upstream, side, head: bytes, rest: bytes, client_fd: int, up_fd: int):
    transport.pause_reading()
    upstream.pause_reading()
    # our own blocking duplicates: the event loop's sockets stay non-blocking and idle meanwhile
    client = socket.socket(fileno=os.dup(client_fd))
    up = socket.socket(fileno=os.dup(up_fd))
    client.setblocking(True)
    up.setblocking(True)
    try:
        client.sendall(head)
        if rest:  # output read with the head
            await _head_read(client)
            client.sendall(rest)
        stdin = _in_own_thread(_splice_until_eof, client, up)
        output = _in_own_thread(_splice_until_eof, up, client, True)
        await output
        try:
            await asyncio.wait_for(asyncio.shield(stdin), 5)
        except asyncio.TimeoutError:
            client.shutdown(socket.SHUT_RDWR)  # wakes the stdin splice so its thread can end
            await stdin
    except OSError:
        pass
    finally:
        client.close()
        up.close()
        transport.close()
        upstream.close()


async def _head_read(client) -> None:
    """Wait (briefly) until the client has read the stream's head, before its first output goes.

    dockerd writes the 101 head and the output apart, so a client waiting for the head
    reads it alone.  docker-py then takes the socket from its HTTP library, and what that
    library read past the head is lost (attach with logs=True would lose its output): a
    proxy that read both at once must not hand them over as one.
    """
    if client is None or client.family != socket.AF_UNIX:
        return  # on TCP unread and unacknowledged bytes look alike: nothing to wait for
    deadline = asyncio.get_running_loop().time() + HEAD_READ_WAIT
    while asyncio.get_running_loop().time() < deadline:
        try:
            unread = struct.unpack("i", fcntl.ioctl(client.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return
        if not unread:
            return
        await asyncio.sleep(0.0005)


def _in_own_thread(fn, *args) -> asyncio.Future:
    """Run fn in a new thread: a session can last hours, so it must not hold a pool thread."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def run():
        try:
            fn(*args)
        finally:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
    threading.Thread(target=run, name="weavepy-splice", daemon=True).start()
    return done


def _splice_until_eof(src: socket.socket, dst: socket.socket, batch: bool = False):
    """Move bytes src -> dst in the kernel until src ends; then half-close dst.

    batch: gather up to BATCH_BYTES per move (dockerd's output).  An idle
    session still sleeps in poll() until bytes come; only then can a splice
    wait, at most 1 ms, for more to join them.
    """
    readable = None
    if batch:
        try:
            src.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, BATCH_BYTES)
            src.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, BATCH_WAIT)
            readable = select.poll()
            readable.register(src.fileno(), select.POLLIN)
        except OSError:
            readable = None
    r, w = os.pipe()
    try:
        # a splice moves at most a pipe's capacity: 64 KiB by default, 1 MiB asked for here
        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), SPLICE_CHUNK)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size: the default still works
    try:
        while True:
            try:
                if readable is not None:
                    readable.poll()
                n = os.splice(src.fileno(), w, SPLICE_CHUNK, flags=SPLICE_F_MOVE)
            except BlockingIOError:
                continue  # woken with nothing to move
            except OSError:
                break
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n, flags=SPLICE_F_MOVE)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    except OSError:
        pass  # the other side went away
    finally:
        os.close(r)
        os.close(w)
