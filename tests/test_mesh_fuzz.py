"""Fuzzing what peers send: the sans-IO decoders raise only their own errors, and a live router keeps serving."""
import asyncio
import json
import random
import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from weavepy.mesh import wire
from weavepy.mesh.driver import MeshRouter, Timing
from weavepy.mesh.framing import MessageDecoder, frame
from weavepy.mesh.handshake import Handshake, HandshakeError, State
from weavepy.mesh.wire import ProtocolError

LOOPBACK = "127.0.0.1"
FEATURES = {"PeerNameFlavour": "mac", "Name": "bb:00:00:00:00:02", "NickName": "b", "UID": "9",
            "ConnID": "5", "Overlays": "none", "Trusted": "false"}
GOOD_STREAM = b"weave\x02\x02\x00" + frame(json.dumps(FEATURES).encode())


def fresh():
    return Handshake("aa:00:00:00:00:01", "a", 1, 2)


def feed_handshake(data: bytes, cuts: list[int]):
    """Feed `data` cut at `cuts`; returns the handshake.  Only HandshakeError may escape."""
    hs = fresh()
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        hs.receive_data(data[start:cut])
        start = max(start, cut)
    return hs


chunks = st.lists(st.integers(min_value=0, max_value=400), max_size=8)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), chunks)
def test_handshake_on_random_bytes(data, cuts):
    try:
        hs = feed_handshake(data, cuts)
    except HandshakeError:
        return
    assert hs.state in (State.AWAIT_HEADER, State.AWAIT_CRYPTO_FLAG, State.AWAIT_FEATURES, State.DONE)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), chunks)
def test_handshake_on_random_bytes_after_a_valid_header(data, cuts):
    try:
        feed_handshake(b"weave\x02\x02\x00" + data, cuts)
    except HandshakeError:
        pass


feature_text = st.text(max_size=30)
features = st.dictionaries(st.sampled_from(list(FEATURES) + ["Extra"]) | feature_text, feature_text, max_size=9)


@settings(max_examples=3000)
@given(features, st.booleans())
def test_any_features_are_accepted_whole_or_refused(drawn, based_on_good):
    body = json.dumps({**FEATURES, **drawn} if based_on_good else drawn).encode()
    try:
        hs = feed_handshake(b"weave\x02\x02\x00" + frame(body), [])
    except HandshakeError:
        return
    assert hs.state is State.DONE and hs.remote.uid > 0 and hs.remote.name.count(":") == 5


def test_thousands_of_truncated_and_corrupted_handshakes():
    rng = random.Random(1234)
    completed = 0
    for _ in range(20000):
        data = bytearray(GOOD_STREAM[:rng.randint(0, len(GOOD_STREAM))])
        for _ in range(rng.randint(0, 3)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            hs = feed_handshake(bytes(data), [rng.randint(0, len(data)) for _ in range(rng.randint(0, 4))])
        except HandshakeError:
            continue
        completed += hs.state is State.DONE
    assert completed > 0        # the uncorrupted full streams still work


@settings(max_examples=3000)
@given(st.binary(max_size=300), chunks)
def test_message_decoder_on_random_bytes(data, cuts):
    decoder = MessageDecoder(max_size=64)
    start = 0
    try:
        for cut in sorted(cuts) + [len(data)]:
            for message in decoder.messages(data[start:cut]):
                assert len(message) <= 64
            start = max(start, cut)
    except ProtocolError:
        pass


@settings(max_examples=3000)
@given(st.binary(max_size=1100))
def test_tagged_payload_decoders_on_random_bytes(data):
    for decode in (wire.decode, wire.decode_goodbye, wire.decode_overlay):
        try:
            decode(data)
        except ProtocolError:
            pass


# -- against a live listener -------------------------------------------------------------------

async def _client_handshake(port: int, name: str = "cc:00:00:00:00:03"):
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    hs = Handshake(name, "fuzzer", 77, random.getrandbits(64), overlays=["none"])
    writer.write(hs.data_to_send())
    while hs.state is not State.DONE:
        hs.receive_data(await asyncio.wait_for(reader.read(4096), 5))
        writer.write(hs.data_to_send())
    return reader, writer


async def _send_and_close(port: int, data: bytes):
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(0.01)
    writer.close()


def _garbage_sessions(rng: random.Random):
    for _ in range(60):
        kind = rng.randrange(4)
        if kind == 0:
            yield rng.randbytes(rng.randint(1, 200))
        elif kind == 1:
            yield GOOD_STREAM[:rng.randint(1, len(GOOD_STREAM) - 1)]
        elif kind == 2:
            yield b"weave\x02\x02\x00" + struct.pack(">I", rng.randint(70_000, 1 << 32 - 1))
        else:
            yield b"weave" + rng.randbytes(rng.randint(0, 40))


async def test_a_live_router_survives_garbage_and_still_takes_a_good_peer():
    rng = random.Random(99)
    router = MeshRouter("aa:00:00:00:00:01", "target", port=0, host=LOOPBACK,
                        timing=Timing(handshake_timeout=0.5))
    await router.start()
    good = MeshRouter("bb:00:00:00:00:02", "good", port=0, host=LOOPBACK)
    await good.start()
    try:
        for data in _garbage_sessions(rng):
            await _send_and_close(router.port, data)
        # A peer that never finishes its handshake is cut off at the deadline.
        reader, writer = await asyncio.open_connection(LOOPBACK, router.port)
        assert await asyncio.wait_for(reader.read(), 3) == b"weave\x02\x02"
        writer.close()
        # After a good handshake, garbage messages are dropped (and counted) or end that connection only.
        for payload in (b"", bytes([wire.GOODBYE]) + b"\xff\xfe", bytes([wire.OVERLAY]), bytes([wire.OVERLAY, 5]),
                        bytes([wire.GOSSIP]) + rng.randbytes(50), bytes([wire.CLASH]) + b"{}", bytes([99])):
            reader, writer = await _client_handshake(router.port)
            writer.write(frame(payload))
            writer.write(frame(bytes([wire.GOSSIP_BROADCAST]) + rng.randbytes(30)))
            writer.write(struct.pack(">I", (10 << 20) + 1))          # over the 10 MiB limit: the end
            assert wire.GOODBYE in await asyncio.wait_for(reader.read(), 3)
            writer.close()
        counters = router.metrics()
        assert counters["handshake_failures"] >= 40
        assert counters["malformed_dropped"] >= 4 and counters["unknown_tags"] >= 1
        assert counters["protocol_errors"] == 7

        good.connect([f"{LOOPBACK}:{router.port}"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while [r["State"] for r in router.connection_rows()] != ["established"]:
            assert loop.time() < deadline, router.connection_rows()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)
        assert len(router._conns) == 1          # nothing left behind by the garbage
    finally:
        await good.stop()
        await router.stop()


async def test_accepts_are_throttled_past_a_burst_of_twenty():
    router = MeshRouter("aa:00:00:00:00:01", "target", port=0, host=LOOPBACK)
    await router.start()
    try:
        opened = [await asyncio.open_connection(LOOPBACK, router.port) for _ in range(30)]
        headers = await asyncio.gather(*(asyncio.wait_for(r.readexactly(7), 5) for r, _ in opened))
        assert headers == [b"weave\x02\x02"] * 30          # all served, the last ten a little later
        assert router.metrics()["accept_throttled"] >= 8
        for _, writer in opened:
            writer.close()
    finally:
        await router.stop()


# -- a hundred thousand inputs across every decoder a peer can reach ---------------------------------

def _valid_samples():
    """One well-formed input per decoder, for truncating and corrupting."""
    from weavepy.mesh import gossip
    from weavepy.mesh.clash import Clash, encode_report
    from weavepy.mesh.topology import ConnSummary, PeerInfo, encode_peers
    from weavepy.net import fastdp_heartbeat as hb
    a, b = "aa:00:00:00:00:01", "bb:00:00:00:00:02"
    peers = [PeerInfo(b, "b", 9, 3, {a: ConnSummary("10.0.0.1:6783", True, True)})]
    return {
        "handshake": GOOD_STREAM,
        "framing": frame(wire.encode(wire.GOSSIP, b"x" * 40)) * 2,
        "tagged": wire.encode(wire.GOODBYE, wire.encode_goodbye("bye")),
        "goodbye": wire.encode_goodbye("shutting down"),
        "overlay": wire.encode_overlay(0, b"\x00"),
        "topology": encode_peers(peers)[0],
        "topology-stale": encode_peers(peers)[0],
        "gossip": gossip.encode_gossip("topology", b"payload"),
        "unicast": gossip.encode_unicast("ipam", a, b, b"payload"),
        "broadcast": gossip.encode_broadcast("dns", a, b"payload"),
        "clash": encode_report(Clash(a, ("x", "y"), "10.0.0.3:6783", "message")),
        "heartbeat": hb.encode_heartbeat(a, b, 42, 1376),
        "control": b"\x00",
    }


def _decoders():
    from weavepy.mesh import gossip
    from weavepy.mesh.clash import decode_report
    from weavepy.mesh.topology import decode_peers
    from weavepy.net import fastdp_heartbeat as hb

    def framing(data):
        MessageDecoder().messages(data)
    return {
        "handshake": lambda d: feed_handshake(d, []),
        "framing": framing, "tagged": wire.decode, "goodbye": wire.decode_goodbye,
        "overlay": wire.decode_overlay, "topology": decode_peers, "gossip": gossip.decode_gossip,
        # entries we hold already are stepped over, not decoded: a path of its own
        "topology-stale": lambda d: decode_peers(d, lambda name, uid, version: True),
        "unicast": gossip.decode_unicast, "broadcast": gossip.decode_broadcast,
        "clash": lambda d: decode_report(d, "aa:00:00:00:00:01"),
        "heartbeat": hb.decode_heartbeat, "control": hb.decode_control,
    }


def test_a_hundred_thousand_random_truncated_and_corrupted_inputs():
    rng = random.Random(2026)
    samples, decoders = _valid_samples(), _decoders()
    kinds = sorted(decoders)
    outcomes = {"refused": 0, "accepted": 0}
    for i in range(100_000):
        kind = kinds[i % len(kinds)]
        good = samples[kind]
        how = rng.randrange(3)
        if how == 0:
            data = rng.randbytes(rng.randrange(0, 200))
        else:
            data = bytearray(good[:rng.randrange(len(good) + 1)] if how == 1 else good)
            for _ in range(rng.randint(0, 3)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        try:
            decoders[kind](data)
            outcomes["accepted"] += 1
        except ProtocolError:  # HandshakeError is one; nothing else may escape
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50_000 and outcomes["accepted"] > 1_000, outcomes
