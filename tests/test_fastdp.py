"""fastdp between two simulated hosts: heartbeats, the kernel data path, restarts, FDB upkeep.

Each test builds its own pair of host namespaces (tests/two_hosts.py) and runs
one FastDP per host in a helper process (tests/fastdp_helper.py); the test
relays their overlay control messages, standing in for the TCP connection.
Heartbeat timers are shortened (fast 0.2 s, slow 1 s, 3 missed, give up
after 2 s) so failure and recovery take seconds.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import pytest

from fastdp_helper import Helper, connect
from two_hosts import TwoHosts

pytestmark = pytest.mark.integration

TIMERS = dict(fast=0.2, slow=1.0, give_up=2.0, missed=3)
VXLAN_PORT = 6784


def two_hosts(quiet: bool):
    for tool in ("ping", "iptables", "bridge"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed (apt-get install -y iputils-ping iptables iproute2)")
    with TwoHosts(quiet=quiet) as pair:
        yield pair
    assert pair.namespaces() == []


@pytest.fixture
def hosts():
    yield from two_hosts(quiet=False)


@pytest.fixture
def quiet_hosts():
    """Only the test's own pings cross: nothing re-teaches a MAC the test expects gone."""
    yield from two_hosts(quiet=True)


@pytest.fixture
def helpers():
    started = []

    def start(host, **opts):
        helper = Helper(host, **{**TIMERS, **opts})
        started.append(helper)
        assert helper.started["ev"] == "started", helper.started
        return helper

    yield start
    for helper in started:
        helper.close()


def wait_until(pred, timeout: float, what: str, show=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} {show()}")
        time.sleep(0.1)


def entries_to(host, ip: str) -> list[str]:
    return [line for line in host.fdb() if f" dst {ip} " in line + " "]


def test_established_both_ways_and_containers_talk(hosts, helpers):
    a, b = helpers(hosts.a), helpers(hosts.b)
    connect(a, b, 0x1111)
    a.established(0x1111)
    b.established(0x1111)
    for helper, other in ((a, hosts.b), (b, hosts.a)):
        attrs = helper.attrs(0x1111)
        assert attrs["established"] and attrs["healthy"] and attrs["mtu"] == 1376
        assert attrs["vxlan"] == f"{other.ip}:{VXLAN_PORT}"
        assert "error" not in attrs

    assert hosts.a.ping(hosts.b.container_ip, count=3)
    assert hosts.b.ping(hosts.a.container_ip, count=3)
    # 10,000 bytes: the container stack fragments it at MTU 1376; every fragment crosses the tunnel
    assert hosts.a.ping(hosts.b.container_ip, count=2, size=10000)

    link = hosts.a.run("ip", "-d", "link", "show", "vxlan-6784").stdout
    assert "vxlan id 22350" in link and f"dstport {VXLAN_PORT}" in link
    assert "mtu 1376" in link and "master weave" in link and "nolearning" not in link
    offloads = hosts.a.run("ethtool", "-k", "vxlan-6784", check=False).stdout
    if offloads:
        assert "tx-checksumming: on" in offloads        # off would cut throughput 4x
    assert any(line.startswith("00:00:00:00:00:00 ") for line in entries_to(hosts.a, hosts.b.ip))
    assert any(line.startswith("00:00:00:00:00:00 ") for line in entries_to(hosts.b, hosts.a.ip))
    metrics = a.status()["diagnostics"]["metrics"]
    assert metrics["heartbeats_sent"] >= 1 and metrics["heartbeats_received"] >= 1
    assert metrics["acks_sent"] == 1 and metrics["acks_received"] == 1
    assert metrics.get("bad_heartbeats", 0) == 0


def test_udp_blocked_never_established_with_reason_then_recovers(hosts, helpers):
    hosts.b.block_udp(VXLAN_PORT, True)
    a, b = helpers(hosts.a), helpers(hosts.b)
    connect(a, b, 0x2222)
    time.sleep(TIMERS["give_up"] + 1)
    attrs_a, attrs_b = a.attrs(0x2222), b.attrs(0x2222)
    assert not attrs_a["established"] and not attrs_b["established"]
    assert attrs_a["error"] == f"no heartbeat ack from {hosts.b.ip}:{VXLAN_PORT} (UDP blocked or MTU too small)"
    assert "reaches us" in attrs_b["error"] and hosts.a.ip in attrs_b["error"]
    assert not any(e["ev"] == "established" for e in a.events + b.events)
    flood = [l for l in entries_to(hosts.a, hosts.b.ip) if l.startswith("00:00:00:00:00:00 ")]
    assert flood == []                                  # no flood entry for an unproven path

    hosts.b.block_udp(VXLAN_PORT, False)
    a.established(0x2222, timeout=TIMERS["slow"] * 3 + 2)
    b.established(0x2222, timeout=TIMERS["slow"] * 3 + 2)
    assert "error" not in a.attrs(0x2222)
    assert hosts.a.ping(hosts.b.container_ip, count=2)


def test_underlay_mtu_too_small_never_established(hosts, helpers):
    for h in hosts.hosts:
        h.run("ip", "link", "set", h.underlay_if, "mtu", "1400")     # a 1376 MTU needs 1426
    a, b = helpers(hosts.a), helpers(hosts.b)
    connect(a, b, 0x3333)
    time.sleep(TIMERS["give_up"] + 1)
    attrs = a.attrs(0x3333)
    assert not attrs["established"]
    assert attrs["error"].startswith(f"the path to {hosts.b.ip} cannot carry 1426-byte packets")
    assert not b.attrs(0x3333)["established"]


def test_heartbeats_stop_unhealthy_then_healthy_again(hosts, helpers):
    slow = dict(slow=4.0, missed=2)             # a slow interval recovery could not hide in
    a, b = helpers(hosts.a, **slow), helpers(hosts.b, **slow)
    connect(a, b, 0x4444)
    a.established(0x4444)
    b.established(0x4444)
    hosts.b.block_udp(VXLAN_PORT, True)         # a -> b heartbeats (and data) lost
    timeout = slow["slow"] * slow["missed"]
    is_health = lambda healthy: lambda e: e["ev"] == "health" and e["healthy"] is healthy
    b.wait_for(is_health(False), timeout + 3)   # b stopped hearing a
    a.wait_for(is_health(False), 2)             # ... and told a (HOLD), whose direction is now unproven
    assert not a.attrs(0x4444)["healthy"]
    assert "stopped hearing" in a.attrs(0x4444)["error"]
    unblocked = time.monotonic()
    hosts.b.block_udp(VXLAN_PORT, False)
    a.wait_for(is_health(True), 5)
    b.wait_for(is_health(True), 5)
    assert time.monotonic() - unblocked < 3     # fast heartbeats after HOLD, not the 4 s slow interval
    assert a.attrs(0x4444)["healthy"] and b.attrs(0x4444)["healthy"]


def ping_seqs(output: str) -> list[int]:
    return [int(m) for m in re.findall(r"bytes from .*icmp_seq=(\d+)", output)]


def test_kill_and_restart_keeps_traffic_flowing(hosts, helpers):
    a, b = helpers(hosts.a, linger=30), helpers(hosts.b, linger=30)
    connect(a, b, 0x5555)
    a.established(0x5555)
    b.established(0x5555)
    assert hosts.a.ping(hosts.b.container_ip)
    ifindex = hosts.a.ifindex("vxlan-6784")
    before = entries_to(hosts.a, hosts.b.ip)

    ping = subprocess.Popen(["ip", "netns", "exec", hosts.a.container_netns, "ping", "-i", "0.1", "-W", "1",
                             "-w", "7", hosts.b.container_ip], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        a.kill()                                # kill -9: no goodbye, no cleanup
        b.send(op="stop", conn_uid=0x5555)      # b's control connection ends
        time.sleep(1.0)
        restarted = helpers(hosts.a, linger=30)
        assert restarted.started["taken_over"] is True
        assert hosts.a.ifindex("vxlan-6784") == ifindex
        assert set(before) <= set(entries_to(hosts.a, hosts.b.ip))  # nothing flushed
        connect(restarted, b, 0x5556)
        restarted.established(0x5556)
        b.established(0x5556)
        out, _ = ping.communicate(timeout=15)
    finally:
        if ping.poll() is None:
            ping.kill()
    seqs = ping_seqs(out)
    assert len(seqs) > 50, out
    gaps = [(later - earlier) * 0.1 for earlier, later in zip(seqs, seqs[1:])]
    assert max(gaps) <= 1.0, f"longest gap {max(gaps):.1f} s"
    vteps = restarted.status()["diagnostics"]["vteps"]
    assert vteps[hosts.b.ip]["connections"] == 1 and "lingering_s" not in vteps[hosts.b.ip]


def test_stopped_connection_lingers_until_peer_gone_or_linger_ends(quiet_hosts, helpers):
    hosts = quiet_hosts
    a, b = helpers(hosts.a, linger=30), helpers(hosts.b, linger=2)
    connect(a, b, 0x6666)
    a.established(0x6666)
    b.established(0x6666)
    assert hosts.a.ping(hosts.b.container_ip) and hosts.b.ping(hosts.a.container_ip)
    learned_at_a = [l for l in entries_to(hosts.a, hosts.b.ip) if "permanent" not in l]
    assert learned_at_a, hosts.a.fdb()          # the kernel learned container MACs behind b

    a.send(op="stop", conn_uid=0x6666)
    b.send(op="stop", conn_uid=0x6666)
    stopped = time.monotonic()
    time.sleep(0.3)
    assert entries_to(hosts.a, hosts.b.ip) and entries_to(hosts.b, hosts.a.ip)   # lingering
    assert hosts.a.ping(hosts.b.container_ip)    # and still carrying traffic

    a.send(op="peer_gone", name=hosts.b.peer_name)
    wait_until(lambda: entries_to(hosts.a, hosts.b.ip) == [], 3, "a to drop b's entries at once",
               lambda: hosts.a.fdb())
    assert time.monotonic() - stopped < 10      # at once, not after a's 30 s linger
    wait_until(lambda: entries_to(hosts.b, hosts.a.ip) == [], 6, "b to drop a's entries after its linger",
               lambda: hosts.b.fdb())
    assert time.monotonic() - stopped >= 2


FORGER = r"""
import os, socket, sys
from weavepy.net.fastdp_heartbeat import encode_heartbeat, encode_vxlan
from weavepy.net.vxlan import VNI
ip, dst_mac, src_mac, uid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
good = encode_heartbeat(dst_mac, src_mac, uid, 1376)
reach_the_socket = [
    good[:14] + b"XXXX" + good[18:],                            # bad magic
    encode_heartbeat(dst_mac, src_mac, uid ^ 1, 1376),          # no such connection
    good[:-100],                                                # shorter than it says
    encode_heartbeat(dst_mac, "02:00:00:00:00:01", uid, 1376),  # right connection, wrong sender
    good[:20],                                                  # too short to be a heartbeat
]
dropped_by_kernel = [encode_vxlan(VNI + 1, os.urandom(200)) for _ in range(5)] + [b"\x08\x00"]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for frame in reach_the_socket:
    s.sendto(encode_vxlan(VNI, frame), (ip, 6784))
for datagram in dropped_by_kernel:
    s.sendto(datagram, (ip, 6784))
"""


def test_forged_datagrams_are_dropped_and_counted(hosts, helpers):
    patient = dict(missed=10)       # health is not under test: a loaded machine must not flap it
    a, b = helpers(hosts.a, **patient), helpers(hosts.b, **patient)
    connect(a, b, 0x7777)
    a.established(0x7777)
    b.established(0x7777)
    hosts.b.run(sys.executable, "-P", "-c", FORGER, hosts.a.ip, hosts.a.peer_name, hosts.b.peer_name, str(0x7777))
    wait_until(lambda: a.status()["diagnostics"]["metrics"].get("bad_heartbeats") == 5, 5, "5 bad heartbeats")
    time.sleep(0.5)
    status = a.status()
    assert status["diagnostics"]["metrics"]["bad_heartbeats"] == 5
    sent_by_b = b.status()["diagnostics"]["metrics"]["heartbeats_sent"]     # read after a's count
    assert status["diagnostics"]["metrics"]["heartbeats_received"] <= sent_by_b   # no forgery counted as real
    assert a.proc.poll() is None
    assert status["connections"][str(0x7777)]["healthy"]
    assert hosts.a.ping(hosts.b.container_ip)


def test_device_with_wrong_settings_is_replaced(hosts, helpers):
    hosts.a.run("ip", "link", "add", "vxlan-6784", "type", "vxlan", "id", "7", "dstport", "6784", "nolearning")
    a = helpers(hosts.a)
    assert a.started["taken_over"] is False
    link = hosts.a.run("ip", "-d", "link", "show", "vxlan-6784").stdout
    assert "vxlan id 22350" in link and "nolearning" not in link and "master weave" in link


def test_unavailable_when_the_vxlan_port_is_taken(hosts):
    holder = subprocess.Popen(["ip", "netns", "exec", hosts.a.netns, sys.executable, "-c",
                               "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                               "s.bind(('0.0.0.0', 6784)); print('bound', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        helper = Helper(hosts.a, **TIMERS)
        try:
            assert helper.started == {"ev": "unavailable",
                                      "error": "fastdp unavailable: cannot bring up vxlan-6784: UDP port 6784 is in use"}
            assert hosts.a.ifindex("vxlan-6784") is None      # nothing left behind
        finally:
            helper.close()
    finally:
        holder.kill()
        holder.wait()
