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


def test_connection_lines_and_counts_are_in_weaves_format():
    _, rep = report(["10.0.0.3"])
    rep["Router"]["Connections"] = [
        {"Address": "10.0.0.2:6783", "Outbound": True, "State": "established", "Info": "fastdp 5a:00:00:00:00:02(h2)",
         "Attrs": {"name": "fastdp", "mtu": 1376, "established": True, "healthy": True}},
        {"Address": "10.0.0.4:41000", "Outbound": False, "State": "established", "Info": "fastdp 5a:00:00:00:00:04(h4)",
         "Attrs": {"name": "fastdp", "mtu": 1376, "healthy": False}},
        {"Address": "10.0.0.3:6783", "Outbound": True, "State": "failed",
         "Info": "dial tcp4 10.0.0.3:6783: connect: connection refused, retry: never", "Attrs": {}},
    ]
    rep["Router"]["Peers"] = [{"Name": "a", "NickName": "h1", "Connections": [{"Established": True}] * 2},
                              {"Name": "b", "NickName": "h2", "Connections": [{"Established": True}]},
                              {"Name": "c", "NickName": "h4", "Connections": [{"Established": False}]}]
    assert status.connections_text(rep).splitlines() == [
        "-> 10.0.0.2:6783         established fastdp 5a:00:00:00:00:02(h2) mtu=1376",
        "<- 10.0.0.4:41000        established fastdp 5a:00:00:00:00:04(h4) healthy=False mtu=1376",
        "-> 10.0.0.3:6783         failed      dial tcp4 10.0.0.3:6783: connect: connection refused, retry: never",
    ]
    text = status.status_text(rep)
    assert "    Connections: 3 (2 established, 1 failed)\n" in text
    assert "          Peers: 3 (with 3 established, 1 pending connections)\n" in text
