"""A request that waits on the cluster (its address's owner cannot be reached) holds nothing up:
other allocations, claims and frees on the host go on meanwhile (Weave's 320), and a waiter
that goes away leaves the host as it found it."""
import asyncio
import ipaddress

import pytest

from weavepy.host_network import HostNetwork, UserError
from weavepy.ipam.allocator import Allocator

ME, OTHER = "00:00:00:00:00:01", "00:00:00:00:00:02"
UNIVERSE = ipaddress.IPv4Network("10.2.0.0/16")


@pytest.fixture
def network(tmp_path):
    # seeded with two peers: the ring exists at once and the upper half is OTHER's, which we cannot reach
    allocator = Allocator(ME, UNIVERSE, seeds=[ME, OTHER])
    allocator.establish_ring()
    assert allocator.ring.owner(int(ipaddress.IPv4Address("10.2.200.1"))) == OTHER
    return HostNetwork(allocator, None, 1410, str(tmp_path / "ipam.json"), str(tmp_path / "records.json"))


async def test_a_claim_waiting_for_an_unreachable_owner_holds_nothing_up(network):
    waiter = asyncio.create_task(network.api_claim("c4", ipaddress.IPv4Interface("10.2.200.1/16")))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    assert {ident: [str(r) for r in reqs] for ident, reqs in network.pending().items()} == {"c4": ["10.2.200.1/16"]}
    assert network.allocator.status_word(waiting=bool(network.pending())) == "waiting for IP(s) to become available"
    # meanwhile: a claim outside the range, an allocation from our own half, and a free, each at once
    await asyncio.wait_for(network.api_claim("ext", ipaddress.IPv4Interface("10.3.0.1/12")), 1)
    got = await asyncio.wait_for(network.api_allocate("mine"), 1)
    assert got == ipaddress.IPv4Interface("10.2.0.1/16")
    await asyncio.wait_for(network.api_free("mine", None), 1)
    assert not waiter.done()
    # the owner becomes reachable and gives the address: the claim goes through
    network.allocator.reachable = lambda: {OTHER}
    network.allocator.receive(OTHER, {"nicknames": {}, "paxos": None, "ring": _donated(network.allocator)})
    await asyncio.wait_for(waiter, 3)
    assert [str(c) for c in network.allocator.addresses("c4")] == ["10.2.200.1/16"]
    assert network.pending() == {}


def _donated(allocator) -> dict:
    """OTHER's ring after giving us exactly 10.2.200.1, as its donor would send it."""
    theirs = Allocator(OTHER, UNIVERSE, seeds=[ME, OTHER])
    theirs.establish_ring()
    addr = int(ipaddress.IPv4Address("10.2.200.1"))
    theirs.space_requested(ME, addr, addr + 1)
    return theirs.ring.to_dict()


async def test_a_waiter_that_goes_away_leaves_the_lock_free_and_nothing_recorded(network):
    waiter = asyncio.create_task(network.api_claim("gone", ipaddress.IPv4Interface("10.2.200.9/16")))
    await asyncio.sleep(0.1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not network.lock.locked()
    assert network.pending() == {} and network.allocator.addresses("gone") == []
    assert await asyncio.wait_for(network.api_allocate("next"), 1) == ipaddress.IPv4Interface("10.2.0.1/16")


async def test_a_container_that_dies_while_its_request_waits_gets_no_address(network):
    async def wait_as_container():
        async with network.lock:
            return await network._acquire("cid", [_claim("10.2.200.7/16")], is_container=True)
    waiter = asyncio.create_task(wait_as_container())
    await asyncio.sleep(0.1)
    await network.on_event({"id": "cid", "Action": "die"})
    with pytest.raises(UserError, match="stopped while waiting for an address"):
        await asyncio.wait_for(waiter, 2)
    assert network.allocator.addresses("cid") == [] and network.pending() == {}


def _claim(text):
    from weavepy.ipam.request import Claim
    return Claim(ipaddress.IPv4Interface(text))
