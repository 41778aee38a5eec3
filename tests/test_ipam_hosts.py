"""Cluster-wide IPAM as users meet it: the walkthrough's two hosts, nobody configuring anything,
containers with distinct addresses from 10.32.0.0/12 that ping each other by name across hosts."""
import ipaddress
import json
import shlex
import subprocess
import sys
import time

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
       "    r = urllib.request.urlopen(req, timeout=float(sys.argv[3]) if sys.argv[3:] else 30)\n"
       "    print(r.status, r.read().decode())\n"
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


def owned(h) -> dict[str, list[str]]:
    code, body = api(h, "GET", "/ip")
    return {o["containerid"]: o["addrs"] for o in (json.loads(body)["owned"] or [])}


def assert_no_address_twice(hosts):
    seen = {}
    for h in hosts:
        for ident, addrs in owned(h).items():
            for a in addrs:
                ip = a.split("/")[0]
                assert ip not in seen, f"{ip}: {seen[ip]} and {h.name}/{ident}"
                seen[ip] = f"{h.name}/{ident}"
    return seen


def cut_off(h, others):
    for o in others:
        h.run(f"iptables -A INPUT -s {o.ip} -j DROP; iptables -A OUTPUT -d {o.ip} -j DROP")


def heal(*hosts):
    for h in hosts:
        h.run("iptables -F INPUT; iptables -F OUTPUT", check=False)


def test_partitions_while_all_allocate_then_rmpeer_of_a_killed_router(clean_hosts, third_host):
    h1, h2 = clean_hosts
    h3 = third_host
    trio = [h1, h2, h3]
    h3.weavepy("reset", "--force", check=False)
    try:
        h1.weavepy("launch", h2.ip)
        h2.weavepy("launch", h1.ip)
        assert api(h1, "POST", "/ip/first")[0] == 200          # the ring: h1 and h2 share it
        h3.weavepy("launch", "--no-restart", h1.ip, h2.ip)      # joins later: owns nothing
        assert wait_for(lambda: all("2 (2 established)" in h.weavepy("status").stdout for h in trio), timeout=30)

        # {h1, h2} | {h3}: h3's allocation waits, it never guesses, and finishes after the heal
        cut_off(h3, [h1, h2])
        assert wait_for(lambda: status_line(h3, "Peers") == "1", timeout=30)
        waiter = h3.popen([sys.executable, "-c", API, "POST", "/ip/waiter", "120"], stdout=subprocess.PIPE, text=True)
        for i in range(20):
            assert api(h1, "POST", f"/ip/a{i}")[0] == 200 and api(h2, "POST", f"/ip/b{i}")[0] == 200
        time.sleep(20)
        assert waiter.poll() is None and "waiter" not in owned(h3)
        heal(h3)
        out, _ = waiter.communicate(timeout=60)
        assert out.startswith("200 10.")
        assert len(assert_no_address_twice(trio)) == 42

        # {h1} | {h2, h3}: each side allocates from what it owns; nothing twice after the heal
        cut_off(h1, [h2, h3])
        assert wait_for(lambda: status_line(h1, "Peers") == "1", timeout=30)
        for i in range(20):
            for h in trio:
                assert api(h, "POST", f"/ip/p2-{h.name}-{i}")[0] == 200
        heal(h1)
        assert wait_for(lambda: all("2 (2 established)" in h.weavepy("status").stdout for h in trio), timeout=30)
        assert len(assert_no_address_twice(trio)) == 42 + 60

        # kill -9 of h3 (no restart): rmpeer refused while it lives, then its space is taken over
        peer3 = h3.weavepy("report").stdout.split('"Name": "')[1].split('"')[0]
        refused = h1.weavepy("rmpeer", peer3, check=False)
        assert refused.returncode == 1 and "still connected" in refused.stderr
        in_h3 = next(a for a in owned(h3).values())[0].split("/")[0]
        h3.run(["kill", "-9", str(h3.daemon_pid())])
        # a claim of an address in h3's space now waits: its owner cannot be reached
        spare = str(ipaddress.IPv4Address(in_h3) + 100)
        claim = h2.popen([sys.executable, "-c", API, "PUT", f"/ip/claimer/{spare}/12", "120"],
                         stdout=subprocess.PIPE, text=True)
        assert wait_for(lambda: all(status_line(h, "Peers").startswith("2 ") for h in (h1, h2)), timeout=30)
        assert claim.poll() is None
        taken = h1.weavepy("rmpeer", peer3).stdout
        assert taken.endswith(f"IPs taken over from {peer3}\n") and not taken.startswith("0 ")
        start = time.monotonic()
        out, _ = claim.communicate(timeout=30)
        assert out.startswith("204") and time.monotonic() - start < 5, out
        assert api(h2, "POST", "/ip/after-rmpeer")[0] == 200 and time.monotonic() - start < 5
        for h in (h1, h2):
            assert peer3 not in h.weavepy("status", "ipam").stdout
        assert_no_address_twice([h1, h2])
    finally:
        heal(*trio)
        h3.weavepy("reset", "--force", check=False)


def test_allocation_through_a_peer_without_ipam(clean_hosts, third_host):
    """Weave's 120 (discovery_3): H1 - H2 - H3 in a line, H2 launched with --ipalloc-range "". The ring
    and the space requests cross H2, which relays them without an allocator of its own."""
    h1, h2 = clean_hosts
    h3 = third_host
    h3.weavepy("reset", "--force", check=False)
    try:
        h1.weavepy("launch", "--no-discovery")
        h2.weavepy("launch", "--no-discovery", "--ipalloc-range=", h1.ip)
        h3.weavepy("launch", "--no-discovery", h2.ip)
        assert wait_for(lambda: status_line(h2, "Connections") == "2 (2 established)", timeout=20)
        assert "Service: ipam" not in h2.weavepy("status").stdout
        assert h2.weavepy("status", "ipam").stdout == ""
        assert api(h2, "POST", "/ip/x")[0] == 404
        refused = h2.weavepy("run", "-dt", "busybox", "sh", check=False)
        assert refused.returncode == 1 and "IP address allocation must be enabled" in refused.stderr, refused.stderr
        assert h2.docker("ps", "-aq") == ""                  # and no container left behind
        prime = h2.weavepy("prime", check=False)
        assert prime.returncode == 1 and "allocation is off" in prime.stderr
        h2.weavepy("run", "10.2.1.5/24", "-dt", "--name", "explicit", "busybox", "sh", timeout=60)
        assert h2.ethwe("explicit") == ["10.2.1.5/24"]       # explicit addresses need no IPAM

        # H1 has no peers (quorum 1): it makes the ring at once, for the electors it has heard of,
        # H3 among them; H3 learns the ring through H2
        code, first = api(h1, "POST", "/ip/first")
        assert code == 200 and ipaddress.IPv4Interface(first) in ipaddress.IPv4Network("10.32.0.0/12")
        start = time.monotonic()
        code, far = api(h3, "POST", "/ip/far")
        assert code == 200 and far != first and time.monotonic() - start < 10, (code, far)
        # an address in H1's space, claimed on H3: the request and the donation cross H2 too
        wanted = ipaddress.IPv4Interface(first).ip + 5
        assert api(h3, "PUT", f"/ip/claimed/{wanted}/12")[0] == 204
        assert time.monotonic() - start < 10
        assert owned(h3)["claimed"] == [f"{wanted}/12"] and "claimed" not in owned(h1)
        lines = h3.weavepy("status", "ipam").stdout.splitlines()
        assert len(lines) == 2 and not any("unreachable" in line for line in lines), lines
        assert_no_address_twice([h1, h3])
    finally:
        h3.weavepy("reset", "--force", check=False)


def wipe_ipam_data(*hosts):
    """As Weave's tests delete the weavedb volume: the ring and the allocations, not the peer name."""
    for h in hosts:
        h.run("rm -f /var/lib/weavepy/ipam.json")


PROXY = {"DOCKER_HOST": "unix:///run/weavepy/weave.sock"}


def test_claims_after_persistence_is_wiped(clean_hosts):
    """Weave's 320: addresses in use are claimed again when the IPAM data is gone, and a claim whose
    owner is away waits while allocation outside the range goes on."""
    h1, h2 = clean_hosts
    universe = "--ipalloc-range=10.2.0.0/16"
    c1 = "10.2.128.1"
    h1.weavepy("launch", universe, h2.ip)
    h2.weavepy("launch", universe, h1.ip)
    h1.weavepy("run", f"{c1}/12", "-dt", "--name", "c1", "busybox", "sh", timeout=60)
    h2.weavepy("run", "-dt", "--name", "c2", "busybox", "sh", timeout=60)
    assert wait_for(lambda: h2.ping("c2", c1), timeout=10)
    for h in (h1, h2):
        h.weavepy("stop")
    wipe_ipam_data(h1, h2)

    # the other way round: now c1's address must be claimed again, from whichever peer owns it
    h2.weavepy("launch", universe)
    h1.weavepy("launch", universe, h2.ip)
    assert wait_for(lambda: any(f"{c1}/12" in a for a in owned(h1).values()), timeout=20), owned(h1)
    h2.weavepy("run", "-dt", "--name", "c3", "busybox", "sh", timeout=60)
    c3 = h2.weavepy("ps", "c3").stdout.split()[2].split("/")[0]
    assert c3 != c1
    assert wait_for(lambda: h1.ping("c1", c3), timeout=10)
    assert_no_address_twice([h1, h2])

    # H1 with no IPAM data and its only peer away cannot make the ring: a claim inside the range
    # waits (it never guesses), while one outside the range goes through at once
    h2.weavepy("prime")                                   # H2 now holds the ring, persisted
    for h in (h1, h2):
        h.weavepy("stop")
    wipe_ipam_data(h1)
    h1.weavepy("launch", universe, h2.ip)
    c4 = h1.popen(["docker", "run", "-d", "--name", "c4", "-e", "WEAVE_CIDR=10.2.128.4/12", "busybox", "sleep", "1d"],
                  env=h1.env(PROXY), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(5)
    assert c4.poll() is None, c4.communicate()
    outside = h1.run(["docker", "run", "-d", "--name", "c5", "-e", "WEAVE_CIDR=10.3.0.1/12", "busybox", "sleep", "1d"],
                     env=PROXY, timeout=20)
    assert h1.ethwe("c5") == ["10.3.0.1/12"], outside.stderr
    assert c4.poll() is None
    h2.weavepy("launch", universe, h1.ip)
    c4.communicate(timeout=30)
    assert c4.returncode == 0 and h1.ethwe("c4") == ["10.2.128.4/12"]
