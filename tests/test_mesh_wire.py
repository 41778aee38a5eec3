"""Framing (u32 length + payload) and the tagged-message codecs the connection driver reads."""
import struct

import pytest

from weavepy.mesh import wire
from weavepy.mesh.framing import MAX_MESSAGE, MessageDecoder, frame


def test_messages_come_out_whole_however_the_stream_is_cut():
    payloads = [b"", b"x", bytes(range(256)) * 3, wire.encode(wire.GOODBYE, b"bye")]
    stream = b"".join(frame(p) for p in payloads)
    assert MessageDecoder().messages(stream) == payloads
    for cut in (1, 3, 7, 100):
        decoder = MessageDecoder()
        out = []
        for i in range(0, len(stream), cut):
            out += decoder.messages(stream[i:i + cut])
        assert out == payloads
        assert decoder.buffered == 0


def test_a_partial_message_waits_for_the_rest():
    decoder = MessageDecoder()
    data = frame(b"hello")
    assert decoder.messages(data[:6]) == []
    assert decoder.buffered == 6
    assert decoder.messages(data[6:] + data[:2]) == [b"hello"]
    assert decoder.buffered == 2


def test_a_length_over_the_limit_ends_the_stream_before_any_buffering():
    decoder = MessageDecoder(max_size=16)
    assert decoder.messages(frame(b"a" * 16)) == [b"a" * 16]
    with pytest.raises(wire.ProtocolError, match="message too long: 17 bytes"):
        decoder.messages(struct.pack(">I", 17))
    assert decoder.buffered == 0
    with pytest.raises(wire.ProtocolError, match=f"limit {MAX_MESSAGE}"):
        MessageDecoder().messages(struct.pack(">I", MAX_MESSAGE + 1) + b"x")


def test_messages_before_a_bad_length_are_still_delivered():
    decoder = MessageDecoder(max_size=16)
    decoder.feed(frame(b"one") + frame(b"two") + struct.pack(">I", 17) + b"junk")
    assert decoder.next_message() == b"one"
    assert decoder.next_message() == b"two"
    with pytest.raises(wire.ProtocolError, match="too long"):
        decoder.next_message()


def test_we_never_frame_what_a_peer_would_refuse():
    assert len(frame(b"\0" * MAX_MESSAGE)) == MAX_MESSAGE + 4
    with pytest.raises(ValueError):
        frame(b"\0" * (MAX_MESSAGE + 1))


def test_tagged_messages():
    assert wire.decode(wire.encode(wire.GOSSIP, b"data")) == (wire.GOSSIP, b"data")
    assert wire.decode(wire.encode(wire.HEARTBEAT)) == (wire.HEARTBEAT, b"")
    with pytest.raises(wire.ProtocolError, match="empty message"):
        wire.decode(b"")


def test_goodbye_reasons():
    assert wire.decode_goodbye(wire.encode_goodbye("cannot connect to ourself")) == "cannot connect to ourself"
    long = wire.encode_goodbye("é" * 2000)         # cut on a character boundary, within the limit
    assert len(long) <= wire.GOODBYE_LIMIT
    assert wire.decode_goodbye(long) == "é" * (len(long) // 2)
    for bad, why in ((b"\xff\xfe", "not UTF-8"), (b"line\nbreak", "control"),
                     (b"a" * (wire.GOODBYE_LIMIT + 1), "too long")):
        with pytest.raises(wire.ProtocolError, match=why):
            wire.decode_goodbye(bad)


def test_overlay_control_messages():
    assert wire.decode_overlay(wire.encode_overlay(0, b"ack")) == (0, b"ack")
    assert wire.decode_overlay(wire.encode_overlay(3, b"")) == (3, b"")
    with pytest.raises(wire.ProtocolError):
        wire.decode_overlay(b"")
    with pytest.raises(ValueError):
        wire.encode_overlay(256, b"")
