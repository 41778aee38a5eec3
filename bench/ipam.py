"""Allocation latency once the ring exists, and how fast a cluster's ring and DNS converge.

  POST /ip/<id>, space this peer owns       p50 / p99            goal p99 < 50 ms
  POST /ip/<id>/<subnet>, space donated     p50 / p99            goal p99 < 500 ms
      (each request names a /24 this peer owns nothing of: the owner must give it a block)
  30 routers launched with H1's address: seconds from the last launch until every router's
  ring agrees and every router resolves every other's name

Timed from a client inside the host's namespace (one process, keep-alive-free HTTP/1.0 as the
CLI speaks it), so what is measured is the daemon, not a CLI start.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from testbed import Testbed, launch_joining  # noqa: E402

OWNED = int(os.environ.get("BENCH_OWNED", "1000"))
DONATED = int(os.environ.get("BENCH_DONATED", "60"))
ROUTERS = int(os.environ.get("BENCH_ROUTERS", "30"))
LIGHT = ["--no-proxy"]

# Times requests one after another; prints one latency (seconds) per line.
CLIENT = r"""
import socket, sys, time
def call(method, path):
    s = socket.create_connection(("127.0.0.1", 6784))
    s.sendall(f"{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    if b" 200 " not in data.split(b"\r\n", 1)[0]:
        raise SystemExit(data.decode(errors="replace"))
for path in sys.argv[1:]:
    t = time.perf_counter()
    call("POST", path)
    print(time.perf_counter() - t, flush=True)
"""


def percentiles(samples):
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


def timed(host, paths):
    out = host.run([sys.executable, "-c", CLIENT, *paths], timeout=600).stdout.split()
    return [float(x) for x in out]


def show(what, samples, goal):
    p50, p99 = percentiles(samples)
    print(f"{what:<44} n={len(samples):<5} p50 {p50 * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms  "
          f"max {max(samples) * 1000:7.2f} ms  (goal p99 < {goal} ms)", flush=True)


def converge(bed):
    many = bed.add_hosts(ROUTERS, dockerd=False)
    try:
        last = launch_joining(many, *LIGHT)
        for i, h in enumerate(many):      # a name on every host, and the ring made by the first allocation
            h.weavepy("dns-add", f"10.40.{i // 250}.{i % 250 + 1}", "-h", f"n{i}.weave.local")
        many[0].weavepy("prime")
        want = {f"n{i}.weave.local" for i in range(len(many))}
        deadline = last + 120
        while time.monotonic() < deadline:
            rings = {h.weavepy("report").stdout.count('"Token"') for h in many}
            names = all(len(h.weavepy("status", "dns").stdout.splitlines()) == len(want) for h in many)
            ready = all("Status: ready" in h.weavepy("status").stdout for h in many)
            if names and ready and len(rings) == 1:
                return time.monotonic() - last
            time.sleep(0.5)
        return None
    finally:
        for h in many:
            bed.remove_host(h)


def main():
    with Testbed() as bed:
        h1, h2 = bed.add_hosts(2, dockerd=False)
        h1.weavepy("launch", *LIGHT)
        h1.weavepy("prime")
        show("POST /ip/<id>, space it owns", timed(h1, [f"/ip/owned{i}" for i in range(OWNED)]), 50)
        h2.weavepy("launch", *LIGHT, h1.ip)
        h2.weavepy("prime")
        show("POST /ip/<id>/<net>/24, space donated", timed(h2, [f"/ip/d{i}/10.{33 + i // 256}.{i % 256}.0/24"
                                                              for i in range(DONATED)]), 500)
        took = converge(bed)
        print(f"{ROUTERS} routers: rings and DNS converged " +
              (f"{took:.1f} s after the last launch" if took is not None else "not within 120 s"), flush=True)


if __name__ == "__main__":
    main()
