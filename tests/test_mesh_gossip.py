import random
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from mesh_sim import GSet, GSetData
from test_mesh_routes import symmetric, table
from weavepy.mesh import wire
from weavepy.mesh.gossip import (GOSSIP_INTERVAL, MAX_CHANNELS, GossipRouter, NoRoute, SurrogateGossiper,
                                 decode_broadcast, decode_gossip, decode_unicast, encode_broadcast,
                                 encode_gossip, encode_unicast)
from weavepy.mesh.routes import Routes

A, B, C, D = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c", "02:00:00:00:00:0d"


class Links:
    """Peer A in the line A - B - C, with D hanging off A: connections named after the neighbour."""

    def __init__(self):
        self.ourself = A
        self.routes = Routes(table(symmetric((A, B), (B, C), (A, D))), A)

    def connection_to(self, name):
        return f"conn-{name}" if name in (B, D) else None


@pytest.fixture
def router():
    sent = []
    clock = [0.0]
    r = GossipRouter(Links(), random.Random(1), sent.append, Counter(), lambda: clock[0])
    r.sent, r.clock = sent, clock
    return r


def sends(router):
    """Everything sent since the last look: unicasts at once, the rest from the slots."""
    out = [(s.conn_id, s.tag, s.payload) for s in router.sent + router.take_sends()]
    router.sent.clear()
    return out


# -- envelopes -------------------------------------------------------------------

def test_envelopes_carry_channel_names_and_payload():
    assert decode_gossip(encode_gossip("nameserver", b"x")) == ("nameserver", b"x")
    assert decode_unicast(encode_unicast("IPallocation", A, B, b"")) == ("IPallocation", A, B, b"")
    assert decode_broadcast(encode_broadcast("topology", C, b"\x00\x01")) == ("topology", C, b"\x00\x01")


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_envelope_decoders_fail_only_with_protocol_error(data):
    for decode in (decode_gossip, decode_unicast, decode_broadcast):
        try:
            decode(data)
        except wire.ProtocolError:
            pass


@pytest.mark.parametrize("data", [b"", b"\x00payload", b"\x05ab", b"\x02\xff\xfe"])
def test_envelopes_need_a_channel_name(data):
    with pytest.raises(wire.ProtocolError):
        decode_gossip(data)


# -- relaying ---------------------------------------------------------------------

def test_gossip_news_is_passed_on_but_not_back_to_its_sender(router):
    gset = GSet()
    gset.channel = router.channel("gset", gset)
    router.receive("conn-" + B, B, wire.GOSSIP, encode_gossip("gset", b"x\ny"))
    assert gset.items == {"x", "y"}
    assert sends(router) == [("conn-" + D, wire.GOSSIP, encode_gossip("gset", b"x\ny"))]
    router.receive("conn-" + D, D, wire.GOSSIP, encode_gossip("gset", b"y\nx"))   # nothing new
    assert sends(router) == []


def test_only_the_new_part_of_gossip_travels_on(router):
    gset = GSet()
    gset.channel = router.channel("gset", gset)
    gset.items = {"x"}
    router.receive("conn-" + D, D, wire.GOSSIP, encode_gossip("gset", b"x\nz"))
    assert sends(router) == [("conn-" + B, wire.GOSSIP, encode_gossip("gset", b"z"))]


def test_a_broadcast_is_merged_and_passed_down_the_originators_tree(router):
    gset = GSet()
    gset.channel = router.channel("gset", gset)
    router.receive("conn-" + B, B, wire.GOSSIP_BROADCAST, encode_broadcast("gset", C, b"new"))
    assert sends(router) == [("conn-" + D, wire.GOSSIP_BROADCAST, encode_broadcast("gset", C, b"new"))]
    router.receive("conn-" + B, B, wire.GOSSIP_BROADCAST, encode_broadcast("gset", C, b"new"))
    assert sends(router) == []
    router.receive("conn-" + B, B, wire.GOSSIP_BROADCAST, encode_broadcast("gset", A, b"other"))
    assert sends(router) == [] and "other" not in gset.items and router._stats["looped"] == 1


def test_our_broadcast_goes_to_every_neighbour_on_our_tree(router):
    gset = GSet()
    gset.channel = router.channel("gset", gset)
    gset.add("mine")
    assert sorted(sends(router)) == [("conn-" + B, wire.GOSSIP_BROADCAST, encode_broadcast("gset", A, b"mine")),
                                     ("conn-" + D, wire.GOSSIP_BROADCAST, encode_broadcast("gset", A, b"mine"))]


def test_unicasts_for_others_travel_on_unchanged_and_ours_are_delivered(router):
    gset = GSet()
    gset.channel = router.channel("gset", gset)
    for_c = encode_unicast("gset", D, C, b"hello")
    router.receive("conn-" + D, D, wire.GOSSIP_UNICAST, for_c)
    assert sends(router) == [("conn-" + B, wire.GOSSIP_UNICAST, for_c)]
    router.receive("conn-" + B, B, wire.GOSSIP_UNICAST, encode_unicast("gset", C, A, b"for you"))
    assert gset.unicasts == [(C, b"for you")] and sends(router) == []
    router.receive("conn-" + B, B, wire.GOSSIP_UNICAST, encode_unicast("gset", C, "02:00:00:00:00:99", b""))
    assert router._stats["unroutable"] == 1


def test_a_unicast_with_no_route_is_an_error(router):
    channel = router.channel("gset", GSet())
    channel.unicast(C, b"ok")
    assert sends(router) == [("conn-" + B, wire.GOSSIP_UNICAST, encode_unicast("gset", A, C, b"ok"))]
    with pytest.raises(NoRoute):
        channel.unicast("02:00:00:00:00:99", b"lost")


def test_periodic_gossip_sends_complete_state_and_a_new_neighbour_gets_it_all(router):
    gset = GSet()
    gset.channel = router.channel("gset", gset)
    router.channel("empty", GSet())          # nothing to say: no message
    gset.items = {"a", "b"}
    router.gossip_periodic()
    assert sorted(sends(router)) == [(f"conn-{n}", wire.GOSSIP, encode_gossip("gset", b"a\nb")) for n in (B, D)]
    router.send_all_down("conn-" + D)
    assert sends(router) == [("conn-" + D, wire.GOSSIP, encode_gossip("gset", b"a\nb"))]


def test_waiting_gossip_is_merged_and_a_paused_connection_gets_one_update_later(router):
    channel = router.channel("gset", GSet())
    router.pause("conn-" + D)
    channel.gossip_neighbours(GSetData({"1"}))
    channel.gossip_neighbours(GSetData({"2"}))
    assert sends(router) == [("conn-" + B, wire.GOSSIP, encode_gossip("gset", b"1\n2"))]
    channel.gossip_neighbours(GSetData({"3"}))
    assert sends(router) == [("conn-" + B, wire.GOSSIP, encode_gossip("gset", b"3"))]
    router.resume("conn-" + D)
    assert sends(router) == [("conn-" + D, wire.GOSSIP, encode_gossip("gset", b"1\n2\n3"))]
    router.pause("conn-" + D)
    channel.gossip_neighbours(GSetData({"4"}))
    router.connection_gone("conn-" + D)       # what waited for a closed connection is dropped
    router.take_sends()
    router.resume("conn-" + D)
    assert ("conn-" + D) not in [s[0] for s in sends(router)]


def test_each_channel_has_one_gossiper(router):
    router.channel("gset", GSet())
    with pytest.raises(ValueError, match="already"):
        router.channel("gset", GSet())
    with pytest.raises(ValueError):
        router.channel("x" * 256, GSet())


# -- surrogates ----------------------------------------------------------------------

def test_a_surrogate_relays_a_channel_nobody_here_serves(router):
    router.receive("conn-" + B, B, wire.GOSSIP_BROADCAST, encode_broadcast("nameserver", C, b"rec"))
    assert sends(router) == [("conn-" + D, wire.GOSSIP_BROADCAST, encode_broadcast("nameserver", C, b"rec"))]
    router.receive("conn-" + B, B, wire.GOSSIP, encode_gossip("nameserver", b"state"))
    assert sends(router) == [("conn-" + D, wire.GOSSIP, encode_gossip("nameserver", b"state"))]
    router.clock[0] = GOSSIP_INTERVAL - 1
    router.receive("conn-" + D, D, wire.GOSSIP, encode_gossip("nameserver", b"state"))   # seen: dropped
    assert sends(router) == []
    router.clock[0] = GOSSIP_INTERVAL + 1
    router.receive("conn-" + D, D, wire.GOSSIP, encode_gossip("nameserver", b"state"))
    assert sends(router) == [("conn-" + B, wire.GOSSIP, encode_gossip("nameserver", b"state"))]
    router.receive("conn-" + B, B, wire.GOSSIP_UNICAST, encode_unicast("nameserver", C, A, b"for us"))
    router.gossip_periodic()
    assert sends(router) == []              # a surrogate never speaks for itself


def test_a_service_takes_over_from_its_surrogate(router):
    router.receive("conn-" + B, B, wire.GOSSIP, encode_gossip("gset", b"early"))
    router.take_sends()
    gset = GSet()
    router.channel("gset", gset)
    router.receive("conn-" + B, B, wire.GOSSIP, encode_gossip("gset", b"late"))
    assert gset.items == {"late"}


def test_a_peer_cannot_make_us_hold_unlimited_channels(router):
    for i in range(MAX_CHANNELS + 5):
        router.receive("conn-" + B, B, wire.GOSSIP, encode_gossip(f"junk{i}", b"x"))
    assert len(router.channels) == MAX_CHANNELS and router._stats["too_many_channels"] == 5


def test_a_surrogate_forgets_what_it_saw_after_the_interval():
    clock = [0.0]
    surrogate = SurrogateGossiper(lambda: clock[0])
    assert surrogate.on_gossip(b"a") is not None and surrogate.on_gossip(b"a") is None
    clock[0] = GOSSIP_INTERVAL
    assert surrogate.on_gossip(b"a") is not None
    assert surrogate.on_broadcast(A, b"a").encode() == [b"a"] and surrogate.gossip() is None
