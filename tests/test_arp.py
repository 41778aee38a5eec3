import ipaddress

from weavepy.net.arp import gratuitous_arp_frame


def test_gratuitous_arp_announces_our_own_address():
    frame = gratuitous_arp_frame("02:11:22:33:44:55", ipaddress.IPv4Address("10.32.0.1"))
    assert len(frame) == 42
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex("021122334455")
    assert frame[12:14] == b"\x08\x06"
    sender_ip, target_ip = frame[28:32], frame[38:42]
    assert sender_ip == target_ip == bytes([10, 32, 0, 1])
