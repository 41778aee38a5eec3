"""The Docker API proxy: `eval $(weavepy env)` and plain `docker run` joins the weave network.

Every request is forwarded unchanged except:
  create        -> WEAVE_CIDR checked (400 naming a bad token, nothing created), weavewait
                   put in front of the entrypoint, hostname/DNS settings added;
  start/restart -> answered only once the container is attached (or killed, 500, on failure);
  exec create   -> exec'd commands wait for the network too;
  attach, exec start and any other protocol switch (BuildKit sessions) -> the connection is
                   taken over and spliced (see forward.py).
Containers that Docker starts by itself (restart policies, other clients) are attached
from the event stream.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import ssl
import stat

from aiohttp import web

from weavepy.docker_client import DockerError, NoSuchContainer, NoSuchImage
from weavepy.host_network import UserError
from weavepy.ipam.request import AddressError

from . import create as create_rewrite
from . import tls_terminator
from .forward import Upstream, error
from .hostname import derive
from .passthrough import PassThroughServer
from .weave_cidr import decide, validate

log = logging.getLogger("weavepy.proxy")

V = r"^(?:/v[0-9.]+)?"
CREATE = re.compile(V + r"/containers/create$")
START = re.compile(V + r"/containers/([^/]+)/(?:re)?start$")
EXEC_CREATE = re.compile(V + r"/containers/([^/]+)/exec$")
INSPECT = re.compile(V + r"/containers/([^/]+)/json$")
HIJACKED = re.compile(V + r"/(?:containers/[^/]+/attach|exec/[^/]+/start)$")
SOCKET_PATH = "/run/weavepy/weave.sock"
MAX_REQUEST_BODY = 64 * 1024 * 1024  # what the proxy reads whole: create and exec bodies
INTERNAL_SOCKET_PATH = "/run/weavepy/weave-tls-backend.sock"


def install_weavewait(source: str, wait_dir: str) -> None:
    """Copy the static weavewait to where containers get it mounted read-only (as /w/w)."""
    os.makedirs(wait_dir, exist_ok=True)
    target = os.path.join(wait_dir, "w")
    tmp = target + ".tmp"
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)


def find_weavewait() -> str | None:
    """$WEAVEPY_WEAVEWAIT, else the helper the package build compiled next to this module (setup.py)."""
    for path in (os.environ.get("WEAVEPY_WEAVEWAIT"), os.path.join(os.path.dirname(__file__), "weavewait")):
        if path and os.access(path, os.X_OK):
            return path
    return None


class DockerProxy:
    def __init__(self, config, docker, network, dns_address: str | None, wait_dir: str):
        """config: the LaunchConfig (its proxy_*, hostname_*, tls* and related flags)."""
        self.opts = config
        self.hosts = config.proxy_hosts or [f"unix://{SOCKET_PATH}"]
        self.docker = docker
        self.network = network
        self.default_subnet = network.allocator.default_subnet
        self.dns_address = None if config.proxy_without_dns else dns_address
        self.dns_domain = config.dns_domain
        self.wait_dir = wait_dir
        self.upstream = Upstream(config.docker_host)
        self.match = re.compile(config.hostname_match)
        self.pending_starts: set[str] = set()  # container IDs whose start request waits for attach
        self.runners: list[web.BaseRunner] = []
        self.servers: list[asyncio.AbstractServer] = []
        self.addresses: list[str] = []

    # -- listening ------------------------------------------------------------
    async def start(self):
        loop = asyncio.get_running_loop()

        def make_request(message, payload, protocol, writer, task):
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_REQUEST_BODY)

        # plain calls go around aiohttp's request objects (see passthrough.py);
        # auto_decompress off: a gzip request body (docker build) must reach dockerd still gzipped
        server = PassThroughServer(self.handle, request_factory=make_request, docker_path=self.upstream.path,
                                   intercepts=self.intercepts,
                                   access_log=None, auto_decompress=False)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        self.runners.append(runner)
        unix = [h for h in self.hosts if h.startswith("unix://") or h.startswith("/")]
        tcp = [h for h in self.hosts if h not in unix]
        tls = self._ssl_context()
        # TLS is terminated in front of a unix socket (see tls_terminator): the public one,
        # or an internal one when only TCP was asked for
        backend = SOCKET_PATH if unix else (INTERNAL_SOCKET_PATH if tls and tcp else None)
        if backend:
            os.makedirs(os.path.dirname(backend), exist_ok=True)
            if os.path.exists(backend):
                os.unlink(backend)
            await web.UnixSite(runner, backend).start()
            os.chmod(backend, 0o600 if backend == INTERNAL_SOCKET_PATH else 0o660)
        for host in tcp:
            addr = host[len("tcp://"):] if host.startswith("tcp://") else host
            h, _, p = addr.rpartition(":")
            if tls:
                self.servers.append(await tls_terminator.serve(h or "0.0.0.0", int(p), tls, backend))
            else:
                await web.TCPSite(runner, h or "0.0.0.0", int(p)).start()
            self.addresses.append(f"tcp://{addr}")
        if unix:
            self._match_docker_socket_permissions()
            self.addresses.append(f"unix://{SOCKET_PATH}")

    def _ssl_context(self):
        if not (self.opts.tls or self.opts.tlsverify):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.opts.tlscert, self.opts.tlskey)
        if self.opts.tlsverify:
            ctx.load_verify_locations(self.opts.tlscacert)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _match_docker_socket_permissions(self):
        try:
            st = os.stat(self.upstream.path)
            os.chmod(SOCKET_PATH, stat.S_IMODE(st.st_mode))
            os.chown(SOCKET_PATH, -1, st.st_gid)
        except OSError as exc:
            log.warning("cannot copy the Docker socket's permissions: %s", exc)

    async def close(self):
        for server in self.servers:
            server.close()
        for r in self.runners:
            await r.cleanup()
        await self.upstream.close()

    # -- dispatch ---------------------------------------------------------------
    def intercepts(self, method: str, path: str, upgrade: bool) -> bool:
        return route(method, path, upgrade, self.opts.rewrite_inspect)[0] != "forward"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        kind, name = route(request.method, request.path, asks_upgrade(request), self.opts.rewrite_inspect)
        try:
            if kind == "create":
                return await self.create(request)
            if kind == "start":
                return await self.start_container(request, name)
            if kind == "exec_create":
                return await self.exec_create(request, name)
            if kind == "hijack":
                return await self.upstream.hijack(request)
            if kind == "inspect":
                return await self.inspect(request)
            return await self.upstream.forward(request)
        except DockerError as exc:
            return error(exc.status, str(exc))

    # -- create ---------------------------------------------------------------
    async def create(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return await self.upstream.forward(request, raw)  # let dockerd word its own error
        if not isinstance(body, dict):
            return await self.upstream.forward(request, raw)
        host = body.get("HostConfig") or {}
        decision = decide(host.get("NetworkMode"), body.get("Env"), self.opts.default_ipalloc)
        if not decision.attach:
            return await self.upstream.forward(request, raw)
        try:
            validate(decision.tokens, self.default_subnet)
        except AddressError as exc:
            return error(400, str(exc))
        image_config = None
        if create_rewrite.needs_image(body):
            image = body.get("Image", "")
            try:
                image_config = (await self.docker.image(image)).get("Config") or {}
            except NoSuchImage:
                return error(404, f"No such image: {image}")  # the CLI pulls and tries again
        name = request.query.get("name", "").lstrip("/")
        hostname = "" if self.dns_address is None else derive(
            name, body.get("Labels"), self.opts.hostname_from_label, self.match, self.opts.hostname_replacement)
        try:
            new = create_rewrite.rewrite(body, create_rewrite.CreateOptions(
                self.wait_dir, self.dns_address, self.dns_domain, hostname), image_config)
        except create_rewrite.CreateError as exc:
            return error(exc.status, str(exc))
        return await self.upstream.forward(request, json.dumps(new).encode())

    # -- start ----------------------------------------------------------------
    async def start_container(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        try:
            info = await self.docker.inspect(name)
        except NoSuchContainer:
            return error(404, f"No such container: {name}")
        cid = info["Id"]
        proxied = is_proxied(info)
        if not proxied:
            return await self.upstream.forward(request)
        self.pending_starts.add(cid)  # before forwarding: the start event must leave it to us
        try:
            body = await request.read()
            status, headers, data = await self.upstream.call(request, body)
            response = web.Response(status=status, body=data, headers=headers)
            if not 200 <= status < 300:
                return response
            problem = await self.attach(cid)
            if problem:
                await self.docker.kill(cid)  # an API kill: a restart policy must not revive it
                return error(500, f"weavepy: cannot attach {name}: {problem}")
            return response
        finally:
            self.pending_starts.discard(cid)

    async def attach(self, cid: str) -> str | None:
        """Attach a proxied container as its WEAVE_CIDR says; returns what went wrong, or None."""
        try:
            info = await self.docker.inspect(cid)
        except DockerError as exc:
            return str(exc)
        if not is_proxied(info) or not info["State"].get("Running"):
            return None
        decision = decide(info["HostConfig"].get("NetworkMode"), info["Config"].get("Env"),
                          self.opts.default_ipalloc)
        if not decision.attach:
            return None
        try:
            await self.network.attach(cid, list(decision.tokens), multicast_route=self.opts.multicast_route,
                                      without_dns=self.dns_address is None,
                                      rewrite_hosts=self.opts.rewrite_hosts,
                                      add_hosts=info["HostConfig"].get("ExtraHosts") or [])
        except UserError as exc:
            return str(exc)
        return None

    async def container_started(self, cid: str):
        """A start event: attach what Docker started by itself (restart policies, other clients)."""
        if cid in self.pending_starts:
            return
        problem = await self.attach(cid)
        if problem:
            log.warning("attaching %s failed: %s; killing it so its restart policy can retry", cid[:12], problem)
            try:
                info = await self.docker.inspect(cid)
                os.kill(info["State"]["Pid"], signal.SIGKILL)  # a crash, not a stop: restart policies apply
            except (DockerError, ProcessLookupError, KeyError):
                pass

    async def attach_running(self, running: set[str]):
        """After (re)connecting to dockerd: attach proxied containers that started while we were away."""
        for cid in running:
            if cid not in self.pending_starts and not self.network.allocator.addresses(cid):
                await self.container_started(cid)

    # -- exec and inspect ---------------------------------------------------------
    async def exec_create(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
            info = await self.docker.inspect(name)
        except (json.JSONDecodeError, UnicodeDecodeError, DockerError):
            return await self.upstream.forward(request, raw)
        if not isinstance(body, dict) or not is_proxied(info):
            return await self.upstream.forward(request, raw)
        cmd = body.get("Cmd") or []
        if isinstance(cmd, str):
            cmd = [cmd]
        body["Cmd"] = [create_rewrite.WAIT_PROGRAM] + cmd
        return await self.upstream.forward(request, json.dumps(body).encode())

    async def inspect(self, request: web.BaseRequest) -> web.StreamResponse:
        status, headers, data = await self.upstream.call(request)
        if status != 200:
            return web.Response(status=status, body=data, headers=headers)
        info = json.loads(data)
        cidrs = self.network.allocator.addresses(info.get("Id", ""))
        if cidrs and info.get("State", {}).get("Running"):
            ns = info.setdefault("NetworkSettings", {})
            ns["IPAddress"], ns["IPPrefixLen"] = str(cidrs[0].ip), cidrs[0].network.prefixlen
            from weavepy.net import veth
            iface = await asyncio.to_thread(veth.inspect, info["State"]["Pid"])
            if iface:
                ns["MacAddress"] = iface.mac
        return web.json_response(info, status=200, headers={k: v for k, v in headers.items()
                                                             if k.lower() != "content-type"})


def route(method: str, path: str, upgrade: bool, rewrite_inspect: bool) -> tuple[str, str | None]:
    """What the proxy does with a request: (kind, container); "forward" means pass it on unchanged."""
    if method == "POST":
        if CREATE.match(path):
            return "create", None
        if m := START.match(path):
            return "start", m.group(1)
        if m := EXEC_CREATE.match(path):
            return "exec_create", m.group(1)
        if HIJACKED.match(path):
            return "hijack", None
    if upgrade:
        return "hijack", None
    if method == "GET" and rewrite_inspect and (m := INSPECT.match(path)):
        return "inspect", m.group(1)
    return "forward", None


def asks_upgrade(request: web.BaseRequest) -> bool:
    """Any other protocol switch (BuildKit's /session and /grpc, attach over websocket) is taken over too."""
    connection = request.headers.get("Connection", "").lower()
    return "Upgrade" in request.headers and "upgrade" in (t.strip() for t in connection.split(","))


def is_proxied(info: dict) -> bool:
    return (info.get("Config", {}).get("Entrypoint") or [None])[0] == create_rewrite.WAIT_PROGRAM
