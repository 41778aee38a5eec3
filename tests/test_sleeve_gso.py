"""The sleeve's sends with UDP GSO and receives with UDP GRO, on loopback (no namespaces needed):
a 64 KiB super-frame goes out in a syscall or two, arrives coalesced, and is cut back into the
very chunks it was made of, whatever the kernel merges."""
import random
import socket
import sys

import pytest

from weavepy.net import sleeve
from weavepy.net.sleeve_codec import Frame, Reassembler, decode_datagram
from weavepy.net.sleeve_core import ForwardingState, Hop
from weavepy.mesh.routes import DataRoutes

ME, PEER = "02:00:00:00:00:01", "02:00:00:00:00:02"


@pytest.fixture
def pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        rx.setsockopt(sleeve.SOL_UDP, sleeve.UDP_GRO, 1)
    except OSError:
        pytest.skip("no UDP GRO on this kernel")
    rx.settimeout(2)
    s = sleeve.Sleeve(ME)
    s._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    state = ForwardingState(ME, DataRoutes({}, ME), hops={PEER: Hop(rx.getsockname(), 1472)})
    yield s, state, rx
    s._sock.close()
    rx.close()


def received(rx, expected_frames):
    """Datagrams as the sleeve's receive loop cuts them, reassembled."""
    reassembler, frames, syscalls = Reassembler(), [], 0
    buf = bytearray(65536)
    while len(frames) < expected_frames:
        n, cmsgs, _, _ = rx.recvmsg_into([buf], socket.CMSG_SPACE(4))
        syscalls += 1
        seg = next((int.from_bytes(d[:4], sys.byteorder) for lv, k, d in cmsgs
                    if lv == sleeve.SOL_UDP and k == sleeve.UDP_GRO), n) or n
        for off in range(0, n, seg):
            msg = decode_datagram(memoryview(buf)[off:min(off + seg, n)])
            assert isinstance(msg, Frame)
            whole = reassembler.add(msg.sender, msg, 0.0)
            if whole is not None:
                frames.append(bytes(whole))
    return frames, syscalls


@pytest.mark.parametrize("size", [60, 1500, 1438 * 3, 65_000, 65_600])
def test_a_frame_sent_with_gso_comes_back_whole(pair, size):
    s, state, rx = pair
    frame = random.Random(size).randbytes(size)
    heads = bytearray(sleeve.HEADS_BUFFER)
    s._send(state, PEER, s.me, bytes.fromhex(PEER.replace(":", "")), 0, 16, 7, memoryview(frame), heads)
    frames, _ = received(rx, 1)
    assert frames == [frame] and s._gso and "send_errors" not in s._traffic


def test_many_super_frames_take_few_syscalls_each_way(pair):
    s, state, rx = pair
    frames = [random.Random(i).randbytes(64_000) for i in range(20)]
    heads = bytearray(sleeve.HEADS_BUFFER)
    for i, frame in enumerate(frames):
        s._send(state, PEER, s.me, bytes.fromhex(PEER.replace(":", "")), 0, 16, i + 1, memoryview(frame), heads)
    got, syscalls = received(rx, len(frames))
    assert got == frames
    assert s._traffic["datagrams_out"] == 20 * 45          # 64,000 bytes in chunks of 1438
    assert syscalls < 20 * 45 / 4, syscalls                  # GRO hands them up many at a time
