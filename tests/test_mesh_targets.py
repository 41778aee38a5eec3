"""The connection maker: targets, backoff on a fake clock, connect/forget, discovery, status rows."""
import itertools
import random

import pytest

from weavepy.mesh.targets import (DISCOVERY_DEFER, FAST_PHASE, MAX_INTERVAL, RESET_AFTER, ConnectionMaker, Dial, Link,
                                  parse_address, render_connection)

US = "aa:00:00:00:00:01"
B, C, D = "bb:00:00:00:00:02", "cc:00:00:00:00:03", "dd:00:00:00:00:04"
REFUSED = "dial tcp4 10.0.0.2:6783: connect: connection refused"


class FixedJitter(random.Random):
    """uniform(a, b) at a fixed fraction of the way: 0.5 is no jitter at all."""

    def __init__(self, fraction):
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a, b):
        return a + (b - a) * self.fraction


def maker(jitter=0.5, **kwargs):
    return ConnectionMaker(US, 6783, rng=FixedJitter(jitter), **kwargs)


def addresses(dials):
    return sorted(d.address for d in dials)


def fail(cm, address, now, error=REFUSED):
    """Dial whatever is due at `now`, expect `address` among it, and fail it."""
    assert address in addresses(cm.refresh(now, [], {}))
    cm.ended(address, error, now)


def test_bad_addresses_are_refused_and_change_nothing():
    cm = maker()
    cm.initiate(["10.0.0.2"], 0)
    for bad in ("x:y", "10.0.0.2:0", "10.0.0.2:65536", ":6783", "1.2.3", "10.0.0.256", "::1",
                "host_name", "-host", "a..b", "", "10.0.0.2:", "[::1]:6783"):
        with pytest.raises(ValueError) as err:
            cm.initiate(["10.0.0.3", bad], 0)
        assert str(err.value) == f'invalid peer name "{bad}", should be host[:port]'
    assert cm.targets() == ["10.0.0.2"]


def test_addresses():
    assert parse_address("10.0.0.2") == ("10.0.0.2", None)
    assert parse_address("Host-B.example.:7000") == ("host-b.example.", 7000)


def test_new_targets_are_dialled_at_once_at_the_router_port_when_none_is_given():
    cm = maker()
    cm.initiate(["10.0.0.2", "host-c:7000"], 0)
    assert sorted(cm.refresh(0, [], {}), key=lambda d: d.address) == [
        Dial("10.0.0.2:6783", True), Dial("host-c:7000", True)]
    assert cm.refresh(0, [], {}) == []          # attempting already: not dialled twice


def test_retries_stay_seconds_apart_for_the_first_minutes_then_back_off_like_weave():
    cm = maker()
    cm.initiate(["10.0.0.2"], 0)
    now = 0.0
    gaps = []
    while now < FAST_PHASE + 3000:
        fail(cm, "10.0.0.2:6783", now)
        gap = cm.next_deadline() - now
        assert cm.refresh(now + gap - 0.01, [], {}) == []     # not before its time
        gaps.append(gap)
        now += gap
    starts = itertools.accumulate([0.0] + gaps)
    fast = [gap for gap, start in zip(gaps, starts) if start < FAST_PHASE]
    assert set(fast) == {2.0}
    slow = gaps[len(fast):]
    assert slow[:4] == [2.0, 3.0, 4.5, 6.75]
    assert max(slow) == MAX_INTERVAL and slow[-1] == MAX_INTERVAL


@pytest.mark.parametrize("fraction, gap", [(0.0, 1.0), (1.0, 3.0)])
def test_jitter_spreads_retries_from_half_to_one_and_a_half_intervals(fraction, gap):
    cm = maker(jitter=fraction)
    cm.initiate(["10.0.0.2"], 0)
    fail(cm, "10.0.0.2:6783", 100)
    assert cm.next_deadline() == 100 + gap


def test_a_connection_that_lived_a_minute_is_retried_at_once():
    cm = maker()
    cm.initiate(["10.0.0.2"], 0)
    cm.refresh(0, [], {})
    cm.connected("10.0.0.2:6783", B)
    cm.ended("10.0.0.2:6783", "connection closed by the peer", RESET_AFTER + 1)
    assert addresses(cm.refresh(RESET_AFTER + 1, [], {})) == ["10.0.0.2:6783"]
    cm.connected("10.0.0.2:6783", B)
    cm.ended("10.0.0.2:6783", "connection closed by the peer", RESET_AFTER + 31)   # lived 30 s
    assert cm.refresh(RESET_AFTER + 31, [], {}) == []
    assert cm.next_deadline() == RESET_AFTER + 33


def test_asking_again_for_a_target_resets_its_backoff():
    cm = maker()
    cm.initiate(["10.0.0.2"], 0)
    now = 0.0
    while now < FAST_PHASE + 600:            # well past the fast phase: long waits
        fail(cm, "10.0.0.2:6783", now)
        now = cm.next_deadline()
    fail(cm, "10.0.0.2:6783", now)
    assert cm.next_deadline() - now > 60
    cm.initiate(["10.0.0.2:6783"], now + 1)  # the same address, written another way
    assert addresses(cm.refresh(now + 1, [], {})) == ["10.0.0.2:6783"]


def test_replace_drops_the_old_targets():
    cm = maker()
    cm.initiate(["10.0.0.2", "10.0.0.3"], 0)
    fail(cm, "10.0.0.2:6783", 0)
    cm.initiate(["10.0.0.4"], 1, replace=True)
    assert cm.targets() == ["10.0.0.4"]
    assert addresses(cm.refresh(10, [], {})) == ["10.0.0.4:6783"]
    assert [r["Address"] for r in cm.rows(10)] == ["10.0.0.3:6783", "10.0.0.4:6783"]   # 10.0.0.3 still dialling


def test_forget_keeps_the_connection_but_does_not_reconnect():
    cm = maker()
    cm.initiate(["10.0.0.2", "10.0.0.3"], 0)
    cm.refresh(0, [], {})
    cm.connected("10.0.0.2:6783", B)
    cm.forget(["10.0.0.2:6783"])              # forgets "10.0.0.2": the same address
    assert cm.targets() == ["10.0.0.3"]
    live = [Link(B, "10.0.0.2:6783", True)]
    assert cm.refresh(1, live, {}) == []
    assert cm.target("10.0.0.2:6783") is not None     # nothing was closed
    cm.ended("10.0.0.2:6783", "connection closed by the peer", 100)
    assert cm.refresh(1000, [], {}) == [] and cm.target("10.0.0.2:6783") is None


def test_a_name_clash_or_ourselves_is_never_retried_until_asked_again():
    cm = maker()
    cm.initiate(["10.0.0.2"], 0)
    cm.refresh(0, [], {})
    cm.ended("10.0.0.2:6783", "cannot connect to ourself", 1, retry=False)
    assert cm.next_deadline() is None
    assert cm.refresh(10_000, [], {}) == []
    assert [render_connection(r) for r in cm.rows(10_000)] == [
        "-> 10.0.0.2:6783         failed      cannot connect to ourself, retry: never"]
    assert cm.targets() == ["10.0.0.2"] and cm.targets(active_only=True) == []
    cm.initiate(["10.0.0.2"], 10_001)
    assert addresses(cm.refresh(10_001, [], {})) == ["10.0.0.2:6783"]


def test_discovery_dials_peers_others_are_connected_to():
    cm = maker()
    ours = [Link(B, "10.0.0.2:6783", True)]
    topology = {
        US: [Link(B, "10.0.0.2:6783", True)],
        B: [Link(US, "10.0.0.1:40000", False),      # to us: skipped
            Link(C, "10.0.0.3:7000", True),         # outbound: its address as recorded
            Link(D, "10.0.0.4:51234", False)],      # inbound: the ephemeral port is useless
        C: [Link(B, "10.0.0.2:45555", False), Link(D, "not an address", True)],
    }
    dials = cm.refresh(0, ours, topology)
    assert sorted(dials, key=lambda d: d.address) == [Dial("10.0.0.3:7000", False), Dial("10.0.0.4:6783", False)]
    # Once connected to D some other way, its discovered target goes away.
    cm.ended("10.0.0.4:6783", REFUSED, 1)
    cm.refresh(1, ours + [Link(D, "10.0.0.4:33333", False)], topology)
    assert cm.target("10.0.0.4:6783") is None
    assert cm.targets() == []                        # discovered targets are not the user's
    assert maker(discovery=False).refresh(0, ours, topology) == []


def test_of_two_peers_that_discover_each_other_only_the_lower_name_dials_at_once():
    # C learns of B and D from the same gossip that tells them of C.
    cm = ConnectionMaker(C, 6783, rng=FixedJitter(0.5))
    topology = {US: [Link(B, "10.0.0.2:6783", True), Link(D, "10.0.0.4:6783", True)]}
    assert addresses(cm.refresh(0, [], topology)) == ["10.0.0.4:6783"]        # D > C: C dials
    # B < C: B dials C; C waits, and once B's connection is in, there is nothing to dial.
    assert cm.refresh(DISCOVERY_DEFER - 0.01, [], topology) == []
    assert cm.refresh(DISCOVERY_DEFER, [Link(B, "10.0.0.2:39999", False)], topology) == []
    # B runs with --no-discovery and never dials: C does, after the wait.
    late = ConnectionMaker(C, 6783, rng=FixedJitter(0.5))
    late.refresh(0, [], topology)
    assert addresses(late.refresh(DISCOVERY_DEFER, [], topology)) == ["10.0.0.2:6783"]


def test_the_connection_limit_is_checked_before_dialling():
    cm = maker(conn_limit=2)
    cm.initiate(["10.0.0.3", "10.0.0.4"], 0)
    live = [Link(B, "10.0.0.2:6783", True)]
    assert len(cm.refresh(0, live, {})) == 1
    row = next(r for r in cm.rows(0) if r["State"] == "failed")
    assert row["Info"].startswith("Connection limit reached (2), retry: ")


def test_no_second_connection_to_a_peer_connected_the_other_way():
    cm = maker()
    cm.initiate(["10.0.0.2", "10.0.0.3:7000"], 0)
    inbound = [Link(B, "10.0.0.2:41000", False), Link(C, "10.0.0.3:42000", False)]
    # Named without a port and it dialled us from that IP: Weave does not dial it.
    assert addresses(cm.refresh(0, inbound, {})) == ["10.0.0.3:7000"]
    # Lost a simultaneous-dial tie-break: C answered there, and C is connected.
    cm.ended("10.0.0.3:7000", f"Multiple connections to {C}(c) added to {US}(a)", 0.1, peer=C)
    assert cm.refresh(100, inbound, {}) == []
    assert addresses(cm.refresh(100, [], {})) == ["10.0.0.2:6783", "10.0.0.3:7000"]


def test_status_rows_as_weave_prints_them():
    cm = maker(jitter=1.0)
    cm.initiate(["10.0.0.2", "10.0.0.3"], 0)
    cm.refresh(0, [], {})
    lines = [render_connection(r) for r in cm.rows(0)]
    assert lines == ["-> 10.0.0.2:6783         connecting", "-> 10.0.0.3:6783         connecting"]
    cm.ended("10.0.0.2:6783", REFUSED, 0)
    cm.connected("10.0.0.3:6783", C)
    wall = 1_780_000_000.0            # 2026-05-28 20:26:40 UTC
    assert [render_connection(r) for r in cm.rows(0, wall)] == [
        f"-> 10.0.0.2:6783         failed      {REFUSED}, retry: 2026-05-28 20:26:43 UTC"]
    cm.refresh(3, [Link(C, "10.0.0.3:6783", True)], {})
    assert [(r["State"], r["Info"]) for r in cm.rows(3)] == [("retrying", REFUSED)]


def test_rendering_a_live_connection():
    row = {"Address": "10.0.0.9:41234", "Outbound": False, "State": "established",
           "Info": f"{'fastdp':<6} {B}(host-b)", "Attrs": {"name": "fastdp", "mtu": 1376}}
    assert render_connection(row) == f"<- 10.0.0.9:41234        established fastdp {B}(host-b) mtu=1376"
