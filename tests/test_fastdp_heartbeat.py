"""fastdp's sans-IO parts: the heartbeat frame and control decoders (fuzzed), one link's
heartbeat state between two simulated ends, and the VTEP table's kernel-state lifetimes."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from weavepy.mesh.wire import ProtocolError
from weavepy.net.fastdp import FastDP
from weavepy.net.fastdp_heartbeat import (ACK, HOLD, Established, Health, HeartbeatLink, SendControl, SendHeartbeat,
                                          Timers, decode_control, decode_heartbeat, encode_heartbeat, encode_vxlan)
from weavepy.net.fastdp_vteps import AddFlood, RemoveVtep, VtepTable

A_MAC, B_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))


# -- wire format -----------------------------------------------------------------------------------

def test_heartbeat_is_exactly_one_mtu_frame_and_round_trips():
    frame = encode_heartbeat(B_MAC, A_MAC, 0xDEADBEEF, 1376)
    assert len(frame) == 14 + 1376
    assert frame[:6] == bytes.fromhex("02000000000b") and frame[12:14] == b"\x88\xb5"
    hb = decode_heartbeat(frame)
    assert (hb.dst, hb.src, hb.conn_uid) == (B_MAC, A_MAC, 0xDEADBEEF)
    datagram = encode_vxlan(0x574E, frame)
    assert datagram[:8] == bytes([0x08, 0, 0, 0, 0x00, 0x57, 0x4E, 0])  # RFC 7348: I flag, VNI, reserved


@given(dst=macs, src=macs, uid=st.integers(0, 2**64 - 1), mtu=st.integers(68, 9000))
def test_any_heartbeat_round_trips(dst, src, uid, mtu):
    hb = decode_heartbeat(encode_heartbeat(dst, src, uid, mtu))
    assert (hb.dst, hb.src, hb.conn_uid) == (dst, src, uid)


@given(mtu=st.integers(68, 3000), cut=st.integers(1, 3000))
def test_truncated_heartbeat_is_rejected(mtu, cut):
    frame = encode_heartbeat(B_MAC, A_MAC, 7, mtu)
    with pytest.raises(ProtocolError):
        decode_heartbeat(frame[:max(0, len(frame) - cut)])


@given(st.binary(max_size=2000))
def test_heartbeat_decoder_only_raises_protocol_error(data):
    try:
        decode_heartbeat(data)
    except ProtocolError:
        pass


@given(st.binary(max_size=16))
def test_control_decoder_accepts_ack_and_hold_only(data):
    if data in (ACK, HOLD):
        assert decode_control(data) == data
    else:
        with pytest.raises(ProtocolError):
            decode_control(data)


@given(st.binary(max_size=2000))
def test_overlay_counts_garbage_from_the_packet_socket(data):
    overlay = FastDP(A_MAC)
    overlay._heartbeat_frame(data)      # what the packet socket hands over: never raises
    assert overlay.metrics["bad_heartbeats"] == 1
    assert overlay.metrics["heartbeats_received"] == 0


# -- one link, both ends ---------------------------------------------------------------------------

T = Timers(fast=0.5, slow=10.0, give_up=5.0, missed=3)


class TwoEnds:
    """Two HeartbeatLinks joined by a lossy UDP path (per direction) and a reliable, instant TCP one."""

    def __init__(self, timers: Timers = T):
        self.now = 0.0
        self.links = {"a": HeartbeatLink("b:6784", timers), "b": HeartbeatLink("a:6784", timers)}
        self.udp_ok = {"a": True, "b": True}    # heartbeats *from* this side arrive
        self.sent = {"a": 0, "b": 0}
        self.events = {"a": [], "b": []}

    def other(self, side):
        return "b" if side == "a" else "a"

    def apply(self, side, actions):
        peer = self.other(side)
        for action in actions:
            if isinstance(action, SendHeartbeat):
                self.sent[side] += 1
                if self.udp_ok[side]:
                    self.apply(peer, self.links[peer].heartbeat_received(self.now))
            elif isinstance(action, SendControl):
                self.events[side].append(("control", action.data))
                self.apply(peer, self.links[peer].control_received(action.data, self.now))
            else:
                self.events[side].append((self.now, action))

    def confirm(self):
        for side in ("a", "b"):
            self.apply(side, self.links[side].confirm(self.now))

    def run_until(self, t):
        while True:
            due = [d for d in (link.next_deadline() for link in self.links.values()) if d is not None]
            if not due or min(due) > t:
                self.now = t
                return
            self.now = max(self.now, min(due))
            for side, link in self.links.items():
                deadline = link.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.apply(side, link.tick(self.now))

    def happened(self, side, kind):
        return [(t, e) for t, e in self.events[side] if isinstance(e, kind)]


def test_both_ways_proven_establishes_both_ends_with_one_ack_each():
    ends = TwoEnds()
    ends.confirm()
    ends.run_until(1.0)
    for side in ("a", "b"):
        link = ends.links[side]
        assert link.established and link.healthy and link.error is None
        assert len(ends.happened(side, Established)) == 1
        assert ends.events[side].count(("control", ACK)) == 1
    ends.run_until(60.0)        # acked: heartbeats every 10 s, no more acks, no health change
    assert 5 <= ends.sent["a"] <= 8
    assert ends.events["a"].count(("control", ACK)) == 1
    assert ends.happened("a", Health) == []


def test_blocked_direction_never_establishes_and_says_why():
    ends = TwoEnds()
    ends.udp_ok["a"] = False        # a's heartbeats are dropped (b's firewall, or too big for the path)
    ends.confirm()
    ends.run_until(4.0)
    assert ends.links["a"].error is None            # still trying: no verdict before give_up
    ends.run_until(5.0)
    assert ends.links["a"].error == "no heartbeat ack from b:6784 (UDP blocked or MTU too small)"
    assert ends.links["b"].error == "no heartbeat from a:6784 reaches us (UDP blocked towards us or MTU too small)"
    sent_at_give_up = ends.sent["a"]
    assert sent_at_give_up == 11                    # every 0.5 s from 0 to 5 s
    ends.run_until(65.0)
    assert ends.sent["a"] - sent_at_give_up == 6    # then every 10 s
    assert not ends.links["a"].established and not ends.links["b"].established
    assert ends.happened("a", Established) == ends.happened("b", Established) == []

    ends.udp_ok["a"] = True                         # firewall opened: proven at the next heartbeat
    ends.run_until(76.0)
    assert ends.links["a"].established and ends.links["b"].established
    assert ends.links["a"].error is None and ends.links["b"].error is None


@pytest.mark.parametrize("broken", [("a",), ("b",), ("a", "b")])
def test_lost_heartbeats_mark_both_ends_unhealthy_and_recovery_is_fast(broken):
    ends = TwoEnds()
    ends.confirm()
    ends.run_until(20.0)
    for side in broken:
        ends.udp_ok[side] = False
    ends.run_until(60.0)            # > 3 x 10 s without a heartbeat in a broken direction
    for side in ("a", "b"):
        assert not ends.links[side].healthy, side
        assert [e.healthy for _, e in ends.happened(side, Health)] == [False]
        assert ends.links[side].error
    for side in broken:
        ends.udp_ok[side] = True
    restored = ends.now
    ends.run_until(restored + 1.0)  # HOLD made the blind senders heartbeat fast again
    for side in ("a", "b"):
        assert ends.links[side].healthy, side
        assert [e.healthy for _, e in ends.happened(side, Health)] == [False, True]
        assert ends.links[side].error is None
    assert all(len(ends.happened(side, Established)) == 1 for side in ("a", "b"))


def test_send_error_is_shown_until_an_ack_arrives():
    link = HeartbeatLink("b:6784", T)
    link.confirm(0.0)
    link.send_failed("the path to b cannot carry 1426-byte packets: MTU 1376 is too big for the underlay", 0.1)
    assert link.error.startswith("the path to b cannot carry")
    link.heartbeat_received(0.2)
    assert link.control_received(ACK, 0.3) == [Established()]
    assert link.error is None


def test_ack_before_confirm_or_stray_hold_does_not_establish():
    link = HeartbeatLink("b:6784", T)
    assert link.heartbeat_received(0.0) == [SendControl(ACK)]   # the peer confirmed first: ack it
    assert link.heartbeat_received(0.1) == []                   # once
    assert link.control_received(HOLD, 0.2) == []
    assert not link.established and link.next_deadline() is None


# -- VTEP table ------------------------------------------------------------------------------------

def test_flood_entry_added_once_and_lingers_after_the_last_connection():
    t = VtepTable(linger=60)
    assert t.established("c1", "peer-b", "10.0.0.2", 0) == [AddFlood("10.0.0.2")]
    assert t.established("c2", "peer-b", "10.0.0.2", 1) == []      # a duplicate connection
    t.released("c1", 2)
    assert t.next_deadline() is None                                # c2 still claims it
    t.released("c2", 3)
    assert t.next_deadline() == 63
    assert t.tick(62.9) == []
    assert t.tick(63) == [RemoveVtep("10.0.0.2")]
    assert t.snapshot(63) == {}


def test_reconnect_within_the_linger_keeps_the_entries():
    t = VtepTable(linger=60)
    t.established("c1", "peer-b", "10.0.0.2", 0)
    t.released("c1", 10)
    assert t.established("c2", "peer-b", "10.0.0.2", 20) == []     # no re-add, nothing flushed
    assert t.next_deadline() is None and t.tick(1000) == []


def test_restart_adopts_kernel_state_and_forgets_what_nobody_claims():
    t = VtepTable(linger=60)
    t.adopt(flood_ips={"10.0.0.2", "10.0.0.3"}, other_ips={"10.0.0.2", "10.0.0.3", "10.0.0.4"}, now=0)
    assert t.established("c1", "peer-b", "10.0.0.2", 5) == []      # already flooding: adopted as is
    assert t.established("c2", "peer-d", "10.0.0.4", 5) == [AddFlood("10.0.0.4")]   # learned only
    assert sorted(t.tick(60), key=lambda op: op.ip) == [RemoveVtep("10.0.0.3")]
    assert set(t.snapshot(60)) == {"10.0.0.2", "10.0.0.4"}


def test_peer_gone_removes_at_once_unless_still_connected():
    t = VtepTable(linger=60)
    t.established("c1", "peer-b", "10.0.0.2", 0)
    assert t.peer_gone("peer-b") == []                              # a live connection still uses it
    t.released("c1", 1)
    assert t.peer_gone("peer-b") == [RemoveVtep("10.0.0.2")]
    assert t.next_deadline() is None


def test_peer_at_a_new_ip_drops_the_old_one_and_reused_ip_is_flushed():
    t = VtepTable(linger=60)
    t.established("c1", "peer-b", "10.0.0.2", 0)
    t.released("c1", 1)
    assert t.established("c2", "peer-b", "10.0.0.9", 2) == [RemoveVtep("10.0.0.2"), AddFlood("10.0.0.9")]
    t.released("c2", 3)
    # another peer now has b's old address: b's MACs learned there no longer hold
    assert t.established("c3", "peer-c", "10.0.0.9", 4) == [RemoveVtep("10.0.0.9"), AddFlood("10.0.0.9")]
