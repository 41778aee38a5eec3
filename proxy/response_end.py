"""Where one HTTP/1.1 response ends, read from the bytes as they come (sans-IO).

The pass-through relay copies dockerd's answers to the client unparsed; it only
needs to know when an answer is over, so it can tell whether the connection is
idle before a request that aiohttp must answer (that answer must not overtake
one still being relayed).  Framing, per RFC 9112 section 6.3: no body after a
HEAD, 1xx, 204 or 304; else chunked, else Content-Length, else until close.
"""
from __future__ import annotations

MAX_LINE = 64 * 1024  # a head or chunk-size line longer than this is not HTTP from dockerd

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE, _DONE = range(7)


class MalformedResponse(ValueError):
    pass


class ResponseEnd:
    """Feed a response's bytes in order; feed() says how many of them finish it.

    until_close: the response runs until the connection closes (no length given,
    or 101 Switching Protocols); feed() then never reports an end.
    closes: the response says the connection closes after it (Connection: close).
    """

    def __init__(self, request_method: str):
        self._no_body = request_method == "HEAD"
        self._state = _HEAD
        self._buf = bytearray()  # a head or line split across reads
        self._left = 0
        self.status: int | None = None
        self.closes = False

    @property
    def until_close(self) -> bool:
        return self._state == _UNTIL_CLOSE

    def feed(self, data: bytes) -> int | None:
        """How many leading bytes of data complete the response; None if it goes on after them."""
        if self._state == _HEAD and not self._buf:
            # most answers: a head and a sized body, often in one read; this runs on every
            # relayed call, so it takes the shortest way there
            i = data.find(b"\r\n\r\n")
            if i >= 0:
                self._after_head(data, i)
                pos = i + 4
                if self._state == _DONE:
                    return pos
                if self._state == _BODY:
                    if self._left <= len(data) - pos:
                        self._state = _DONE
                        return pos + self._left
                    self._left -= len(data) - pos
                    return None
                return self._feed(data, pos)
        return self._feed(data, 0)

    def _feed(self, data: bytes, pos: int) -> int | None:
        end = len(data)
        while True:
            state = self._state
            if state == _BODY or state == _CHUNK_DATA:
                take = min(self._left, end - pos)
                pos += take
                self._left -= take
                if self._left:
                    return None
                if state == _BODY:
                    self._state = _DONE
                    return pos
                self._state = _CHUNK_SIZE
            elif state == _UNTIL_CLOSE:
                return None
            elif state == _DONE:
                raise MalformedResponse("fed past the end of the response")
            elif state == _HEAD:
                if pos == end:
                    return None
                if not self._buf:
                    i = data.find(b"\r\n\r\n", pos)
                    if i >= 0:  # the usual case: the whole head in one read
                        head, pos = data[pos:i + 4], i + 4
                    else:
                        self._buf += data[pos:]
                        return None
                else:
                    before = len(self._buf)
                    self._buf += data[pos:]
                    i = self._buf.find(b"\r\n\r\n")
                    if i < 0:
                        if len(self._buf) > MAX_LINE:
                            raise MalformedResponse("response head too long")
                        return None
                    pos += i + 4 - before
                    head = bytes(self._buf[:i + 4])
                    self._buf.clear()
                self._after_head(head, len(head) - 4)
                if self._state == _DONE:
                    return pos
            else:  # a chunk-size line, or a trailer line
                line, pos = self._line(data, pos)
                if line is None:
                    if pos == end:
                        return None
                    continue
                if state == _CHUNK_SIZE:
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise MalformedResponse(f"bad chunk size line {line[:40]!r}") from None
                    if size:
                        self._left, self._state = size + 2, _CHUNK_DATA  # the data and its CRLF
                    else:
                        self._state = _TRAILER
                elif not line:  # the empty line after the last chunk (and any trailers)
                    self._state = _DONE
                    return pos

    def _line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        if not self._buf:
            i = data.find(b"\r\n", pos)
            if i >= 0:
                return data[pos:i], i + 2
            self._buf += data[pos:]
            return None, len(data)
        # the line began in an earlier read; it is short, so look at a little more only
        piece = data[pos:pos + 1024]
        before = len(self._buf)
        self._buf += piece
        i = self._buf.find(b"\r\n")
        if i < 0:
            if len(self._buf) > MAX_LINE:
                raise MalformedResponse("chunk line too long")
            return None, pos + len(piece)
        line = bytes(self._buf[:i])
        self._buf.clear()
        return line, pos + i + 2 - before

    def _after_head(self, data: bytes, end: int):
        """data[:end] is a response head, without the blank line that ends it."""
        # "HTTP/1.x NNN ...": the code is always at 9:12
        if data[:5] != b"HTTP/" or data[8:9] != b" " or not data[9:12].isdigit() or end < 12:
            raise MalformedResponse(f"bad status line {data[:min(end, 60)]!r}")
        self.status = status = int(data[9:12])
        first = data.find(b"\r\n", 0, end)
        headers = data[first:end + 2].lower() if first >= 0 else b""  # each header between CRLFs
        if (i := headers.find(b"\r\nconnection:")) >= 0:
            self.closes = b"close" in (t.strip() for t in header_value(headers, i + 13).split(b","))
        if status == 101:
            self._state = _UNTIL_CLOSE  # another protocol from here on
            return
        if status < 200:
            return  # an interim answer (100 Continue): the real head follows
        if self._no_body or status == 204 or status == 304:
            self._state = _DONE
            return
        if not headers:
            self._state = _UNTIL_CLOSE  # no headers at all: no length
            return
        if (i := headers.find(b"\r\ntransfer-encoding:")) >= 0:
            # chunked last: chunked framing; any other coding: until close
            self._state = _CHUNK_SIZE if header_value(headers, i + 20).endswith(b"chunked") else _UNTIL_CLOSE
        elif (i := headers.find(b"\r\ncontent-length:")) >= 0:
            value = header_value(headers, i + 17)
            try:
                self._left = int(value)
            except ValueError:
                raise MalformedResponse(f"bad Content-Length {value[:40]!r}") from None
            self._state = _BODY if self._left else _DONE
        else:
            self._state = _UNTIL_CLOSE


def header_value(headers: bytes, start: int) -> bytes:
    """The value that starts at start, in headers that end each line with CRLF."""
    return headers[start:headers.index(b"\r\n", start)].strip()
