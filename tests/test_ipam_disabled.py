"""`--ipalloc-range ""`: a router with no IP allocation (Weave's "IPAM disabled"): explicit addresses
still work and are kept track of; asking for one from a range says clearly why not; status has no
IPAM section."""
import ipaddress

import pytest

from weavepy import status
from weavepy.ipam.allocator import AllocationError, Allocator
from weavepy.ipam.request import AddressError, parse_requests
from weavepy.launch_config import ConfigError, LaunchConfig

PEER = "02:00:00:00:00:01"


def test_an_empty_range_turns_allocation_off_and_a_default_subnet_with_it_is_refused():
    config = LaunchConfig(ipalloc_range="").validate()
    assert config.universe is None and config.default_subnet is None
    with pytest.raises(ConfigError, match="--ipalloc-default-subnet needs IP address allocation"):
        LaunchConfig(ipalloc_range="", ipalloc_default_subnet="10.32.0.0/24").validate()


def test_without_allocation_explicit_addresses_are_kept_and_net_requests_refused_clearly():
    alloc = Allocator(PEER, None)
    with pytest.raises(AddressError, match="IP address allocation must be enabled to use 'net:default'"):
        parse_requests([], alloc.default_subnet)
    with pytest.raises(AllocationError, match="IP address allocation must be enabled"):
        alloc.allocate("c1", ipaddress.IPv4Network("10.2.1.0/24"), True)
    alloc.claim("c1", ipaddress.IPv4Interface("10.2.1.41/24"), True)
    with pytest.raises(AllocationError, match="already in use by c1"):
        alloc.claim("c2", ipaddress.IPv4Interface("10.2.1.41/24"), True)
    alloc.establish_ring()
    assert alloc.ring.empty() and alloc.outbox == []      # nothing to agree: no election, no gossip
    assert alloc.restore(Allocator(PEER, ipaddress.IPv4Network("10.32.0.0/12")).snapshot()) == \
        "persisted data is for IPAM range 10.32.0.0/12; IP address allocation is now disabled"


def test_status_has_no_ipam_section_and_status_ipam_is_empty():
    config = LaunchConfig(ipalloc_range="", nickname="host1").validate()
    rep = status.build_report(config, PEER, Allocator(PEER, None))
    assert rep["IPAM"] is None
    text = status.status_text(rep)
    assert "Service: router" in text and "Service: ipam" not in text and "\n\n\n" not in text
    assert status.ipam_text(rep) == ""
