"""Where weavepy keeps things, and its defaults (kept import-light: every CLI command loads it)."""
from __future__ import annotations

import os

STATE_DIR = os.environ.get("WEAVEPY_STATE_DIR", "/var/lib/weavepy")
RUN_DIR = os.environ.get("WEAVEPY_RUN_DIR", "/run/weavepy")
DEFAULT_HTTP_ADDR = "127.0.0.1:6784"
DEFAULT_RANGE = "10.32.0.0/12"
DEFAULT_PORT = 6783
DEFAULT_MTU = 1376


def run_path(name: str) -> str:
    return os.path.join(RUN_DIR, name)


def state_path(name: str) -> str:
    return os.path.join(STATE_DIR, name)


LAUNCH_FILE = "launch.json"
DAEMON_PID = "weavepy.pid"
SUPERVISOR_PID = "supervisor.pid"
LOG_FILE = "weavepy.log"
READY_FILE = "ready.json"  # written by the daemon once it serves its API
