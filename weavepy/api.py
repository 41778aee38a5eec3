"""The daemon's HTTP API (127.0.0.1:6784 by default): status, report, and the calls the CLI makes."""
from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from weavepy import metrics, status
from weavepy.host_network import UserError
from weavepy.ipam.allocator import AllocationError
from weavepy.ipam.request import AddressError, parse_cidr, parse_subnet


def build_app(daemon) -> web.Application:
    net = daemon.network
    routes = web.RouteTableDef()
    ipam_routes = web.RouteTableDef()   # Weave's allocation API, only while IP allocation is on

    def text(body: str, code: int = 200) -> web.Response:
        return web.Response(text=body, status=code)

    async def body_json(request) -> dict:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="request body must be JSON\n") from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="request body must be a JSON object\n")
        return data

    @web.middleware
    async def user_errors(request, handler):
        try:
            return await handler(request)
        except UserError as exc:
            return text(f"{exc}\n", exc.status)

    @routes.get("/status")
    async def get_status(request):
        return text(status.status_text(daemon.report()))

    @routes.get("/status/{section}")
    async def get_section(request):
        fmt = status.SECTIONS.get(request.match_info["section"])
        if fmt is None:
            return text(f"unknown status section '{request.match_info['section']}'\n", 404)
        return text(fmt(daemon.report()))

    @routes.get("/report")
    async def get_report(request):
        return web.json_response(daemon.report(), dumps=lambda o: json.dumps(o, indent=4))

    # -- the mesh -------------------------------------------------------------
    def peer_list(d: dict) -> list[str]:
        peers = d.get("peers", [])
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
            raise web.HTTPBadRequest(text="peers must be a list of host[:port]\n")
        return peers

    @routes.post("/connect")
    async def connect(request):
        d = await body_json(request)
        peers = peer_list(d)
        try:
            daemon.router.connect(peers, replace=bool(d.get("replace")))
        except ValueError as exc:
            return text(f"{exc}\n", 400)
        return web.json_response({})

    @routes.post("/forget")
    async def forget(request):
        daemon.router.forget(peer_list(await body_json(request)))
        return web.json_response({})

    @routes.get("/metrics")
    async def get_metrics(request):
        body = metrics.render(daemon.report(), await daemon.metric_samples()).encode()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    @routes.post("/weavepy/attach")
    async def attach(request):
        d = await body_json(request)
        cidrs = await net.attach(d["container"], d.get("addrs", []), d.get("multicast_route", True),
                                 d.get("without_dns", False), d.get("rewrite_hosts", False), d.get("add_hosts", []))
        return web.json_response({"addrs": [str(c) for c in cidrs]})

    @routes.post("/weavepy/detach")
    async def detach(request):
        d = await body_json(request)
        cidrs = await net.detach(d["container"], d.get("addrs", []))
        return web.json_response({"addrs": [str(c) for c in cidrs]})

    @routes.post("/weavepy/ps")
    async def ps(request):
        d = await body_json(request)
        return web.json_response({"lines": await net.ps(d.get("containers", []))})

    @routes.post("/weavepy/expose")
    async def expose(request):
        d = await body_json(request)
        cidrs = await net.expose(d.get("addrs", []), d.get("masquerade", True), d.get("fqdn"))
        return web.json_response({"addrs": [str(c) for c in cidrs]})

    @routes.post("/weavepy/hide")
    async def hide(request):
        d = await body_json(request)
        cidrs = await net.hide(d.get("addrs", []))
        return web.json_response({"addrs": [str(c) for c in cidrs]})

    # -- weaveDNS (404 with --no-dns, as Weave's) --------------------------------
    def dns_or_404():
        if daemon.dns_records is None:
            raise web.HTTPNotFound(text="DNS is disabled\n")
        return daemon.dns_records

    @routes.get("/domain")
    async def domain(request):
        return text(dns_or_404().domain)

    @routes.get("/dns-address")
    async def dns_address(request):
        dns_or_404()
        return text(daemon.dns_address[0])

    @routes.get("/dns-address-port")
    async def dns_address_port(request):
        dns_or_404()
        return text(f"{daemon.dns_address[0]}:{daemon.dns_address[1]}")

    @routes.get("/name")
    async def names(request):
        return web.json_response([e.to_dict() for e in dns_or_404().entries.values()])

    @routes.put("/name/{container}/{ip}")
    async def put_name(request):
        form = await request.post()
        container = request.match_info["container"]
        await net.dns_add([request.match_info["ip"]], None if container == "weave:extern" else container,
                          form.get("fqdn"))
        return web.Response(status=204)

    @routes.delete("/name/{container}/{ip}")
    async def delete_name(request):
        dns_or_404().tombstone(int(time.time()), container=request.match_info["container"],
                               addr=request.match_info["ip"], hostname=request.query.get("fqdn"))
        return web.Response(status=204)

    @routes.delete("/name/{container}")
    async def delete_container_names(request):
        dns_or_404().tombstone(int(time.time()), container=request.match_info["container"],
                               hostname=request.query.get("fqdn"))
        return web.Response(status=204)

    @routes.post("/weavepy/dns-add")
    async def dns_add(request):
        d = await body_json(request)
        return web.json_response({"ips": await net.dns_add(d.get("ips", []), d.get("container"), d.get("fqdn"))})

    @routes.post("/weavepy/dns-remove")
    async def dns_remove(request):
        d = await body_json(request)
        return web.json_response({"removed": await net.dns_remove(d.get("ips", []), d.get("container"),
                                                                  d.get("fqdn"))})

    @routes.get("/proxyaddrs")
    async def proxy_addrs(request):
        if daemon.proxy is None:
            raise web.HTTPNotFound(text="the proxy is not running\n")
        return text("".join(f"{a}\n" for a in daemon.proxy.addresses))

    @ipam_routes.delete("/peer/{name}")
    async def remove_peer(request):
        """Weave's rmpeer: a dead peer's IP space becomes ours."""
        name = request.match_info["name"]
        try:
            taken = daemon.allocator.take_over(name)
        except AllocationError as exc:
            raise UserError(str(exc)) from None
        return text(f"{taken} IPs taken over from {name}\n")

    @routes.post("/weavepy/leave")
    async def leave(request):
        """Before `reset`: hand our IP space to another peer, and give the mesh a moment to carry it."""
        heir = daemon.allocator.leave()
        if heir is not None:
            daemon.network.persist()
            await asyncio.sleep(0.5)
        return text(f"{heir or ''}\n")

    # -- Weave's HTTP allocation API (ipam/http.go) ---------------------------------------
    def subnet_of(request):
        try:
            return parse_subnet(f"{request.match_info['net']}/{request.match_info['prefixlen']}")
        except AddressError as exc:
            raise UserError(str(exc), 400) from None

    @ipam_routes.post("/ip/{id}")
    async def ip_allocate(request):
        return text(str(await net.api_allocate(request.match_info["id"])))

    @ipam_routes.post("/ip/{id}/{net}/{prefixlen}")
    async def ip_allocate_in(request):
        return text(str(await net.api_allocate(request.match_info["id"], subnet_of(request))))

    @ipam_routes.get("/ip/{id}")
    async def ip_get(request):
        subnet = daemon.allocator.default_subnet
        return text(" ".join(str(c) for c in daemon.allocator.addresses_in(request.match_info["id"], subnet)))

    @ipam_routes.get("/ip/{id}/{net}/{prefixlen}")
    async def ip_get_in(request):
        return text(" ".join(str(c) for c in daemon.allocator.addresses_in(request.match_info["id"],
                                                                          subnet_of(request))))

    @ipam_routes.put("/ip/{id}/{ip}/{prefixlen}")
    async def ip_claim(request):
        try:
            cidr = parse_cidr(f"{request.match_info['ip']}/{request.match_info['prefixlen']}")
        except AddressError as exc:
            raise UserError(str(exc), 400) from None
        await net.api_claim(request.match_info["id"], cidr)
        return web.Response(status=204)

    @ipam_routes.delete("/ip/{id}/{ip}")
    async def ip_free(request):
        await net.api_free(request.match_info["id"], request.match_info["ip"])
        return web.Response(status=204)

    @ipam_routes.delete("/ip/{id}")
    async def ip_free_all(request):
        await net.api_free(request.match_info["id"], None)
        return web.Response(status=204)

    @ipam_routes.get("/ring")
    async def ring(request):
        await net.api_ring()
        return text("")

    @ipam_routes.get("/ipinfo/defaultsubnet")
    async def default_subnet(request):
        return text(str(daemon.allocator.default_subnet))

    @ipam_routes.get("/ip")
    async def owned(request):
        owned = [{"containerid": ident, "addrs": [str(c) for c in o.cidrs]}
                 for ident, o in daemon.allocator.owned.items()]
        return web.json_response({"owned": owned or None})

    app = web.Application(middlewares=[user_errors])
    app.add_routes(routes)
    if daemon.allocator.universe is not None:   # with --ipalloc-range "" these are 404, as Weave's
        app.add_routes(ipam_routes)
    return app
