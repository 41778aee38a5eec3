"""The Docker API proxy against dockerd directly, side by side in one run (alternating).

  docker run --rm busybox true   proxied (create, start held until attach) vs direct   goal <= 1.15x
  GET /containers/json           through the proxy vs direct                           goal <= 1.10x
                                 as three clients make it: the docker CLI (`docker ps`,
                                 a process per call), docker-py (keep-alive) and a bare
                                 keep-alive socket that does nothing but the call.  Each
                                 is also timed through a bare byte relay (uvloop, no HTTP
                                 at all): the least any userspace hop can add.
  docker exec c cat 500 MB       throughput through the proxy vs direct                goal >= 0.90x
"""
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from testbed import Testbed  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "20"))
CALLS = int(os.environ.get("BENCH_CALLS", "1000"))
CLI_CALLS = int(os.environ.get("BENCH_CLI_CALLS", "40"))
STREAM_MB = int(os.environ.get("BENCH_STREAM_MB", "500"))
STREAM_ROUNDS = int(os.environ.get("BENCH_STREAM_ROUNDS", "7"))
PROXY_SOCK, DIRECT_SOCK, RELAY_SOCK = "/run/weavepy/weave.sock", "/run/docker.sock", "/run/bench-relay.sock"
PROXY = {"DOCKER_HOST": f"unix://{PROXY_SOCK}"}
DIRECT = {"DOCKER_HOST": f"unix://{DIRECT_SOCK}"}

# Alternates the sockets call by call; prints the median seconds of each, in order.
# Each client below defines call(j), one GET /containers/json on paths[j].
LOOP = r"""
import statistics, sys, time
n, paths = int(sys.argv[1]), sys.argv[2:]
{client}
times = [[] for _ in paths]
for i in range(n):
    for j in (range(len(paths)) if i % 2 else reversed(range(len(paths)))):
        t = time.perf_counter(); call(j); times[j].append(time.perf_counter() - t)
print(*(statistics.median(t) for t in times))
"""

RAW_CLIENT = r"""
import socket
socks = []
for p in paths:
    socks.append(socket.socket(socket.AF_UNIX)); socks[-1].connect(p)
def call(j):
    s = socks[j]
    s.sendall(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: docker\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += s.recv(65536)
"""

DOCKER_PY_CLIENT = r"""
import docker
clients = [docker.APIClient(base_url="unix://" + p, version="1.41") for p in paths]
for c in clients: c.containers()
def call(j): clients[j].containers()
"""

CLI_CLIENT = r"""
import subprocess
def call(j): subprocess.run(["docker", "-H", "unix://" + paths[j], "ps"], stdout=subprocess.DEVNULL, check=True)
"""

# A byte relay and nothing else: what one more userspace hop costs on this machine.
BARE_RELAY = r"""
import asyncio, os, sys, uvloop
class Upstream(asyncio.Protocol):
    def __init__(self, client): self.client = client
    def data_received(self, data): self.client.write(data)
class Client(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.pending, self.up = transport, [], None
        asyncio.ensure_future(self.connect())
    async def connect(self):
        self.up, _ = await asyncio.get_running_loop().create_unix_connection(
            lambda: Upstream(self.transport), sys.argv[2])
        for data in self.pending: self.up.write(data)
    def data_received(self, data):
        self.up.write(data) if self.up else self.pending.append(data)
async def main():
    await asyncio.get_running_loop().create_unix_server(Client, sys.argv[1])
    print("ready", flush=True)
    await asyncio.sleep(3600)
uvloop.run(main())
"""


def loop(h, client: str, calls: int, *paths: str) -> list[float]:
    script = LOOP.replace("{client}", client)
    return [float(x) for x in h.run([sys.executable, "-c", script, str(calls), *paths], timeout=600).stdout.split()]


def timed(h, argv, env) -> float:
    t = time.perf_counter()
    h.run(argv, env=env, timeout=300)
    return time.perf_counter() - t


def main():
    with Testbed() as bed:
        (h,) = bed.add_hosts(1)
        h.weavepy("launch")
        runs = {"proxy": [], "direct": []}
        for i in range(RUNS):
            for name, env in ((("proxy", PROXY), ("direct", DIRECT)) if i % 2 else (("direct", DIRECT), ("proxy", PROXY))):
                runs[name].append(timed(h, ["docker", "run", "--rm", "busybox", "true"], env))
        h.run(["docker", "run", "-dt", "--name", "streamer", "busybox", "sh"], env=DIRECT)
        h.run(["docker", "exec", "streamer", "dd", "if=/dev/zero", "of=/tmp/z", "bs=1M", f"count={STREAM_MB}"],
              env=DIRECT)
        streams = {"proxy": [], "direct": []}
        for i in range(STREAM_ROUNDS):
            for name, env in ((("proxy", PROXY), ("direct", DIRECT)) if i % 2 else (("direct", DIRECT), ("proxy", PROXY))):
                t = timed(h, ["sh", "-c", "docker exec streamer cat /tmp/z > /dev/null"], env)
                streams[name].append(STREAM_MB / t)
        print("stream rounds, proxy/direct:", " ".join(f"{p / d:.2f}" for p, d in zip(streams["proxy"], streams["direct"])))
        h.run(["docker", "exec", "streamer", "rm", "/tmp/z"], env=DIRECT)

        # the small call, with one container to list; each client also through a bare relay
        relay = h.popen([sys.executable, "-c", BARE_RELAY, RELAY_SOCK, DIRECT_SOCK], stdout=subprocess.PIPE, text=True)
        try:
            assert relay.stdout.readline().strip() == "ready"
            small = {name: loop(h, client, calls, PROXY_SOCK, DIRECT_SOCK, RELAY_SOCK)
                     for name, client, calls in (("docker ps (CLI)", CLI_CLIENT, CLI_CALLS),
                                                 ("docker-py, keep-alive", DOCKER_PY_CLIENT, CALLS),
                                                 ("bare socket, keep-alive", RAW_CLIENT, CALLS))}
        finally:
            relay.kill()
            relay.wait()
            h.run(["rm", "-f", RELAY_SOCK])
        h.weavepy("reset")

    med = statistics.median
    rp, rd = med(runs["proxy"]), med(runs["direct"])
    sp, sd = med(streams["proxy"]), med(streams["direct"])
    print()
    print(f"docker run --rm busybox true   proxy {rp * 1000:7.1f} ms  direct {rd * 1000:7.1f} ms  "
          f"ratio {rp / rd:.2f}x (goal <= 1.15)")
    print("GET /containers/json (goal <= 1.10)      proxy, direct, and through a bare byte relay (no HTTP:")
    print("                                          the least any extra userspace hop costs here)")
    for name, (proxy, direct, relayed) in small.items():
        print(f"  {name:24} proxy {proxy * 1e6:7.0f} us  direct {direct * 1e6:7.0f} us  ratio {proxy / direct:.2f}x"
              f"   relay {relayed * 1e6:7.0f} us  ratio {relayed / direct:.2f}x")
    print(f"exec cat {STREAM_MB} MB throughput     proxy {sp:7.0f} MB/s direct {sd:7.0f} MB/s "
          f"ratio {sp / sd:.2f}x (goal >= 0.90)")


if __name__ == "__main__":
    main()
