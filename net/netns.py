"""Entering a container's network namespace from one thread.

setns(CLONE_NEWNET) changes the namespace of the calling thread only, so a
worker thread can step into a container's namespace, open sockets there (they
stay bound to it) and step back, while the event loop runs on in the host's.
"""
from __future__ import annotations

import contextlib
import ctypes
import os

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    pass


def _setns(fd: int):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(pid: int):
    """Run the body of the with-block in the network namespace of process `pid` (blocking; use in a thread)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except FileNotFoundError:
            raise NetnsError(f"process {pid} is gone") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)  # a thread left in a container's namespace would poison later work
    finally:
        os.close(own)


def same_netns(pid: int) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
