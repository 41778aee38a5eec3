"""Keeps the daemon running (Weave's restart policy `always`): restarts it after a crash or kill -9.

Deliberately tiny and import-light.  SIGTERM stops the daemon and then the supervisor.
A daemon that dies before it ever became ready is not restarted: that is a
launch failure for `weavepy launch` to report, not a crash.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from weavepy import config as cfg

MIN_BACKOFF, MAX_BACKOFF, HEALTHY_AFTER = 0.1, 5.0, 60.0


def log(msg: str):
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: {msg}", file=sys.stderr, flush=True)


def main():
    with open(cfg.run_path(cfg.SUPERVISOR_PID), "w") as f:
        f.write(f"{os.getpid()}\n")
    stopping = False
    child: subprocess.Popen | None = None

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready_file = cfg.run_path("ready.json")
    backoff = MIN_BACKOFF
    try:
        while not stopping:
            try:
                os.unlink(ready_file)
            except FileNotFoundError:
                pass
            began = time.monotonic()
            child = subprocess.Popen([sys.executable, "-m", "weavepy.daemon"])
            code = child.wait()
            if stopping or code == 0:
                break
            if not os.path.exists(ready_file):
                log(f"daemon exited with status {code} before it was ready; not restarting")
                sys.exit(1)
            if time.monotonic() - began > HEALTHY_AFTER:
                backoff = MIN_BACKOFF
            log(f"daemon exited with status {code}; restarting in {backoff:.1f}s")
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
    finally:
        try:
            os.unlink(cfg.run_path(cfg.SUPERVISOR_PID))
        except OSError:
            pass


if __name__ == "__main__":
    main()
