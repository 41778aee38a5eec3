"""The body of a whole HTTP/1.1 answer from dockerd, and the answer with a new body (sans-IO).

The relay holds a few answers whole (see unwrap.py); this takes the body out of
one, rewrites it, and frames the new body in the old head.  An answer whose body
needs no change is returned as it came, byte for byte.
"""
from __future__ import annotations

from .unwrap import BodyRewrite

_FRAMING = (b"content-length:", b"transfer-encoding:")


def dechunk(data: bytes) -> bytes | None:
    """A chunked body's data (chunk extensions and trailers dropped); None if it is not well formed."""
    out, pos = [], 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(data[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return None
        if size == 0:
            return b"".join(out)
        start = eol + 2
        if size < 0 or data[start + size:start + size + 2] != b"\r\n":
            return None
        out.append(data[start:start + size])
        pos = start + size + 2


def rewrite_answer(answer: bytes, rewrite: BodyRewrite) -> bytes:
    """answer (one whole response: head and framed body) with its body rewritten, if it is a 200."""
    if answer[9:12] != b"200" or answer[:5] != b"HTTP/":
        return answer
    end = answer.find(b"\r\n\r\n")
    if end < 0:
        return answer
    headers = answer[:end + 2].lower()
    body = answer[end + 4:]
    if (i := headers.find(b"\r\ntransfer-encoding:")) >= 0:
        if not headers[i:headers.index(b"\r\n", i + 2)].rstrip().endswith(b"chunked"):
            return answer
        body = dechunk(body)
        if body is None:
            return answer
    new = rewrite(body)
    if new is None:
        return answer
    # the new length goes where the old framing header was, the other headers stay in their order
    lines, framed = answer[:end].split(b"\r\n"), False
    for n in range(1, len(lines)):
        if lines[n].lower().startswith(_FRAMING):
            lines[n] = b"" if framed else b"Content-Length: %d" % len(new)
            framed = True
    if not framed:
        lines.append(b"Content-Length: %d" % len(new))
    return b"\r\n".join(line for line in lines if line) + b"\r\n\r\n" + new
