"""The wait helper does not show through the proxy: what docker prints for a container the proxy
wrapped is what it prints, directly, for the same container created without the proxy."""
import json
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from testbed import wait_for

pytestmark = pytest.mark.integration

PROXY_SOCK = "/run/weavepy/weave.sock"
PROXY = {"DOCKER_HOST": f"unix://{PROXY_SOCK}"}


@pytest.fixture
def h(hosts):
    host = hosts[0]
    host.remove_all_containers()
    host.weavepy("reset", "--force")
    host.weavepy("launch")
    yield host
    host.remove_all_containers()
    host.weavepy("reset", "--force", check=False)


def pd(h, *args, check=True, timeout=120):
    """docker through the proxy."""
    r = h.run(["docker", *args], check=False, env=PROXY, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {r.stderr}")
    return r


def build(h, tag: str, dockerfile: str):
    ctx = h.dir / tag.replace(":", "-")
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    h.run(["docker", "build", "-q", "-t", tag, str(ctx)], env={"DOCKER_BUILDKIT": "0"})


def twins(h, name: str, *run_args: str):
    """The same `docker run -d` through the proxy (p-name) and directly (d-name)."""
    pd(h, "run", "-d", "--name", f"p-{name}", *run_args)
    h.docker("run", "-d", "--name", f"d-{name}", *run_args)
    return f"p-{name}", f"d-{name}"


# each: docker run arguments after the name (image, entrypoint and command forms)
FORMS = {
    "cmd": ["busybox", "sleep", "600"],
    "image-cmd": ["sleeper:1"],
    "image-entrypoint-and-args": ["entry:1", "-c", "sleep 600"],
    "image-entrypoint-and-cmd": ["entry:1"],
    "entrypoint-override": ["--entrypoint", "/bin/sleep", "entry:1", "600"],
}


@pytest.fixture
def forms(h):
    build(h, "sleeper:1", 'FROM busybox\nCMD ["sleep", "600"]\n')
    build(h, "entry:1", 'FROM busybox\nENTRYPOINT ["/bin/sh"]\nCMD ["-c", "sleep 600"]\n')
    return {name: twins(h, name, *args) for name, args in FORMS.items()}


def test_ps_and_inspect_show_the_command_as_given(h, forms):
    for name, (proxied, direct) in forms.items():
        for listing in (["ps", "--no-trunc"], ["ps", "-a", "--no-trunc"], ["ps", "--no-trunc", "--size"]):
            shown = ["--format", "{{.Command}}", "--filter"]
            through = pd(h, *listing, *shown, f"name=^{proxied}$").stdout.strip()
            assert through and through == h.docker(*listing, *shown, f"name=^{direct}$"), (name, listing)
        fields = "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{json .Path}} {{json .Args}}"
        assert pd(h, "inspect", "-f", fields, proxied).stdout.strip() == h.docker("inspect", "-f", fields, direct), name
        # dockerd itself still runs the helper first
        assert h.docker("inspect", "-f", "{{.Path}}", proxied) == "/w/w"
    # a listing of all of them at once, as docker-py asks for it
    listed = {c["Names"][0][1:]: c["Command"] for c in raw_json(h, PROXY_SOCK, "/v1.41/containers/json?all=1&size=1")}
    for proxied, direct in forms.values():
        assert listed[proxied] == listed[direct]


GET = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(("GET %s HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n" % sys.argv[2]).encode())
data = b""
while chunk := s.recv(65536):
    data += chunk
print(json.dumps(data.decode("latin-1")))
"""


def raw(h, sock: str, path: str) -> tuple[str, str]:
    """One GET on a connection of its own: (head, body as sent, framing undone)."""
    answer = json.loads(h.run([sys.executable, "-c", GET, sock, path]).stdout)
    head, _, body = answer.partition("\r\n\r\n")
    if "transfer-encoding: chunked" in head.lower():
        out, rest = "", body
        while True:
            size, _, rest = rest.partition("\r\n")
            if int(size, 16) == 0:
                break
            out, rest = out + rest[:int(size, 16)], rest[int(size, 16) + 2:]
        body = out
    return head, body


def raw_json(h, sock: str, path: str):
    return json.loads(raw(h, sock, path)[1])


def test_answers_about_containers_the_proxy_left_alone_are_dockerds_bytes(h, forms):
    only_direct = quote(json.dumps({"name": ["^d-"]}))
    for path in (f"/v1.41/containers/json?all=1&filters={only_direct}", "/v1.41/containers/d-cmd/json",
                 "/v1.41/containers/d-cmd/changes"):
        assert raw(h, PROXY_SOCK, path)[1] == raw(h, "/run/docker.sock", path)[1], path
    # dockerd lists images of equal age in no fixed order, even call to call: the same images, then
    by_id = lambda body: sorted(json.loads(body), key=lambda image: image["Id"])
    assert by_id(raw(h, PROXY_SOCK, "/v1.41/images/json")[1]) == by_id(raw(h, "/run/docker.sock", "/v1.41/images/json")[1])


def test_the_rewrite_inspect_answer_shows_the_command_as_given_too(h, forms):
    h.weavepy("stop")
    h.weavepy("launch", "--rewrite-inspect")
    proxied, direct = forms["image-entrypoint-and-args"]
    fields = "{{json .Config.Entrypoint}} {{json .Path}} {{json .Args}}"
    assert pd(h, "inspect", "-f", fields, proxied).stdout.strip() == h.docker("inspect", "-f", fields, direct)
    assert pd(h, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", proxied).stdout.startswith("10.32.")


def test_diff_lists_only_what_the_container_changed(h):
    build(h, "has-w:1", "FROM busybox\nRUN mkdir /w && touch /w/x\n")
    for args in (["busybox", "sh", "-c", "touch /tmp/made; sleep 600"], ["busybox", "sleep", "600"],
                 ["has-w:1", "sleep", "600"]):
        proxied, direct = twins(h, args[0].replace(":", "-") + str(len(args)), *args)
        assert wait_for(lambda: "made" in h.docker("diff", direct) or "touch" not in args[-1])
        assert wait_for(lambda: "made" in h.docker("diff", proxied) or "touch" not in args[-1])
        assert pd(h, "diff", proxied).stdout.strip() == h.docker("diff", direct), args
    assert h.docker("diff", "p-busybox3") == "A /w"  # dockerd itself lists the mountpoint it made
    # a container created directly that made a /w of its own keeps it
    h.docker("run", "-d", "--name", "own-w", "busybox", "sh", "-c", "mkdir /w; sleep 600")
    assert wait_for(lambda: h.docker("diff", "own-w") == "A /w")
    assert pd(h, "diff", "own-w").stdout.strip() == "A /w"


def test_a_failed_exec_fails_as_docker_fails_it(h):
    proxied, direct = twins(h, "execs", "busybox", "sleep", "600")
    for cmd in (["nosuchcmd"], ["/etc/passwd"], ["/nosuch"], ["sh", "-c", "exit 3"]):
        through = pd(h, "exec", proxied, *cmd, check=False)
        want = h.run(["docker", "exec", direct, *cmd], check=False)
        assert (through.returncode, through.stdout, through.stderr) == (want.returncode, want.stdout, want.stderr)
        assert want.returncode in (3, 126, 127), want
    assert pd(h, "exec", proxied, "ip", "-4", "-o", "addr", "show", "ethwe").stdout.count("inet 10.32.") == 1


def post(h, sock: str, path: str, body: dict) -> dict:
    r = h.run(["curl", "-sf", "--unix-socket", sock, "-H", "Content-Type: application/json", "-d", json.dumps(body),
               f"http://docker{path}"])
    return json.loads(r.stdout)


def test_an_exec_before_the_network_is_up_waits_for_it_and_fails_as_docker_would(h):
    # the image's ENV keeps weavepy from attaching it: it waits in weavewait until attached by hand
    build(h, "unattached:1", "FROM busybox\nENV WEAVE_CIDR=none\n")
    pd(h, "run", "-d", "--name", "waiting", "unattached:1", "sleep", "600")
    early = post(h, PROXY_SOCK, "/v1.41/containers/waiting/exec", {"Cmd": ["true"]})["Id"]
    failing = h.popen(["docker", "exec", "waiting", "nosuchcmd"], env=h.env(PROXY),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        assert failing.poll() is None  # held until the network is up
        assert raw_json(h, "/run/docker.sock", f"/v1.41/exec/{early}/json")["ProcessConfig"]["entrypoint"] == "/w/w"
        through = raw_json(h, PROXY_SOCK, f"/v1.41/exec/{early}/json")["ProcessConfig"]
        assert (through["entrypoint"], through["arguments"]) == ("true", [])
        h.weavepy("attach", "waiting")
        out, err = failing.communicate(timeout=30)
    finally:
        if failing.poll() is None:
            failing.kill()
            failing.wait()
    assert failing.returncode == 126 and 'exec: "nosuchcmd": executable file not found in $PATH' in out + err
    # and the container's own process started once attached
    assert wait_for(lambda: "sleep 600" in (top := h.docker("top", "waiting")) and "/w/w" not in top)


def test_a_command_that_cannot_start_exits_as_docker_run_does(h):
    build(h, "odd:1", "FROM busybox\nRUN echo garbage > /garbage && chmod 755 /garbage "
                      "&& cp /bin/busybox /rootonly && chmod 700 /rootonly\n")
    for args, code, text in (
            (["busybox", "nosuchcmd"], 127, 'exec: "nosuchcmd": executable file not found in $PATH'),
            (["busybox", "/nosuch"], 127, 'exec: "/nosuch": stat /nosuch: no such file or directory'),
            (["busybox", "/etc/passwd"], 126, 'exec: "/etc/passwd": permission denied'),
            (["-u", "1000", "odd:1", "/rootonly"], 126, "exec /rootonly: permission denied"),
            (["odd:1", "/garbage"], 1, "exec /garbage: exec format error")):
        direct = h.run(["docker", "run", "--rm", *args], check=False)
        through = pd(h, "run", "--rm", *args, check=False)
        assert direct.returncode == through.returncode == code, (args, direct, through)
        assert text in direct.stderr and text in through.stderr, (args, direct.stderr, through.stderr)


def test_an_image_committed_from_a_wrapped_container_starts_as_given(h):
    build(h, "entry:1", 'FROM busybox\nENTRYPOINT ["/bin/sh"]\nCMD ["-c", "sleep 600"]\n')
    proxied, direct = twins(h, "plain", "busybox", "sleep", "600")
    p_app, d_app = twins(h, "app", "entry:1")
    for (p, d), tag in (((proxied, direct), "plain"), ((p_app, d_app), "app")):
        pd(h, "commit", p, f"p-{tag}:1")
        h.docker("commit", d, f"d-{tag}:1")
        fields = "{{json .Config.Cmd}} {{if .Config.Entrypoint}}{{json .Config.Entrypoint}}{{end}}"
        assert h.docker("image", "inspect", "-f", fields, f"p-{tag}:1") == \
            h.docker("image", "inspect", "-f", fields, f"d-{tag}:1"), tag
        # runs directly, without the proxy's /w mount
        assert h.docker("run", "--rm", "--entrypoint", "", f"p-{tag}:1", "true") == ""
    assert h.run(["docker", "run", "--rm", "p-plain:1", "true"], check=False).returncode == 0
    # with a config given, as docker-py's commit(conf=...) sends one
    post(h, PROXY_SOCK, f"/v1.41/commit?container={proxied}&repo=p-conf&tag=1", {"Env": ["A=1"]})
    assert h.docker("image", "inspect", "-f", "{{json .Config.Entrypoint}} {{json .Config.Cmd}}",
                    "p-conf:1") in ("null [\"sleep\",\"600\"]", "[] [\"sleep\",\"600\"]")
    # through the proxy, a committed image is wrapped once, as any other
    pd(h, "run", "-d", "--name", "again", "p-app:1")
    assert json.loads(h.docker("inspect", "-f", "{{json .Config.Entrypoint}}", "again")) == ["/w/w", "/bin/sh"]


@pytest.mark.parametrize("user", [[], ["-u", "1000"], ["nonroot:1"]], ids=["root", "-u 1000", "image USER"])
def test_hostname_maps_to_the_weave_address_from_the_first_instruction(h, user):
    if user == ["nonroot:1"]:
        build(h, "nonroot:1", "FROM busybox\nUSER 1000\n")
    image = [] if user == ["nonroot:1"] else ["busybox"]
    for i in range(8):
        out = pd(h, "run", "--rm", "-e", "WEAVE_CIDR=10.2.1.1/24", *user, *image, "hostname", "-i").stdout
        assert out == "10.2.1.1\n", f"run {i}: {out}"


def test_no_rewrite_hosts_keeps_dockers_hosts_file(h):
    h.weavepy("stop")
    h.weavepy("launch", "--no-rewrite-hosts")
    out = pd(h, "run", "--rm", "-e", "WEAVE_CIDR=10.2.1.1/24", "busybox", "sh", "-c",
             "ip -4 -o addr show ethwe; hostname -i").stdout
    assert "inet 10.2.1.1/24" in out and out.splitlines()[-1].startswith("172.17.")


def test_the_proxy_listens_where_it_is_asked_to(h):
    h.weavepy("stop")
    sock = f"/run/wp-{h.bed.uid}/docker-proxy.sock"
    h.weavepy("launch", "-H", f"unix://{sock}")
    try:
        assert h.weavepy("env").stdout == f"export DOCKER_HOST=unix://{sock} ORIG_DOCKER_HOST=\n"
        assert h.weavepy("config").stdout == f"-H=unix://{sock}\n"
        modes = h.run(f"stat -c '%a %g' {sock} /run/docker.sock").stdout.splitlines()
        assert modes[0] == modes[1]
        out = h.run(["docker", "run", "--rm", "busybox", "ip", "-4", "-o", "addr", "show", "ethwe"],
                    env={"DOCKER_HOST": f"unix://{sock}"}).stdout
        assert "inet 10.32." in out
        assert h.run(["docker", "ps"], check=False, env=PROXY).returncode != 0  # not the default path
        h.weavepy("stop")
        assert h.run(f"test -e {sock}", check=False).returncode != 0  # a stopped proxy leaves no socket
    finally:
        h.run(f"rm -rf /run/wp-{h.bed.uid}", check=False)
