import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# Where the integration tests can run, one that was skipped anyway fails the run: a skip is not a pass.
INTEGRATION_POSSIBLE = os.geteuid() == 0 and shutil.which("dockerd") is not None
skipped = {"integration": [], "other": []}


def pytest_collection_modifyitems(config, items):
    if INTEGRATION_POSSIBLE:
        return
    skip = pytest.mark.skip(reason="integration tests need root and dockerd")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        skipped["integration" if "integration" in report.keywords else "other"].append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if INTEGRATION_POSSIBLE and skipped["integration"] and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    if skipped["integration"]:
        n = len(skipped["integration"])
        if INTEGRATION_POSSIBLE:
            why = "this machine can run them (root, dockerd), so the run FAILS"
        else:
            why = "they need root and dockerd; what they check is UNTESTED by this run"
        tr.write_sep("!", f"{n} INTEGRATION TEST{'S' * (n != 1)} SKIPPED: {why}", red=True, bold=True)
    if skipped["other"]:
        n = len(skipped["other"])
        tr.write_sep("!", f"{n} OTHER TEST{'S' * (n != 1)} SKIPPED: not passed, not run", yellow=True, bold=True)


@pytest.fixture(scope="session")
def testbed():
    """Simulated hosts shared by the whole session: dockerds are slow to start, so start them once."""
    from testbed import Testbed
    bed = Testbed()
    try:
        yield bed
    finally:
        bed.teardown()


@pytest.fixture(scope="session")
def hosts(testbed):
    return testbed.add_hosts(2)


@pytest.fixture
def clean_hosts(hosts, testbed):
    """The two shared hosts with no containers and no router, and an upstream DNS stub; the same after."""
    def reset():
        for h in hosts:
            h.remove_all_containers()
            h.weavepy("reset", "--force", check=False)
    reset()
    stub = testbed.start_dns_stub()
    yield hosts
    reset()
    if stub in testbed.stubs:
        testbed.stop_dns_stub(stub)


@pytest.fixture(scope="session")
def third_host(testbed):
    """A third host with dockerd, for the tests that need three; made once."""
    (host,) = testbed.add_hosts(1)
    return host
