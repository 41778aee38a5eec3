"""Single-host networking as a user meets it: real dockerd, real containers, the weavepy CLI.

Each test starts from `weavepy reset` + `weavepy launch` on a shared simulated host.
"""
import json
import time

import pytest

from testbed import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def h(hosts):
    host = hosts[0]
    host.remove_all_containers()
    host.weavepy("reset", "--force")
    r = host.weavepy("launch")
    assert r.returncode == 0, r.stderr
    yield host
    host.remove_all_containers()
    host.weavepy("reset", "--force", check=False)


def owned(host) -> dict:
    data = json.loads(host.run(["busybox", "wget", "-qO-", "http://127.0.0.1:6784/ip"]).stdout)
    return {o["containerid"]: o["addrs"] for o in data["owned"] or []}


def test_testbed_hosts_share_a_lan(hosts):
    h1, h2 = hosts
    assert h1.host_ping(h2.ip)
    assert h1.run("hostname").stdout.strip() == "h1"
    assert h1.run("cat /etc/machine-id").stdout != h2.run("cat /etc/machine-id").stdout


def test_launch_status_and_second_launch_refused(h):
    again = h.weavepy("launch", check=False)
    assert again.returncode == 1 and "already running" in again.stderr
    status = h.weavepy("status").stdout
    assert "Service: router" in status and "Service: ipam" in status
    assert "Range: 10.32.0.0/12" in status and "DefaultSubnet: 10.32.0.0/12" in status
    name = h.weavepy("report").stdout
    peer = json.loads(name)["Router"]["Name"]
    # the bridge carries the peer name as its MAC
    assert peer in h.run("ip -o link show weave").stdout
    assert "mtu 1376" in h.run("ip -o link show weave").stdout


def test_peer_name_is_stable_across_restarts_and_differs_between_hosts(h, hosts):
    first = json.loads(h.weavepy("report").stdout)["Router"]["Name"]
    h.weavepy("stop")
    assert h.weavepy("launch").stdout.strip() == first
    h.weavepy("reset")
    assert h.weavepy("launch").stdout.strip() == first  # derived from machine-id, not random
    other = hosts[1]
    try:
        assert other.weavepy("launch").stdout.strip() != first
    finally:
        other.weavepy("reset", "--force", check=False)


def test_run_attach_detach_and_subnet_isolation(h):
    c1 = h.weavepy("run", "-t", "--name", "c1", "busybox", "sh").stdout.strip()
    assert len(c1) == 64
    assert h.ethwe("c1") == ["10.32.0.1/12"]
    h.weavepy("run", "10.36.1.1/24", "-t", "--name", "c4", "busybox", "sh")
    assert h.ethwe("c4") == ["10.36.1.1/24"]
    h.docker("run", "-dt", "--name", "c5", "busybox", "sh")
    printed = h.weavepy("attach", "c5").stdout.strip()
    assert [printed + "/12"] == h.ethwe("c5")
    assert h.ping("c1", printed)
    assert not h.ping("c4", "10.32.0.1", timeout=1)

    h.docker("run", "-dt", "--name", "c6", "busybox", "sh")
    two = h.weavepy("attach", "net:default", "net:10.32.0.0/24", "c6").stdout.split()
    assert len(two) == 2
    cidrs = h.ethwe("c6")
    assert sorted(c.split("/")[1] for c in cidrs) == ["12", "24"]
    removed = h.weavepy("detach", "net:10.32.0.0/24", "c6").stdout.split()
    assert len(removed) == 1 and removed[0] + "/24" in cidrs
    assert h.ethwe("c6") == [c for c in cidrs if c.endswith("/12")]

    ps = h.weavepy("ps").stdout.splitlines()
    assert ps[0].startswith("weave:expose ")
    by_id = {line.split()[0]: line.split()[2:] for line in ps[1:]}
    assert by_id[c1[:12]] == ["10.32.0.1/12"]
    assert len(ps) == 5  # expose line + c1 c4 c5 c6

    # detach with no address takes everything; the interface goes
    h.weavepy("detach", "c6")
    assert h.ethwe("c6") == []
    assert len(h.veths()) == 3


def test_destroyed_address_is_reused_and_restart_keeps_it(h):
    h.weavepy("run", "-t", "--name", "c1", "busybox", "sh")
    h.docker("run", "-dt", "--name", "c5", "busybox", "sh")
    c5_addr = h.weavepy("attach", "c5").stdout.strip()
    h.docker("rm", "-f", "c1")
    assert wait_for(lambda: "10.32.0.1/12" not in sum(owned(h).values(), []))
    h.weavepy("run", "-t", "--name", "c7", "busybox", "sh")
    assert h.ethwe("c7") == ["10.32.0.1/12"]

    h.docker("restart", "-t", "1", "c5")
    assert wait_for(lambda: h.ethwe("c5") == [c5_addr + "/12"])
    assert h.ping("c7", c5_addr)


def test_state_survives_stop_launch_and_kill_9(h):
    h.weavepy("run", "-t", "--name", "c1", "busybox", "sh")
    h.weavepy("run", "-t", "--name", "c2", "busybox", "sh")
    before = owned(h)
    h.weavepy("stop")
    assert h.ethwe("c1") == ["10.32.0.1/12"]  # containers keep their interfaces
    h.weavepy("launch")
    assert owned(h) == before
    h.weavepy("run", "-t", "--name", "c3", "busybox", "sh")
    assert h.ethwe("c3") == ["10.32.0.3/12"]  # nothing handed out twice

    pid = h.daemon_pid()
    h.run(["kill", "-9", str(pid)])
    assert wait_for(lambda: h.daemon_pid() not in (None, pid) and h.weavepy("status", check=False).returncode == 0)
    h.weavepy("run", "-t", "--name", "c4", "busybox", "sh")
    assert h.ethwe("c4") == ["10.32.0.4/12"]
    after = owned(h)
    addrs = sum(after.values(), [])
    assert len(addrs) == len(set(addrs)) == 4


def test_containers_removed_while_down_are_pruned(h):
    h.weavepy("run", "-t", "--name", "c1", "busybox", "sh")
    h.weavepy("stop")
    h.docker("rm", "-f", "c1")
    h.weavepy("launch")
    assert owned(h) == {}
    h.weavepy("run", "-t", "--name", "c2", "busybox", "sh")
    assert h.ethwe("c2") == ["10.32.0.1/12"]


@pytest.mark.parametrize("args, words", [
    (["attach", "10.2.1.1/33", "c1"], "10.2.1.1/33"),
    (["attach", "10.2.1.1", "c1"], "prefix length"),
    (["attach", "net:10.32.0.0/31", "c1"], "too small"),
    (["attach", "net:10.99.0.0/24", "c1"], "outside the allocation range"),
    (["attach", "not-an-address", "c1"], "not-an-address"),
    (["attach", "nosuch"], "no such container: nosuch"),
    (["attach", "stopped"], "not running"),
    (["attach", "net:default", "10.36.1.1/24", "spare"], "already in use"),  # first address rolled back
    (["detach", "10.32.0.99/12", "c1"], "10.32.0.99/12"),
    (["run", "10.2.1.1/33", "-t", "--name", "never", "busybox", "sh"], "10.2.1.1/33"),
])
def test_bad_input_leaves_nothing_behind(h, args, words):
    h.weavepy("run", "-t", "--name", "c1", "busybox", "sh")
    h.weavepy("run", "10.36.1.1/24", "-t", "--name", "c4", "busybox", "sh")
    h.docker("create", "--name", "stopped", "busybox", "sh")
    h.docker("run", "-dt", "--name", "spare", "busybox", "sh")
    before = (owned(h), sorted(h.veths()), sorted(h.docker("ps", "-aq").split()))
    r = h.weavepy(*args, check=False)
    assert r.returncode == 1, r.stdout
    assert words in r.stderr
    assert (owned(h), sorted(h.veths()), sorted(h.docker("ps", "-aq").split())) == before
    assert h.ethwe("c1") == ["10.32.0.1/12"]


def test_expose_hide_and_reset_leave_nothing(h):
    h.weavepy("run", "-t", "--name", "c1", "busybox", "sh")
    assert not h.host_ping("10.32.0.1", timeout=1)
    exposed = h.weavepy("expose").stdout.strip()
    assert exposed == "10.32.0.2"
    assert h.weavepy("expose").stdout.strip() == exposed  # idempotent
    assert h.host_ping("10.32.0.1")
    assert h.weavepy("ps").stdout.splitlines()[0].endswith(" 10.32.0.2/12")
    assert h.weavepy("hide").stdout.strip() == exposed
    assert not h.host_ping("10.32.0.1", timeout=1)
    assert h.weavepy("hide").stdout.strip() == ""  # idempotent too

    h.weavepy("expose")
    h.weavepy("reset")
    assert "weave" not in h.links() and h.veths() == []
    assert not [link for link in h.links() if link.startswith(("vxlan-", "sleeve-"))]   # no data path left
    rules = h.run("iptables -S; iptables -t nat -S").stdout
    assert "WEAVE" not in rules
    assert h.run("ls -A /var/lib/weavepy").stdout.strip() == ""
    assert h.ethwe("c1") == []


def test_net_none_and_default_bridge_containers(h):
    h.weavepy("run", "-t", "--name", "c1", "busybox", "sh")
    h.docker("run", "-dt", "--net=none", "--name", "lonely", "busybox", "sh")
    addr = h.weavepy("attach", "lonely").stdout.strip()
    assert h.ethwe("lonely") == [addr + "/12"]
    assert h.ping("lonely", "10.32.0.1")
    # a container on Docker's bridge keeps eth0 and its route out
    routes = h.docker("exec", "c1", "ip", "route")
    assert "default via 172.17.0.1 dev eth0" in routes
    assert "224.0.0.0/4 dev ethwe" in routes
    assert "mtu 1376" in h.docker("exec", "c1", "ip", "link", "show", "ethwe")


def test_attach_options(h):
    h.docker("run", "-dt", "--name", "quiet", "-h", "quiet.weave.local", "busybox", "sh")
    addr = h.weavepy("attach", "--no-multicast-route", "--rewrite-hosts", "--add-host", "db:10.32.9.9",
                     "quiet").stdout.strip()
    assert "224.0.0.0/4" not in h.docker("exec", "quiet", "ip", "route")
    hosts = h.docker("exec", "quiet", "cat", "/etc/hosts")
    assert f"{addr}\tquiet.weave.local quiet" in hosts and "10.32.9.9\tdb" in hosts
    assert h.docker("exec", "quiet", "hostname", "-i").split()[0] == addr
    bad = h.weavepy("attach", "--add-host", "nocolon", "quiet", check=False)
    assert bad.returncode == 1 and "--add-host" in bad.stderr


def test_no_restart_means_no_restart(h):
    h.weavepy("stop")
    h.weavepy("launch", "--no-restart")
    pid = h.daemon_pid()
    h.run(["kill", "-9", str(pid)])
    time.sleep(1.5)
    r = h.weavepy("status", check=False)
    assert r.returncode == 1 and "not running" in r.stderr
    assert h.weavepy("launch").returncode == 0  # a stale PID file does not block a new launch


def test_weave_300_a_stopped_containers_explicit_address_is_free_for_an_explicit_claim(h):
    h.weavepy("run", "10.2.1.44/24", "-t", "--name", "c2", "busybox", "sh")
    auto = h.weavepy("run", "-t", "--name", "c4", "busybox", "sh") and h.ethwe("c4")[0]
    h.docker("stop", "-t", "1", "c2", "c4")
    h.docker("run", "-dt", "--name", "c3", "busybox", "sh")
    assert h.weavepy("attach", "10.2.1.44/24", "c3").stdout.strip() == "10.2.1.44"
    assert h.ethwe("c3") == ["10.2.1.44/24"]
    h.docker("run", "-dt", "--name", "c6", "busybox", "sh")
    assert h.weavepy("attach", f"ip:{auto}", "c6").stdout.strip() == auto.split("/")[0]
    # the old holders start again: c4 (in the range) gets a new address, c2 (outside it) none
    h.docker("start", "c4", "c2")
    assert wait_for(lambda: h.ethwe("c4") not in ([], [auto]))
    assert h.ethwe("c4")[0].endswith("/12") and h.ethwe("c4") != [auto]
    assert h.ethwe("c2") == []
    assert h.ethwe("c3") == ["10.2.1.44/24"] and h.ethwe("c6") == [auto]
    addrs = sum(owned(h).values(), [])
    assert len(addrs) == len(set(addrs))


def test_weave_130_hiding_twice_succeeds_silently(h):
    assert h.weavepy("expose", "10.2.2.101/24").stdout.strip() == "10.2.2.101"
    assert h.weavepy("hide", "10.2.2.101/24").stdout.strip() == "10.2.2.101"
    again = h.weavepy("hide", "10.2.2.101/24", check=False)
    assert again.returncode == 0 and again.stdout.strip() == "" and again.stderr == ""
    assert "10.2.2.101" not in h.run("ip -4 addr show weave").stdout
