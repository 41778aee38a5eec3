"""The command line, where it needs no daemon: help, and input refused before anything happens."""
import os
import subprocess
import sys

import pytest

# The installed command, as users run it (next to this interpreter, i.e. in the venv).
WEAVEPY = os.path.join(os.path.dirname(sys.executable), "weavepy")


def weavepy(*args, env=None):
    return subprocess.run([WEAVEPY, *args], capture_output=True, text=True,
                          env={"WEAVEPY_RUN_DIR": "/nonexistent-weavepy-test", "PATH": "/usr/bin:/bin",
                               "WEAVEPY_HTTP_ADDR": "127.0.0.1:1", **(env or {})})


@pytest.mark.parametrize("cmd", ["launch", "connect", "forget", "stop", "reset", "version", "status", "report", "run", "attach", "dns-args", "dns-add", "dns-remove", "dns-lookup",
                                 "detach", "ps", "expose", "hide"])
def test_every_command_has_help(cmd):
    r = weavepy(cmd, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"Usage: weavepy {cmd}")


@pytest.mark.parametrize("args, words", [
    (["attach", "10.2.1.1/33", "c1"], "10.2.1.1/33"),
    (["attach", "10.2.1.1", "c1"], "prefix length"),
    (["attach", "net:10.32.0.0/31", "c1"], "too small"),
    (["attach", "bogus", "c1"], "'bogus'"),
    (["attach", "ip:", "c1"], "invalid address 'ip:'"),
    (["run", "net:foo", "busybox"], "net:foo"),
    (["launch", "--ipalloc-range", "10.32.0.1/12"], "not all zero"),
    (["launch", "--ipalloc-range", "10.32.0.0/12", "--ipalloc-default-subnet", "192.168.0.0/24"], "does not overlap"),
    (["launch", "--mtu", "abc"], "--mtu"),
    (["launch", "--name", "nonsense"], "nonsense"),
    (["launch", "--dns-listen-address", "nowhere:53"], "nowhere"),
    (["dns-add", "10.32.0.9"], "-h <fqdn>"),
    (["attach", "--bogus", "c1"], "unknown option --bogus"),
    (["launch", "10.0.0.1:notaport"], 'invalid peer name "10.0.0.1:notaport", should be host[:port]'),
    (["launch", "bad_host!"], '"bad_host!"'),
    (["launch", "--port", "70000"], "--port 70000"),
    (["launch", "--host", "somewhere"], "--host 'somewhere'"),
    (["launch", "--resume", "10.0.0.1"], "--resume"),
    (["connect", "300.1.1.1"], '"300.1.1.1"'),
    (["connect", "10.0.0.1"], "not running"),
    (["forget"], "no peer given"),
    (["launch", "--password", "secret"], "refusing to run the mesh unencrypted"),
    (["frobnicate"], "unknown command"),
])
def test_bad_input_exits_1_naming_the_problem(args, words):
    r = weavepy(*args)
    assert r.returncode == 1
    assert words in r.stderr
    assert r.stdout == ""


def test_commands_say_when_the_daemon_is_not_running():
    r = weavepy("status")
    assert r.returncode == 1 and "not running" in r.stderr
