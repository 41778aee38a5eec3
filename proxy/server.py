"""The Docker API proxy: `eval $(weavepy env)` and plain `docker run` joins the weave network.

Every request is forwarded unchanged except:
  create        -> WEAVE_CIDR checked (400 naming a bad token, nothing created), weavewait
                   put in front of the entrypoint, hostname/DNS settings added;
  start/restart -> answered only once the container is attached (or killed, 500, on failure);
  exec create   -> an exec'd command waits for the network too, while the container's is not up;
  commit        -> the image is committed without the wait helper;
  attach, exec start and any other protocol switch (BuildKit sessions) -> the connection is
                   taken over and spliced (see forward.py).
Answers that would show the wait helper (container listings, inspects and changes, exec
inspects) are put back as they would read without it (see unwrap.py); every other answer
is dockerd's, byte for byte.
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
from . import tls_terminator, unwrap
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
LIST = re.compile(V + r"/containers/json$")
CHANGES = re.compile(V + r"/containers/([^/]+)/changes$")
EXEC_INSPECT = re.compile(V + r"/exec/([^/]+)/json$")
COMMIT = re.compile(V + r"/commit$")
HIJACKED = re.compile(V + r"/(?:containers/[^/]+/attach|exec/[^/]+/start)$")
# what the relay passes on itself (holding the answer for a rewrite); the rest is aiohttp's
RELAYED = frozenset(("forward", "list", "inspect", "exec_inspect"))
WRAPPED_EXECS_KEPT = 4096  # exec IDs remembered as put behind /w/w, for their inspects
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
        self.attaching: set[str] = set()  # container IDs being attached right now
        self.wrapped_execs: dict[str, None] = {}  # exec IDs put behind /w/w, oldest first
        self.answer_bodies = {"list": lambda body: unwrap.listing(body, wait_dir),
                              "inspect": lambda body: unwrap.inspect(body, wait_dir)}
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
                                   intercepts=self.intercepts, answer_rewrites=self.answer_rewrite,
                                   access_log=None, auto_decompress=False)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        self.runners.append(runner)
        unix = [unix_path(h) for h in self.hosts if is_unix(h)]
        tcp = [h for h in self.hosts if not is_unix(h)]
        tls = self._ssl_context()
        # TLS is terminated in front of a unix socket (see tls_terminator): a public one,
        # or an internal one when only TCP was asked for
        internal = INTERNAL_SOCKET_PATH if tls and tcp and not unix else None
        for path in unix + ([internal] if internal else []):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            remove_socket(path)  # one left by an earlier run
            await web.UnixSite(runner, path).start()
            if path == internal:
                os.chmod(path, 0o600)
            else:
                self._match_docker_socket_permissions(path)
        backend = unix[0] if unix else internal
        for host in tcp:
            addr = host[len("tcp://"):] if host.startswith("tcp://") else host
            h, _, p = addr.rpartition(":")
            if tls:
                self.servers.append(await tls_terminator.serve(h or "0.0.0.0", int(p), tls, backend))
            else:
                await web.TCPSite(runner, h or "0.0.0.0", int(p)).start()
            self.addresses.append(f"tcp://{addr}")
        self.addresses += [f"unix://{path}" for path in unix]

    def _ssl_context(self):
        if not (self.opts.tls or self.opts.tlsverify):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.opts.tlscert, self.opts.tlskey)
        if self.opts.tlsverify:
            ctx.load_verify_locations(self.opts.tlscacert)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _match_docker_socket_permissions(self, path: str):
        """docker-group users may use the proxy as they may use dockerd."""
        try:
            st = os.stat(self.upstream.path)
        except OSError as exc:
            log.warning("cannot copy the Docker socket's permissions: %s", exc)
            os.chmod(path, 0o660)
            return
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.chown(path, -1, st.st_gid)

    async def close(self):
        for server in self.servers:
            server.close()
        for r in self.runners:
            await r.cleanup()
        await self.upstream.close()
        for address in self.addresses:
            if address.startswith("unix://"):
                try:
                    remove_socket(address[len("unix://"):])  # a stopped proxy leaves no socket
                except OSError:
                    pass

    # -- dispatch ---------------------------------------------------------------
    def intercepts(self, method: str, path: str, upgrade: bool) -> bool:
        return route(method, path, upgrade, self.opts.rewrite_inspect)[0] not in RELAYED

    def answer_rewrite(self, method: str, path: str) -> unwrap.BodyRewrite | None:
        """What a relayed request's answer body goes through before the client sees it, if anything."""
        kind, name = route(method, path, False, self.opts.rewrite_inspect)
        if kind == "exec_inspect":
            return lambda body: unwrap.exec_inspect(body) if name in self.wrapped_execs else None
        return self.answer_bodies.get(kind)

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
            if kind == "weave_inspect":
                return await self.inspect(request)
            if kind == "changes":
                return await self.changes(request, name)
            if kind == "commit":
                return await self.commit(request)
            return await self.upstream.forward(request, rewrite=self.answer_rewrite(request.method, request.path))
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
        self.attaching.add(cid)
        try:
            await self.network.attach(cid, list(decision.tokens), multicast_route=self.opts.multicast_route,
                                      without_dns=self.dns_address is None,
                                      rewrite_hosts=self.opts.rewrite_hosts,
                                      add_hosts=info["HostConfig"].get("ExtraHosts") or [])
        except UserError as exc:
            return str(exc)
        finally:
            self.attaching.discard(cid)
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
            if (cid not in self.pending_starts and cid not in self.network.reclaiming
                    and not self.network.allocator.addresses(cid)):
                await self.container_started(cid)

    # -- exec, inspect, changes, commit ----------------------------------------------
    async def exec_create(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
            info = await self.docker.inspect(name)
        except (json.JSONDecodeError, UnicodeDecodeError, DockerError):
            return await self.upstream.forward(request, raw)
        # once the network is up the command goes to runc as it is: its errors and exit codes are Docker's
        if not isinstance(body, dict) or not is_proxied(info) or await self._network_up(info):
            return await self.upstream.forward(request, raw)
        cmd = body.get("Cmd") or []
        if isinstance(cmd, str):
            cmd = [cmd]
        body["Cmd"] = [create_rewrite.WAIT_PROGRAM] + cmd
        status, headers, data = await self.upstream.call(request, json.dumps(body).encode())
        if status == 201:
            try:
                self._remember_wrapped_exec(json.loads(data)["Id"])
            except (ValueError, TypeError, KeyError):
                pass
        return web.Response(status=status, body=data, headers=headers)

    async def _network_up(self, info: dict) -> bool:
        """The container's ethwe is there and no attach is under way: weavewait would not wait."""
        pid = info.get("State", {}).get("Pid")
        if not pid or info["Id"] in self.attaching:
            return False
        from weavepy.net import veth
        try:
            return await asyncio.to_thread(veth.inspect, pid) is not None
        except Exception:  # gone, or not ours to look into: wait, as weavewait would
            return False

    def _remember_wrapped_exec(self, exec_id: str):
        if len(self.wrapped_execs) >= WRAPPED_EXECS_KEPT:
            del self.wrapped_execs[next(iter(self.wrapped_execs))]
        self.wrapped_execs[exec_id] = None

    async def inspect(self, request: web.BaseRequest) -> web.StreamResponse:
        """--rewrite-inspect: the weave address where clients look for the container's address."""
        status, headers, data = await self.upstream.call(request)
        if status != 200:
            return web.Response(status=status, body=data, headers=headers)
        info = json.loads(data)
        if unwrap.is_wrapped(info, self.wait_dir):
            unwrap.unwrap_inspect(info)
        cidrs = self.network.allocator.addresses(info.get("Id", ""))
        if cidrs and info.get("State", {}).get("Running"):
            ns = info.setdefault("NetworkSettings", {})
            ns["IPAddress"], ns["IPPrefixLen"] = str(cidrs[0].ip), cidrs[0].network.prefixlen
            from weavepy.net import veth
            iface = await asyncio.to_thread(veth.inspect, info["State"]["Pid"])
            if iface:
                ns["MacAddress"] = iface.mac
        return web.Response(status=200, body=unwrap.encode(info), headers=headers)

    async def changes(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        """docker diff: not the /w mountpoint that dockerd made for weavewait's bind mount."""
        status, headers, data = await self.upstream.call(request)
        if status == 200 and unwrap.has_mountpoint_change(data):
            try:
                wrapped = unwrap.is_wrapped(await self.docker.inspect(name), self.wait_dir)
            except DockerError:
                wrapped = False
            if wrapped:
                data = unwrap.changes(data) or data
        return web.Response(status=status, body=data, headers=headers)

    async def commit(self, request: web.BaseRequest) -> web.StreamResponse:
        """docker commit: the image starts as the container would have without the proxy."""
        raw = await request.read()
        name = request.query.get("container", "")
        try:
            info = await self.docker.inspect(name)
            user = json.loads(raw) if raw.strip() else None
        except (DockerError, json.JSONDecodeError, UnicodeDecodeError):
            return await self.upstream.forward(request, raw)  # dockerd words its own error
        if not unwrap.is_wrapped(info, self.wait_dir) or not isinstance(user, (dict, type(None))):
            return await self.upstream.forward(request, raw)
        config = unwrap.commit_config(user, info["Config"])
        return await self.upstream.forward(request, json.dumps(config).encode(), content_type="application/json")


def route(method: str, path: str, upgrade: bool, rewrite_inspect: bool) -> tuple[str, str | None]:
    """What the proxy does with a request: (kind, container or exec); "forward" means pass it on unchanged."""
    if method == "POST":
        if CREATE.match(path):
            return "create", None
        if m := START.match(path):
            return "start", m.group(1)
        if m := EXEC_CREATE.match(path):
            return "exec_create", m.group(1)
        if HIJACKED.match(path):
            return "hijack", None
        if COMMIT.match(path):
            return "commit", None
    if upgrade:
        return "hijack", None
    if method == "GET":
        if LIST.match(path):
            return "list", None
        if m := INSPECT.match(path):
            return ("weave_inspect" if rewrite_inspect else "inspect"), m.group(1)
        if m := CHANGES.match(path):
            return "changes", m.group(1)
        if m := EXEC_INSPECT.match(path):
            return "exec_inspect", m.group(1)
    return "forward", None


def is_unix(host: str) -> bool:
    return host.startswith("unix://") or host.startswith("/")


def unix_path(host: str) -> str:
    return host[len("unix://"):] if host.startswith("unix://") else host


def remove_socket(path: str) -> None:
    """The socket at path goes; anything else there is not ours to remove."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    os.unlink(path)


def asks_upgrade(request: web.BaseRequest) -> bool:
    """Any other protocol switch (BuildKit's /session and /grpc, attach over websocket) is taken over too."""
    connection = request.headers.get("Connection", "").lower()
    return "Upgrade" in request.headers and "upgrade" in (t.strip() for t in connection.split(","))


def is_proxied(info: dict) -> bool:
    return (info.get("Config", {}).get("Entrypoint") or [None])[0] == create_rewrite.WAIT_PROGRAM
