"""Talking to this host's daemon: its HTTP API, and its PID files (standard library only)."""
from __future__ import annotations

import json
import os
import signal
import socket
import time

from weavepy import config as cfg
from weavepy import statefile

NOT_RUNNING = "weavepy is not running. Have you launched it?"


class ClientError(Exception):
    pass


def http_addr() -> str:
    launched = statefile.read_json(cfg.run_path(cfg.LAUNCH_FILE)) or {}
    return os.environ.get("WEAVEPY_HTTP_ADDR") or launched.get("http_addr") or cfg.DEFAULT_HTTP_ADDR


def request(method: str, path: str, body=None, timeout: float = 120.0) -> str:
    """One HTTP/1.0 exchange with our own daemon.

    Plain sockets rather than http.client: importing that (email, ssl) costs
    ~60 ms, which would be most of an attach.  The daemon answers with a
    Content-Length and closes, so reading to EOF is the whole protocol.
    """
    addr = http_addr()
    host, _, port = addr.rpartition(":")
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(head + data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except ConnectionRefusedError:
        raise ClientError(NOT_RUNNING) from None
    except OSError as exc:
        raise ClientError(f"cannot reach the weavepy daemon at {addr}: {exc}") from None
    reply = b"".join(chunks)
    status_line, _, rest = reply.partition(b"\r\n")
    _, _, text = rest.partition(b"\r\n\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise ClientError(f"unexpected reply from the weavepy daemon at {addr}") from None
    text = text.decode(errors="replace")
    if status >= 400:
        raise ClientError(text.strip() or f"HTTP {status}")
    return text


def post(path: str, body: dict) -> dict:
    return json.loads(request("POST", path, body))


def get_json(path: str, timeout: float = 10.0, quiet: bool = False):
    try:
        return json.loads(request("GET", path, timeout=timeout))
    except (ClientError, ValueError):
        if quiet:
            return None
        raise


def answers() -> bool:
    return get_json("/report", timeout=2.0, quiet=True) is not None


def _alive(pidfile: str) -> int | None:
    try:
        pid = int(open(cfg.run_path(pidfile)).read().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return None
    return pid if b"weavepy" in cmdline else None  # a stale file naming a reused PID is not us


def running_pid() -> int | None:
    """The supervisor's PID, else the daemon's, when one runs."""
    return _alive(cfg.SUPERVISOR_PID) or _alive(cfg.DAEMON_PID)


def stop_daemon(timeout: float = 20.0) -> bool:
    """SIGTERM the supervisor (which stops the daemon) or the daemon; wait until both are gone."""
    pids = [p for p in (_alive(cfg.SUPERVISOR_PID), _alive(cfg.DAEMON_PID)) if p]
    if not pids:
        return False
    os.kill(pids[0], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(f) for f in (cfg.SUPERVISOR_PID, cfg.DAEMON_PID)):
            return True
        time.sleep(0.02)
    for f in (cfg.SUPERVISOR_PID, cfg.DAEMON_PID):
        pid = _alive(f)
        if pid:
            os.kill(pid, signal.SIGKILL)
    return True
