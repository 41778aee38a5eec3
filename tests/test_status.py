import ipaddress

from weavepy import status
from weavepy.launch_config import LaunchConfig
from weavepy.ipam.allocator import Allocator

PEER = "02:00:00:00:00:01"


def report(peers=()):
    config = LaunchConfig(peers=list(peers), nickname="host1")
    alloc = Allocator(PEER, config.universe, config.default_subnet, "host1")
    return alloc, status.build_report(config, PEER, alloc)


def test_status_shows_router_and_ipam_blocks():
    _, rep = report(["10.0.0.2"])
    text = status.status_text(rep)
    assert "        Service: router\n" in text
    assert f"           Name: {PEER}(host1)\n" in text
    assert "        Targets: 1\n" in text
    assert "        Service: ipam\n" in text
    assert "         Status: idle\n" in text
    assert "          Range: 10.32.0.0/12\n" in text
    assert "  DefaultSubnet: 10.32.0.0/12\n" in text


def test_status_ipam_is_empty_until_the_ring_exists_then_one_line_per_peer():
    alloc, rep = report()
    assert status.ipam_text(rep) == ""
    alloc.allocate("c1", ipaddress.IPv4Network("10.32.0.0/12"), True)
    rep = status.build_report(LaunchConfig(nickname="host1"), PEER, alloc)
    assert rep["IPAM"]["Status"] == "ready"
    line = status.ipam_text(rep)
    assert line == f"{PEER + '(host1)':<37}  1048576 IPs (100.0% of total) (1 active)\n"
