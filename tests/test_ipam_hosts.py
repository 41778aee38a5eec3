"""Cluster-wide IPAM as users meet it: the walkthrough's two hosts, nobody configuring anything,
containers with distinct addresses from 10.32.0.0/12 that ping each other by name across hosts."""
import ipaddress
import shlex
import sys

import pytest

from testbed import wait_for

pytestmark = pytest.mark.integration


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


def test_the_walkthrough_distinct_addresses_on_two_hosts_and_ping_by_name(clean_hosts):
    h1, h2 = clean_hosts
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


def test_rmpeer_is_refused_for_a_live_peer_and_takes_over_a_dead_ones_space(clean_hosts):
    h1, h2 = clean_hosts
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


API = ("import sys, urllib.request, urllib.error\n"
       "req = urllib.request.Request('http://127.0.0.1:6784' + sys.argv[2], method=sys.argv[1])\n"
       "try:\n"
       "    r = urllib.request.urlopen(req, timeout=30); print(r.status, r.read().decode())\n"
       "except urllib.error.HTTPError as e:\n"
       "    print(e.code, e.read().decode())\n")


def api(h, method, path) -> tuple[int, str]:
    out = h.run([sys.executable, "-c", API, method, path]).stdout
    code, _, body = out.partition(" ")
    return int(code), body.strip()


def test_weaves_http_allocation_api_and_prime(clean_hosts):
    h1, h2 = clean_hosts
    h1.weavepy("launch")
    assert "Status: idle" in h1.weavepy("status").stdout
    h1.weavepy("prime")
    assert "Status: ready" in h1.weavepy("status").stdout
    assert api(h1, "POST", "/ip/abc") == (200, "10.32.0.1/12")
    assert api(h1, "POST", "/ip/abc") == (200, "10.32.0.1/12")            # the same id: the same address
    assert api(h1, "POST", "/ip/abc/10.32.1.0/24") == (200, "10.32.1.1/24")
    assert api(h1, "GET", "/ip/abc") == (200, "10.32.0.1/12")
    assert api(h1, "PUT", "/ip/def/10.32.0.9/12")[0] == 204
    code, body = api(h1, "PUT", "/ip/ghi/10.32.0.9/12")
    assert code == 400 and body.startswith("Unable to claim:") and "in use" in body
    assert api(h1, "DELETE", "/ip/def/10.32.0.9")[0] == 204
    assert api(h1, "PUT", "/ip/ghi/10.32.0.9/12")[0] == 204                 # free again: it can be claimed
    assert api(h1, "DELETE", "/ip/nobody") == (400, "Delete: no addresses for nobody")
    code, body = api(h1, "POST", "/ip/x/10.99.0.0/16")
    assert code == 400 and "outside the allocation range" in body
    assert api(h1, "DELETE", "/ip/abc")[0] == 204 and api(h1, "GET", "/ip/abc") == (200, "")
    # the second host's first allocation through the API comes from space the first gives it
    h2.weavepy("launch", h1.ip)
    assert api(h2, "POST", "/ip/remote")[1] == "10.44.0.0/12"


@pytest.fixture(scope="module")
def third_host(testbed):
    (host,) = testbed.add_hosts(1)
    yield host
    testbed.remove_host(host)


def test_three_hosts_attach_a_hundred_each_at_once_and_no_address_is_given_twice(clean_hosts, third_host):
    trio = [*clean_hosts, third_host]
    third_host.remove_all_containers()
    third_host.weavepy("reset", "--force", check=False)
    try:
        for h in trio:      # launched with each other, as Weave recommends: a quorum of 2 of 3
            h.weavepy("launch", *(o.ip for o in trio if o is not h))
        assert wait_for(lambda: all("2 (2 established)" in h.weavepy("status").stdout for h in trio), timeout=30)
        for h in trio:
            h.run(["sh", "-c", "for i in $(seq 100); do docker run -d --name a$i busybox sleep 1d >/dev/null || "
                   "exit 1; done"], timeout=600)
        # the cluster's first allocations, 300 at once: nobody has a ring yet
        weavepy = shlex.join(third_host.bed.weavepy_argv)
        procs = [h.popen(["sh", "-c", f"for i in $(seq 100); do {weavepy} attach a$i >/dev/null "
                                      f"2>>{h.dir}/attach.err & done; wait"]) for h in trio]
        for p in procs:
            p.wait(timeout=600)
        seen = {}
        for h in trio:
            lines = [line.split() for line in h.weavepy("ps").stdout.splitlines()]
            mine = {fields[0]: fields[2] for fields in lines if len(fields) == 3 and fields[0] != "weave:expose"}
            assert len(mine) == 100, (h.name, len(mine), (h.dir / "attach.err").read_text()[-2000:])
            for cid, cidr in mine.items():
                ip = ipaddress.IPv4Interface(cidr)
                assert ip in ipaddress.IPv4Network("10.32.0.0/12") and ip.network.prefixlen == 12, cidr
                assert ip.ip not in seen, f"{ip.ip} on {seen[ip.ip]} and {h.name}"
                seen[ip.ip] = h.name
        assert len(seen) == 300
        far = next(ip for ip, name in seen.items() if name == third_host.name)
        assert wait_for(lambda: clean_hosts[0].ping("a1", str(far)), timeout=10)
    finally:
        third_host.remove_all_containers()
        third_host.weavepy("reset", "--force", check=False)
