"""Plain calls relayed around aiohttp: where answers end, which requests qualify, and the relay
itself against a scripted dockerd on a unix socket (order, streams, closes, back-pressure)."""
import asyncio
import itertools

import pytest
from aiohttp import web
from hypothesis import given, strategies as st

from weavepy.proxy.forward import Upstream
from weavepy.proxy.passthrough import PassThroughServer, plain_request
from weavepy.proxy.response_end import MalformedResponse, ResponseEnd

# -- where an answer ends ------------------------------------------------------------
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n[{\"a\": 1}]\n"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n1a\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n")
NEXT = b"HTTP/1.1 204 No Content\r\n\r\n"


def end_of(answer: bytes, method="GET", cuts=()) -> int | None:
    """Feed answer in pieces cut at the given offsets; the offset in answer where it ended."""
    framing, start = ResponseEnd(method), 0
    for cut in [*cuts, len(answer)]:
        used = framing.feed(answer[start:cut])
        if used is not None:
            return start + used
        start = cut
    return None


@pytest.mark.parametrize("answer", [LENGTH, CHUNKED], ids=["content-length", "chunked"])
def test_an_answer_ends_where_its_framing_says_however_it_is_cut(answer):
    for cut in range(1, len(answer)):
        assert end_of(answer + NEXT, cuts=(cut,)) == len(answer), cut
    assert end_of(answer + NEXT, cuts=range(1, len(answer))) == len(answer)  # a byte at a time


def test_answers_without_a_body_end_with_their_head():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    assert end_of(head + NEXT, "HEAD") == len(head)
    assert end_of(NEXT + LENGTH) == len(NEXT)
    assert end_of(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n") is not None
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    assert end_of(interim + LENGTH) == len(interim + LENGTH)


def test_answers_that_run_until_the_connection_closes():
    for head in (b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nraw bytes",
                 b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\nraw"):
        framing = ResponseEnd("POST")
        assert framing.feed(head) is None and framing.until_close
        assert framing.feed(LENGTH) is None  # later bytes are part of the stream, never a new answer


def build(kind: str, pieces: list[bytes]) -> bytes:
    body = b"".join(pieces)
    if kind == "length":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    if kind == "none":
        return b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


@given(st.lists(st.tuples(st.sampled_from(["length", "chunked", "none"]),
                          st.lists(st.binary(max_size=40), max_size=5)), min_size=1, max_size=5),
       st.lists(st.integers(min_value=1, max_value=50), max_size=30))
def test_back_to_back_answers_cut_anywhere_each_end_where_they_should(answers, read_sizes):
    stream = [build(kind, pieces) for kind, pieces in answers]
    data, ends, offset = b"".join(stream), [], 0
    for answer in stream:
        offset += len(answer)
        ends.append(offset)
    reads, pos = [], 0
    for size in read_sizes:
        reads.append(data[pos:pos + size])
        pos += size
    reads.append(data[pos:])
    found, framing, consumed = [], ResponseEnd("GET"), 0
    for read in reads:
        while read:
            used = framing.feed(read)
            if used is None:
                consumed += len(read)
                break
            consumed += used
            found.append(consumed)
            framing, read = ResponseEnd("GET"), read[used:]
    assert found == ends


@pytest.mark.parametrize("bad", [b"HTTP/1.1 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n"])
def test_a_malformed_answer_is_refused(bad):
    with pytest.raises(MalformedResponse):
        ResponseEnd("GET").feed(bad)


# -- which requests are plain ---------------------------------------------------------
DOCKER_PY_PS = (b"GET /v1.41/containers/json?limit=-1&all=1 HTTP/1.1\r\nHost: localhost\r\n"
                b"User-Agent: docker-sdk-python/7.1.0\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n")


@pytest.mark.parametrize("head, expected", [
    (DOCKER_PY_PS, ("GET", "/v1.41/containers/json", False)),
    (b"POST /v1.41/containers/c1/start HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n",
     ("POST", "/v1.41/containers/c1/start", False)),
    (b"GET /containers/%63%31/json HTTP/1.1\r\nHost: docker\r\n\r\n", ("GET", "/containers/c1/json", False)),
    (b"POST /session HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
     ("POST", "/session", True)),
    (b"POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Length: 2\r\n\r\n", None),  # a body follows
    (b"PUT /containers/c1/archive HTTP/1.1\r\nHost: docker\r\nTransfer-Encoding: chunked\r\n\r\n", None),
    (b"GET /_ping HTTP/1.0\r\n\r\n", None),  # HTTP/1.0 and no Host: aiohttp's path adds one
    (b"GET /_ping HTTP/1.1\r\nAccept: */*\r\n\r\n", None),
    (DOCKER_PY_PS[:-2], None),  # half a head
    (DOCKER_PY_PS + DOCKER_PY_PS, None),  # two requests in one read
    (b"GET /_ping HTTP/1.1\r\nHost : docker\r\n\r\n", None),
])
def test_which_requests_are_plain(head, expected):
    assert plain_request(head) == expected


# -- the relay, against a scripted dockerd ---------------------------------------------
UPGRADED = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
ODD = b"HTTP/1.1 200 Fine Thanks\r\nX-Odd-CASE: kept\r\nContent-Length: 5\r\n\r\nplain"


class ScriptedDocker:
    """A dockerd stand-in: answers by path, and records each request with its connection's number."""

    def __init__(self):
        self.seen: list[tuple[int, str]] = []
        self.open = 0
        self.left_mid_stream = 0
        self.writers = []
        self._numbers = itertools.count()

    async def serve(self, reader, writer):
        number = next(self._numbers)
        self.open += 1
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                path = head.split(b" ")[1].decode()
                self.seen.append((number, path))
                if path == "/slow":
                    await asyncio.sleep(0.3)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                elif path == "/stream":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for i in range(8):
                        if reader.at_eof():  # the proxy closed this connection
                            self.left_mid_stream += 1
                            return
                        writer.write(b"7\r\nevent %d\r\n" % i)
                        await asyncio.sleep(0.15)
                    writer.write(b"0\r\n\r\n")
                elif path == "/attach":
                    # the switch and the first output in one write: a proxy may well read them so
                    writer.write(UPGRADED + b"hello")
                    await writer.drain()
                    writer.close()
                    return
                elif path == "/big":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 20) + b"b" * (64 << 20))
                elif path == "/held/split":
                    # one answer in three reads, the word the rewrite looks for cut by a chunk boundary
                    writer.write(b"HTTP/1.1 200 OK\r\nServer: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nplease")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(b"\r\n3\r\n wr\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(b"5\r\nap me\r\n0\r\n\r\n")
                elif path in ("/bye", "/idle-close"):
                    # /bye says it closes; /idle-close closes unannounced (an idle keep-alive timing out)
                    closes = b"Connection: close\r\n" if path == "/bye" else b""
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n%s\r\nbye" % closes)
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(ODD)
                await writer.drain()
        finally:
            self.open -= 1


def shout(body: bytes) -> bytes | None:
    """The test's answer rewrite: only bodies asking for it change."""
    return body.upper() if b"wrap" in body else None


def held(method, path):
    return shout if path.startswith("/held") else None


@pytest.fixture
async def relay(tmp_path):
    """(scripted dockerd, the proxy's socket path, requests aiohttp's handler saw)."""
    docker = ScriptedDocker()
    docker_path, proxy_path = str(tmp_path / "docker.sock"), str(tmp_path / "proxy.sock")
    docker_server = await asyncio.start_unix_server(docker.serve, docker_path)
    upstream = Upstream(f"unix://{docker_path}")
    handled = []

    async def handle(request):
        handled.append(request.path)
        if request.path.endswith("/start"):
            return web.Response(text="attached")  # what the proxy answers itself
        if request.path == "/attach":
            return await upstream.hijack(request)
        return await upstream.forward(request, rewrite=held(request.method, request.path))

    server = PassThroughServer(handle, docker_path=docker_path, keepalive_timeout=0.5, access_log=None,
                               intercepts=lambda method, path, upgrade: path.endswith(("/start", "/attach")),
                               answer_rewrites=held)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, proxy_path).start()
    yield docker, proxy_path, handled
    await runner.cleanup()
    await upstream.close()
    docker_server.close()
    for w in docker.writers:
        w.close()


def get(path, method="GET"):
    return f"{method} {path} HTTP/1.1\r\nHost: docker\r\n\r\n".encode()


async def read_answer(reader) -> bytes:
    """One whole answer, framed as the client would frame it."""
    framing, data = ResponseEnd("GET"), b""
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, f"connection closed after {data[:200]!r}"
        used = framing.feed(chunk)
        if used is not None:
            assert used == len(chunk), "bytes after the answer"
            return data + chunk
        data += chunk


async def test_plain_calls_get_dockerds_bytes_and_share_one_connection_to_it(relay):
    docker, sock, handled = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    for path in ("/v1.41/containers/json", "/_ping", "/v1.41/containers/json"):
        writer.write(get(path))
        assert await read_answer(reader) == ODD  # reason phrase and header case as dockerd sent them
    assert [n for n, _ in docker.seen] == [0, 0, 0] and handled == []
    for _ in range(2):  # a request the proxy answers itself, again and again (verdicts are remembered)
        writer.write(get("/containers/c1/start", "POST"))
        assert (await read_answer(reader)).endswith(b"attached")
    writer.write(get("/_ping"))
    assert await read_answer(reader) == ODD
    assert handled == ["/containers/c1/start"] * 2 and len(docker.seen) == 4
    writer.close()


async def test_answers_keep_the_order_of_requests_when_the_proxy_answers_one_itself(relay):
    docker, sock, handled = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/slow"))
    await asyncio.sleep(0.05)  # a client that does not wait: the next request arrives mid-answer
    writer.write(get("/containers/c1/start", "POST"))
    writer.write(get("/v1.41/info"))
    slow = await read_answer(reader)
    start = await read_answer(reader)
    info = await read_answer(reader)
    assert slow.endswith(b"slow") and start.endswith(b"attached") and info.endswith(b"plain")
    assert handled[0] == "/containers/c1/start"
    writer.close()


async def test_a_stream_flows_as_it_comes_and_outlives_the_keepalive_timer(relay):
    docker, sock, _ = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/stream"))
    first = await asyncio.wait_for(reader.readuntil(b"event 0\r\n"), 1)  # before the stream ends
    assert first.startswith(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked")
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)  # 1.2 s: past the 0.5 s keep-alive
    assert rest.endswith(b"event 7\r\n0\r\n\r\n")
    writer.write(get("/_ping"))  # and the connection is still good for the next call
    assert await read_answer(reader) == ODD
    writer.close()


async def test_a_client_that_leaves_a_stream_closes_it_at_dockerd(relay):
    docker, sock, _ = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/stream"))
    await asyncio.wait_for(reader.readuntil(b"event 0\r\n"), 1)
    writer.close()
    await asyncio.sleep(0.5)  # the stream has 0.7 s to go
    assert docker.left_mid_stream == 1


async def test_dockerd_closing_the_connection(relay):
    docker, sock, _ = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/idle-close"))
    assert (await read_answer(reader)).endswith(b"bye")
    await asyncio.sleep(0.1)
    writer.write(get("/_ping"))  # an idle connection closed by dockerd: the next call opens another
    assert await read_answer(reader) == ODD
    assert [n for n, _ in docker.seen] == [0, 1]
    writer.close()


async def test_an_answer_that_says_the_connection_closes_closes_the_clients(relay):
    docker, sock, _ = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/bye"))
    data = await asyncio.wait_for(reader.read(), 0.25)  # at once, not when keep-alive gives up
    assert data.endswith(b"Connection: close\r\n\r\nbye")
    writer.close()


async def test_when_dockerd_is_away_the_client_is_told(relay, tmp_path):
    docker, sock, handled = relay
    (tmp_path / "docker.sock").unlink()
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/v1.41/containers/json"))
    answer = await read_answer(reader)
    assert answer.startswith(b"HTTP/1.1 500") and b"Cannot connect to the Docker daemon" in answer
    writer.close()


async def test_a_client_that_reads_slowly_slows_dockerd_down(relay):
    docker, sock, _ = relay
    reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 16)
    writer.write(get("/big"))
    await asyncio.sleep(1)  # the client reads nothing: the proxy must stop reading dockerd
    backlog = docker.writers[-1].transport.get_write_buffer_size()
    assert backlog > 32 << 20, backlog  # most of the 64 MiB still waits in dockerd, not in the proxy
    total = 0
    while total < (64 << 20):
        chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
        assert chunk
        total += len(chunk)
    assert total - len(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n") == 64 << 20
    writer.close()


async def test_under_an_aiohttp_without_the_state_it_reads_every_call_takes_aiohttps_path(relay, monkeypatch):
    from weavepy.proxy import passthrough
    monkeypatch.setattr(passthrough, "RELAY_AVAILABLE", False)
    docker, sock, handled = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/v1.41/containers/json"))
    assert (await read_answer(reader)).endswith(b"plain")
    assert handled == ["/v1.41/containers/json"]
    writer.close()


SHOUTED = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 14\r\n\r\nPLEASE WRAP ME"


async def test_an_answer_held_for_a_rewrite_is_sent_whole_and_in_order(relay):
    docker, sock, handled = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/held/split"))
    await asyncio.sleep(0.02)
    writer.write(get("/v1.41/info"))  # asked while the first answer is held: it waits for that one
    data = b""
    while len(data) < len(SHOUTED + ODD):
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, data
        data += chunk
    assert data == SHOUTED + ODD
    writer.write(get("/held/plain"))  # nothing to change: dockerd's bytes
    assert await read_answer(reader) == ODD
    assert handled == []
    writer.close()


async def test_an_answer_too_big_to_hold_goes_on_unchanged(relay, monkeypatch):
    from weavepy.proxy import passthrough
    monkeypatch.setattr(passthrough, "MAX_HELD", 40)
    docker, sock, _ = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/held/split"))
    answer = await read_answer(reader)
    assert answer.endswith(b"5\r\nap me\r\n0\r\n\r\n") and b"PLEASE" not in answer
    writer.close()


async def test_through_aiohttps_path_the_same_rewrite_applies(relay, monkeypatch):
    from weavepy.proxy import passthrough
    monkeypatch.setattr(passthrough, "RELAY_AVAILABLE", False)
    docker, sock, handled = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(get("/held/split"))
    answer = await read_answer(reader)
    assert answer.endswith(b"\r\n\r\nPLEASE WRAP ME") and b"Content-Length: 14" in answer
    writer.write(get("/held/plain"))
    assert (await read_answer(reader)).endswith(b"plain")
    assert handled == ["/held/split", "/held/plain"]
    writer.close()


async def test_a_stream_head_reaches_a_waiting_client_apart_from_the_output(relay):
    # docker-py reads the head through its HTTP library, then the raw socket: what the library
    # read past the head would be lost, so the head must come alone, as dockerd sends it
    docker, sock, _ = relay
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(b"POST /attach HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    assert await asyncio.wait_for(reader.read(65536), 5) == UPGRADED
    assert await asyncio.wait_for(reader.read(65536), 5) == b"hello"
    writer.close()
