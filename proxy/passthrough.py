"""The way around aiohttp for plain calls: their bytes go to dockerd and back unparsed.

Most Docker API calls (ps, inspect, logs, events, wait, _ping) pass through
unchanged.  Taking each through aiohttp's request and response objects cost
the proxy about 0.9 ms of CPU per docker-py call on the test machine, more than
dockerd took to answer; copying the bytes costs about a sixth of that.  So the listener
is still aiohttp's, but its connection handler first looks at each read: one
whole body-less HTTP/1.1 request head that the proxy does not intercept is
written as it came to this connection's own connection to dockerd, and
dockerd's answer is copied back as it comes (byte-exact, streamed, with
back-pressure).  Everything else (create, start, exec, attach, requests with
bodies, heads split across reads, HTTP/1.0) goes to aiohttp as before.  A
client repeats its request heads byte for byte, so each head's verdict is
remembered and most calls are decided by one dictionary lookup.

Answers leave in the order requests came: ResponseEnd tracks where each relayed
answer ends, and a request for aiohttp that arrives while one is still being
relayed waits for it.  A few answers (container listings and inspects, which may
show the wait helper) are held until they end and passed through a rewrite that
returns them unchanged unless they show it (see unwrap.py).  A connection that streams (events, logs -f) is not idle,
so aiohttp's keep-alive timer leaves it alone.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable
from urllib.parse import unquote

from aiohttp import web

from .answer_body import rewrite_answer
from .response_end import MalformedResponse, ResponseEnd, header_value
from .unwrap import BodyRewrite

# (method, decoded path, asks to switch protocol) -> the proxy must see this request
Intercepts = Callable[[str, str, bool], bool]
# (method, decoded path) of a relayed request -> what its answer's body goes through, if anything
AnswerRewrites = Callable[[str, str], BodyRewrite | None]
Verdict = tuple[str, BodyRewrite | None] | None  # (method, rewrite of the answer) to relay; None: aiohttp's

# The relay reads aiohttp's connection state to know it is between requests.  Checked
# once here: under an aiohttp that names it otherwise, every request takes aiohttp's path.
_AIOHTTP_STATE = ("_waiter", "_messages", "_upgraded", "_payload_parser", "_paused",
                  "_next_keepalive_close_time", "_process_keepalive")
RELAY_AVAILABLE = all(hasattr(web.RequestHandler, name) for name in _AIOHTTP_STATE)
DECISIONS_KEPT = 512  # request heads remembered with their verdict (clients repeat theirs)
MAX_HELD = 64 * 1024 * 1024  # an answer held for a rewrite; a bigger one is passed on as it is
_UNSEEN = object()


def plain_request(data: bytes) -> tuple[str, str, bool] | None:
    """(method, decoded path, asks to upgrade) if data is exactly one body-less HTTP/1.1 request head.

    It runs on every call, so it searches rather than parses; what it lets through
    reaches dockerd unchanged, whose own parser then judges the head.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end != len(data) - 4:
        return None
    first = data.find(b"\r\n")
    parts = data[:first].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[1][:1] != b"/":
        return None
    headers = data[first:end + 2].lower()  # each header between a CRLF before and one after
    if b"\r\nhost:" not in headers:
        return None  # aiohttp's path adds the Host that dockerd needs
    if b"\r\ntransfer-encoding:" in headers or b"\r\nexpect:" in headers:
        return None  # a body follows
    if (i := headers.find(b"\r\ncontent-length:")) >= 0 and header_value(headers, i + 17) != b"0":
        return None
    upgrade = False
    if b"\r\nupgrade:" in headers and (i := headers.find(b"\r\nconnection:")) >= 0:
        upgrade = b"upgrade" in (t.strip() for t in header_value(headers, i + 13).split(b","))
    path = parts[1].decode("latin-1").partition("?")[0]
    if "%" in path:
        path = unquote(path, encoding="latin-1")
    return parts[0].decode("latin-1"), path, upgrade


class PassThroughServer(web.Server):
    """aiohttp's low-level server whose connections relay plain calls straight to dockerd."""

    def __init__(self, handler, *, docker_path: str, intercepts: Intercepts,
                 answer_rewrites: AnswerRewrites = lambda method, path: None, **kwargs):
        super().__init__(handler, **kwargs)
        self._docker_path = docker_path
        self._intercepts = intercepts
        self._answer_rewrites = answer_rewrites
        # a request head -> its verdict.  A client sends the same head for the same
        # call, byte for byte, so most calls are decided by one lookup.
        self._decisions: dict[bytes, Verdict] = {}
        # what web.Server passes on to each connection's handler
        self._handler_kwargs = {k: v for k, v in kwargs.items()
                                if k not in ("request_factory", "handler_cancellation", "loop")}

    def __call__(self) -> web.RequestHandler:
        if not RELAY_AVAILABLE:
            return web.RequestHandler(self, loop=self._loop, **self._handler_kwargs)
        return PassThroughHandler(self, loop=self._loop, docker_path=self._docker_path,
                                  decide=self.decide, decisions=self._decisions, **self._handler_kwargs)

    def decide(self, data: bytes) -> Verdict:
        """(method, rewrite of its answer's body or None) of a request to relay, or None for aiohttp's path."""
        request = plain_request(data)
        verdict = None
        if request is not None and not self._intercepts(*request):
            verdict = request[0], self._answer_rewrites(request[0], request[1])
        if len(self._decisions) >= DECISIONS_KEPT:
            self._decisions.clear()
        self._decisions[data] = verdict
        return verdict


class PassThroughHandler(web.RequestHandler):
    def __init__(self, manager, *, docker_path: str, decide: Callable[[bytes], Verdict],
                 decisions: dict[bytes, Verdict], **kwargs):
        super().__init__(manager, **kwargs)
        self._docker_path = docker_path
        self._decide = decide
        self._decisions = decisions
        self._docker: asyncio.Transport | None = None  # this connection's own connection to dockerd
        self._connecting: list[bytes] | None = None  # requests written once it is open
        self._connect_task: asyncio.Task | None = None
        self._answers: deque[_Relayed] = deque()  # relayed requests not yet fully answered, oldest first
        self._held: bytearray | None = None  # bytes for aiohttp, waiting for relayed answers to end
        self._aiohttp_partial = False  # aiohttp holds part of a request head

    # -- the client's bytes ----------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._held is not None:
            self._held += data
            return
        if self._aiohttp_idle():
            verdict = self._decisions.get(data, _UNSEEN)
            if verdict is _UNSEEN:
                verdict = self._decide(data)
            if verdict is not None:
                self._relay_request(data, *verdict)
                return
        if self._answers:
            # aiohttp's answer must not overtake a relayed one: wait for it to end
            self._held = bytearray(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        super().data_received(data)
        waiter = self._waiter
        self._aiohttp_partial = waiter is not None and not waiter.done() and not self._messages

    def _aiohttp_idle(self) -> bool:
        """aiohttp is between requests: waiting for one, with none queued or half-read."""
        waiter = self._waiter
        return (waiter is not None and not waiter.done() and not self._messages and not self._aiohttp_partial
                and not self._upgraded and self._payload_parser is None)

    def _relay_request(self, data: bytes, method: str, rewrite: BodyRewrite | None):
        self._answers.append(_Relayed(ResponseEnd(method), rewrite))
        # a connection busy with relayed calls is not idle to aiohttp's keep-alive timer
        self._next_keepalive_close_time = self._loop.time() + self.keepalive_timeout
        if self._docker is not None:
            self._docker.write(data)
        elif self._connecting is not None:
            self._connecting.append(data)
        else:
            self._connecting = [data]
            self._connect_task = self._loop.create_task(self._connect())

    async def _connect(self):
        try:
            docker, _ = await self._loop.create_unix_connection(lambda: _DockerSide(self), self._docker_path)
        except OSError:
            # aiohttp's path answers these, with the error that says dockerd cannot be reached
            pending, self._connecting = self._connecting or [], None
            self._answers.clear()
            for data in pending:
                super().data_received(data)
            self._release_held()
            return
        if self.transport is None or self.transport.is_closing():
            docker.close()
            return
        self._docker = docker
        if self._paused:
            docker.pause_reading()  # the client was already not keeping up
        for data in self._connecting or []:
            docker.write(data)
        self._connecting = None

    def _release_held(self):
        held, self._held = self._held, None
        if held is not None:
            if self.transport is not None:
                self.transport.resume_reading()
            self.data_received(bytes(held))

    # -- dockerd's bytes ---------------------------------------------------------
    def relay_answer(self, data: bytes):
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        answers = self._answers
        try:
            if len(answers) == 1 and answers[0].rewrite is None:
                # the usual: one answer in flight, not held: out before it is looked at
                transport.write(data)
                used = answers[0].end.feed(data)
                if used is not None and self._answer_ended(answers.popleft()):
                    return
                data = b""
            while answers and data:
                answer = answers[0]
                used = answer.end.feed(data)
                piece = data if used is None or used == len(data) else data[:used]
                if answer.rewrite is None:
                    transport.write(piece)
                else:
                    self._hold(answer, piece, used is not None)
                if used is None:
                    return
                answers.popleft()
                if self._answer_ended(answer):
                    return
                data = data[used:]  # the next answer, to a pipelined request
        except MalformedResponse:
            # cannot tell where answers end any more: as a broken connection to dockerd
            held = answers[0].held if answers else None
            transport.write(bytes(held or b"") + data)
            answers.clear()
            transport.close()
            return
        if data:
            transport.write(data)  # more than was asked for: passed on, as dockerd sent it
        if not answers:
            self._release_held()

    def _answer_ended(self, answer: "_Relayed") -> bool:
        """An answer went out whole; True if the connection ends with it."""
        if not answer.end.closes:
            return False
        # dockerd closes after this answer (the request said so, or was HTTP/1.0): so do we
        self._answers.clear()
        self.transport.close()
        return True

    def _hold(self, answer: "_Relayed", piece: bytes, complete: bool):
        """Keep an answer until it is whole, then send it on through its rewrite."""
        if answer.held is None:
            if complete:  # the usual: the whole answer in one read
                self.transport.write(rewrite_answer(piece, answer.rewrite))
                return
            answer.held = bytearray()
        answer.held += piece
        if complete:
            self.transport.write(rewrite_answer(bytes(answer.held), answer.rewrite))
            answer.held = None
        elif len(answer.held) > MAX_HELD:
            self.transport.write(answer.held)  # too big to hold: the rest goes on as it comes
            answer.held = answer.rewrite = None

    def docker_closed(self, docker: asyncio.Transport):
        if docker is not self._docker:
            return  # one this handler already let go
        self._docker = None
        if self._answers:
            # an answer cut short, or one that ends at the close: the client must see the close too
            held = self._answers[0].held
            if held and self.transport is not None:
                self.transport.write(held)
            self._answers.clear()
            if self.transport is not None:
                self.transport.close()
        # else dockerd closed an idle connection: the next plain call opens another

    def close_docker_side(self):
        """The client's connection is taken over (attach, exec): it has no more plain calls."""
        if self._docker is not None:
            self._docker.close()
            self._docker = None

    # -- the client's connection ---------------------------------------------------
    def pause_writing(self):
        super().pause_writing()
        if self._docker is not None:
            self._docker.pause_reading()  # the client reads slower than dockerd answers

    def resume_writing(self):
        super().resume_writing()
        if self._docker is not None and not self._docker.is_closing():
            self._docker.resume_reading()

    def connection_lost(self, exc):
        self.close_docker_side()
        if self._connect_task is not None:
            self._connect_task.cancel()
        super().connection_lost(exc)

    def _process_keepalive(self):
        if self._answers:  # still relaying an answer (events, logs -f): not an idle connection
            self._next_keepalive_close_time = self._loop.time() + self.keepalive_timeout
        super()._process_keepalive()


class _Relayed:
    """A relayed request's answer: where it ends, and the rewrite it is held whole for (if any)."""
    __slots__ = ("end", "rewrite", "held")

    def __init__(self, end: ResponseEnd, rewrite: BodyRewrite | None):
        self.end = end
        self.rewrite = rewrite
        self.held: bytearray | None = None


class _DockerSide(asyncio.Protocol):
    def __init__(self, handler: PassThroughHandler):
        self.handler = handler
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes):
        self.handler.relay_answer(data)

    def connection_lost(self, exc):
        self.handler.docker_closed(self.transport)
