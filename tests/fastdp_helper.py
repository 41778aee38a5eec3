"""One FastDP overlay in a host namespace, driven over stdin/stdout, and the test side's handle on it.

The process (`python fastdp_helper.py --name MAC ...`, run inside a host
namespace) reads JSON commands, one a line, and writes JSON events.  Its
overlay control messages come out as "control" events; the test side relays
them to the other host's helper: the stand-in for the TCP control connection.

Commands: connect {conn_uid, remote_name, local_ip, remote_ip, outbound},
control {conn_uid, data(hex)}, stop {conn_uid}, peer_gone {name}, status {id}, exit.
Events: started {taken_over, diagnostics} | unavailable {error}, control {conn_uid, data},
established {conn_uid}, health {conn_uid, healthy}, status {id, connections, diagnostics}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.abspath(__file__)


# -- the process ---------------------------------------------------------------------------------------

def emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def serve(args) -> int:
    from weavepy.mesh.overlay import ConnectionParams
    from weavepy.net.fastdp import FastDP, FastDPUnavailable
    from weavepy.net.fastdp_heartbeat import Timers

    overlay = FastDP(args.name, port=args.port, mtu=args.mtu, linger=args.linger,
                     timers=Timers(fast=args.fast, slow=args.slow, give_up=args.give_up, missed=args.missed))
    try:
        await overlay.start()
    except FastDPUnavailable as exc:
        emit(ev="unavailable", error=str(exc))
        return 1
    emit(ev="started", taken_over=not overlay.created, diagnostics=overlay.diagnostics())

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    conns = {}
    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "connect":
            uid = cmd["conn_uid"]
            params = ConnectionParams(
                local_name=args.name, remote_name=cmd["remote_name"], remote_nickname="",
                local_ip=cmd["local_ip"], remote_ip=cmd["remote_ip"], remote_port=args.port,
                outbound=cmd["outbound"], conn_uid=uid,
                send_control=lambda data, uid=uid: emit(ev="control", conn_uid=uid, data=data.hex()),
                on_established=lambda uid=uid: emit(ev="established", conn_uid=uid),
                on_health=lambda healthy, uid=uid: emit(ev="health", conn_uid=uid, healthy=healthy))
            conns[uid] = overlay.prepare(params)
            conns[uid].confirm()
        elif op == "control" and cmd["conn_uid"] in conns:
            conns[cmd["conn_uid"]].control_message(bytes.fromhex(cmd["data"]))
        elif op == "stop" and cmd["conn_uid"] in conns:
            conns.pop(cmd["conn_uid"]).stop()
        elif op == "peer_gone":
            overlay.peer_gone(cmd["name"])
        elif op == "status":
            overlay.diagnostics()           # queues an FDB refresh behind any pending change
            await overlay.settled()
            emit(ev="status", id=cmd["id"], connections={str(u): c.attrs() for u, c in conns.items()},
                 diagnostics=overlay.diagnostics())
        elif op == "exit":
            break
    overlay.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=6783)
    p.add_argument("--mtu", type=int, default=1376)
    p.add_argument("--fast", type=float, default=0.5)
    p.add_argument("--slow", type=float, default=10.0)
    p.add_argument("--give-up", type=float, default=5.0)
    p.add_argument("--missed", type=int, default=3)
    p.add_argument("--linger", type=float, default=60.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    return asyncio.run(serve(p.parse_args()))


# -- the test side ---------------------------------------------------------------------------------------

class Helper:
    """A running helper in `host`'s namespace; `peer` gets its control messages."""

    def __init__(self, host, **opts):
        self.host = host
        self.name = host.peer_name
        self.peer: Helper | None = None
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._status_id = 0
        self.stderr = tempfile.TemporaryFile(mode="w+")
        argv = [sys.executable, "-u", HERE, "--name", self.name]
        for key, value in opts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.started = self.wait_for(lambda e: e["ev"] in ("started", "unavailable"), 20)

    def _read(self) -> None:
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["ev"] == "control" and self.peer is not None:
                self.peer.send(op="control", conn_uid=event["conn_uid"], data=event["data"])
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def send(self, **cmd) -> None:
        with self._write_lock:
            try:
                self.proc.stdin.write(json.dumps(cmd) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass    # it was killed: a dead control connection drops messages too

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]

    def wait_for(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if pred(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; events: {self.events[-10:]}\nstderr: {self.log()}")
                self._cond.wait(left)

    def established(self, uid: int, timeout: float = 10) -> dict:
        return self.wait_for(lambda e: e["ev"] == "established" and e["conn_uid"] == uid, timeout)

    def status(self) -> dict:
        self._status_id += 1
        sid = self._status_id
        self.send(op="status", id=sid)
        return self.wait_for(lambda e: e["ev"] == "status" and e["id"] == sid, 10)

    def attrs(self, uid: int) -> dict:
        return self.status()["connections"][str(uid)]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)   # our own child, by PID
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send(op="exit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stderr.close()


def connect(a: Helper, b: Helper, uid: int) -> None:
    """What two routers do after a handshake: a dialled b; both prepare and confirm."""
    a.peer, b.peer = b, a
    a.send(op="connect", conn_uid=uid, remote_name=b.name, local_ip=a.host.ip, remote_ip=b.host.ip, outbound=True)
    b.send(op="connect", conn_uid=uid, remote_name=a.name, local_ip=b.host.ip, remote_ip=a.host.ip, outbound=False)


if __name__ == "__main__":
    sys.exit(main())
