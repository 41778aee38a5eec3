import ipaddress

import pytest

from weavepy.ipam.request import AddressError, AllocateIn, Claim, host_range, looks_like_cidr, parse_request

DEFAULT = ipaddress.IPv4Network("10.32.0.0/12")


def test_net_default_is_the_default_subnet():
    req = parse_request("net:default", DEFAULT)
    assert req == AllocateIn(DEFAULT, default=True)


def test_net_cidr_and_claims():
    assert parse_request("net:10.32.0.0/24", DEFAULT) == AllocateIn(ipaddress.IPv4Network("10.32.0.0/24"))
    assert parse_request("10.35.1.1/24", DEFAULT) == Claim(ipaddress.IPv4Interface("10.35.1.1/24"))
    assert parse_request("ip:10.35.1.1/24", DEFAULT) == Claim(ipaddress.IPv4Interface("10.35.1.1/24"))


@pytest.mark.parametrize("token, words", [
    ("10.2.1.1", ["10.2.1.1", "prefix length"]),
    ("10.2.1.1/33", ["10.2.1.1/33", "between 0 and 32"]),
    ("net:foo", ["net:foo"]),
    ("net:10.32.0.1/24", ["not all zero", "10.32.0.0/24"]),
    ("net:10.32.0.0/31", ["too small"]),
    ("net:10.32.0.0/32", ["too small"]),
    ("10.2.1.0/24", ["network address"]),
    ("10.2.1.255/24", ["broadcast address"]),
    ("ip:300.1.1.1/24", ["300.1.1.1/24"]),
    ("foo", ["'foo'"]),
    ("", ["''"]),
    ("ip:", ["'ip:'", "prefix length"]),
    ("ip:10.2.1.1", ["'ip:10.2.1.1'", "ip:10.2.1.1/24"]),
    ("net:", ["'net:'"]),
])
def test_bad_requests_name_the_problem(token, words):
    with pytest.raises(AddressError) as info:
        parse_request(token, DEFAULT)
    for w in words:
        assert w in str(info.value)


def test_host_range_leaves_out_network_and_broadcast():
    lo, hi = host_range(ipaddress.IPv4Network("10.32.0.0/24"))
    assert ipaddress.IPv4Address(lo) == ipaddress.IPv4Address("10.32.0.1")
    assert ipaddress.IPv4Address(hi - 1) == ipaddress.IPv4Address("10.32.0.254")


def test_run_tells_addresses_from_docker_args():
    assert looks_like_cidr("10.2.1.1/24") and looks_like_cidr("net:default") and looks_like_cidr("ip:1.2.3.4/8")
    assert not looks_like_cidr("-t") and not looks_like_cidr("busybox") and not looks_like_cidr("--name")
