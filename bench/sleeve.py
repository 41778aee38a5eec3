"""The sleeve against the underlay, side by side in one run (issue 12, check 7).

Two simulated hosts with dockerd (tests/testbed.py), routers launched with
`--no-fastdp`, a busybox container on each.  Each round runs one TCP stream
(iperf3, run in the containers' network namespaces) for a few seconds over the
underlay (host to host) and over the sleeve (container to container), the order
flipping every round, so each ratio compares adjacent runs on a shared, noisy
2-core machine.  Then ping round trips over both.  Prints medians and spreads.
Goals: sleeve >= 0.30 of the underlay; sleeve ping RTT <= 0.6 ms.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from testbed import Testbed, wait_for  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def netns_of(h, container) -> list[str]:
    pid = h.docker("inspect", "-f", "{{.State.Pid}}", container)
    return ["nsenter", "-t", pid, "-n"]


def iperf(h, enter: list[str], server_ip: str) -> float:
    out = h.run(enter + ["iperf3", "-c", server_ip, "-t", str(SECONDS), "-J"], timeout=SECONDS + 30).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def rtt_ms(h, enter: list[str], ip: str) -> float:
    out = h.run(enter + ["ping", "-q", "-c", "20", "-i", "0.05", ip]).stdout
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def spread(values, digits: int = 2) -> str:
    return (f"median {statistics.median(values):.{digits}f} (min {min(values):.{digits}f}, "
            f"max {max(values):.{digits}f}, n={len(values)})")


def main():
    bed = Testbed()
    servers = []
    try:
        h1, h2 = bed.add_hosts(2)
        h1.weavepy("launch", "--no-fastdp")
        h2.weavepy("launch", "--no-fastdp", h1.ip)
        assert wait_for(lambda: "1 (1 established)" in h1.weavepy("status").stdout, timeout=30)
        print(h1.weavepy("status", "connections").stdout.strip())
        h1.weavepy("run", "10.2.1.1/24", "-dt", "--name", "c1", "busybox", "sh")
        h2.weavepy("run", "10.2.1.2/24", "-dt", "--name", "c2", "busybox", "sh")
        c1, c2 = netns_of(h1, "c1"), netns_of(h2, "c2")
        for enter in ([], c2):
            servers.append(h2.popen(enter + ["iperf3", "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)
        assert wait_for(lambda: h1.run(c1 + ["ping", "-c1", "-W1", "10.2.1.2"], check=False).returncode == 0,
                        timeout=10)
        paths = {"underlay": ([], h2.ip), "sleeve": (c1, "10.2.1.2")}
        ratios, got = [], {}
        for r in range(ROUNDS):
            order = ["underlay", "sleeve"] if r % 2 == 0 else ["sleeve", "underlay"]
            for name in order:
                got[name] = iperf(h1, *paths[name])
            ratios.append(got["sleeve"] / got["underlay"])
            print(f"round {r + 1}: underlay {got['underlay']:.2f} Gbit/s, sleeve {got['sleeve']:.2f} Gbit/s, "
                  f"ratio {ratios[-1]:.2f}", flush=True)
        rtts = {name: [rtt_ms(h1, enter, ip) for _ in range(3)] for name, (enter, ip) in paths.items()}
        print("results")
        print(f"  sleeve / underlay (TCP)  {spread(ratios)}   goal >= 0.30")
        print(f"  ping RTT sleeve ms      {spread(rtts['sleeve'], 3)}   goal <= 0.6")
        print(f"  ping RTT underlay ms    {spread(rtts['underlay'], 3)}")
        report = json.loads(h1.weavepy("report").stdout)["Router"]["OverlayDiagnostics"]["sleeve"]
        print(f"  sleeve counters on host 1: {report['traffic']} dropped {report['dropped']}")
    finally:
        for p in servers:
            p.kill()
            p.wait()
        bed.teardown()


if __name__ == "__main__":
    main()
