"""Transparency: docker-py's own integration suite gives the same results through the proxy as direct.

The suite (docker-py 4.4.4, set up by `scripts/setup.sh --tests` in .venv-dockerpy) runs twice at
once: against h1's dockerd directly and through h2's proxy (launched with
--no-default-ipalloc, as Weave's own transparency test did, so the suite's containers are
left as they are).  Every test must end the same way on both, in that one run: a second
chance for a test that differed could hide a difference the proxy makes only sometimes.  Tests
that race against dockerd itself are left out of both (FLAKY_DIRECTLY, each with its race).
Then the tests that look at what a wrapped container shows (its command in a listing, its
changes, a failed exec's code, a commit) run against a proxy that wraps every container.
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
# Tests that fail now and then against dockerd itself, so that one run cannot say whether the
# proxy changed them.  What the proxy does for each is tested in weavepy's own tests.
FLAKY_DIRECTLY = {
    # read a container's logs right after starting it, without waiting for it to end: empty
    # when the short command has not run yet (seen failing directly)
    "api_build_test.py::BuildTest::test_build_in_context_abs_dockerfile",
    "api_build_test.py::BuildTest::test_build_in_context_dockerfile",
    "api_build_test.py::BuildTest::test_build_in_context_nested_dockerfile",
    "api_build_test.py::BuildTest::test_build_out_of_context_dockerfile",
    "api_container_test.py::CreateContainerTest::test_create_with_device_cgroup_rules",
    # the same, and docker-py reads the 101 head through its HTTP library, then the raw socket:
    # output that came in the same read is lost (seen failing directly; test_passthrough: the
    # proxy sends the head alone)
    "api_container_test.py::AttachContainerTest::test_attach_no_stream",
    # counts all containers, while those an earlier test module left may still be being removed
    "api_container_test.py::ListContainersTest::test_list_containers",
}


def start_suite(host, docker_host: str, name: str, select: str, deselect) -> tuple[subprocess.Popen, Path]:
    home = host.dir / f"home-{name}"
    # the suite keeps contexts next to ~/.docker/config.json, or in the working directory (shared by
    # both runs) when there is none: one home per run, with a config
    (home / ".docker").mkdir(parents=True, exist_ok=True)
    (home / ".docker" / "config.json").write_text("{}\n")
    junit = host.dir / f"{name}.xml"
    deselected = " ".join(f"--deselect tests/integration/{t}" for t in sorted(deselect))
    # its own rootdir, or pytest would take weavepy's pyproject.toml (above it) for the suite's config
    cmd = (f"cd {SRC} && HOME={home} PYTHONPATH={SRC} DOCKER_HOST={docker_host} "
           f"{VENV}/bin/pytest -q -p no:cacheprovider --rootdir {SRC} -c /dev/null --junitxml {junit} "
           f"-k '{select}' {deselected} tests/integration")
    proc = host.popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, junit


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """Each test's outcome (passed, failure, error, skipped) and what its report says about it."""
    out = {}
    for tc in ET.parse(junit).iter("testcase"):
        kind, why = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                kind, why = child.tag, (child.get("message") or "")[:300]
        out[node_id(tc.get("classname"), tc.get("name"))] = kind, why
    return out


def node_id(classname: str, name: str) -> str:
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):  # the longest prefix that is a file is the module
        if (SRC / Path(*parts[:i])).with_suffix(".py").exists():
            return "/".join(parts[:i]) + ".py::" + "::".join(parts[i:] + [name])
    return f"{classname}::{name}"


def run_both(hosts, name: str, select: str, deselect=()) -> tuple[dict, dict]:
    """The suite's outcomes against h1's dockerd and, at the same time, through h2's proxy."""
    h1, h2 = hosts
    direct, direct_xml = start_suite(h1, "unix:///run/docker.sock", f"direct-{name}", select, deselect)
    proxied, proxied_xml = start_suite(h2, "unix:///run/weavepy/weave.sock", f"proxy-{name}", select, deselect)
    for proc in (direct, proxied):
        proc.wait(timeout=1500)
    return outcomes(direct_xml), outcomes(proxied_xml)


def assert_same_outcomes(direct: dict, proxied: dict):
    kind = lambda results, t: results.get(t, ("missing", ""))[0]
    differ = sorted(t for t in set(direct) | set(proxied) if kind(direct, t) != kind(proxied, t))
    assert differ == [], "\n".join(f"{t}: direct {direct.get(t)}, proxied {proxied.get(t)}" for t in differ)


@pytest.fixture
def suite_hosts(hosts):
    assert (SRC / "tests" / "integration").is_dir(), "run scripts/setup.sh --tests: it installs docker-py's suite"
    for host in hosts:
        host.remove_all_containers()
        host.weavepy("reset", "--force")
        for tag in ("alpine:3.10", "alpine:latest"):  # the suite's images, offline
            host.docker("tag", "busybox:latest", tag)
    yield hosts
    for host in hosts:
        host.remove_all_containers()
        host.weavepy("reset", "--force", check=False)


def test_docker_py_suite_passes_through_the_proxy_as_directly(suite_hosts):
    suite_hosts[1].weavepy("launch", "--no-default-ipalloc")
    direct, proxied = run_both(suite_hosts, "all", SELECT, FLAKY_DIRECTLY)
    assert len(direct) > 200 and sum(k == "passed" for k, _ in direct.values()) > 150
    assert_same_outcomes(direct, proxied)


# what a container shows of how it was started: ps's Command, diff, exec exit codes, commit
SHOWS_THROUGH = ("ListContainersTest or DiffTest or CommitTest or test_exec_run or test_exec_inspect "
                 "or test_execute_command")


def test_docker_py_sees_wrapped_containers_as_it_sees_them_directly(suite_hosts):
    suite_hosts[1].weavepy("launch")  # every container joins weave, behind the wait helper
    direct, proxied = run_both(suite_hosts, "wrapped", SHOWS_THROUGH)
    assert sum(k == "passed" for k, _ in direct.values()) >= 8
    assert_same_outcomes(direct, proxied)
