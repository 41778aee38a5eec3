"""TLS for the proxy's TCP listeners, with half-close.

asyncio's own TLS transport closes the whole connection when the peer sends
close_notify, but the Docker CLI sends exactly that (Go's CloseWrite) when a
container has no stdin, and then waits for the output.  So TLS is terminated
here with ssl.MemoryBIO: the client's close_notify becomes a half-close of a
plain connection to the proxy's unix socket, and our close_notify is sent only
when the proxy's side has finished.
"""
from __future__ import annotations

import asyncio
import logging
import ssl

log = logging.getLogger("weavepy.proxy")
READ = 65536


class _Plain(asyncio.Protocol):
    """Our connection to the proxy itself: what it sends goes back encrypted."""

    def __init__(self, tls: "TLSConnection"):
        self.tls = tls

    def data_received(self, data):
        self.tls.send_plain(data)

    def eof_received(self):
        self.tls.plain_ended()
        return True

    def connection_lost(self, exc):
        self.tls.plain_ended()

    def pause_writing(self):
        self.tls.transport.pause_reading()

    def resume_writing(self):
        if not self.tls.transport.is_closing():
            self.tls.transport.resume_reading()


class TLSConnection(asyncio.Protocol):
    def __init__(self, context: ssl.SSLContext, backend_path: str):
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.backend_path = backend_path
        self.handshaken = False
        self.plain: asyncio.Transport | None = None
        self.waiting: list[bytes] = []  # decrypted before the plain connection was up
        self.client_done = False
        self.finished = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        asyncio.ensure_future(self._connect())

    async def _connect(self):
        loop = asyncio.get_running_loop()
        try:
            self.plain, _ = await loop.create_unix_connection(lambda: _Plain(self), self.backend_path)
        except OSError as exc:
            log.warning("TLS listener cannot reach the proxy: %s", exc)
            self.transport.close()
            return
        for data in self.waiting:
            self.plain.write(data)
        self.waiting.clear()
        if self.client_done:
            self.plain.write_eof()

    # client -> proxy
    def data_received(self, data):
        self.incoming.write(data)
        if not self.handshaken:
            try:
                self.sslobj.do_handshake()
                self.handshaken = True
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError as exc:
                log.info("TLS handshake refused: %s", exc.reason or exc)
                self._flush()
                self.transport.close()
                return
        while True:
            try:
                chunk = self.sslobj.read(READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client will send no more
                self._client_ended()
                break
            except ssl.SSLError:
                self.transport.close()
                return
            if not chunk:
                self._client_ended()
                break
            if self.plain is None:
                self.waiting.append(chunk)
            else:
                self.plain.write(chunk)
        self._flush()

    def eof_received(self):
        self._client_ended()
        return True

    def _client_ended(self):
        if self.client_done:
            return
        self.client_done = True
        if self.plain is not None and not self.plain.is_closing() and self.plain.can_write_eof():
            self.plain.write_eof()

    def connection_lost(self, exc):
        if self.plain is not None:
            self.plain.close()

    # proxy -> client
    def send_plain(self, data: bytes):
        self.sslobj.write(data)
        self._flush()

    def plain_ended(self):
        if self.finished:
            return
        self.finished = True
        try:
            self.sslobj.unwrap()  # our close_notify
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        self._flush()
        self.transport.close()

    def _flush(self):
        data = self.outgoing.read()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def pause_writing(self):
        if self.plain is not None:
            self.plain.pause_reading()

    def resume_writing(self):
        if self.plain is not None and not self.plain.is_closing():
            self.plain.resume_reading()


async def serve(host: str, port: int, context: ssl.SSLContext, backend_path: str) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: TLSConnection(context, backend_path), host, port)
