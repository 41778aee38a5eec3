"""The control-connection handshake: header, version negotiation, crypto flag, features."""
import json
import struct

import pytest

from weavepy.mesh.framing import frame
from weavepy.mesh.handshake import (FEATURES_LIMIT, Handshake, HandshakeError, State, encode_features)

A = dict(name="aa:00:00:00:00:01", nickname="host-a", uid=111, conn_id=0x0F0F)
B = dict(name="bb:00:00:00:00:02", nickname="host-b", uid=222, conn_id=0x00FF)
GOOD = {"PeerNameFlavour": "mac", "Name": "bb:00:00:00:00:02", "NickName": "host-b", "UID": "222",
        "ConnID": "255", "Overlays": "fastdp sleeve", "Trusted": "false"}


def peer_stream(features=GOOD, flag=0, header=b"weave\x02\x02", raw_features=None):
    body = raw_features if raw_features is not None else json.dumps(features).encode()
    return header + bytes([flag]) + frame(body)


def shake(**kwargs):
    return Handshake(A["name"], A["nickname"], A["uid"], A["conn_id"], **kwargs)


def test_two_ends_agree_on_who_is_who_and_on_the_connection_uid():
    a = shake(overlays=["fastdp", "sleeve"], trusted=True)
    b = Handshake(B["name"], B["nickname"], B["uid"], B["conn_id"], overlays=["sleeve"])
    # Both write at once: only the header goes before the peer's header is read.
    a_out, b_out = a.data_to_send(), b.data_to_send()
    assert a_out == b_out == b"weave\x02\x02"
    a.receive_data(b_out)
    b.receive_data(a_out)
    assert a.state is b.state is State.AWAIT_CRYPTO_FLAG
    a.receive_data(b.data_to_send())
    b.receive_data(a.data_to_send())
    assert a.state is b.state is State.DONE
    assert (a.remote.name, a.remote.nickname, a.remote.uid) == (B["name"], "host-b", 222)
    assert (b.remote.name, b.remote.uid, b.remote.overlays) == (A["name"], 111, ("fastdp", "sleeve"))
    assert a.remote.overlays == ("sleeve",)
    assert b.remote.trusted and not a.remote.trusted
    assert a.remote.conn_uid == b.remote.conn_uid == A["conn_id"] ^ B["conn_id"]
    assert a.version == b.version == 2
    assert a.data_to_send() == b.data_to_send() == b""


def test_every_state_in_turn_when_fed_a_byte_at_a_time():
    hs = shake()
    hs.data_to_send()
    stream = peer_stream() + b"\x00\x00\x00\x01\x00"      # and a heartbeat message after it
    seen = []
    for i in range(len(stream)):
        hs.receive_data(stream[i:i + 1])
        if not seen or seen[-1] is not hs.state:
            seen.append(hs.state)
    assert seen == [State.AWAIT_HEADER, State.AWAIT_CRYPTO_FLAG, State.AWAIT_FEATURES, State.DONE]
    assert hs.remote.name == GOOD["Name"]
    assert hs.trailing == b"\x00\x00\x00\x01\x00"


def test_bytes_after_the_features_belong_to_the_message_stream():
    hs = shake()
    hs.receive_data(peer_stream() + b"\x00\x00")
    assert hs.state is State.DONE and hs.trailing == b"\x00\x00"
    hs.receive_data(b"\x00\x01")
    assert hs.trailing == b"\x00\x00\x00\x01"


def test_our_flag_and_features_follow_the_negotiated_header():
    hs = shake(overlays=["fastdp"], features={"ShortID": "7"})
    hs.data_to_send()
    hs.receive_data(b"weave\x01\x02")
    out = hs.data_to_send()
    assert out[0] == 0                                   # no crypto
    (length,) = struct.unpack(">I", out[1:5])
    sent = json.loads(out[5:5 + length])
    assert sent == {"PeerNameFlavour": "mac", "Name": A["name"], "NickName": "host-a", "UID": "111",
                    "ConnID": str(A["conn_id"]), "Overlays": "fastdp", "Trusted": "false", "ShortID": "7"}


@pytest.mark.parametrize("ours, theirs, agreed", [((2, 2), (1, 2), 2), ((1, 3), (2, 5), 3), ((1, 2), (2, 2), 2)])
def test_the_highest_common_version_is_spoken(ours, theirs, agreed):
    hs = shake(versions=ours)
    hs.receive_data(b"weave" + bytes(theirs))
    assert hs.version == agreed


@pytest.mark.parametrize("ours, theirs", [((2, 2), (1, 1)), ((2, 2), (3, 4)), ((2, 2), (3, 1))])
def test_incompatible_versions(ours, theirs):
    hs = shake(versions=ours)
    with pytest.raises(HandshakeError) as err:
        hs.receive_data(b"weave" + bytes(theirs))
    assert str(err.value) == (f"remote version range [{theirs[0]},{theirs[1]}] "
                              f"is incompatible with ours [{ours[0]},{ours[1]}]")
    assert hs.state is State.FAILED
    assert hs.data_to_send() == b"weave\x02\x02"        # nothing after our header


def test_not_a_weave_peer():
    with pytest.raises(HandshakeError, match="remote protocol header not recognised: b'GET /'"):
        shake().receive_data(b"GET / HTTP/1.1\r\n")


def test_an_encrypting_peer_is_refused_clearly():
    with pytest.raises(HandshakeError, match="^peer requested an encrypted connection, but no password was given$"):
        shake().receive_data(peer_stream(flag=1))
    with pytest.raises(HandshakeError, match="bad encryption flag 7"):
        shake().receive_data(peer_stream(flag=7))


@pytest.mark.parametrize("field", ["PeerNameFlavour", "Name", "NickName", "UID", "ConnID"])
def test_required_features(field):
    features = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(HandshakeError, match=f"^Field {field} is missing$"):
        shake().receive_data(peer_stream(features))


def test_optional_features_have_defaults():
    hs = shake()
    hs.receive_data(peer_stream({k: v for k, v in GOOD.items() if k not in ("Overlays", "Trusted")}))
    assert hs.remote.overlays == () and hs.remote.trusted is False


@pytest.mark.parametrize("change, why", [
    ({"PeerNameFlavour": "hash"}, "Peer name flavour mismatch"),
    ({"Name": "bb:00"}, "feature Name"),
    ({"NickName": ""}, "NickName"),
    ({"NickName": "x" * 256}, "NickName"),
    ({"NickName": "evil\x1b[2J"}, "unprintable"),
    ({"UID": "0"}, "UID is 0"),
    ({"UID": "-1"}, "UID is not a 64-bit decimal"),
    ({"UID": "0x10"}, "UID is not a 64-bit decimal"),
    ({"UID": " 1"}, "UID is not a 64-bit decimal"),
    ({"UID": "１２"}, "UID is not a 64-bit decimal"),          # fullwidth digits: int() would take them
    ({"UID": str(1 << 64)}, "UID is not a 64-bit decimal"),
    ({"ConnID": ""}, "ConnID is not a 64-bit decimal"),
    ({"Trusted": "yes"}, "Trusted is neither"),
    ({"Overlays": "fastdp sle/eve"}, "invalid overlay"),
    ({"ShortID": 7}, "is not a string"),
])
def test_bad_features(change, why):
    hs = shake()
    with pytest.raises(HandshakeError, match=why):
        hs.receive_data(peer_stream({**GOOD, **change}))
    assert hs.state is State.FAILED


@pytest.mark.parametrize("raw, why", [
    (b"[1, 2]", "not a JSON object"),
    (b'{"UID": "1"', "not a JSON object"),
    (b"\xff", "not a JSON object"),
    (b'{"UID": "1", "UID": "2"}', "given twice"),
    (b"[" * 50000, "not a JSON object"),
])
def test_features_that_are_not_a_json_object_of_strings(raw, why):
    with pytest.raises(HandshakeError, match=why):
        shake().receive_data(peer_stream(raw_features=raw))


def test_an_oversized_features_message_is_refused_from_its_length():
    hs = shake()
    with pytest.raises(HandshakeError, match="features message too long"):
        hs.receive_data(b"weave\x02\x02\x00" + struct.pack(">I", FEATURES_LIMIT + 1))


def test_a_failed_handshake_stays_failed():
    hs = shake()
    with pytest.raises(HandshakeError):
        hs.receive_data(b"nonsense")
    with pytest.raises(HandshakeError, match="not recognised"):
        hs.receive_data(peer_stream())
    assert hs.remote is None


def test_overlays_cannot_override_the_routers_features():
    with pytest.raises(ValueError, match="router's own"):
        shake(features={"UID": "1"})
    assert encode_features({"b": "1", "a": "2"}) == b'{"a":"2","b":"1"}'
