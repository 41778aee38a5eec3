"""The sleeve's wire format (net/sleeve_codec.py): every message round-trips, the decoder raises only
SleeveDecodeError whatever arrives, and the Reassembler rebuilds frames from chunks in any order,
never from an incomplete set, in bounded memory."""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from weavepy.mesh.wire import ProtocolError
from weavepy.net import sleeve_codec as sc
from weavepy.net.sleeve_codec import (ACK, DECODE_ERRORS, FRAME_HEAD, HOLD, MAX_CHUNKS, MAX_FRAME, Frame,
                                      Heartbeat, PmtuAck, Probe, Reassembler, SleeveDecodeError, chunks,
                                      decode_control, decode_datagram)

A, B, C = b"\x5a\x7c\x00\x00\x00\x01", b"\x5a\x7c\x00\x00\x00\x02", b"\x5a\x7c\x00\x00\x00\x03"
names = st.binary(min_size=6, max_size=6)


def frame_bytes(total: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(total)


def datagrams(frame: bytes, dgram_max: int, **head) -> list[bytes]:
    head = {"sender": A, "src": A, "dst": B, **head}
    return [bytes(h) + bytes(d) for h, d in chunks(memoryview(frame), dgram_max, **head)]


def decode_kind(data) -> str | None:
    try:
        decode_datagram(data)
    except SleeveDecodeError as exc:
        assert exc.kind in DECODE_ERRORS
        return exc.kind
    return None


# -- round trips -----------------------------------------------------------------------------------

def test_a_small_frame_is_one_datagram_with_the_documented_layout():
    frame = frame_bytes(60)
    [dgram] = datagrams(frame, 1472, flags=sc.FLOOD, hops=16, frame_id=0x01020304)
    assert len(dgram) == FRAME_HEAD + 60 == 94
    assert dgram[:2] == b"\x01\x01" and dgram[2:8] == A and dgram[8:14] == A and dgram[14:20] == B
    assert dgram[20:22] == bytes([sc.FLOOD, 16])
    assert dgram[22:34] == bytes.fromhex("01020304" "0000" "0001" "0000003c")
    f = decode_datagram(dgram)
    assert f == Frame(A, A, B, sc.FLOOD, 16, 0x01020304, 0, 1, 60, 60, memoryview(frame))
    assert Reassembler().add(A, f, 0.0) is f.data              # single chunk: the data view as is


def test_a_super_frame_is_cut_into_equal_chunks_but_the_last():
    total = 10 + 14 + 60000                     # vnet + Ethernet + a GSO super-frame (design §6)
    parts = chunks(memoryview(frame_bytes(total)), 1472, sender=A, src=A, dst=C, flags=sc.VNET, frame_id=9)
    assert len(parts) == 42 and {len(h) for h, _ in parts} == {FRAME_HEAD}
    assert {len(d) for _, d in parts[:-1]} == {1438} and len(parts[-1][1]) == total - 41 * 1438
    for i, (head, data) in enumerate(parts):
        f = decode_datagram(bytes(head) + bytes(data))
        assert (f.index, f.count, f.total, f.chunk_len, f.flags, f.dst) == (i, 42, total, 1438, sc.VNET, C)


def test_chunk_headers_are_packed_into_the_callers_buffer_beside_views_of_the_frame():
    frame = memoryview(frame_bytes(5000))
    heads = bytearray(sc.HEADS_BUFFER)
    count, size = sc.pack_chunk_heads(heads, len(frame), 1000, A, A, B, 0, 5, 77)
    assert (count, size) == (6, 966)
    for i in range(count):
        f = decode_datagram(heads[i * FRAME_HEAD:(i + 1) * FRAME_HEAD] + frame[i * size:(i + 1) * size])
        assert (f.index, f.hops, f.frame_id) == (i, 5, 77)
    assert all(d.obj is frame.obj for _, d in chunks(frame, 1000, sender=A, src=A, dst=B))


def test_senders_refuse_what_a_receiver_would_reject():
    for total, dgram_max in ((0, 1472), (MAX_FRAME + 1, 65507), (100, FRAME_HEAD), (MAX_FRAME, 290)):
        with pytest.raises(ValueError):
            sc.chunk_plan(total, dgram_max)
    assert sc.chunk_plan(MAX_FRAME, 548) == (128, 514)          # the floor datagram: within MAX_CHUNKS
    assert sc.chunk_plan(MAX_FRAME, 100000)[0] == 2              # never over the UDP maximum
    with pytest.raises(ValueError):
        sc.encode_probe(A, 1, 2, 21)


@given(sender=names, uid=st.integers(0, 2**64 - 1), receiver=names)
def test_heartbeats_round_trip(sender, uid, receiver):
    data = sc.encode_heartbeat(sender, uid, receiver)
    assert len(data) == sc.HEARTBEAT_SIZE == 22
    assert decode_datagram(data) == Heartbeat(sender, uid, receiver)


@given(sender=names, uid=st.integers(0, 2**64 - 1), probe_id=st.integers(0, 2**32 - 1),
       size=st.integers(22, 9000))
def test_probes_round_trip_and_are_exactly_their_size(sender, uid, probe_id, size):
    data = sc.encode_probe(sender, uid, probe_id, size)
    assert len(data) == size
    assert decode_datagram(data) == Probe(sender, uid, probe_id, size)
    assert decode_kind(data[:-1]) == ("short" if size == 22 else "length")


@given(probe_id=st.integers(0, 2**32 - 1), size=st.integers(0, 65535))
def test_control_messages_round_trip(probe_id, size):
    ack = sc.encode_pmtu_ack(probe_id, size)
    assert len(ack) == 7 and ack[0] == sc.PMTU_ACK
    assert decode_control(ack) == PmtuAck(probe_id, size)
    assert decode_control(ACK) == ACK == b"\x00" and decode_control(HOLD) == HOLD == b"\x01"
    assert decode_control(memoryview(ack)) == PmtuAck(probe_id, size)


@given(st.binary(max_size=16))
def test_control_decoder_raises_only_decode_errors(data):
    try:
        decode_control(data)
    except SleeveDecodeError as exc:
        assert exc.kind in DECODE_ERRORS
        assert isinstance(exc, ProtocolError)       # the driver counts it as a malformed message


# -- the decoder, fuzzed ---------------------------------------------------------------------------

def test_each_error_kind():
    good = datagrams(frame_bytes(3000), 1472)
    assert decode_kind(b"\x01\x01\x00") == "short"
    assert decode_kind(good[0][:FRAME_HEAD]) == "short"                    # a chunk without data
    assert decode_kind(b"\x02" + good[0][1:]) == "version"
    assert decode_kind(b"\x01\x09" + good[0][2:]) == "type"
    assert decode_kind(sc.encode_heartbeat(A, 1, B) + b"\0") == "length"

    def patched(fmt: str, offset: int, value: int, dgram=good[0]) -> bytes:
        data = bytearray(dgram)
        struct.pack_into(fmt, data, offset, value)
        return bytes(data)
    assert decode_kind(patched("!I", 30, MAX_FRAME + 1)) == "length"       # total over the limit
    assert decode_kind(datagrams(frame_bytes(13), 1472)[0]) == "length"    # no room for an Ethernet header
    assert decode_kind(datagrams(frame_bytes(23), 1472, flags=sc.VNET)[0]) == "length"
    assert decode_kind(patched("!H", 26, 3)) == "chunk"                    # index >= count
    assert decode_kind(patched("!H", 28, 0)) == "chunk"                    # count 0
    assert decode_kind(patched("!H", 28, MAX_CHUNKS + 1)) == "chunk"
    assert decode_kind(patched("!I", 30, 1438 * 3 + 1)) == "chunk"         # 3 chunks of 1438 cannot hold it
    assert decode_kind(patched("!I", 30, 2001, good[-1])) == "chunk"        # 2001 - 124 is no 2 x L
    assert decode_kind(patched("!I", 30, 324, good[-1])) == "chunk"         # L = 100, shorter than the last
    assert decode_kind(datagrams(frame_bytes(100), 1472)[0][:-1]) == "length"
    with pytest.raises(SleeveDecodeError) as exc:
        decode_datagram(b"")
    assert exc.value.kind == "short" and str(exc.value) == "short: 0-byte datagram"


@settings(max_examples=3000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_errors(data):
    decode_kind(data)


@settings(max_examples=3000)
@given(st.sampled_from([1, 2, 3]), st.binary(max_size=120))
def test_arbitrary_bodies_behind_a_valid_head_raise_only_decode_errors(kind, body):
    decode_kind(bytes((1, kind)) + A + body)


def valid_datagrams():
    frames = [datagrams(frame_bytes(n), m, flags=f) for n, m, f in
              ((60, 1472, 0), (3000, 1472, sc.VNET), (65000, 9000, sc.VNET | sc.FLOOD), (700, 300, 0))]
    return [d for f in frames for d in f] + [sc.encode_heartbeat(A, 5, B), sc.encode_probe(A, 5, 6, 600)]


VALID = valid_datagrams()


@settings(max_examples=3000)
@given(st.sampled_from(VALID), st.integers(0, 10000))
def test_truncated_datagrams_raise_only_decode_errors(dgram, cut):
    kind = decode_kind(dgram[:len(dgram) - 1 - cut % len(dgram)])
    # a cut chunk may still read as one of a frame with a smaller L: the Reassembler sees the L differ
    assert kind is not None or (dgram[1] == sc.FRAME and decode_datagram(dgram).count > 1)


@settings(max_examples=3000)
@given(st.sampled_from(VALID), st.lists(st.integers(0, 34 * 8 - 1), min_size=1, max_size=4))
def test_bit_flipped_headers_raise_only_decode_errors(dgram, bits):
    data = bytearray(dgram)
    for bit in bits:
        if bit // 8 < len(data):
            data[bit // 8] ^= 1 << bit % 8
    result = None
    try:
        result = decode_datagram(data)
    except SleeveDecodeError as exc:
        assert exc.kind in DECODE_ERRORS
    if isinstance(result, Frame):                # whatever passes is self-consistent: it fits its frame
        assert result.index * result.chunk_len + len(result.data) <= result.total <= MAX_FRAME
        assert len(result.data) <= result.chunk_len and result.index < result.count <= MAX_CHUNKS


# -- reassembly ------------------------------------------------------------------------------------

@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(total=st.integers(14, MAX_FRAME), dgram_max=st.integers(548, 9000), seed=st.integers(0, 2**32 - 1),
       data=st.data())
def test_a_frame_reassembles_from_chunks_in_any_order_with_duplicates(total, dgram_max, seed, data):
    frame = frame_bytes(total, seed)
    dgrams = datagrams(frame, dgram_max, frame_id=seed)
    arrivals = data.draw(st.permutations(range(len(dgrams))))
    dups = data.draw(st.lists(st.sampled_from(arrivals[:-1]), max_size=5)) if len(dgrams) > 1 else []
    r = Reassembler()
    for d in dups:                                # each after its first copy, before the last chunk
        arrivals.insert(arrivals.index(d) + 1, d)
    out = [r.add(A, decode_datagram(dgrams[i]), 0.0) for i in arrivals]
    assert all(o is None for o in out[:-1]) and bytes(out[-1]) == frame
    if len(dgrams) > 1:
        assert r.counters["duplicate"] == len(dups) and r.counters["completed"] == 1
    assert r.in_use == 0 and r.evicted == 0


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(total=st.integers(1000, 20000), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_missing_chunks_never_complete_a_frame(total, seed, data):
    dgrams = datagrams(frame_bytes(total, seed), 548)
    missing = data.draw(st.sets(st.integers(0, len(dgrams) - 1), min_size=1))
    present = [i for i in range(len(dgrams)) if i not in missing]
    arrivals = data.draw(st.lists(st.sampled_from(present), max_size=3 * len(dgrams))) if present else []
    r = Reassembler()
    assert all(r.add(A, decode_datagram(dgrams[i]), 0.5) is None for i in arrivals + present)


def test_frames_from_many_senders_interleave():
    frames = {(s, fid): frame_bytes(5000, s * 10 + fid) for s in range(20) for fid in range(2)}
    arrivals = [(s, fid, d) for (s, fid), f in frames.items() for d in datagrams(f, 1472, frame_id=fid)]
    random.Random(1).shuffle(arrivals)
    r, done = Reassembler(), {}
    for s, fid, d in arrivals:
        out = r.add(s, decode_datagram(d), 0.0)
        if out is not None:
            done[s, fid] = bytes(out)             # the view is only valid until the next add
    assert done == frames and r.allocated <= 40 and r.evicted == 0


def test_old_slots_a_third_frame_and_a_full_table_evict_the_oldest_and_count_it():
    parts = {fid: datagrams(frame_bytes(3000, fid), 1472, frame_id=fid) for fid in range(4)}
    r = Reassembler(per_sender=2, total=3)
    r.add(A, decode_datagram(parts[0][0]), 0.0)
    r.add(A, decode_datagram(parts[1][0]), 0.1)
    r.add(A, decode_datagram(parts[2][0]), 0.2)              # a third from A: frame 0 goes
    assert r.counters["evicted_per_sender"] == 1 and r.in_use == 2
    assert all(r.add(A, decode_datagram(d), 0.3) is None for d in parts[0][1:])   # 0 restarts, 1 goes
    assert r.counters["evicted_per_sender"] == 2
    r.add(B, decode_datagram(parts[3][0]), 0.4)
    r.add(C, decode_datagram(parts[3][0]), 0.5)              # the table is full: the oldest (A's 2) goes
    assert r.counters["evicted_full"] == 1 and r.in_use == 3 and r.allocated == 3
    r.add(C, decode_datagram(parts[1][0]), 1.35)             # A's frame 0 (from 0.3) is over 1 s old
    assert r.counters["evicted_stale"] == 1
    r.expire(10.0)
    assert r.counters["evicted_stale"] == 4 and r.in_use == 0 and r.evicted == 7
    out = [r.add(B, decode_datagram(d), 11.0) for d in parts[2]]    # and the buffers are reused
    assert bytes(out[-1]) == frame_bytes(3000, 2) and r.allocated == 3


def test_a_reused_frame_id_with_another_shape_starts_the_frame_again():
    r = Reassembler()
    first = datagrams(frame_bytes(3000, 1), 1472, frame_id=7)
    second = datagrams(frame_bytes(4000, 2), 1472, frame_id=7)
    r.add(A, decode_datagram(first[0]), 0.0)
    out = [r.add(A, decode_datagram(d), 0.1) for d in second]
    assert bytes(out[-1]) == frame_bytes(4000, 2) and r.counters["evicted_replaced"] == 1


def test_memory_is_bounded_whatever_arrives():
    """100k random but valid chunks from 500 senders: slots never exceed `total`, nothing crashes."""
    rng = random.Random(12)
    r = Reassembler(per_sender=2, total=64)
    now, completed, peak = 0.0, 0, 0
    for _ in range(100_000):
        count = rng.randint(2, MAX_CHUNKS)
        chunk_len = rng.randint(1, MAX_FRAME // count)
        last = rng.randint(1, chunk_len)
        total = chunk_len * (count - 1) + last
        if total < 14:
            continue
        index = rng.randrange(count)
        size = last if index == count - 1 else chunk_len
        head = sc._FRAME.pack(1, sc.FRAME, b"sender", A, B, 0, 16, rng.randrange(8), index, count, total)
        f = decode_datagram(head + bytes(size))
        completed += r.add(rng.randrange(500), f, now) is not None
        now += rng.random() * 0.001
        peak = max(peak, r.in_use)
        assert r.allocated <= 64 and r.in_use <= 64 and len(r._of_sender) <= 64
    assert peak == 64 and r.evicted > 90_000
    assert r.allocated * MAX_FRAME <= 64 * 66_000
