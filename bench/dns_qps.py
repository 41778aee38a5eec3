"""weaveDNS against dnsmasq, side by side in one run, measured with dnsperf.

Both serve the same 100 names on the same simulated host and the same address, the
Docker bridge's (where containers send their queries): weavepy on port 53, its default,
and dnsmasq on port 5300, so both packets take the same path through the kernel.  Runs alternate between the
two so that both see the same machine load.  Reports queries per second at full
load (and queries lost), and latency at a fixed 2,000 queries/s.
Goal (issue 3): >= 0.9 of dnsmasq's QPS with nothing lost; p50 < 0.1 ms at 2,000 q/s.
"""
import os
import re
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from testbed import Testbed  # noqa: E402

NAMES = 100
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def dnsperf(host, server, qfile, extra) -> dict:
    addr, port = server
    out = host.run(["dnsperf", "-s", addr, "-p", str(port), "-d", qfile, "-l", str(SECONDS), "-c", "4", *extra],
                   timeout=SECONDS * 4 + 30).stdout
    num = lambda pat: float(re.search(pat, out).group(1))
    result = {"qps": num(r"Queries per second:\s+([\d.]+)"), "lost": int(num(r"Queries lost:\s+(\d+)")),
              "sent": int(num(r"Queries sent:\s+(\d+)"))}
    # with -v dnsperf prints "> RCODE name type seconds" for every query
    latencies = sorted(float(line.split()[-1]) * 1000 for line in out.splitlines() if line.startswith("> "))
    if latencies:
        result["p50_ms"] = latencies[len(latencies) // 2]
        result["p99_ms"] = latencies[int(len(latencies) * 0.99)]
    return result


def main():
    for tool in ("dnsperf", "dnsmasq"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"bench: {tool} is not installed (apt-get install dnsperf dnsmasq-base)")
    with Testbed() as bed:
        (h,) = bed.add_hosts(1)
        h.weavepy("launch")
        ips = [f"10.45.{i // 250}.{i % 250 + 1}" for i in range(NAMES)]
        for i, ip in enumerate(ips):
            h.weavepy("dns-add", ip, "-h", f"name{i}.weave.local")
        qfile = h.dir / "queries.txt"
        qfile.write_text("".join(f"name{i}.weave.local A\n" for i in range(NAMES)))
        hosts = h.dir / "hosts.txt"
        hosts.write_text("".join(f"{ip} name{i}.weave.local\n" for i, ip in enumerate(ips)))
        weave = h.weavepy("report").stdout.split('"Address": "')[1].split(":")[0]
        dnsmasq = h.popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                           f"--listen-address={weave}", "--port=5300", f"--addn-hosts={hosts}", "--local-ttl=1",
                           "--user=root", "--pid-file="], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            servers = {"weavepy": (weave, 53), "dnsmasq": (weave, 5300)}
            results = {name: {"full": [], "fixed": []} for name in servers}
            for _ in range(ROUNDS):
                for name, server in servers.items():
                    results[name]["full"].append(dnsperf(h, server, str(qfile), ["-q", "100"]))
                    results[name]["fixed"].append(dnsperf(h, server, str(qfile), ["-Q", "2000", "-v"]))
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(5)
        med = lambda runs, k: statistics.median(r[k] for r in runs)
        print()
        for name in servers:
            full, fixed = results[name]["full"], results[name]["fixed"]
            print(f"{name:<8} full load: {med(full, 'qps'):9.0f} q/s  lost {sum(r['lost'] for r in full)}"
                  f"/{sum(r['sent'] for r in full)}   |  at 2000 q/s: p50 {med(fixed, 'p50_ms'):.3f} ms"
                  f"  p99 {med(fixed, 'p99_ms'):.3f} ms  lost {sum(r['lost'] for r in fixed)}")
        ratio = med(results["weavepy"]["full"], "qps") / med(results["dnsmasq"]["full"], "qps")
        print(f"weavepy/dnsmasq queries per second: {ratio:.2f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
