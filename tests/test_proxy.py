"""The Docker API proxy as users meet it: `eval $(weavepy env)`, then the plain docker CLI."""
import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import threading
import time

import pytest

from testbed import wait_for

pytestmark = pytest.mark.integration

PROXY = {"DOCKER_HOST": "unix:///run/weavepy/weave.sock"}


@pytest.fixture
def h(hosts):
    host = hosts[0]
    host.remove_all_containers()
    host.weavepy("reset", "--force")
    host.weavepy("launch")
    yield host
    host.remove_all_containers()
    host.weavepy("reset", "--force", check=False)


def pd(h, *args, check=True, input=None, timeout=120):
    """docker through the proxy."""
    r = h.run(["docker", *args], check=False, env=PROXY, input=input, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {r.stderr}")
    return r


def in_pty(h, argv, keys: list[bytes], timeout=30) -> tuple[int, str]:
    """Run argv on the host under a pseudo-terminal, typing keys; returns (exit code, screen)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(h.nsenter_prefix() + argv, stdin=slave, stdout=slave, stderr=slave,
                            env=h.env(PROXY), close_fds=True, start_new_session=True)
    os.close(slave)
    out, deadline, pending = b"", time.monotonic() + timeout, list(keys)
    time.sleep(1.0)
    while time.monotonic() < deadline:
        if pending:
            os.write(master, pending.pop(0))
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None and not pending:
            break
    try:
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, out.decode(errors="replace")


def owned(h) -> dict:
    data = json.loads(h.run(["busybox", "wget", "-qO-", "http://127.0.0.1:6784/ip"]).stdout)
    return {o["containerid"]: o["addrs"] for o in data["owned"] or []}


def test_env_config_and_harmless_when_not_running(h):
    assert h.weavepy("env").stdout == "export DOCKER_HOST=unix:///run/weavepy/weave.sock ORIG_DOCKER_HOST=\n"
    assert h.weavepy("config").stdout == "-H=unix:///run/weavepy/weave.sock\n"
    restore = h.weavepy("env", "--restore", env={"ORIG_DOCKER_HOST": "unix:///var/run/docker.sock"})
    assert restore.stdout == "export DOCKER_HOST=unix:///var/run/docker.sock\n"
    assert h.weavepy("env", "--restore", check=False).returncode == 1
    sock = h.run("stat -c '%a %g' /run/weavepy/weave.sock /run/docker.sock").stdout.splitlines()
    assert sock[0] == sock[1]  # mode and group of the Docker socket
    h.weavepy("stop")
    r = h.weavepy("env", check=False)
    assert r.returncode == 1 and r.stdout == "" and "not running" in r.stderr


def test_interface_is_up_before_the_first_instruction(h):
    for i in range(50):
        out = pd(h, "run", "--rm", "busybox", "ip", "-4", "-o", "addr", "show", "ethwe").stdout
        assert " inet 10.32." in out, f"run {i}: {out}"


def test_weave_cidr_forms_isolation_and_names(h):
    out = pd(h, "run", "--rm", "-e", "WEAVE_CIDR=10.35.1.1/24", "busybox", "ip", "-4", "-o", "addr",
             "show", "ethwe").stdout
    assert "inet 10.35.1.1/24" in out
    pd(h, "run", "-dt", "--name", "plain", "-e", "WEAVE_CIDR=none", "busybox", "sh")
    assert h.ethwe("plain") == []
    addr = h.weavepy("attach", "plain").stdout.strip()
    assert h.ethwe("plain") == [addr + "/12"]
    pd(h, "run", "-dt", "--name", "c6", "-e", "WEAVE_CIDR=net:default net:10.32.0.0/24", "busybox", "sh")
    assert sorted(c.split("/")[1] for c in h.ethwe("c6")) == ["12", "24"]
    pd(h, "run", "-dt", "--name", "c4", "-e", "WEAVE_CIDR=10.36.1.1/24", "busybox", "sh")
    assert not h.ping("c4", addr, timeout=1)  # different subnets stay apart
    pd(h, "run", "-dt", "--name", "c1", "busybox", "sh")
    ping = pd(h, "run", "--rm", "busybox", "ping", "-c1", "c1").stdout
    assert "1 packets received" in ping
    assert pd(h, "exec", "c1", "hostname", "-i").stdout.split()[0] == h.ethwe("c1")[0].split("/")[0]
    assert h.ping("c6", "c1")  # a named container finds another by its short name


def test_malformed_weave_cidr_fails_the_run_and_leaves_nothing(h):
    before = (owned(h), h.veths())
    for bad in ("10.2.1.1", "net:foo", "10.2.1.1/33"):
        r = pd(h, "run", "--rm", "-e", f"WEAVE_CIDR={bad}", "busybox", "true", check=False)
        assert r.returncode != 0 and bad in r.stderr and "{" not in r.stderr
    assert pd(h, "ps", "-aq").stdout.strip() == ""
    assert (owned(h), h.veths()) == before


def test_interactive_and_streaming_commands(h):
    code, screen = in_pty(h, ["docker", "run", "-it", "--rm", "busybox", "sh"],
                          [b"echo hello-$((1+2))\r", b"exit 3\r"])
    assert "hello-3" in screen and code == 3
    assert pd(h, "run", "-i", "--rm", "busybox", "cat", input="data\n").stdout == "data\n"
    out = pd(h, "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2")
    assert out.stdout == "out\n" and out.stderr == "err\n"

    pd(h, "run", "-dit", "--name", "c1", "busybox", "sh")
    code, screen = in_pty(h, ["docker", "exec", "-it", "c1", "sh"], [b"echo in-$((2*3))\r", b"exit\r"])
    assert "in-6" in screen and code == 0
    code, screen = in_pty(h, ["docker", "attach", "c1"], [b"echo att-$((3*3))\r", b"exit\r"])
    assert "att-9" in screen

    pd(h, "run", "-d", "--name", "ticker", "busybox", "sh", "-c", "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done")
    logs = h.run(["timeout", "3", "docker", "logs", "-f", "ticker"], check=False, env=PROXY).stdout
    assert "tick0" in logs and "tick5" in logs  # followed, not just the first chunk

    events = subprocess.Popen(h.nsenter_prefix() + ["docker", "events", "--format", "{{.Action}} {{.Actor.Attributes.name}}"],
                              stdout=subprocess.PIPE, text=True, env=h.env(PROXY))
    try:
        time.sleep(0.5)
        pd(h, "create", "--name", "evented", "busybox", "true")
        line = events.stdout.readline()
        assert line.strip() == "create evented"
    finally:
        events.kill()
        events.wait()
    stats = pd(h, "stats", "--no-stream", "--format", "{{.Name}}", "ticker").stdout
    assert stats.strip() == "ticker"


def wakeups(h) -> int:
    """How many times the weavepy daemon's threads have gone to sleep and woken since they began."""
    pid = h.daemon_pid()
    out = h.run(f"cat /proc/{pid}/task/*/status").stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.startswith("voluntary_ctxt_switches"))


def test_a_quiet_session_keeps_the_daemon_asleep_and_output_keeps_its_order(h):
    pd(h, "run", "-dt", "--name", "quiet", "busybox", "sh")
    session = subprocess.Popen(h.nsenter_prefix() + ["docker", "exec", "-i", "quiet", "sh", "-c",
                                                     "echo ready; sleep 3; seq 1 100000; echo done"],
                               stdout=subprocess.PIPE, text=True, env=h.env(PROXY))
    watchdog = threading.Timer(60, session.kill)  # a hung proxy fails the test, not the suite
    watchdog.start()
    try:
        assert session.stdout.readline() == "ready\n"
        before = wakeups(h)
        time.sleep(2)
        # output batching must not turn into polling: an idle session wakes nothing
        assert wakeups(h) - before < 50
        rest = session.stdout.read()
    finally:
        watchdog.cancel()
        session.kill()
        session.wait()
    assert rest == "".join(f"{i}\n" for i in range(1, 100001)) + "done\n"


def test_a_client_that_leaves_a_quiet_stream_closes_it_upstream(h):
    pd(h, "run", "-d", "--name", "silent", "busybox", "sleep", "600")
    pd(h, "ps")
    pid = h.daemon_pid()
    sockets = lambda: int(h.run(f"ls -l /proc/{pid}/fd | grep -c socket:", check=False).stdout.strip() or 0)
    before = sockets()
    followers = [h.popen(["docker", "logs", "-f", "silent"], env=h.env(PROXY)) for _ in range(3)]
    followers.append(h.popen(["docker", "events"], env=h.env(PROXY), stdout=subprocess.DEVNULL))
    try:
        assert wait_for(lambda: sockets() >= before + 4)  # the clients' connections
        time.sleep(1)
        during = sockets()
    finally:
        for proc in followers:
            proc.kill()
            proc.wait()
    # each follower held two: its own and one to dockerd; both must go, though nothing more is logged
    assert wait_for(lambda: sockets() <= during - 8, timeout=10), (before, during, sockets())


def test_cp_100mb_both_ways(h):
    src = h.dir / "big.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    pd(h, "run", "-dt", "--name", "box", "busybox", "sh")
    pd(h, "cp", str(src), "box:/tmp/big.bin", timeout=300)
    assert pd(h, "exec", "box", "sha256sum", "/tmp/big.bin").stdout.split()[0] == want
    back = h.dir / "back.bin"
    pd(h, "cp", "box:/tmp/big.bin", str(back), timeout=300)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == want
    src.unlink()
    back.unlink()


def test_build_from_a_local_base_image(h):
    ctx = h.dir / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo built > /built\nCMD [\"cat\", \"/built\"]\n")
    r = h.run(["docker", "build", "-t", "built:1", str(ctx)], check=False, env={**PROXY, "DOCKER_BUILDKIT": "0"})
    assert r.returncode == 0, r.stderr
    assert pd(h, "run", "--rm", "built:1").stdout == "built\n"


def test_no_command_and_wait_helper_rules(h):
    empty = h.dir / "empty"
    empty.mkdir(exist_ok=True)
    (empty / "busybox").write_bytes(open("/bin/busybox", "rb").read())
    os.chmod(empty / "busybox", 0o755)
    h.run(f"tar -C {empty} -c . | docker import - nocmd:1")
    r = pd(h, "run", "--rm", "nocmd:1", check=False)
    assert r.returncode != 0 and "No command specified" in r.stderr
    # an image holding one static binary, no shell, no libc: the wait helper still works
    out = pd(h, "run", "--rm", "nocmd:1", "/busybox", "ip", "-4", "-o", "addr", "show", "ethwe").stdout
    assert "inet 10.32." in out
    # exactly one extra mount, read-only; a committed image is not wrapped twice
    pd(h, "run", "-dt", "--name", "orig", "busybox", "sh")
    mounts = json.loads(pd(h, "inspect", "-f", "{{json .Mounts}}", "orig").stdout)
    assert [(m["Destination"], m["RW"]) for m in mounts] == [("/w", False)]
    assert pd(h, "exec", "orig", "touch", "/w/w", check=False).returncode != 0
    pd(h, "commit", "orig", "committed:1")
    pd(h, "run", "-dt", "--name", "again", "committed:1")
    ep = json.loads(h.docker("inspect", "-f", "{{json .Config.Entrypoint}}", "again"))  # as dockerd has it
    assert ep.count("/w/w") == 1


def test_addresses_survive_restarts_of_containers_weavepy_and_dockerd(h):
    pd(h, "run", "-dt", "--name", "c1", "busybox", "sh")
    pd(h, "run", "-dt", "--name", "always", "--restart=always", "busybox", "sh")
    c1, always = h.ethwe("c1"), h.ethwe("always")
    assert c1 and always
    pd(h, "restart", "-t", "1", "c1")
    assert h.ethwe("c1") == c1
    pid = pd(h, "inspect", "-f", "{{.State.Pid}}", "always").stdout.strip()
    h.run(["kill", "-9", pid])
    assert wait_for(lambda: pd(h, "inspect", "-f", "{{.State.Pid}}", "always").stdout.strip() not in (pid, "0"))
    assert wait_for(lambda: h.ethwe("always") == always)

    h.weavepy("stop")
    pd(h, "restart", "-t", "1", "c1", check=False)  # through dockerd only, while weavepy is away
    h.run(["docker", "restart", "-t", "1", "c1"])
    h.weavepy("launch")
    assert wait_for(lambda: h.ethwe("c1") == c1)


def test_reattached_with_the_same_addresses_after_a_dockerd_restart(h):
    pd(h, "run", "-dt", "--name", "survivor", "--restart=always", "busybox", "sh")
    before = h.ethwe("survivor")
    assert before
    h.stop_dockerd()
    try:
        down = pd(h, "ps", check=False)
        assert down.returncode != 0 and "Cannot connect to the Docker daemon" in down.stderr, down.stderr
    finally:
        h.start_dockerd()
        h.wait_dockerd()
    assert pd(h, "ps").returncode == 0  # the proxy's connections to the old dockerd are not reused
    assert wait_for(lambda: h.ethwe("survivor") == before, timeout=30)
    assert pd(h, "run", "--rm", "busybox", "ping", "-c1", "survivor").returncode == 0


RAW_EXCHANGE = r"""
import json, socket, sys
out = []
for request in json.loads(sys.argv[2]):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(request.encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    out.append(data.decode("latin-1"))
print(json.dumps(out))
"""


def raw_exchange(h, sock: str, requests: list[str]) -> list[tuple[str, list[str], str]]:
    """Each request on a connection of its own, read to the end: (status line, headers less Date, body)."""
    out = json.loads(h.run([sys.executable, "-c", RAW_EXCHANGE, sock, json.dumps(requests)]).stdout)
    answers = []
    for data in out:
        head, _, body = data.partition("\r\n\r\n")
        status, *headers = head.split("\r\n")
        answers.append((status, sorted(x for x in headers if not x.lower().startswith("date:")), body))
    return answers


def test_plain_requests_are_answered_as_dockerd_answers_them(h):
    # created directly: a listing of containers the proxy wrapped is rewritten (test_proxy_showthrough)
    h.docker("run", "-dt", "--name", "listed", "busybox", "sh")
    requests = [
        "GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
        "HEAD /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
        "GET /v1.41/containers/json?filters=%7B%22name%22%3A%5B%22listed%22%5D%7D HTTP/1.1\r\n"
        "Host: docker\r\nConnection: close\r\n\r\n",
        "GET /v1.41/containers/json HTTP/1.0\r\n\r\n",  # HTTP/1.0, no Host
        "GET /v1.41/containers/no-such-thing/json HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
        "DELETE /v1.41/images/no-such-image HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
    ]
    direct = raw_exchange(h, "/run/docker.sock", requests)
    proxied = raw_exchange(h, "/run/weavepy/weave.sock", requests)
    assert [a[0] for a in direct] == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.0 200 OK",
                                      "HTTP/1.1 404 Not Found", "HTTP/1.1 404 Not Found"]
    assert '"listed"' not in direct[2][2] and "/listed" in direct[2][2]
    for request, want, got in zip(requests, direct, proxied):
        assert got == want, request


UPGRADE = r"""
import socket, sys, time, uuid
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(5)
s.sendall(b"POST /v1.41/session HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
          b"X-Docker-Expose-Session-Uuid: %s\r\nX-Docker-Expose-Session-Name: t\r\n"
          b"X-Docker-Expose-Session-Sharedkey: k\r\nContent-Length: 0\r\n\r\n" % uuid.uuid4().hex.encode())
data = b""
while b"PRI * HTTP/2.0" not in data:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\r\n")[0].decode(), b"PRI * HTTP/2.0" in data)
"""


def test_a_buildkit_session_switches_protocol_through_the_proxy(h):
    # dockerd answers 101 and, as the session's HTTP/2 client, speaks first
    for sock in ("/run/docker.sock", "/run/weavepy/weave.sock"):
        out = h.run([sys.executable, "-c", UPGRADE, sock]).stdout.strip()
        assert out == "HTTP/1.1 101 Switching Protocols True", (sock, out)


def test_docker_compose_services_reach_each_other_by_name(h):
    proj = h.dir / "compose"
    proj.mkdir(exist_ok=True)
    (proj / "docker-compose.yml").write_text(
        "version: '2'\n"
        "services:\n"
        "  web:\n    image: busybox\n    container_name: web\n    network_mode: bridge\n"
        "    command: sh -c 'sleep 3600'\n"
        "  db:\n    image: busybox\n    container_name: db\n    network_mode: bridge\n"
        "    command: sh -c 'sleep 3600'\n")
    r = h.run(["docker-compose", "-f", str(proj / "docker-compose.yml"), "-p", "demo", "up", "-d"],
              check=False, env=PROXY, timeout=180)
    assert r.returncode == 0, r.stderr
    assert h.ethwe("web") and h.ethwe("db")
    assert h.ping("web", "db") and h.ping("db", "web.weave.local")
    r = h.run(["docker-compose", "-f", str(proj / "docker-compose.yml"), "-p", "demo", "down"],
              check=False, env=PROXY, timeout=180)
    assert r.returncode == 0, r.stderr


def test_attach_failure_at_start_kills_the_container_and_says_why(h):
    pd(h, "run", "-dt", "--name", "first", "-e", "WEAVE_CIDR=10.35.1.1/24", "busybox", "sh")
    before = owned(h)
    r = pd(h, "run", "-dt", "--name", "second", "-e", "WEAVE_CIDR=10.35.1.1/24", "busybox", "sh", check=False)
    assert r.returncode != 0 and "10.35.1.1" in r.stderr and "already in use" in r.stderr
    assert pd(h, "inspect", "-f", "{{.State.Running}}", "second").stdout.strip() == "false"
    assert owned(h) == before and len(h.veths()) == 1
    # a bad WEAVE_CIDR that only the image's ENV carries is found at start
    ctx = h.dir / "badenv"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nENV WEAVE_CIDR=10.2.1.1\nCMD [\"sh\"]\n")
    h.run(["docker", "build", "-q", "-t", "badenv:1", str(ctx)], env={"DOCKER_BUILDKIT": "0"})
    r = pd(h, "run", "-dt", "--name", "third", "badenv:1", check=False)
    assert r.returncode != 0 and "10.2.1.1" in r.stderr
    assert owned(h) == before


def test_hostname_rules_and_inspect_rewrite(h):
    h.weavepy("stop")
    h.weavepy("launch", "--hostname-match", "^[^-]+-(?P<app>[^-]*)-[^-]+$", "--hostname-replacement", "${app}",
              "--rewrite-inspect")
    pd(h, "run", "-dt", "--name", "proj-db-1", "busybox", "sh")
    assert pd(h, "exec", "proj-db-1", "hostname").stdout.strip() == "db"
    assert pd(h, "run", "--rm", "busybox", "ping", "-c1", "db.weave.local").returncode == 0
    addr = h.ethwe("proj-db-1")[0].split("/")[0]
    assert pd(h, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", "proj-db-1").stdout.strip() == addr
    direct = h.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "proj-db-1")
    assert direct.startswith("172.17.")  # only the proxy's answer is rewritten


def _tls_files(directory):
    """A CA, and a server and a client certificate signed by it."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def cert(subject_key, name, issuer_key, issuer_name, ca=False, san=None, client=False):
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
             .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address(san))]),
                                critical=False)
        if not ca:
            usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(name, obj):
        data = obj.public_bytes(serialization.Encoding.PEM) if hasattr(obj, "public_bytes") and not hasattr(obj, "private_bytes") \
            else obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        (directory / name).write_bytes(data)

    ca_key, srv_key, cli_key = key(), key(), key()
    write("ca.pem", cert(ca_key, "ca", ca_key, "ca", ca=True))
    write("server-cert.pem", cert(srv_key, "server", ca_key, "ca", san="127.0.0.1"))
    write("server-key.pem", srv_key)
    write("cert.pem", cert(cli_key, "client", ca_key, "ca", client=True))
    write("key.pem", cli_key)


def test_tls_listener_requires_a_client_certificate(h):
    tls = h.dir / "tls"
    tls.mkdir(exist_ok=True)
    _tls_files(tls)
    h.weavepy("stop")
    h.weavepy("launch", "-H", "tcp://127.0.0.1:12375", "--tlsverify", "--tlscacert", str(tls / "ca.pem"),
              "--tlscert", str(tls / "server-cert.pem"), "--tlskey", str(tls / "server-key.pem"))
    assert h.weavepy("env").stdout.startswith("export DOCKER_HOST=tcp://127.0.0.1:12375 ")
    ok = h.run(["docker", "--tlsverify", "--tlscacert", str(tls / "ca.pem"), "--tlscert", str(tls / "cert.pem"),
                "--tlskey", str(tls / "key.pem"), "-H", "tcp://127.0.0.1:12375", "run", "--rm", "busybox",
                "ip", "-4", "-o", "addr", "show", "ethwe"], check=False)
    assert ok.returncode == 0 and "inet 10.32." in ok.stdout, ok.stderr
    anonymous = h.run(["docker", "--tls", "--tlscacert", str(tls / "ca.pem"), "-H", "tcp://127.0.0.1:12375",
                       "ps"], check=False)
    assert anonymous.returncode != 0
