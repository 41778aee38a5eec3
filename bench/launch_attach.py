"""Launch-to-ready and attach latency on a simulated host (targets: launch < 1 s, attach < 150 ms).

Everything is measured in one run, side by side with `docker exec <c> true` (a
Docker round trip users know), because these machines are noisy.  Times are
wall-clock as a user sees them, from the host's shell (nsenter adds ~2 ms,
measured too and shown).
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from testbed import Testbed  # noqa: E402

LAUNCHES = int(os.environ.get("BENCH_LAUNCHES", "10"))
ATTACHES = int(os.environ.get("BENCH_ATTACHES", "20"))


def timed(host, argv) -> float:
    t = time.perf_counter()
    host.run(argv)
    return time.perf_counter() - t


def summary(name, samples, target=None):
    med = statistics.median(samples)
    p90 = sorted(samples)[int(0.9 * (len(samples) - 1))]
    line = f"{name:<28} n={len(samples):<3} median {med * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms"
    if target:
        line += f"   median/target = {med / target:.2f} ({'meets' if med < target else 'MISSES'} {target * 1000:.0f} ms)"
    print(line, flush=True)
    return med


def main():
    with Testbed() as bed:
        (h,) = bed.add_hosts(1)
        nsenter = [timed(h, ["true"]) for _ in range(10)]
        launches = []
        for _ in range(LAUNCHES):
            launches.append(timed(h, ["weavepy", "launch"]))
            h.weavepy("stop")
        h.weavepy("launch")
        names = [f"b{i}" for i in range(ATTACHES)]
        for n in names:
            h.docker("run", "-dt", "--name", n, "busybox", "sh")
        attaches, execs = [], []
        for n in names:  # interleaved, so both see the same machine load
            attaches.append(timed(h, ["weavepy", "attach", n]))
            execs.append(timed(h, ["docker", "exec", n, "true"]))
        print()
        summary("nsenter + true (overhead)", nsenter)
        summary("weavepy launch (to ready)", launches, target=1.0)
        a = summary("weavepy attach", attaches, target=0.150)
        e = summary("docker exec <c> true", execs)
        print(f"{'attach / docker exec':<28} ratio {a / e:.2f}")
        h.weavepy("reset")


if __name__ == "__main__":
    main()
