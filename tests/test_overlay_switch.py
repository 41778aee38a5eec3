"""The overlay switch with stand-in members: fastdp while it works, the sleeve when it does not,
and every change made before it is broken."""
import pytest

from weavepy.mesh.overlay import ConnectionParams
from weavepy.mesh.overlay_switch import OverlaySwitch
from weavepy.mesh.wire import ProtocolError


class Member:
    def __init__(self, name, log):
        self.name, self.log = name, log
        self.established = self.healthy = False
        self.error = None
        self.active = True
        self.params = None
        self.control = []
        self.pending = []          # set_carrying continuations not yet run (the kernel is slow)

    def prepare(self, params):
        self.params = params
        return self

    def confirm(self):
        self.log.append((self.name, "confirm"))

    def control_message(self, data):
        self.control.append(data)

    def stop(self):
        self.log.append((self.name, "stop"))

    def attrs(self):
        out = {"name": self.name, "established": self.established, "healthy": self.healthy}
        if self.error:
            out["error"] = self.error
        return out

    def set_carrying(self, carrying, then):
        self.log.append((self.name, "carry" if carrying else "drop"))
        self.pending.append(then)

    def finish(self):
        while self.pending:
            self.pending.pop(0)()

    def up(self, healthy=True):
        self.established, self.healthy = True, healthy
        (self.params.on_established if healthy else self.params.on_health)(*(() if healthy else (False,)))


@pytest.fixture
def conn():
    log, told = [], []
    fast, slow = Member("fastdp", log), Member("sleeve", log)
    params = ConnectionParams("02:00:00:00:00:01", "02:00:00:00:00:02", "h2", "10.0.0.1", "10.0.0.2", 6783,
                              True, 99, send_control=lambda data: told.append(data),
                              on_established=lambda: told.append("established"))
    timers = []
    c = OverlaySwitch(fast, slow, call_later=lambda delay, fn: timers.append((delay, fn))).prepare(params)
    c.confirm()
    c.grace_over = lambda: [fn() for _, fn in timers]
    return c, fast, slow, log, told


def test_fastdp_is_waited_for_at_first_and_the_sleeve_stands_by(conn):
    c, fast, slow, log, told = conn
    assert slow.active is False and log == [("fastdp", "confirm"), ("sleeve", "confirm")]
    slow.up()
    assert c.active is None and told == []      # fastdp has its few seconds first
    fast.up()                          # its first establishment installed its flood entry itself
    assert c.active == "fastdp" and told == ["established"] and log[-1] == ("sleeve", "confirm")
    c.grace_over()
    assert c.active == "fastdp"


def test_the_sleeve_carries_until_a_late_fastdp_is_ready(conn):
    c, fast, slow, log, told = conn
    slow.up()
    c.grace_over()
    slow.finish()
    assert c.active == "sleeve"        # fastdp did not come up in time: the sleeve carries meanwhile
    fast.up()
    assert log[-1] == ("fastdp", "carry") and c.active == "sleeve"     # not until the kernel has it
    fast.finish()
    assert log[-1] == ("sleeve", "drop") and c.active == "fastdp"
    slow.finish()
    assert told == ["established"] and c.attrs()["name"] == "fastdp"


def test_blocked_fastdp_means_the_sleeve_carries_and_says_why(conn):
    c, fast, slow, log, told = conn
    fast.error = "no heartbeat ack from 10.0.0.2:6784 (UDP blocked or MTU too small)"
    slow.up()                          # fastdp already says it cannot: no need to wait
    slow.finish()
    assert c.active == "sleeve" and told == ["established"]
    assert c.attrs() == {"name": "sleeve", "established": True, "healthy": True, "fastdp": fast.error}


def test_a_failing_fastdp_hands_over_to_the_sleeve_and_takes_it_back_when_healthy(conn):
    c, fast, slow, log, told = conn
    slow.up()
    fast.up()
    assert c.active == "fastdp"
    log.clear()
    fast.up(healthy=False)             # its heartbeats stopped
    slow.finish()                      # the sleeve carries first ...
    assert log == [("sleeve", "carry"), ("fastdp", "drop")]
    fast.finish()                      # ... then the kernel lets go
    assert c.active == "sleeve"
    log.clear()
    fast.up()                          # healthy again
    fast.finish()
    slow.finish()
    assert log == [("fastdp", "carry"), ("sleeve", "drop")] and c.active == "fastdp"


def test_control_messages_carry_their_members_index(conn):
    c, fast, slow, log, told = conn
    fast.params.send_control(b"\x00")
    slow.params.send_control(b"\x01")
    assert told == [b"\x00\x00", b"\x01\x01"]
    c.control_message(b"\x00ack")
    c.control_message(b"\x01hold")
    assert fast.control == [b"ack"] and slow.control == [b"hold"]
    for bad in (b"", b"\x02x"):
        with pytest.raises(ProtocolError):
            c.control_message(bad)
