"""Keeps the daemon running (Weave's restart policy `always`): restarts it after a crash or kill -9.

`weavepy launch` forks into this; this forks the daemon.  Nothing heavy is
imported here, so a crash costs the daemon's start-up and no more.  SIGTERM
stops the daemon and then the supervisor.  A daemon that dies before it ever
became ready is not restarted: that is a launch failure for `launch` to
report, not a crash.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from weavepy import config as cfg

MIN_BACKOFF, MAX_BACKOFF, HEALTHY_AFTER = 0.1, 5.0, 60.0


def log(msg: str):
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: {msg}", file=sys.stderr, flush=True)


def run_daemon_in_child() -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            from weavepy import daemon
            daemon.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (print(exc.code, file=sys.stderr) or 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def supervise():
    with open(cfg.run_path(cfg.SUPERVISOR_PID), "w") as f:
        f.write(f"{os.getpid()}\n")
    stopping = False
    child = 0

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        if child:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready_file = cfg.run_path(cfg.READY_FILE)
    backoff = MIN_BACKOFF
    try:
        while not stopping:
            try:
                os.unlink(ready_file)
            except FileNotFoundError:
                pass
            began = time.monotonic()
            child = run_daemon_in_child()
            _, status = os.waitpid(child, 0)
            child = 0
            code = os.waitstatus_to_exitcode(status)
            if stopping or code == 0:
                break
            if not os.path.exists(ready_file):
                log(f"daemon exited with status {code} before it was ready; not restarting")
                return 1
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
    return 0


def detach_and_run(restart: bool, log_path: str) -> int:
    """Fork a detached process (own session, output to the log) that supervises or is the daemon.

    Returns the child's PID to the caller.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if restart:
            code = supervise()
        else:
            from weavepy import daemon
            daemon.main()
            code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (print(exc.code, file=sys.stderr) or 1)
    finally:
        sys.stderr.flush()
        os._exit(code)
