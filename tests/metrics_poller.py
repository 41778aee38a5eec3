"""Watch many hosts' /metrics from one process: when did each first report N established connections?

  metrics_poller.py N TIMEOUT NETNS...    waits for a line on stdin, then prints "start <monotonic
                                          time>", then "<netns> <seconds since start>" as each gets
                                          there, then "done" (or "timeout")
Started before the routers it watches and told when to begin, so its own start-up (a second or
more on two cores busy with 30 routers) is not counted against them.
One process stepping into each host's network namespace in turn (setns) costs far less than a
command per host per poll, which would compete with the routers it measures for the same CPU.
"""
import ctypes
import os
import socket
import sys
import time

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def established(netns_fd: int) -> float:
    if libc.setns(netns_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    try:
        with socket.create_connection(("127.0.0.1", 6784), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return -1
    return sum(float(line.rsplit(" ", 1)[1]) for line in data.decode(errors="replace").splitlines()
               if line.startswith("weave_connections{") and 'state="established"' in line)


def main():
    want, timeout, names = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    fds = {name: os.open(f"/run/netns/{name}", os.O_RDONLY) for name in names}
    sys.stdin.readline()
    start, pending = time.monotonic(), set(names)
    print("start", f"{start:.3f}", flush=True)   # CLOCK_MONOTONIC: the caller's clock too
    while pending and time.monotonic() - start < timeout:
        for name in sorted(pending):
            if established(fds[name]) == want:
                pending.discard(name)
                print(name, f"{time.monotonic() - start:.2f}", flush=True)
        time.sleep(0.2)
    print("timeout" if pending else "done", flush=True)


if __name__ == "__main__":
    main()
