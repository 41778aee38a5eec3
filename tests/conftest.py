import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0 and shutil.which("dockerd"):
        return
    skip = pytest.mark.skip(reason="integration tests need root and dockerd")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


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
