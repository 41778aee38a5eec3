"""Talking to this host's daemon: its HTTP API, and its PID files (standard library only)."""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

from weavepy import config as cfg
from weavepy import statefile

NOT_RUNNING = "weavepy is not running. Have you launched it?"


class ClientError(Exception):
    pass


def http_addr() -> str:
    launched = statefile.read_json(cfg.run_path(cfg.LAUNCH_FILE)) or {}
    return os.environ.get("WEAVEPY_HTTP_ADDR") or launched.get("http_addr") or cfg.DEFAULT_HTTP_ADDR


def _open(method: str, path: str, body: bytes | None = None, timeout: float = 120.0):
    req = urllib.request.Request(f"http://{http_addr()}{path}", data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    return urllib.request.urlopen(req, timeout=timeout)


def request(method: str, path: str, body=None, timeout: float = 120.0) -> str:
    data = json.dumps(body).encode() if body is not None else None
    try:
        with _open(method, path, data, timeout) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise ClientError(exc.read().decode(errors="replace").strip() or f"HTTP {exc.code}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            raise ClientError(NOT_RUNNING) from None
        raise ClientError(f"cannot reach the weavepy daemon at {http_addr()}: {reason}") from None


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
