"""The Docker API proxy against dockerd directly, side by side in one run (alternating).

  docker run --rm busybox true   proxied (create, start held until attach) vs direct   goal <= 1.15x
  GET /containers/json           through the proxy vs direct (keep-alive)            goal <= 1.10x
  docker exec c cat 500 MB       throughput through the proxy vs direct                goal >= 0.90x
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from testbed import Testbed  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "20"))
CALLS = int(os.environ.get("BENCH_CALLS", "500"))
STREAM_MB = int(os.environ.get("BENCH_STREAM_MB", "500"))
STREAM_ROUNDS = int(os.environ.get("BENCH_STREAM_ROUNDS", "5"))
PROXY = {"DOCKER_HOST": "unix:///run/weavepy/weave.sock"}
DIRECT = {"DOCKER_HOST": "unix:///run/docker.sock"}

API_LOOP = r"""
import socket, sys, time
def client(path):
    s = socket.socket(socket.AF_UNIX); s.connect(path); return s
def get(s):
    s.sendall(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: docker\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += s.recv(65536)
n = int(sys.argv[1])
socks = {"proxy": client("/run/weavepy/weave.sock"), "direct": client("/run/docker.sock")}
times = {"proxy": [], "direct": []}
for i in range(n):
    for name in ("proxy", "direct") if i % 2 else ("direct", "proxy"):
        t = time.perf_counter(); get(socks[name]); times[name].append(time.perf_counter() - t)
times = {k: sorted(v) for k, v in times.items()}
print(times["proxy"][len(times["proxy"]) // 2], times["direct"][len(times["direct"]) // 2])
"""


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
        api = h.run([sys.executable, "-c", API_LOOP, str(CALLS)]).stdout.split()
        api_proxy, api_direct = float(api[0]), float(api[1])

        h.run(["docker", "run", "-dt", "--name", "streamer", "busybox", "sh"], env=DIRECT)
        h.run(["docker", "exec", "streamer", "dd", "if=/dev/zero", "of=/tmp/z", "bs=1M", f"count={STREAM_MB}"],
              env=DIRECT)
        streams = {"proxy": [], "direct": []}
        for i in range(STREAM_ROUNDS):
            for name, env in ((("proxy", PROXY), ("direct", DIRECT)) if i % 2 else (("direct", DIRECT), ("proxy", PROXY))):
                t = timed(h, ["sh", "-c", "docker exec streamer cat /tmp/z > /dev/null"], env)
                streams[name].append(STREAM_MB / t)
        h.weavepy("reset")

    med = statistics.median
    rp, rd = med(runs["proxy"]), med(runs["direct"])
    sp, sd = med(streams["proxy"]), med(streams["direct"])
    print()
    print(f"docker run --rm busybox true   proxy {rp * 1000:7.1f} ms  direct {rd * 1000:7.1f} ms  "
          f"ratio {rp / rd:.2f}x (goal <= 1.15)")
    print(f"GET /containers/json           proxy {api_proxy * 1e6:7.0f} us  direct {api_direct * 1e6:7.0f} us  "
          f"ratio {api_proxy / api_direct:.2f}x (goal <= 1.10)")
    print(f"exec cat {STREAM_MB} MB throughput     proxy {sp:7.0f} MB/s direct {sd:7.0f} MB/s "
          f"ratio {sp / sd:.2f}x (goal >= 0.90)")


if __name__ == "__main__":
    main()
