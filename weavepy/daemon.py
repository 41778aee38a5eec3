"""The router daemon: one asyncio process per host that composes the parts.

Started by `weavepy launch` (through the supervisor) or with --foreground.
Reads its configuration from /run/weavepy/launch.json.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import ssl
import sys
import time

from aiohttp import web

from weavepy import config as cfg
from weavepy.launch_config import LaunchConfig
from weavepy import statefile
from weavepy.api import build_app
from weavepy.proxy.server import DockerProxy, find_weavewait, install_weavewait
from weavepy.dns.gossip import CHANNEL as DNS_CHANNEL, DNSGossiper
from weavepy.dns.records import Records
from weavepy.ipam.gossip import CHANNEL as IPAM_CHANNEL, IPAMGossiper
from weavepy.dns.responder import Responder
from weavepy.dns.server import DNSServer
from weavepy.dns.upstream import ResolvConf
from weavepy.docker_client import DockerClient, DockerError
from weavepy.host_network import HostNetwork
from weavepy.ipam.allocator import Allocator
from weavepy.mesh import peer_name
from weavepy.mesh.driver import ListenError, MeshRouter
from weavepy.mesh.overlay import NullOverlay
from weavepy.mesh.overlay_switch import OverlaySwitch
from weavepy.net import bridge, iptables, vxlan
from weavepy.net.fastdp import FastDP, FastDPUnavailable
from weavepy.net.sleeve import Sleeve, SleeveUnavailable
from weavepy import __version__, status

log = logging.getLogger("weavepy")

TICK_SECONDS = 5.0
IPAM_FILE = "ipam.json"
RECORDS_FILE = "containers.json"
TARGETS_FILE = "targets.json"


def initial_targets(config: LaunchConfig) -> list[str]:
    """The PEER arguments; or the targets saved by this launch before a crash (the supervisor restarted
    us: `connect` and `forget` since launch count), or by the last run with --resume (Weave's 175)."""
    saved = statefile.read_json(cfg.state_path(TARGETS_FILE)) or {}
    if config.resume or (saved.get("launch_id") == config.launch_id and config.launch_id):
        return list(saved.get("targets", []))
    return list(config.peers)


def dns_listen_address(config: LaunchConfig) -> tuple[str, int]:
    """--dns-listen-address, else the Docker bridge's address (where containers can reach us), port 53."""
    if config.dns_listen_address:
        host, _, port = config.dns_listen_address.rpartition(":")
        return (host, int(port)) if host else (config.dns_listen_address, 53)
    found = bridge.addresses("docker0")
    if found:
        return str(found[0].ip), 53
    log.warning("no docker0 bridge: serving DNS on 127.0.0.1:53 (containers cannot reach it)")
    return "127.0.0.1", 53


def choose_peer_name(config: LaunchConfig) -> str:
    """--name, else the existing bridge's MAC (the name survives restarts with it), else derived."""
    if config.name:
        return config.name
    existing = bridge.bridge_mac()
    if existing:
        return existing
    return peer_name.derive()


class Daemon:
    def __init__(self, config: LaunchConfig):
        self.config = config
        os.makedirs(cfg.STATE_DIR, exist_ok=True)
        self.peer = choose_peer_name(config)
        bridge.ensure_bridge(self.peer, config.mtu)
        iptables.setup(bridge.BRIDGE)
        self.uid = secrets.randbits(64) | 1     # this run's: the mesh's peer UID and the IPAM election's node
        quorum, seeds, observer = config.ipam_bootstrap(len(initial_targets(config)))
        self.allocator = Allocator(self.peer, config.universe, config.default_subnet, config.effective_nickname,
                                   uid=self.uid, quorum=quorum, seeds=seeds, observer=observer)
        saved = statefile.read_json(cfg.state_path(IPAM_FILE))
        if saved:
            why = self.allocator.restore(saved)
            if why:
                log.warning("discarding persisted IPAM data: %s", why)
        self.dns_records = Records(self.peer, config.dns_domain) if config.dns else None
        self.dns_server: DNSServer | None = None
        self.dns_address = dns_listen_address(config) if config.dns else None
        self.docker: DockerClient | None = None
        self.proxy: DockerProxy | None = None
        self.network: HostNetwork | None = None
        self.router: MeshRouter | None = None
        self.fastdp: FastDP | None = None
        self.fastdp_error: str | None = None
        self.sleeve: Sleeve | None = None
        self.tasks: list[asyncio.Task] = []

    async def start_router(self):
        """The mesh: peers over TCP (--port), the kernel fast path on UDP port+1, the sleeve on
        UDP port.  Each connection takes the first overlay both ends have, fastdp first."""
        c = self.config
        if c.fastdp:
            self.fastdp = FastDP(self.peer, port=c.port, mtu=c.mtu)
            try:
                await self.fastdp.start()
            except FastDPUnavailable as exc:
                self.fastdp, self.fastdp_error = None, str(exc)
                log.warning("%s; the sleeve carries container traffic", exc)
        else:
            self.fastdp_error = "turned off (--no-fastdp or WEAVE_NO_FASTDP)"
            if await asyncio.to_thread(vxlan.delete_device, vxlan.device_name(c.port)):
                log.info("removed the fast path's device left by an earlier run")
        self.sleeve = Sleeve(self.peer, port=c.port, mtu=c.mtu, host=c.host,
                             beside_fastdp=self.fastdp is not None)
        try:
            await self.sleeve.start()
        except SleeveUnavailable as exc:
            self.sleeve = None
            log.warning("sleeve unavailable: %s", exc)
        if self.fastdp is not None and self.sleeve is not None:
            # per connection: fastdp while it works, the sleeve when it does not
            overlays = [OverlaySwitch(self.fastdp, self.sleeve), self.sleeve]
        else:
            overlays = [o for o in (self.fastdp, self.sleeve) if o is not None]
        if not overlays:
            log.warning("no data path: peer connections will carry no container traffic")
            overlays = [NullOverlay()]
        self.router = MeshRouter(self.peer, c.effective_nickname, uid=self.uid, port=c.port, host=c.host,
                                 conn_limit=c.conn_limit, discovery=c.discovery, overlays=overlays,
                                 on_targets_changed=self.save_targets)
        try:
            await self.router.start()
        except ListenError as exc:
            raise SystemExit(f"weavepy: {exc}") from None
        # the allocator's ring and its election, on every peer
        router = self.router
        self.allocator.reachable = lambda: set(router.core.routes.unicast_all)
        if self.allocator.universe is not None:   # without IPAM, the mesh only relays others' (a surrogate)
            ipam = IPAMGossiper(self.allocator)
            ipam.attach(router.channel(IPAM_CHANNEL, ipam))
            ipam.flush()      # what was queued before the mesh was up (an election begun at restore)
        if self.dns_records is not None:   # every peer's names, on every peer
            records = self.dns_records
            gossiper = DNSGossiper(records, known_peer=lambda p: p in router.core.peers)
            channel = router.channel(DNS_CHANNEL, gossiper)
            records.on_local_change = lambda entries: channel.broadcast(gossiper.wrap(entries))
            self.router.peer_gone_listeners.append(records.peer_gone)
        targets = initial_targets(c)
        try:
            self.router.connect(targets)
        except ValueError as exc:  # a saved target that no longer parses: say so, start without it
            log.warning("not connecting to the saved targets: %s", exc)
        self.save_targets(self.router.targets())

    def save_targets(self, targets: list[str]):
        statefile.write_json(cfg.state_path(TARGETS_FILE), {"launch_id": self.config.launch_id,
                                                            "targets": targets})

    async def metric_samples(self) -> list[tuple]:
        """The router's and the fast path's counters, for /metrics."""
        m = self.router.metrics() if self.router else {}
        samples = [
            ("weave_mesh_messages_total", "counter", "Control messages exchanged with peers.",
             m.get("messages_in", 0), {"direction": "in"}),
            ("weave_mesh_messages_total", "counter", "Control messages exchanged with peers.",
             m.get("messages_out", 0), {"direction": "out"}),
            ("weave_mesh_bytes_total", "counter", "Control bytes exchanged with peers.",
             m.get("bytes_in", 0), {"direction": "in"}),
            ("weave_mesh_bytes_total", "counter", "Control bytes exchanged with peers.",
             m.get("bytes_out", 0), {"direction": "out"}),
            ("weave_mesh_malformed_total", "counter", "Malformed messages from peers, dropped.",
             m.get("malformed_dropped", 0) + sum(m.get("core_dropped", {}).values()), {}),
            ("weave_mesh_handshake_failures_total", "counter", "Peer connections that failed their handshake.",
             m.get("handshake_failures", 0), {}),
            ("weave_mesh_accepts_throttled_total", "counter", "Peer connections accepted late by the throttle.",
             m.get("accept_throttled", 0), {}),
        ]
        if self.fastdp is not None:
            stats = await asyncio.to_thread(bridge.link_stats, self.fastdp.device)
            for direction in ("rx", "tx"):
                samples.append(("weave_frames_total", "counter", "Frames carried between hosts, by path.",
                                stats.get(f"{direction}_packets", 0), {"path": "fastdp", "direction": direction}))
                samples.append(("weave_bytes_total", "counter", "Bytes carried between hosts, by path.",
                                stats.get(f"{direction}_bytes", 0), {"path": "fastdp", "direction": direction}))
            for key, value in sorted(self.fastdp.metrics.items()):
                samples.append((f"weave_fastdp_{key}_total", "counter", f"fastdp {key.replace('_', ' ')}.",
                                value, {}))
        return samples

    async def start_dns(self):
        host, port = self.dns_address
        upstream = ResolvConf(self.config.resolv_conf, exclude={host})
        self.dns_server = DNSServer(Responder(self.dns_records, self.config.dns_ttl), upstream, host, port)
        try:
            await self.dns_server.start()
        except OSError as exc:
            raise SystemExit(f"weavepy: cannot serve DNS on {host}:{port}: {exc.strerror}; "
                             f"use --dns-listen-address or --no-dns") from None

    async def start_proxy(self):
        c = self.config
        source = find_weavewait()
        if source is None:
            raise SystemExit("weavepy: the weavewait helper is not installed (the package build compiles it into "
                             "weavepy/proxy/; reinstall weavepy with gcc and libc6-dev present); "
                             "launch with --no-proxy to run without the Docker API proxy")
        wait_dir = cfg.state_path("w")
        install_weavewait(source, wait_dir)
        try:
            self.proxy = DockerProxy(c, self.docker, self.network,
                                     self.dns_address[0] if self.dns_address else None, wait_dir)
            await self.proxy.start()
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise SystemExit(f"weavepy: cannot start the Docker API proxy: {exc}") from None

    def report(self) -> dict:
        router = self.router.report() if self.router else None
        if router is not None:
            router["TrustedSubnets"] = list(self.config.trusted_subnets)
            if self.fastdp_error:
                router["OverlayDiagnostics"]["fastdp"] = {"error": self.fastdp_error}
        return status.build_report(self.config, self.peer, self.allocator, self.dns_records, self.dns_address,
                                   self.dns_server.upstream.current() if self.dns_server else [],
                                   self.proxy.addresses if self.proxy else None, router,
                                   self.network.pending() if self.network else None)

    async def watch_docker(self):
        """Follow container events; after any break, catch up with what was missed."""
        backoff = 0.2
        while True:
            try:
                running = await self.network.reconcile()
                if self.proxy:
                    await self.proxy.attach_running(running)
                backoff = 0.2
                async for event in self.docker.events():
                    try:
                        await self.network.on_event(event)
                        if self.proxy and event.get("Action") == "start":
                            # not awaited: a start request held for this attach must not block events
                            asyncio.ensure_future(self.proxy.container_started(event["Actor"]["ID"]))
                    except Exception:
                        log.exception("handling docker event %s", event.get("Action"))
            except DockerError as exc:
                log.warning("%s; retrying", exc)
            except Exception:  # never stop following Docker: containers would go unattached
                log.exception("following docker events; retrying")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def ticker(self):
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await self.network.tick()
            except Exception:
                log.exception("periodic tick")
            if self.dns_records is not None:
                self.dns_records.expire_tombstones(int(time.time()))

    async def run(self):
        self.docker = DockerClient(self.config.docker_host)
        self.network = HostNetwork(self.allocator, self.docker, self.config.mtu,
                                   cfg.state_path(IPAM_FILE), cfg.state_path(RECORDS_FILE), self.dns_records)
        if self.dns_records is not None:
            await self.start_dns()
        if self.config.proxy:
            await self.start_proxy()
        await self.start_router()
        host, _, port = self.config.http_addr.rpartition(":")
        runner = web.AppRunner(build_app(self), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, int(port)).start()
        except OSError as exc:
            raise SystemExit(f"weavepy: cannot listen on {self.config.http_addr}: {exc.strerror}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.tasks = [asyncio.create_task(self.watch_docker()), asyncio.create_task(self.ticker())]
        statefile.write_json(cfg.run_path(cfg.READY_FILE), {"pid": os.getpid(), "peer": self.peer})
        log.info("weavepy %s ready: peer %s(%s), API on %s", __version__,
                 self.peer, self.config.effective_nickname, self.config.http_addr)
        await stop.wait()
        log.info("stopping")
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await runner.cleanup()
        if self.router:
            await self.router.stop()
        if self.dns_server:
            await self.dns_server.close()
        if self.proxy:
            await self.proxy.close()
        await self.docker.close()


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    data = statefile.read_json(cfg.run_path(cfg.LAUNCH_FILE))
    if data is None:
        raise SystemExit(f"weavepy: no launch configuration at {cfg.run_path(cfg.LAUNCH_FILE)}")
    config = LaunchConfig.from_dict(data).validate()
    logging.getLogger().setLevel(config.log_level.upper())
    try:
        # Only the main loop: pyroute2 makes loops of its own in worker threads,
        # and a uvloop loop cannot open netlink sockets.
        from uvloop import new_event_loop as loop_factory
    except ImportError:
        loop_factory = None
    with open(cfg.run_path(cfg.DAEMON_PID), "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        daemon = Daemon(config)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(daemon.run())
    finally:
        try:
            with open(cfg.run_path(cfg.DAEMON_PID)) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(cfg.run_path(cfg.DAEMON_PID))
        except OSError:
            pass


if __name__ == "__main__":
    main()
