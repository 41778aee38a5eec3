"""fastdp against the underlay and against a hand-built kernel VXLAN, side by side in one run.

Two simulated hosts (tests/two_hosts.py: host namespaces joined by a veth
underlay, a `weave` bridge and a container on each), with
- weavepy fastdp: one FastDP per host (tests/fastdp_helper.py), connected and established;
- a hand-built VXLAN on the same hosts and MTU: bridge `hb`, device `vxlan-hb` (VNI 4242,
  UDP 4789, learning, an all-zeros flood entry to the other host), a second container pair;
- the underlay itself: host namespace to host namespace.
Each round runs one TCP stream for a few seconds on each path, fastdp always between the
other two (the order flips every round) so each ratio compares adjacent runs on a
shared, noisy 2-core machine.  Prints each ratio's median and spread, and ping RTTs.
Goals (issue 10): fastdp >= 0.80 of the underlay, >= 0.95 of the hand-built VXLAN.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from fastdp_helper import Helper, connect  # noqa: E402
from two_hosts import TwoHosts, sh  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
HANDBUILT_IP = "10.3.1.{n}"


def build_handbuilt(hosts: TwoHosts) -> dict:
    """The reference overlay, built the way an operator would with `ip` and `bridge`."""
    netns = {}
    for n, (h, other) in enumerate(((hosts.a, hosts.b), (hosts.b, hosts.a)), start=1):
        ns = f"fdp-{hosts.suffix}-h{h.letter}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        h.run("ip", "link", "add", "hb", "mtu", str(hosts.mtu), "type", "bridge")
        h.run("ip", "link", "set", "hb", "up")
        h.run("ip", "link", "add", "vxlan-hb", "mtu", str(hosts.mtu), "type", "vxlan", "id", "4242",
              "dstport", "4789")
        h.run("ip", "link", "set", "vxlan-hb", "master", "hb", "up")
        h.run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxlan-hb", "dst", other.ip)
        hosts.add_container(h, "hb", f"vh{h.letter}-{hosts.suffix}", ns, HANDBUILT_IP.format(n=n))
        netns[h.letter] = ns
    return netns


def iperf(client_ns: str, server_ip: str) -> float:
    out = sh("ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-t", str(SECONDS), "-J",
             timeout=SECONDS + 30).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def rtt_ms(client_ns: str, ip: str) -> float:
    out = sh("ip", "netns", "exec", client_ns, "ping", "-q", "-c", "20", "-i", "0.05", ip).stdout
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def alternate(r: int) -> list[str]:
    """fastdp always in the middle, next to both references; the order flips every round."""
    return ["underlay", "fastdp", "handbuilt"] if r % 2 == 0 else ["handbuilt", "fastdp", "underlay"]


def spread(values, digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main():
    for tool in ("iperf3", "ping"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed (apt-get install -y iperf3 iputils-ping)")
    with TwoHosts() as hosts:
        a, b = Helper(hosts.a), Helper(hosts.b)
        servers = []
        try:
            assert a.started["ev"] == "started" and b.started["ev"] == "started", (a.started, b.started)
            connect(a, b, 0xBE4C)
            a.established(0xBE4C)
            b.established(0xBE4C)
            handbuilt = build_handbuilt(hosts)
            paths = {   # name: (client namespace, server namespace, server address)
                "underlay": (hosts.a.netns, hosts.b.netns, hosts.b.ip),
                "fastdp": (hosts.a.container_netns, hosts.b.container_netns, hosts.b.container_ip),
                "handbuilt": (handbuilt["a"], handbuilt["b"], HANDBUILT_IP.format(n=2)),
            }
            for _, server_ns, _ in paths.values():
                servers.append(subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s"],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for client_ns, _, ip in paths.values():     # ARP, learning, iperf3 servers up
                sh("ip", "netns", "exec", client_ns, "ping", "-c", "3", "-i", "0.2", ip)
            offloads = hosts.a.run("ethtool", "-k", "vxlan-6784", check=False).stdout
            print(f"fastdp device: {hosts.a.run('ip', '-d', 'link', 'show', 'vxlan-6784').stdout.splitlines()[2].strip()}")
            print(f"tx-checksumming on vxlan-6784: {'on' if 'tx-checksumming: on' in offloads else 'OFF'}")

            gbps = {name: [] for name in paths}
            vs_underlay, vs_handbuilt, handbuilt_vs_underlay = [], [], []
            for r in range(ROUNDS):
                order = alternate(r)
                got = {name: iperf(paths[name][0], paths[name][2]) for name in order}
                for name, value in got.items():
                    gbps[name].append(value)
                vs_underlay.append(got["fastdp"] / got["underlay"])
                vs_handbuilt.append(got["fastdp"] / got["handbuilt"])
                handbuilt_vs_underlay.append(got["handbuilt"] / got["underlay"])
                print(f"round {r + 1}: " + ", ".join(f"{n} {got[n]:.1f} Gbit/s" for n in order) +
                      f"; fastdp/underlay {vs_underlay[-1]:.2f}, fastdp/handbuilt {vs_handbuilt[-1]:.2f}")
            rtts = {name: [] for name in paths}
            for r in range(3):
                for name in alternate(r):
                    rtts[name].append(rtt_ms(paths[name][0], paths[name][2]))
            fastdp_status = a.status()["connections"][str(0xBE4C)]
        finally:
            for server in servers:
                server.kill()
                server.wait()
            a.close()
            b.close()

    print(f"\n1 TCP stream, {SECONDS} s runs, {ROUNDS} rounds (median (min-max)):")
    for name in paths:
        print(f"  {name:10s} {spread(gbps[name])} Gbit/s   ping avg {spread(rtts[name], 3)} ms")
    print(f"  fastdp / underlay   {spread(vs_underlay)}   goal >= 0.80")
    print(f"  fastdp / handbuilt  {spread(vs_handbuilt)}   goal >= 0.95")
    print(f"  handbuilt / underlay {spread(handbuilt_vs_underlay)}   (reference)")
    rtt_ratio = [f / u for f, u in zip(rtts["fastdp"], rtts["underlay"])]
    print(f"  RTT fastdp / underlay {spread(rtt_ratio)}")
    print(f"  fastdp connection: {fastdp_status}")


if __name__ == "__main__":
    main()
