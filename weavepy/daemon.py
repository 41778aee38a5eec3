"""The router daemon: one asyncio process per host that composes the parts.

Started by `weavepy launch` (through the supervisor) or with --foreground.
Reads its configuration from /run/weavepy/launch.json.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys

from aiohttp import web

from weavepy import config as cfg
from weavepy.launch_config import LaunchConfig
from weavepy import statefile
from weavepy.api import build_app
from weavepy.proxy.server import DockerProxy, find_weavewait, install_weavewait
from weavepy.dns.records import Records
from weavepy.dns.responder import Responder
from weavepy.dns.server import DNSServer
from weavepy.dns.upstream import ResolvConf
from weavepy.docker_client import DockerClient, DockerError
from weavepy.host_network import HostNetwork
from weavepy.ipam.allocator import Allocator
from weavepy.mesh import peer_name
from weavepy.net import bridge, iptables
from weavepy import __version__, status

log = logging.getLogger("weavepy")

TICK_SECONDS = 5.0
IPAM_FILE = "ipam.json"
RECORDS_FILE = "containers.json"


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
        self.allocator = Allocator(self.peer, config.universe, config.default_subnet, config.effective_nickname)
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
        self.tasks: list[asyncio.Task] = []

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
        return status.build_report(self.config, self.peer, self.allocator, self.dns_records, self.dns_address,
                                   self.dns_server.upstream.current() if self.dns_server else [],
                                   self.proxy.addresses if self.proxy else None)

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

    async def run(self):
        self.docker = DockerClient(self.config.docker_host)
        self.network = HostNetwork(self.allocator, self.docker, self.config.mtu,
                                   cfg.state_path(IPAM_FILE), cfg.state_path(RECORDS_FILE), self.dns_records)
        if self.dns_records is not None:
            await self.start_dns()
        if self.config.proxy:
            await self.start_proxy()
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
