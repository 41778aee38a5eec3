"""Cluster-wide IPAM as users meet it: the walkthrough's two hosts, nobody configuring anything,
containers with distinct addresses from 10.32.0.0/12 that ping each other by name across hosts."""
import pytest

from testbed import wait_for

pytestmark = pytest.mark.integration


def reset(*hosts):
    for h in hosts:
        h.remove_all_containers()
        h.weavepy("reset", "--force", check=False)


@pytest.fixture
def pair(hosts, testbed):
    h1, h2 = hosts
    reset(h1, h2)
    stub = testbed.start_dns_stub()
    yield h1, h2
    reset(h1, h2)
    if stub in testbed.stubs:
        testbed.stop_dns_stub(stub)


def status_line(h, key) -> str:
    for line in h.weavepy("status").stdout.splitlines():
        if line.strip().startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def run_named(h, name) -> str:
    """`weavepy run` with IPAM's default, named in weaveDNS; the address it got, from `weavepy ps`."""
    h.weavepy("run", "-dt", "--name", name, "-h", f"{name}.weave.local",
              *h.weavepy("dns-args").stdout.split(), "busybox", "sh", timeout=60)
    return h.weavepy("ps", name).stdout.split()[2].split("/")[0]


def test_the_walkthrough_distinct_addresses_on_two_hosts_and_ping_by_name(pair):
    h1, h2 = pair
    # the walkthrough's order: host 1 is up and has a container before host 2 joins
    h1.weavepy("launch")
    a1 = run_named(h1, "c1")
    h2.weavepy("launch", h1.ip)
    assert wait_for(lambda: all("1 (1 established)" in h.weavepy("status").stdout for h in (h1, h2)), timeout=20)
    assert "Status: ready" in h2.weavepy("status").stdout     # it has host 1's ring, and no space yet
    a2 = run_named(h2, "c2")
    assert a1 == "10.32.0.1"
    assert a2 == "10.44.0.0"          # host 2 is given a block by host 1, as in the walkthrough
    assert wait_for(lambda: h1.ping("c1", "c2"), timeout=10)
    assert h2.ping("c2", "c1")
    for h in (h1, h2):
        assert "Status: ready" in h.weavepy("status").stdout
        lines = h.weavepy("status", "ipam").stdout.splitlines()
        assert len(lines) == 2 and not any("unreachable" in line for line in lines), lines
        assert sum(int(line.split()[1]) for line in lines) == 1 << 20


def test_rmpeer_is_refused_for_a_live_peer_and_takes_over_a_dead_ones_space(pair):
    h1, h2 = pair
    h1.weavepy("launch")
    run_named(h1, "c1")
    h2.weavepy("launch", h1.ip)
    run_named(h2, "c2")
    peer1 = h1.weavepy("report").stdout.split('"Name": "')[1].split('"')[0]
    live = h2.weavepy("rmpeer", peer1, check=False)
    assert live.returncode == 1 and "still connected" in live.stderr
    bogus = h2.weavepy("rmpeer", "nosuchpeer", check=False)
    assert bogus.returncode == 1 and "unknown peer" in bogus.stderr
    h1.weavepy("stop")                       # gone without handing its space over (not a reset)
    assert wait_for(lambda: status_line(h2, "Peers") == "1", timeout=20), h2.weavepy("status").stdout
    taken = h2.weavepy("rmpeer", peer1)
    assert taken.stdout.strip() == f"{(1 << 20) - (1 << 18)} IPs taken over from {peer1}"
    lines = h2.weavepy("status", "ipam").stdout.splitlines()
    assert len(lines) == 1 and "100.0% of total" in lines[0]
