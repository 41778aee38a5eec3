"""The mesh as users meet it: routers on several simulated hosts form one weave network.

Container tests use the session's two Docker hosts; control-plane tests use cheap hosts
without dockerd (`--no-proxy --no-dns`), made once for this module.
"""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from testbed import launch_joining, wait_for

pytestmark = pytest.mark.integration

LIGHT = ["--no-proxy", "--no-dns"]
CONN_LINE = re.compile(r"^(->|<-) (\S+):(\d+)\s+(\S+)\s*(.*)$")


def report(h) -> dict:
    r = h.weavepy("report", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def status_line(h, key: str) -> str:
    r = h.weavepy("status", check=False)
    for line in r.stdout.splitlines():
        if line.strip().startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def connections(h) -> list[tuple]:
    r = h.weavepy("status", "connections", check=False)
    return [m.groups() for m in map(CONN_LINE.match, r.stdout.splitlines()) if m]


def established(h) -> int:
    return sum(1 for c in connections(h) if c[3] == "established")


BLOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcp_blob.py")
POLLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics_poller.py")


def tcp_transfer(src, src_container, dst, dst_container, ip, size) -> bool:
    """size random bytes over TCP from one container to another; True when they arrive intact."""
    pid = lambda h, c: h.docker("inspect", "-f", "{{.State.Pid}}", c)
    server = dst.popen(["nsenter", "-t", pid(dst, dst_container), "-n", sys.executable, BLOB, "serve", "5001"],
                       stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        sent = src.run(["nsenter", "-t", pid(src, src_container), "-n", sys.executable, BLOB, "send", ip, "5001",
                        str(size)], timeout=60).stdout.split()
        got = server.stdout.readline().split()
        return sent == got and int(got[0]) == size
    finally:
        server.kill()
        server.wait()


def reset(*hosts):
    for h in hosts:
        if h.dockerd is not None:
            h.remove_all_containers()
        h.weavepy("reset", "--force", check=False)
        h.run("iptables -F INPUT; iptables -F OUTPUT", check=False)


@pytest.fixture
def pair(hosts):
    h1, h2 = hosts
    reset(h1, h2)
    yield h1, h2
    reset(h1, h2)


@pytest.fixture(scope="module")
def light(testbed):
    made = testbed.add_hosts(3, dockerd=False)
    yield made
    for h in made:
        testbed.remove_host(h)


@pytest.fixture
def trio(light):
    reset(*light)
    yield light
    reset(*light)


def two_hosts_up(h1, h2, *flags):
    h1.weavepy("launch", *flags)
    h2.weavepy("launch", *flags, h1.ip)
    assert wait_for(lambda: all(status_line(h, "Connections") == "1 (1 established)" and
                                status_line(h, "Peers") == "2 (with 2 established connections)"
                                for h in (h1, h2)), timeout=20), \
        (h1.weavepy("status").stdout, h2.weavepy("status", "connections").stdout)


# -- 1. the walkthrough -------------------------------------------------------------------------

def test_walkthrough_two_hosts_one_network(pair):
    h1, h2 = pair
    two_hosts_up(h1, h2)
    for h in (h1, h2):
        assert status_line(h, "Peers") == "2 (with 2 established connections)"
        assert status_line(h, "Connections") == "1 (1 established)"
        (conn,) = connections(h)
        assert conn[3] == "established" and conn[4].startswith("fastdp"), conn
    assert connections(h2)[0][:3] == ("->", h1.ip, "6783")
    assert connections(h1)[0][:2] == ("<-", h2.ip)

    h1.weavepy("run", "10.2.1.1/24", "-t", "--name", "c1", "busybox", "sh")
    h2.weavepy("run", "10.2.1.2/24", "-t", "--name", "c2", "busybox", "sh")
    assert wait_for(lambda: h1.ping("c1", "10.2.1.2"), timeout=10)
    assert h2.ping("c2", "10.2.1.1")
    big = h1.run(["docker", "exec", "c1", "ping", "-c1", "-W3", "-s", "10000", "10.2.1.2"], check=False)
    assert big.returncode == 0, big.stdout + big.stderr

    # 4 MB over TCP, both ways, intact
    for src, sc, dst, dc, ip in ((h1, "c1", h2, "c2", "10.2.1.2"), (h2, "c2", h1, "c1", "10.2.1.1")):
        assert tcp_transfer(src, sc, dst, dc, ip, 4 << 20)

    # /metrics counts what the fast path carried, and the connection by state and overlay
    assert metric(h1, "weave_bytes_total", path="fastdp", direction="tx") >= 4 << 20
    assert metric(h1, "weave_frames_total", path="fastdp", direction="rx") > 0
    assert metric(h2, "weave_connections", state="established", type="fastdp") == 1

    # the kernel carries it: a VXLAN device on the bridge, flooding to the other host
    fdb = h1.run("bridge fdb show dev vxlan-6784").stdout
    assert f"00:00:00:00:00:00 dst {h2.ip}" in fdb
    assert "master weave" in h1.run("ip -o link show vxlan-6784").stdout


# -- 2. discovery -----------------------------------------------------------------------------

def test_discovery_makes_a_full_mesh_and_no_discovery_does_not(trio):
    h1, h2, h3 = trio
    h1.weavepy("launch", *LIGHT)
    h2.weavepy("launch", *LIGHT, h1.ip)
    h3.weavepy("launch", *LIGHT, h2.ip)
    assert wait_for(lambda: all(established(h) == 2 for h in trio), timeout=30), \
        [h.weavepy("status", "connections").stdout for h in trio]
    reset(*trio)

    h1.weavepy("launch", *LIGHT, "--no-discovery")
    h2.weavepy("launch", *LIGHT, "--no-discovery", h1.ip)
    h3.weavepy("launch", *LIGHT, "--no-discovery", h2.ip)
    assert wait_for(lambda: any(p["NickName"] == h1.name for p in report(h3).get("Router", {}).get("Peers", [])),
                    timeout=15)
    time.sleep(3)
    assert [c[1] for c in connections(h3)] == [h2.ip]
    assert h3.ip not in " ".join(c[1] for c in connections(h1))
    assert f"({h1.name})" in h3.weavepy("status", "peers").stdout


# -- 3. targets: Weave's 150 and 175 ----------------------------------------------------------------

def test_bogus_targets_fail_with_reasons_and_the_router_keeps_going(trio):
    h1, h2, _ = trio
    h1.weavepy("launch", *LIGHT, "no-such-host.invalid", f"{h2.ip}:7000")
    assert h1.weavepy("status", "targets").stdout.split() == ["no-such-host.invalid", f"{h2.ip}:7000"]
    rows = wait_for(lambda: [c for c in connections(h1) if c[3] in ("retrying", "failed")]
                    if len(connections(h1)) == 2 else None, timeout=10)
    assert rows and len(rows) == 2, h1.weavepy("status", "connections").stdout
    text = h1.weavepy("status", "connections").stdout
    assert "refused" in text.lower() and "no-such-host.invalid" in text
    assert h1.weavepy("status").returncode == 0


def test_connect_replace_forget_and_persistence(trio):
    h1, h2, h3 = trio
    for h in (h2, h3):  # no discovery anywhere: only h1's targets make connections
        h.weavepy("launch", *LIGHT, "--no-discovery")
    h1.weavepy("launch", *LIGHT, "--no-discovery", h2.ip)
    assert wait_for(lambda: established(h1) == 1, timeout=15)
    h1.weavepy("connect", "--replace", h3.ip)
    assert h1.weavepy("status", "targets").stdout.split() == [h3.ip]
    assert wait_for(lambda: {c[1] for c in connections(h1) if c[3] == "established"} >= {h3.ip}, timeout=15)

    # targets survive kill -9 (the supervisor restarts the router with them) and --resume
    pid = h1.daemon_pid()
    h1.run(["kill", "-9", str(pid)])
    assert wait_for(lambda: h1.daemon_pid() not in (None, pid) and
                    h1.weavepy("status", "targets", check=False).stdout.split() == [h3.ip], timeout=15)
    h1.weavepy("stop")
    refused = h1.weavepy("launch", *LIGHT, "--resume", h2.ip, check=False)
    assert refused.returncode == 1 and "--resume" in refused.stderr
    h1.weavepy("launch", *LIGHT, "--no-discovery", "--resume")
    assert h1.weavepy("status", "targets").stdout.split() == [h3.ip]
    assert wait_for(lambda: established(h1) == 1, timeout=15)

    # forget keeps the live link, and it is not re-made once it ends
    h1.weavepy("forget", h3.ip)
    assert h1.weavepy("status", "targets").stdout.strip() == ""
    time.sleep(1)
    assert established(h1) == 1
    h3.weavepy("stop")
    h3.weavepy("launch", *LIGHT, "--no-discovery")
    time.sleep(6)
    assert established(h1) == 0 and established(h3) == 0


def test_relaunched_peer_is_back_within_10s_and_a_healed_partition_within_5s(trio):
    h1, h2, _ = trio
    h1.weavepy("launch", *LIGHT)
    h2.weavepy("launch", *LIGHT, h1.ip)
    assert wait_for(lambda: established(h1) == 1 and established(h2) == 1, timeout=15)
    h1.weavepy("stop")
    h1.weavepy("launch", *LIGHT)
    began = time.monotonic()
    assert wait_for(lambda: established(h1) == 1 and established(h2) == 1, timeout=10)
    assert time.monotonic() - began < 10

    h1.run(f"iptables -A INPUT -s {h2.ip} -j DROP; iptables -A OUTPUT -d {h2.ip} -j DROP")
    time.sleep(30)
    h1.run("iptables -F INPUT; iptables -F OUTPUT")
    healed = time.monotonic()
    assert wait_for(lambda: established(h1) == 1 and established(h2) == 1, timeout=10)
    assert time.monotonic() - healed < 5, h1.weavepy("status", "connections").stdout


# -- 4. cloned machines ----------------------------------------------------------------------------

def clone_machine_id(src, dst):
    (dst.dir / "machine-id").write_text((src.dir / "machine-id").read_text())


def test_cloned_hosts_report_the_clash_and_do_not_flap(trio):
    h1, h2, h3 = trio
    saved = (h2.dir / "machine-id").read_text()
    clone_machine_id(h1, h2)
    try:
        h1.weavepy("launch", *LIGHT)
        h2.weavepy("launch", *LIGHT, h1.ip)
        for h in (h1, h2):
            assert wait_for(lambda: any(c[3] == "failed" for c in connections(h)), timeout=15), \
                h.weavepy("status", "connections").stdout
        seen = []
        for _ in range(15):
            for h in (h1, h2):
                text = h.weavepy("status", "connections").stdout
                assert "machine-id" in text and "failed" in text and "established" not in text, text
                assert status_line(h, "Peers") == "1"
                seen.append(text)
            time.sleep(1)
        reset(h1, h2)

        # the clones only meet through h3
        h3.weavepy("launch", *LIGHT)
        h1.weavepy("launch", *LIGHT, "--no-discovery", h3.ip)
        assert wait_for(lambda: established(h1) == 1, timeout=15)
        h2.weavepy("launch", *LIGHT, "--no-discovery", h3.ip)
        for h in (h1, h2):
            assert wait_for(lambda: "machine-id" in h.weavepy("status", "connections").stdout, timeout=20), \
                h.weavepy("status", "connections").stdout
        assert h3.weavepy("status").returncode == 0 and established(h3) == 1 and established(h1) == 1
    finally:
        (h2.dir / "machine-id").write_text(saved)


# -- 5. the kernel keeps traffic going while the router is away --------------------------------------

def test_kill_9_of_a_router_leaves_no_gap_in_traffic(pair):
    h1, h2 = pair
    two_hosts_up(h1, h2)
    h1.weavepy("run", "10.2.1.1/24", "-t", "--name", "c1", "busybox", "sh")
    h2.weavepy("run", "10.2.1.2/24", "-t", "--name", "c2", "busybox", "sh")
    assert wait_for(lambda: h1.ping("c1", "10.2.1.2"), timeout=10)
    pinger = h1.popen(["docker", "exec", "c1", "ping", "-i", "0.1", "-c", "100", "10.2.1.2"],
                      stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    pid = h1.daemon_pid()
    h1.run(["kill", "-9", str(pid)])
    out, _ = pinger.communicate(timeout=60)
    seqs = [int(m.group(1)) for m in re.finditer(r"seq=(\d+)", out)]
    gaps = [b - a for a, b in zip(seqs, seqs[1:])]
    assert seqs and max(gaps) <= 10, f"longest gap {max(gaps) / 10:.1f} s\n{out}"
    assert wait_for(lambda: h1.daemon_pid() not in (None, pid) and established(h1) == 1 and
                    connections(h1)[0][4].startswith("fastdp"), timeout=10)


# -- 7. bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["launch", "10.0.0.1:notaport"], "10.0.0.1:notaport"),
    (["launch", "host:99999"], "host:99999"),
    (["launch", "--port", "70000"], "--port 70000"),
    (["launch", "--port", "0"], "--port 0"),
    (["launch", "--resume", "10.0.0.1"], "--resume"),
    (["connect", "10.0.0.1"], "not running"),
    (["forget", "10.0.0.1"], "not running"),
])
def test_bad_mesh_input_is_refused_and_leaves_nothing(trio, args, words):
    h = trio[0]
    before = sorted(h.links())
    r = h.weavepy(*args, *(LIGHT if args[0] == "launch" else []), check=False)
    assert r.returncode == 1 and words in r.stderr, r.stderr
    assert sorted(h.links()) == before
    assert h.run("ls -A /var/lib/weavepy").stdout.strip() == ""


def test_garbage_at_the_peer_port_leaves_the_router_serving(trio):
    h1, h2, _ = trio
    h1.weavepy("launch", *LIGHT)
    script = (
        "import os, random, socket, sys\n"
        "rng = random.Random(7)\n"
        "good = b'weave\\x02\\x02'\n"
        "for i in range(int(sys.argv[2])):\n"
        "    s = socket.create_connection((sys.argv[1], 6783), timeout=2)\n"
        "    junk = rng.choice([os.urandom(rng.randrange(1, 300)), good[:rng.randrange(7)],\n"
        "                       good + os.urandom(rng.randrange(1, 300)),\n"
        "                       good + b'\\x00' + (rng.randrange(1 << 32)).to_bytes(4, 'big')])\n"
        "    try:\n"
        "        s.sendall(junk)\n"
        "    except OSError:\n"
        "        pass\n"
        "    s.close()\n"
    )
    h2.run(["python3", "-c", script, h1.ip, "400"], timeout=300)
    assert h1.weavepy("status").returncode == 0
    h2.weavepy("launch", *LIGHT, h1.ip)
    assert wait_for(lambda: established(h1) == 1 and established(h2) == 1, timeout=15)


# -- 6. scale: 30 routers --------------------------------------------------------------------------

def metric(h, name: str, **labels) -> float:
    out = h.run(["busybox", "wget", "-qO-", "http://127.0.0.1:6784/metrics"], check=False).stdout
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in out.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
        elif not want and line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_thirty_routers_form_a_full_mesh_within_10s_of_the_last_launch(testbed):
    many, poller = testbed.add_hosts(30, dockerd=False), None
    try:
        poller = subprocess.Popen([sys.executable, POLLER, "29", "60", *(h.netns for h in many)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        last = launch_joining(many, *LIGHT)
        out, err = poller.communicate("go\n", timeout=120)
        full = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if " " in line}
        began = full.pop("start") - last  # from the last launch's return to the poller's first look
        assert len(full) == 30, f"{30 - len(full)} routers without a full mesh after 60 s: {err}"
        took = began + max(full.values())
        print(f"30 routers: full mesh {took:.1f} s after the last launch")  # shown with pytest -s
        assert took < 10, f"full mesh {took:.1f} s after the last launch"
    finally:
        if poller is not None and poller.poll() is None:     # a launch failed before it was told to begin
            poller.kill()
            poller.wait()
        for h in many:
            testbed.remove_host(h)
