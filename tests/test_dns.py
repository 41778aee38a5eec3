"""weaveDNS as users meet it: containers find each other by name; other names go upstream (a stub)."""
import time

import pytest

from testbed import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def h(hosts, testbed):
    host = hosts[0]
    host.remove_all_containers()
    host.weavepy("reset", "--force")
    stub = testbed.start_dns_stub()
    host.weavepy("launch")
    yield host
    host.remove_all_containers()
    host.weavepy("reset", "--force", check=False)
    if stub in testbed.stubs:
        testbed.stop_dns_stub(stub)


def dns_server(h) -> str:
    return h.weavepy("report").stdout.split('"Address": "')[1].split('"')[0]


def run_named(h, name, fqdn=None):
    args = h.weavepy("dns-args").stdout.split()
    h.docker("run", "-dt", "--name", name, "-h", fqdn or f"{name}.weave.local", *args, "busybox", "sh")
    return h.weavepy("attach", name).stdout.strip()


def test_seed_containers_ping_each_other_by_name(h):
    assert h.weavepy("dns-args").stdout == "--dns=172.17.0.1 --dns-search=weave.local."
    run_named(h, "c1")
    c2 = run_named(h, "c2")
    assert h.ping("c1", "c2")
    assert h.ping("c2", "c1.weave.local")
    rev = h.docker("exec", "c1", "nslookup", c2)
    assert "c2.weave.local" in rev
    status = h.weavepy("status").stdout
    assert "Service: dns" in status and "Domain: weave.local." in status and "Entries: 2" in status
    lines = h.weavepy("status", "dns").stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[:2] == ["c1", "10.32.0.1"]


def test_answers_lookups_and_forwarding(h, testbed):
    server = dns_server(h)
    for i in range(3):
        run_named(h, f"web{i}", "web.weave.local")
    orders = {tuple(h.dns_query(server, "web.weave.local")["answers"]) for _ in range(8)}
    assert {frozenset(o) for o in orders} == {frozenset({"10.32.0.1", "10.32.0.2", "10.32.0.3"})}
    assert len(orders) > 1  # shuffled
    upper = h.dns_query(server, "WEB.WEAVE.LOCAL")
    assert upper["names"][0] == "WEB.WEAVE.LOCAL." and len(upper["answers"]) == 3
    t = time.monotonic()
    assert h.dns_query(server, "nobody.weave.local")["rcode"] == "NXDOMAIN"
    assert time.monotonic() - t < 2
    assert h.dns_query(server, "www.example.com")["answers"] == ["192.0.2.10"]
    assert h.dns_query(server, "www.example.com", transport="tcp")["answers"] == ["192.0.2.10"]
    assert h.dns_query(server, "10.2.0.192.in-addr.arpa", "PTR")["answers"] == ["stub.example.com."]
    assert h.dns_query(server, "web.weave.local", "MX") == {"rcode": "NOERROR", "tc": 0, "aa": 1,
                                                           "answers": [], "names": []}
    testbed.stop_dns_stub(testbed.stubs[-1])
    t = time.monotonic()
    assert h.dns_query(server, "www.example.com")["rcode"] == "SERVFAIL"
    assert time.monotonic() - t < 6


def test_names_follow_containers(h):
    server = dns_server(h)
    run_named(h, "c1")
    h.docker("rm", "-f", "c1")
    assert wait_for(lambda: h.dns_query(server, "c1.weave.local")["rcode"] == "NXDOMAIN", timeout=5)
    addr = run_named(h, "c3")
    assert addr == "10.32.0.1"  # the address was reused...
    rev = ".".join(reversed(addr.split("."))) + ".in-addr.arpa"
    assert h.dns_query(server, rev, "PTR")["answers"] == ["c3.weave.local."]  # ...and names its new owner
    h.docker("restart", "-t", "1", "c3")
    assert wait_for(lambda: h.dns_query(server, "c3.weave.local")["answers"] == [addr], timeout=10)
    h.weavepy("detach", "c3")
    assert h.dns_query(server, "c3.weave.local")["rcode"] == "NXDOMAIN"
    h.docker("run", "-dt", "--name", "anon", "-h", "anon.weave.local", "busybox", "sh")
    h.weavepy("attach", "--without-dns", "anon")
    assert h.dns_query(server, "anon.weave.local")["rcode"] == "NXDOMAIN"


def test_dns_add_remove_and_lookup(h):
    server = dns_server(h)
    addr = run_named(h, "c1")
    h.weavepy("dns-add", "10.32.9.1", "c1", "-h", "alias.weave.local")
    h.weavepy("dns-add", "c1", "-h", "other.weave.local")
    h.weavepy("dns-add", "10.40.0.1", "10.40.0.2", "-h", "ext.weave.local")
    assert h.weavepy("dns-lookup", "alias").stdout.split() == ["10.32.9.1"]
    assert h.weavepy("dns-lookup", "other.weave.local").stdout.split() == [addr]
    assert sorted(h.weavepy("dns-lookup", "ext").stdout.split()) == ["10.40.0.1", "10.40.0.2"]
    assert "weave:extern" in h.weavepy("status", "dns").stdout
    h.weavepy("dns-add", "10.32.9.2", "c1")  # the name defaults to the container's hostname
    assert sorted(h.weavepy("dns-lookup", "c1").stdout.split()) == sorted([addr, "10.32.9.2"])
    h.weavepy("dns-remove", "10.32.9.2", "c1")
    assert h.weavepy("dns-lookup", "c1").stdout.split() == [addr]
    h.weavepy("dns-remove", "10.40.0.1", "-h", "ext.weave.local")
    assert h.weavepy("dns-lookup", "ext").stdout.split() == ["10.40.0.2"]
    h.weavepy("dns-remove", "c1", "-h", "alias.weave.local")
    assert h.dns_query(server, "alias.weave.local")["rcode"] == "NXDOMAIN"
    h.weavepy("dns-remove", "c1")
    assert h.dns_query(server, "c1.weave.local")["rcode"] == "NXDOMAIN"
    h.weavepy("expose", "-h", "host.weave.local")
    assert h.weavepy("dns-lookup", "host").stdout.split() == ["10.32.0.2"]
    bad = h.weavepy("dns-add", "10.40.0.1", "-h", "x.example.com", check=False)
    assert bad.returncode == 1 and "not in the DNS domain" in bad.stderr


def test_many_records_truncate_over_udp_and_come_whole_over_tcp(h):
    server = dns_server(h)
    ips = [f"10.44.0.{i}" for i in range(1, 51)]
    h.weavepy("dns-add", *ips, "-h", "many.weave.local")
    udp = h.dns_query(server, "many.weave.local")
    assert udp["tc"] == 1 and 0 < len(udp["answers"]) < 50
    tcp = h.dns_query(server, "many.weave.local", transport="tcp")
    assert tcp["tc"] == 0 and sorted(tcp["answers"]) == sorted(ips)


def test_other_domain_and_no_dns(h):
    h.weavepy("stop")
    h.weavepy("launch", "--dns-domain", "foo.bar")
    assert h.weavepy("dns-args").stdout == "--dns=172.17.0.1 --dns-search=foo.bar."
    run_named(h, "c1", "c1.foo.bar")
    assert h.dns_query(dns_server(h), "c1.foo.bar")["answers"] == ["10.32.0.1"]
    h.weavepy("stop")
    h.weavepy("launch", "--no-dns")
    r = h.weavepy("dns-args")
    assert r.returncode == 0 and r.stdout == ""
    assert "Service: dns" not in h.weavepy("status").stdout


def test_random_and_truncated_packets_never_stop_the_server(h):
    server = dns_server(h)
    run_named(h, "c1")
    script = f"""
import os, random, socket, struct
host, port = "{server.split(':')[0]}", {server.split(':')[1]}
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rnd = random.Random(7)
good = bytes.fromhex("abcd01000001000000000000") + b"\\x02c1\\x05weave\\x05local\\x00\\x00\\x01\\x00\\x01"
for i in range(3000):
    if i % 3 == 0:
        pkt = good[:rnd.randrange(len(good))]
    elif i % 3 == 1:
        pkt = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 600)))
    else:
        b = bytearray(good); b[rnd.randrange(len(b))] = rnd.randrange(256); pkt = bytes(b)
    u.sendto(pkt, (host, port))
for junk in (b"\\x00\\x05abc", b"\\xff\\xff" + os.urandom(100), b"\\x00"):
    t = socket.create_connection((host, port)); t.sendall(junk); t.close()
"""
    h.run([__import__("sys").executable, "-c", script])
    assert h.dns_query(server, "c1.weave.local")["answers"] == ["10.32.0.1"]
    assert h.dns_query(server, "c1.weave.local", transport="tcp")["answers"] == ["10.32.0.1"]


def test_upstreams_follow_resolv_conf_without_ourselves(h, testbed):
    server = dns_server(h)
    ours = server.split(":")[0]
    stub = h.run("cat /etc/resolv.conf").stdout
    try:
        # our own address first: it must be left out, or every forward would loop back to us
        h.run(f"printf 'nameserver {ours}\\n{stub}' > /etc/resolv.conf")
        assert wait_for(lambda: h.dns_query(server, "www.example.com")["answers"] == ["192.0.2.10"], timeout=5)
        upstream = [l for l in h.weavepy("status").stdout.splitlines() if "Upstream:" in l][0]
        assert ours not in upstream and stub.split()[1] in upstream
        h.run(f"echo 'nameserver {ours}' > /etc/resolv.conf")  # nothing but ourselves: no upstream at all
        assert wait_for(lambda: h.dns_query(server, "www.example.com")["rcode"] == "SERVFAIL", timeout=5)
    finally:
        h.run(f"printf '{stub}' > /etc/resolv.conf")
