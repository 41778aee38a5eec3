"""The sleeve as users meet it: container traffic in userspace UDP on the peer port, when the kernel
fast path is turned off (`--no-fastdp`, `WEAVE_NO_FASTDP=1`)."""
import pytest

from test_mesh_hosts import connections, status_line, tcp_transfer
from testbed import wait_for

pytestmark = pytest.mark.integration


def test_no_fastdp_carries_traffic_in_the_sleeve_intact_both_ways(clean_hosts):
    h1, h2 = clean_hosts
    h1.weavepy("launch", "--no-fastdp")
    h2.weavepy("launch", h1.ip, env={"WEAVE_NO_FASTDP": "1"})
    assert wait_for(lambda: all(status_line(h, "Connections") == "1 (1 established)" for h in (h1, h2)),
                    timeout=30), h2.weavepy("status", "connections").stdout
    for h in (h1, h2):
        (conn,) = connections(h)
        assert conn[3] == "established" and conn[4].startswith("sleeve"), conn
        assert "vxlan-6784" not in h.run("ip -o link").stdout          # no fast path device at all
    h1.weavepy("run", "10.2.1.1/24", "-t", "--name", "c1", "busybox", "sh")
    h2.weavepy("run", "10.2.1.2/24", "-t", "--name", "c2", "busybox", "sh")
    assert wait_for(lambda: h1.ping("c1", "10.2.1.2"), timeout=10)
    assert h2.ping("c2", "10.2.1.1")
    # 10 KiB through nc, exactly
    h2.run("docker exec -d c2 sh -c 'nc -l -p 7000 > /tmp/got'")
    h1.run("docker exec c1 sh -c 'head -c 10240 /dev/urandom > /tmp/sent; nc 10.2.1.2 7000 < /tmp/sent'",
           timeout=30)
    sent = h1.run("docker exec c1 md5sum /tmp/sent").stdout.split()[0]
    assert wait_for(lambda: h2.run("docker exec c2 md5sum /tmp/got").stdout.split()[0] == sent, timeout=10)
    assert h2.run("docker exec c2 wc -c /tmp/got").stdout.split()[0] == "10240"
    # 4 MB over TCP, both ways, intact
    for src, sc, dst, dc, ip in ((h1, "c1", h2, "c2", "10.2.1.2"), (h2, "c2", h1, "c1", "10.2.1.1")):
        assert tcp_transfer(src, sc, dst, dc, ip, 4 << 20)


@pytest.mark.parametrize("flags", [["--no-fastdp"], []], ids=["sleeve-only", "fastdp-links"])
def test_a_chain_relays_between_hosts_that_cannot_reach_each_other(clean_hosts, third_host, flags):
    """H1 - H2 - H3 without discovery, H1 and H3 cut off from each other: c1 and c3 talk through
    H2, whose sleeve relays their frames (the fast path cannot: it carries only between
    neighbours), also when the links themselves are fastdp."""
    h1, h2 = clean_hosts
    h3 = third_host
    h3.remove_all_containers()
    h3.weavepy("reset", "--force", check=False)
    try:
        for a, b in ((h1, h3), (h3, h1)):
            a.run(f"iptables -A INPUT -s {b.ip} -j DROP; iptables -A OUTPUT -d {b.ip} -j DROP")
        h1.weavepy("launch", *flags, "--no-discovery")
        h2.weavepy("launch", *flags, "--no-discovery", h1.ip)
        h3.weavepy("launch", *flags, "--no-discovery", h2.ip)
        assert wait_for(lambda: status_line(h2, "Connections") == "2 (2 established)", timeout=30)
        kind = "sleeve" if flags else "fastdp"
        assert all(c[4].startswith(kind) for c in connections(h2)), connections(h2)
        h1.weavepy("run", "10.2.1.1/24", "-t", "--name", "c1", "busybox", "sh")
        h3.weavepy("run", "10.2.1.3/24", "-t", "--name", "c3", "busybox", "sh")
        assert wait_for(lambda: h1.ping("c1", "10.2.1.3"), timeout=15)
        assert h3.ping("c3", "10.2.1.1")
        big = h1.run(["docker", "exec", "c1", "ping", "-c2", "-W3", "-s", "10000", "10.2.1.3"], check=False)
        assert big.returncode == 0, big.stdout + big.stderr
        for src, sc, dst, dc, ip in ((h1, "c1", h3, "c3", "10.2.1.3"), (h3, "c3", h1, "c1", "10.2.1.1")):
            assert tcp_transfer(src, sc, dst, dc, ip, 4 << 20)
        assert [c[1] for c in connections(h1)] == [h2.ip]     # and no direct H1 - H3 connection
        assert h3.ip not in h1.weavepy("status", "connections").stdout
    finally:
        for h in (h1, h3):
            h.run("iptables -F INPUT; iptables -F OUTPUT", check=False)
        h3.weavepy("reset", "--force", check=False)


def test_a_host_with_fastdp_meets_one_without_over_the_sleeve(clean_hosts):
    h1, h2 = clean_hosts
    h1.weavepy("launch")
    h2.weavepy("launch", "--no-fastdp", h1.ip)
    assert wait_for(lambda: all(status_line(h, "Connections") == "1 (1 established)" for h in (h1, h2)),
                    timeout=30), h1.weavepy("status", "connections").stdout
    for h in (h1, h2):
        assert connections(h)[0][4].startswith("sleeve"), connections(h)
    h1.weavepy("run", "10.2.1.1/24", "-t", "--name", "c1", "busybox", "sh")
    h2.weavepy("run", "10.2.1.2/24", "-t", "--name", "c2", "busybox", "sh")
    assert wait_for(lambda: h1.ping("c1", "10.2.1.2"), timeout=10)
    assert h2.ping("c2", "10.2.1.1")
    assert tcp_transfer(h2, "c2", h1, "c1", "10.2.1.1", 1 << 20)


GARBAGE = r"""
import os, random, socket, struct, sys, time
rng = random.Random(7)
me = bytes.fromhex(sys.argv[2].replace(":", ""))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    kind = i % 4
    if kind == 0:
        data = rng.randbytes(rng.randrange(0, 1500))                      # noise
    elif kind == 1:
        data = bytes([1, 1]) + me + rng.randbytes(rng.randrange(0, 40))    # a frame head, cut short
    elif kind == 2:   # a well-formed frame in the name of a connected peer, from the wrong address
        data = struct.pack("!BB6s6s6sBBIHHI", 1, 1, me, me, bytes(6), 1, 16, i, 0, 1, 60) + rng.randbytes(60)
    else:
        data = bytes([1, 2]) + me + rng.randbytes(14)                      # a heartbeat for nobody
    s.sendto(data, (sys.argv[1], 6783))
    if i % 200 == 199:
        time.sleep(0.005)     # paced, so they reach the router rather than overflow its socket queue
"""


def test_garbage_at_the_sleeve_port_is_counted_and_traffic_goes_on(clean_hosts):
    import json
    import sys
    h1, h2 = clean_hosts
    h1.weavepy("launch", "--no-fastdp")
    h2.weavepy("launch", "--no-fastdp", h1.ip)
    assert wait_for(lambda: status_line(h1, "Connections") == "1 (1 established)", timeout=30)
    h1.weavepy("run", "10.2.1.1/24", "-t", "--name", "c1", "busybox", "sh")
    h2.weavepy("run", "10.2.1.2/24", "-t", "--name", "c2", "busybox", "sh")
    assert wait_for(lambda: h1.ping("c1", "10.2.1.2"), timeout=10)
    peer2 = json.loads(h2.weavepy("report").stdout)["Router"]["Name"]
    garbage = lambda: h2.run([sys.executable, "-c", GARBAGE, h1.ip, peer2, "100000"], timeout=120)
    assert ping_gaps(h1, "c1", "10.2.1.2", 10, garbage) <= 1.0     # real traffic goes on meanwhile
    assert h1.ping("c1", "10.2.1.2") and h2.ping("c2", "10.2.1.1")
    sleeve = json.loads(h1.weavepy("report").stdout)["Router"]["OverlayDiagnostics"]["sleeve"]
    counted = sum(v for k, v in sleeve["traffic"].items() if k.startswith("decode_") or k == "unknown_sender")
    counted += sleeve["metrics"].get("unknown_heartbeats", 0)
    assert counted >= 99_000, sleeve
    assert "rx_bugs" not in sleeve["traffic"]
    assert h1.daemon_pid() is not None


def ping_gaps(h, container, ip, seconds, during):
    """Ping every 0.2 s for `seconds` while `during()` runs; the longest gap between replies (s)."""
    import re
    import subprocess
    pid = h.docker("inspect", "-f", "{{.State.Pid}}", container)
    ping = h.popen(["nsenter", "-t", pid, "-n", "ping", "-i", "0.2", "-W", "1", "-w", str(seconds), ip],
                   stdout=subprocess.PIPE, text=True)
    try:
        during()
        out, _ = ping.communicate(timeout=seconds + 20)
    finally:
        if ping.poll() is None:
            ping.kill()
    seqs = [int(m) for m in re.findall(r"icmp_seq=(\d+)", out)]
    assert len(seqs) > 10, out
    return max((b - a) * 0.2 for a, b in zip(seqs, seqs[1:]))


def on(h, kind) -> bool:
    rows = connections(h)
    return len(rows) == 1 and rows[0][3] == "established" and rows[0][4].startswith(kind)


def test_fastdp_blocked_falls_back_to_the_sleeve_and_comes_back_when_unblocked(clean_hosts):
    import time
    h1, h2 = clean_hosts
    block = "iptables -{} INPUT -p udp --dport 6784 -j DROP"
    for h in (h1, h2):
        h.run(block.format("A"))
    try:
        h1.weavepy("launch")
        h2.weavepy("launch", h1.ip)
        assert wait_for(lambda: on(h1, "sleeve") and on(h2, "sleeve"), timeout=60), \
            h1.weavepy("status", "connections").stdout
        assert "fastdp=no heartbeat" in h1.weavepy("status", "connections").stdout     # and why
        h1.weavepy("run", "10.2.1.1/24", "-t", "--name", "c1", "busybox", "sh")
        h2.weavepy("run", "10.2.1.2/24", "-t", "--name", "c2", "busybox", "sh")
        assert wait_for(lambda: h1.ping("c1", "10.2.1.2"), timeout=10)
        assert tcp_transfer(h1, "c1", h2, "c2", "10.2.1.2", 1 << 20)

        def unblock():           # back to fastdp, made before the sleeve lets go: no gap
            time.sleep(1)
            for h in (h1, h2):
                h.run(block.format("D"))
            assert wait_for(lambda: on(h1, "fastdp") and on(h2, "fastdp"), timeout=60)
            time.sleep(2)
        assert ping_gaps(h1, "c1", "10.2.1.2", 30, unblock) <= 0.4
        assert "fastdp=" not in h1.weavepy("status", "connections").stdout
        assert tcp_transfer(h2, "c2", h1, "c1", "10.2.1.1", 1 << 20)

        for h in (h1, h2):       # blocked again: its heartbeats stop, and the sleeve takes over
            h.run(block.format("A"))
        assert wait_for(lambda: on(h1, "sleeve") and on(h2, "sleeve"), timeout=60)
        assert wait_for(lambda: h1.ping("c1", "10.2.1.2"), timeout=10)
        assert tcp_transfer(h1, "c1", h2, "c2", "10.2.1.2", 1 << 20)
    finally:
        for h in (h1, h2):
            h.run("iptables -F INPUT", check=False)


@pytest.mark.parametrize("flags", [[], ["--no-fastdp"]], ids=["fastdp", "sleeve"])
def test_a_multicast_ping_is_answered_from_the_other_host(clean_hosts, flags):
    h1, h2 = clean_hosts
    h1.weavepy("launch", *flags)
    h2.weavepy("launch", *flags, h1.ip)
    assert wait_for(lambda: on(h1, "sleeve" if flags else "fastdp"), timeout=30)
    for h, n in ((h1, 1), (h2, 2)):      # containers answer multicast echo requests (RFC 1122 3.2.2.6)
        h.weavepy("run", f"10.2.1.{n}/24", "-t", "--name", f"c{n}",
                  "--sysctl", "net.ipv4.icmp_echo_ignore_broadcasts=0", "busybox", "sh")
    assert wait_for(lambda: "from 10.2.1.2" in h1.run("docker exec c1 ping -c2 -W2 224.0.0.1",
                                                      check=False).stdout, timeout=15)


def test_with_discovery_the_ends_of_a_chain_meet_directly_and_outlive_its_middle(clean_hosts, third_host):
    h1, h2 = clean_hosts
    h3 = third_host
    h3.remove_all_containers()
    h3.weavepy("reset", "--force", check=False)
    try:
        h1.weavepy("launch")
        h2.weavepy("launch", h1.ip)
        h3.weavepy("launch", h2.ip)
        assert wait_for(lambda: any(c[1] == h3.ip and c[3] == "established" for c in connections(h1)), timeout=30)
        h1.weavepy("run", "10.2.1.1/24", "-t", "--name", "c1", "busybox", "sh")
        h3.weavepy("run", "10.2.1.3/24", "-t", "--name", "c3", "busybox", "sh")
        assert wait_for(lambda: h1.ping("c1", "10.2.1.3"), timeout=10)
        h2.weavepy("stop")
        assert wait_for(lambda: h1.ping("c1", "10.2.1.3") and h3.ping("c3", "10.2.1.1"), timeout=10)
    finally:
        h3.weavepy("reset", "--force", check=False)
