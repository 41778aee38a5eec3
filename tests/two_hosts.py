"""Two simulated hosts for data-path tests and benches (root only, no dockerd).

Host namespaces A and B joined by a veth underlay (192.168.251.1/24, .2/24),
each with a `weave` bridge whose MAC is that host's peer name, and one
"container" namespace on the bridge with `ethwe` (10.2.1.1/24, 10.2.1.2/24).
Every name carries a random suffix; `destroy()` removes everything (processes
left in the namespaces included) and is safe to call twice.
"""
from __future__ import annotations

import secrets
import subprocess

UNDERLAY = "192.168.251.{n}"
CONTAINER = "10.2.1.{n}"


def sh(*argv, check=True, timeout=30, input=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def random_peer_name() -> str:
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02         # locally administered, unicast: a valid bridge MAC
    return ":".join(f"{b:02x}" for b in raw)


class Host:
    def __init__(self, suffix: str, letter: str, n: int, mtu: int):
        self.letter = letter
        self.netns = f"fdp-{suffix}-{letter}"
        self.container_netns = f"fdp-{suffix}-c{letter}"
        self.underlay_if = f"ul-{suffix}{letter}"
        self.host_veth = f"vw{letter}-{suffix}"
        self.ip = UNDERLAY.format(n=n)
        self.container_ip = CONTAINER.format(n=n)
        self.peer_name = random_peer_name()
        self.mtu = mtu

    def run(self, *argv, check=True, timeout=30, input=None) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.netns, *argv, check=check, timeout=timeout, input=input)

    def in_container(self, *argv, check=True, timeout=30) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.container_netns, *argv, check=check, timeout=timeout)

    def ping(self, ip: str, count: int = 1, size: int = 56, timeout: int = 2) -> bool:
        return self.in_container("ping", "-c", str(count), "-s", str(size), "-W", str(timeout), "-i", "0.2", ip,
                                 check=False, timeout=timeout * count + 10).returncode == 0

    def fdb(self, device: str = "vxlan-6784") -> list[str]:
        """`bridge fdb show` lines for the vxlan device's own entries."""
        out = self.run("bridge", "fdb", "show", "dev", device, check=False).stdout
        return [line for line in out.splitlines() if " dst " in line]

    def ifindex(self, device: str) -> int | None:
        proc = self.run("cat", f"/sys/class/net/{device}/ifindex", check=False)
        return int(proc.stdout) if proc.returncode == 0 else None

    def block_udp(self, port: int, on: bool) -> None:
        self.run("iptables", "-A" if on else "-D", "INPUT", "-p", "udp", "--dport", str(port), "-j", "DROP")


class TwoHosts:
    def __init__(self, mtu: int = 1376, quiet: bool = False):
        """quiet: only what a test sends crosses, so nothing re-teaches the kernel a MAC the test
        expects gone -- permanent ARP entries in the containers (no probes seconds later) and no
        multicast snooping on the bridges (its router discovery sends IGMP reports after link up)."""
        self.suffix = secrets.token_hex(3)
        self.mtu = mtu
        self.quiet = quiet
        self.a = Host(self.suffix, "a", 1, mtu)
        self.b = Host(self.suffix, "b", 2, mtu)
        self.hosts = [self.a, self.b]

    def __enter__(self) -> "TwoHosts":
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create(self) -> None:
        for h in self.hosts:
            for ns in (h.netns, h.container_netns):
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                # no IPv6 chatter (router solicitations, MLD): the only traffic is what a test sends,
                # so the kernel does not re-learn MACs a test expects to be gone
                sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                   "net.ipv6.conf.default.disable_ipv6=1")
        a, b = self.a, self.b
        sh("ip", "link", "add", a.underlay_if, "netns", a.netns, "type", "veth",
           "peer", "name", b.underlay_if, "netns", b.netns)
        for h in self.hosts:
            sh("ip", "-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", h.underlay_if)
            sh("ip", "-n", h.netns, "link", "set", h.underlay_if, "up")
            sh("ip", "-n", h.netns, "link", "add", "weave", "address", h.peer_name, "mtu", str(self.mtu),
               "type", "bridge", *(["mcast_snooping", "0"] if self.quiet else []))
            sh("ip", "-n", h.netns, "link", "set", "weave", "up")
            self.add_container(h, "weave", h.host_veth, h.container_netns, h.container_ip)
        if self.quiet:
            self.static_neighbours()

    def add_container(self, host: Host, bridge: str, host_veth: str, netns: str, ip: str, mtu: int | None = None):
        mtu = str(mtu or self.mtu)
        sh("ip", "link", "add", host_veth, "netns", host.netns, "mtu", mtu, "type", "veth",
           "peer", "name", "ethwe", "netns", netns)
        sh("ip", "-n", host.netns, "link", "set", host_veth, "master", bridge, "up")
        sh("ip", "-n", netns, "link", "set", "ethwe", "mtu", mtu, "up")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "ethwe")

    def static_neighbours(self) -> None:
        for h, other in ((self.a, self.b), (self.b, self.a)):
            mac = other.in_container("cat", "/sys/class/net/ethwe/address").stdout.strip()
            h.in_container("ip", "neigh", "replace", other.container_ip, "lladdr", mac, "dev", "ethwe",
                           "nud", "permanent")

    def namespaces(self) -> list[str]:
        listed = sh("ip", "netns", "list", check=False).stdout.split()
        return [ns for ns in listed if ns.startswith(f"fdp-{self.suffix}-")]

    def destroy(self) -> None:
        for ns in self.namespaces():
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)  # only processes in our namespaces
            sh("ip", "netns", "del", ns, check=False)
