"""Transparency: docker-py's own integration suite gives the same results through the proxy as direct.

The suite (docker-py 4.4.4, set up by `scripts/setup.sh --tests` in .venv-dockerpy) runs twice at
once: against h1's dockerd directly and through h2's proxy (launched with
--no-default-ipalloc, as Weave's own transparency test did, so the suite's containers are
left as they are).  Every test must end the same way on both.  A test whose outcome differs
is run once more on both sides before it counts: docker-py has known races of its own (an
attach that loses bytes read together with the 101) that flake against dockerd too.
"""
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-dockerpy"
SRC = VENV / "src" / "docker-4.4.4"
# swarm, services, secrets, configs, plugins and nodes need swarm mode or a registry
SELECT = "not swarm and not service and not secret and not config and not plugin and not node"


def start_suite(host, docker_host: str, name: str, targets: list[str]) -> tuple[subprocess.Popen, Path]:
    home = host.dir / f"home-{name}"
    home.mkdir(exist_ok=True)  # the suite keeps contexts in ~/.docker: one home per run
    junit = host.dir / f"{name}.xml"
    cmd = (f"cd {SRC} && HOME={home} PYTHONPATH={SRC} DOCKER_HOST={docker_host} "
           f"{VENV}/bin/pytest -q -p no:cacheprovider --junitxml {junit} -k '{SELECT}' {' '.join(targets)}")
    proc = host.popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, junit


def outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for tc in ET.parse(junit).iter("testcase"):
        kind = "passed"
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                kind = child.tag
        out[node_id(tc.get("classname"), tc.get("name"))] = kind
    return out


def node_id(classname: str, name: str) -> str:
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):  # the longest prefix that is a file is the module
        if (SRC / Path(*parts[:i])).with_suffix(".py").exists():
            return "/".join(parts[:i]) + ".py::" + "::".join(parts[i:] + [name])
    return f"{classname}::{name}"


def run_both(h1, h2, name: str, targets: list[str]) -> tuple[dict, dict]:
    direct, direct_xml = start_suite(h1, "unix:///run/docker.sock", f"direct-{name}", targets)
    proxied, proxied_xml = start_suite(h2, "unix:///run/weavepy/weave.sock", f"proxy-{name}", targets)
    for proc in (direct, proxied):
        proc.wait(timeout=1500)
    return outcomes(direct_xml), outcomes(proxied_xml)


def test_docker_py_suite_passes_through_the_proxy_as_directly(hosts):
    assert (SRC / "tests" / "integration").is_dir(), "run scripts/setup.sh --tests: it installs docker-py's suite"
    h1, h2 = hosts
    for host in (h1, h2):
        host.remove_all_containers()
        host.weavepy("reset", "--force")
        host.docker("tag", "busybox:latest", "alpine:3.10")  # the suite's image, offline
    h2.weavepy("launch", "--no-default-ipalloc")
    try:
        direct, proxied = run_both(h1, h2, "all", ["tests/integration"])
        assert len(direct) > 200 and sum(k == "passed" for k in direct.values()) > 150
        differ = sorted(t for t in set(direct) | set(proxied) if direct.get(t) != proxied.get(t))
        if differ:
            again_direct, again_proxied = run_both(h1, h2, "again", differ)
            differ = [t for t in differ if again_direct.get(t) != again_proxied.get(t)]
        assert differ == [], {t: (direct.get(t), proxied.get(t)) for t in differ}
    finally:
        for host in (h1, h2):
            host.remove_all_containers()
            host.weavepy("reset", "--force", check=False)
