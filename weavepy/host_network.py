"""The weave network on this host: containers' attachments and the host's own (expose).

Every operation runs under one lock, so allocation, plumbing and persistence
happen in a single order (as Weave's allocator is a single-threaded actor).
A failed operation undoes what it did: no address stays allocated and no veth
stays behind.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time

from weavepy.ipam.allocator import AllocationError, Allocator, Pending
from weavepy.ipam.request import AddressError, AllocateIn, Claim, parse_requests
from weavepy.net import bridge, iptables, veth
from weavepy.net.arp import send_gratuitous_arp
from weavepy import hosts_file, statefile
from weavepy.docker_client import DockerClient, DockerError
from weavepy.dns.records import in_domain

log = logging.getLogger("weavepy")

EXPOSE_IDENT = "weave:expose"
EXTERN_IDENT = "weave:extern"


def container_fqdn(info: dict) -> str:
    """hostname.domainname as Docker split `-h c1.weave.local`; '' when it is not qualified."""
    cfg = info.get("Config", {})
    host, domain = cfg.get("Hostname", ""), cfg.get("Domainname", "")
    name = f"{host}.{domain}" if domain else host
    return name if "." in name else ""


class UserError(Exception):
    """A request we refuse; the message says what was wrong.  status is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class HostNetwork:
    def __init__(self, allocator: Allocator, docker: DockerClient, mtu: int,
                 ipam_file: str, records_file: str, dns=None):
        self.allocator = allocator
        self.dns = dns  # weavepy.dns.records.Records, or None with --no-dns
        self.docker = docker
        self.mtu = mtu
        self.ipam_file = ipam_file
        self.records_file = records_file
        # container id -> how it was attached (so a restart can be attached the same way)
        self.records: dict[str, dict] = statefile.read_json(records_file, {}) or {}
        self.lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()
        # Set whenever the allocator queued a message or its ring changed: waiting requests ask
        # again.  Only a changed ring (agreed, donated, merged) is written to disk.
        self.allocator_changed = asyncio.Event()
        self._persist_soon = False
        self._waiting: dict[str, list] = {}            # ident -> its requests waiting on the cluster
        self._stopped_while_waiting: set[str] = set()  # containers that died while their requests waited
        self.reclaiming: set[str] = set()    # idents whose addresses in use here are being claimed again
        allocator.on_change_hooks.append(self.allocator_changed.set)
        allocator.on_ring_hooks.append(self._ring_changed)

    def _ring_changed(self):
        if not self._persist_soon:
            self._persist_soon = True
            asyncio.get_running_loop().call_soon(self._persist_now)

    def _persist_now(self):
        self._persist_soon = False
        self.persist()

    # -- persistence -------------------------------------------------------
    def persist(self):
        statefile.write_json(self.ipam_file, self.allocator.snapshot())
        statefile.write_json(self.records_file, self.records)

    # -- containers ---------------------------------------------------------
    async def _inspect(self, name: str) -> dict:
        """Docker's view of a container; a Docker error becomes the user's error."""
        try:
            return await self.docker.inspect(name)
        except DockerError as exc:
            raise UserError(str(exc), exc.status) from None

    async def _info_if_running(self, cid: str) -> dict | None:
        try:
            info = await self.docker.inspect(cid)
        except DockerError:
            return None
        return info if info["State"].get("Running") else None

    async def _running_container(self, name: str) -> dict:
        info = await self._inspect(name)
        if not info["State"].get("Running") or info["State"].get("Restarting"):
            raise UserError(f"container {name} is not running")
        if info["HostConfig"].get("NetworkMode") == "host":
            raise UserError(f"container {name} uses the host's network (--net=host); it cannot be attached")
        return info

    async def _acquire(self, ident: str, requests, is_container: bool) -> tuple[list, list]:
        """Allocate or claim each request; returns (all addresses, the ones that are new).

        A request the cluster must answer first (the ring being agreed, space asked of another
        peer) waits, as Weave's does, and is asked again whenever the allocator says something
        changed, and every second.
        """
        cidrs, new = [], []
        try:
            for req in requests:
                had = {c.ip for c in self.allocator.addresses(ident)}
                cidr = await self._until_answered(ident, req, is_container)
                if cidr.ip not in had:
                    new.append(cidr)
                if cidr not in cidrs:
                    cidrs.append(cidr)
        except (AllocationError, AddressError) as exc:
            self._release(ident, new)
            raise UserError(str(exc)) from None
        return cidrs, new

    # -- Weave's HTTP allocation API (/ip/...): addresses for an id, no interfaces -------------
    async def api_allocate(self, ident: str, subnet: ipaddress.IPv4Network | None = None):
        async with self.lock:
            try:
                cidr = await self._until_answered(ident, AllocateIn(subnet or self.allocator.default_subnet),
                                                  is_container=False)
            except (AllocationError, AddressError) as exc:
                raise UserError(str(exc), 400) from None
            self.persist()
            return cidr

    async def api_claim(self, ident: str, cidr: ipaddress.IPv4Interface):
        async with self.lock:
            try:
                await self._until_answered(ident, Claim(cidr), is_container=False)
            except (AllocationError, AddressError) as exc:
                raise UserError(f"Unable to claim: {exc}", 400) from None
            self.persist()

    async def api_free(self, ident: str, addr: str | None):
        async with self.lock:
            if addr is None:
                if not self.allocator.free_all(ident):
                    raise UserError(f"Delete: no addresses for {ident}", 400)
            else:
                try:
                    self.allocator.free(ident, ipaddress.IPv4Address(addr))
                except (AllocationError, ValueError) as exc:
                    raise UserError(f"Unable to free: {exc}", 400) from None
            self.persist()

    async def api_ring(self):
        """`weavepy prime`: make the ring now, and wait until there is one."""
        def ring_made():
            self.allocator.establish_ring()
            if self.allocator.ring.empty():
                raise Pending("the IP allocation ring is not made yet")
        await self._until_allocator(ring_made, "prime", holding_lock=False)

    async def _until_answered(self, ident: str, req, is_container: bool):
        def attempt():
            if is_container and ident in self._stopped_while_waiting:
                # Weave cancels a container's waiting requests when it dies: no address for the dead
                raise AllocationError(f"container {ident[:12]} stopped while waiting for an address")
            if isinstance(req, AllocateIn):
                return self.allocator.allocate(ident, req.subnet, is_container)
            self.allocator.claim(ident, req.cidr, is_container)
            return req.cidr
        self._waiting.setdefault(ident, []).append(req)
        try:
            return await self._until_allocator(attempt, ident[:12])
        finally:
            self._waiting[ident].remove(req)
            if not self._waiting[ident]:
                del self._waiting[ident]
                self._stopped_while_waiting.discard(ident)

    def pending(self) -> dict[str, list]:
        """The requests now waiting on the cluster, by ident (for status and /report)."""
        return {ident: list(reqs) for ident, reqs in self._waiting.items()}

    async def _until_allocator(self, attempt, who: str, holding_lock: bool = True):
        """`attempt()` until it stops raising Pending: again whenever the allocator says something
        changed, and every second.  What it waits for is logged once per reason.

        While it waits, the host lock is let go: a claim waiting for an unreachable owner must not
        hold up allocations elsewhere, detaches or Docker's events (Weave's 320).  Each attempt runs
        without an await, so the allocator still sees one request at a time.
        """
        said = None
        while True:
            self.allocator_changed.clear()
            try:
                return attempt()
            except Pending as waiting:
                if str(waiting) != said:
                    said = str(waiting)
                    log.info("%s for %s", said, who)
            if holding_lock:
                self.lock.release()
            try:
                await asyncio.wait_for(self.allocator_changed.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
            finally:
                if holding_lock:
                    await self._lock_again()

    async def _lock_again(self):
        """Take the host lock back even if we are cancelled meanwhile (a client that went away):
        the caller's `async with` releases it on the way out, so it must be ours by then."""
        taking = asyncio.ensure_future(self.lock.acquire())
        cancelled = False
        while not taking.done():
            try:
                await asyncio.shield(taking)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError()

    def _release(self, ident: str, cidrs):
        for cidr in cidrs:
            try:
                self.allocator.free(ident, cidr.ip)
            except AllocationError:
                pass

    async def attach(self, container: str, tokens: list[str], multicast_route: bool = True,
                     without_dns: bool = False, rewrite_hosts: bool = False,
                     add_hosts: list[str] | None = None) -> list[ipaddress.IPv4Interface]:
        try:
            requests = parse_requests(tokens, self.allocator.default_subnet)
            extra_hosts = hosts_file.parse_add_hosts(add_hosts or [])
        except (AddressError, ValueError) as exc:
            raise UserError(str(exc)) from None
        async with self.lock:
            info = await self._running_container(container)
            cid, pid = info["Id"], info["State"]["Pid"]
            cidrs, new = await self._acquire(cid, requests, is_container=True)
            try:
                if rewrite_hosts:  # before ethwe is up: weavewait starts the process once it is
                    self._rewrite_hosts(info, cidrs, extra_hosts)
                _, mac = await asyncio.to_thread(veth.attach, pid, cidrs, self.mtu, multicast_route)
            except Exception as exc:
                self._release(cid, new)
                raise UserError(f"attaching {container} failed: {exc}", 500) from None
            self._announce(pid, mac, cidrs)
            if not without_dns:
                self._register(cid, info, cidrs)
            self.records[cid] = {"name": info["Name"].lstrip("/"), "multicast_route": multicast_route,
                                 "without_dns": without_dns, "rewrite_hosts": rewrite_hosts,
                                 "add_hosts": add_hosts or []}
            self.persist()
            log.info("attached %s (%s): %s", container, cid[:12], " ".join(map(str, cidrs)))
            return cidrs

    # -- names --------------------------------------------------------------
    def _register(self, ident: str, info: dict | None, cidrs, fqdn: str | None = None):
        if self.dns is None:
            return
        name = fqdn or (container_fqdn(info) if info else "")
        if name:
            for c in cidrs:
                self.dns.add(ident, str(c.ip), name)

    def _unregister(self, ident: str, addr: str | None = None, fqdn: str | None = None):
        if self.dns is not None:
            self.dns.tombstone(int(time.time()), container=ident, addr=addr, hostname=fqdn)

    async def dns_add(self, ips: list[str], container: str | None, fqdn: str | None) -> list[str]:
        """weave dns-add: IPs default to the container's weave addresses, the name to its hostname."""
        if self.dns is None:
            raise UserError("DNS is disabled (launched with --no-dns)", 404)
        ident, info = EXTERN_IDENT, None
        if container:
            info = await self._inspect(container)
            ident = info["Id"]
            ips = ips or [str(c.ip) for c in self.allocator.addresses(ident)]
            fqdn = fqdn or container_fqdn(info)
        if not ips:
            raise UserError("no IP address given" + (f" and {container} has no weave address" if container else ""))
        if not fqdn:
            raise UserError("no name given: use -h <fqdn>" + (f" ({container} has no qualified hostname)"
                                                              if container else ""))
        ips = [_checked_ip(ip) for ip in ips]
        if not in_domain(fqdn, self.dns.domain):
            raise UserError(f"{fqdn} is not in the DNS domain {self.dns.domain}")
        if info is not None and not info["State"].get("Running"):
            raise UserError(f"container {container} is not running")
        for ip in ips:
            self.dns.add(ident, ip, fqdn)
        return ips

    async def dns_remove(self, ips: list[str], container: str | None, fqdn: str | None) -> int:
        if self.dns is None:
            raise UserError("DNS is disabled (launched with --no-dns)", 404)
        ident = EXTERN_IDENT
        if container:
            ident = (await self._inspect(container))["Id"]
        ips = [_checked_ip(ip) for ip in ips] or [None]
        removed = 0
        for ip in ips:
            removed += len(self.dns.tombstone(int(time.time()), container=ident, addr=ip, hostname=fqdn))
        return removed

    def _announce(self, pid: int, mac: str, cidrs):
        """Gratuitous ARP in the background; the reply need not wait for it."""
        async def send():
            try:
                await asyncio.to_thread(veth.announce, pid, mac, cidrs)
            except Exception as exc:  # the container may already be gone
                log.debug("gratuitous ARP for %s: %s", pid, exc)
        self._spawn(send())

    def _spawn(self, coro) -> None:
        """Run coro in the background, holding on to its task until it is done."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _rewrite_hosts(self, info: dict, cidrs, extra_hosts):
        path = info.get("HostsPath")
        if not path or not os.path.exists(path):
            return
        cfg = info["Config"]
        fqdn = cfg.get("Hostname", "")
        if cfg.get("Domainname"):
            fqdn = f"{fqdn}.{cfg['Domainname']}"
        hosts_file.rewrite(path, fqdn, [c.ip for c in self.allocator.addresses(info["Id"])], extra_hosts)

    def _select(self, ident: str, tokens: list[str], strict: bool = True) -> list[ipaddress.IPv4Interface]:
        """The addresses of ident that tokens name; a token naming none is an error when strict."""
        owned = self.allocator.addresses(ident)
        if not tokens:
            return owned
        try:
            requests = parse_requests(tokens, self.allocator.default_subnet)
        except AddressError as exc:
            raise UserError(str(exc)) from None
        chosen = []
        for token, req in zip(tokens, requests):
            if isinstance(req, AllocateIn):
                match = self.allocator.addresses_in(ident, req.subnet)
            else:
                match = [c for c in owned if c.ip == req.cidr.ip]
            if not match and strict:
                raise UserError(f"no address matching {token} is attached")
            chosen += [c for c in match if c not in chosen]
        return chosen

    async def detach(self, container: str, tokens: list[str]) -> list[ipaddress.IPv4Interface]:
        async with self.lock:
            info = await self._inspect(container)
            cid = info["Id"]
            if not self.allocator.addresses(cid):
                raise UserError(f"container {container} is not attached to the weave network")
            chosen = self._select(cid, tokens)
            if info["State"].get("Running"):
                await asyncio.to_thread(veth.remove_addresses, info["State"]["Pid"], chosen)
            for cidr in chosen:
                self.allocator.free(cid, cidr.ip)
                self._unregister(cid, str(cidr.ip))
            if not self.allocator.addresses(cid):
                self.records.pop(cid, None)
            self.persist()
            return chosen

    async def ps(self, containers: list[str]) -> list[str]:
        lines = []
        if not containers:
            mac = await asyncio.to_thread(bridge.bridge_mac) or ""
            exposed = await asyncio.to_thread(bridge.addresses)
            lines.append(" ".join([EXPOSE_IDENT, mac, *map(str, exposed)]))
            idents = [i for i in self.records] + [i for i, o in self.allocator.owned.items()
                                                   if o.is_container and i not in self.records]
        else:
            idents = []
            for name in containers:
                idents.append((await self._inspect(name))["Id"])
        for cid in idents:
            info = await self._info_if_running(cid)
            if info is None:
                continue
            iface = await asyncio.to_thread(veth.inspect, info["State"]["Pid"])
            if iface is not None:
                lines.append(" ".join([cid[:12], iface.mac, *map(str, iface.cidrs)]))
        return lines

    # -- the host itself ---------------------------------------------------
    async def expose(self, tokens: list[str], masquerade: bool = True,
                     fqdn: str | None = None) -> list[ipaddress.IPv4Interface]:
        try:
            requests = parse_requests(tokens, self.allocator.default_subnet)
        except AddressError as exc:
            raise UserError(str(exc)) from None
        async with self.lock:
            cidrs, new = await self._acquire(EXPOSE_IDENT, requests, is_container=False)
            try:
                await asyncio.to_thread(self._plumb_expose, cidrs, masquerade)
            except Exception as exc:
                self._release(EXPOSE_IDENT, new)
                raise UserError(f"expose failed: {exc}", 500) from None
            rec = self.records.setdefault(EXPOSE_IDENT, {"masquerade": {}})
            for c in cidrs:
                rec["masquerade"][str(c)] = masquerade
            if fqdn:
                self._register(EXPOSE_IDENT, None, cidrs, fqdn)
            self.persist()
            return cidrs

    @staticmethod
    def _plumb_expose(cidrs, masquerade: bool):
        for c in cidrs:
            bridge.add_address(c)
            iptables.expose(c.network, masquerade)
        mac = bridge.bridge_mac()
        send_gratuitous_arp(bridge.BRIDGE, mac, [c.ip for c in cidrs])

    async def hide(self, tokens: list[str]) -> list[ipaddress.IPv4Interface]:
        async with self.lock:
            # Weave's 130: hiding what is not exposed (again) is not an error
            chosen = self._select(EXPOSE_IDENT, tokens, strict=False)
            for cidr in chosen:
                self.allocator.free(EXPOSE_IDENT, cidr.ip)
                self._unregister(EXPOSE_IDENT, str(cidr.ip))
            remaining = {c.network for c in self.allocator.addresses(EXPOSE_IDENT)}

            def unplumb():
                for c in chosen:
                    bridge.del_address(c)
                    if c.network not in remaining:
                        iptables.hide(c.network)
            await asyncio.to_thread(unplumb)
            rec = self.records.get(EXPOSE_IDENT, {"masquerade": {}})
            for c in chosen:
                rec["masquerade"].pop(str(c), None)
            if not rec["masquerade"]:
                self.records.pop(EXPOSE_IDENT, None)
            self.persist()
            return chosen

    # -- keeping up with Docker --------------------------------------------
    async def reconcile(self) -> set[str]:
        """Bring state in line with what runs now: after our start and after the event stream broke.

        Returns the IDs of the running containers."""
        running = await self.docker.running_ids()
        async with self.lock:
            pruned = self.allocator.prune(running)
            for ident in pruned:
                self.records.pop(ident, None)
                log.info("container %s went while we were away; freed %s", ident[:12],
                         " ".join(map(str, pruned[ident])))
            if pruned:
                self.persist()
            exposed = self.allocator.addresses(EXPOSE_IDENT)
            if exposed:
                masq = self.records.get(EXPOSE_IDENT, {}).get("masquerade", {})
                for c in exposed:
                    await asyncio.to_thread(self._plumb_expose, [c], masq.get(str(c), True))
        await self._claim_again(running)
        for cid in running:
            if self.allocator.addresses(cid):
                await self._reattach(cid)
        return running

    async def _claim_again(self, running: set[str]):
        """Addresses in use here that the allocator does not know (its data was wiped or lost) are
        claimed again, before anything new is given out, so they are not handed to someone else
        (Weave's pre-claims, prog/weaver/reclaim.go): the bridge's, and running containers' ethwe.
        A claim that must wait for the ring or the address's owner waits in the background."""
        found = []
        on_bridge = [c for c in await asyncio.to_thread(bridge.addresses)
                     if c not in self.allocator.addresses(EXPOSE_IDENT)]
        if on_bridge:
            found.append((EXPOSE_IDENT, on_bridge, False))
        for cid in running:
            if self.allocator.addresses(cid) or cid in self.reclaiming:
                continue
            info = await self._info_if_running(cid)
            try:
                iface = info and await asyncio.to_thread(veth.inspect, info["State"]["Pid"])
            except Exception as exc:   # it went meanwhile
                log.debug("looking at %s: %s", cid[:12], exc)
                continue
            if iface and iface.cidrs:
                found.append((cid, iface.cidrs, True))
        for ident, cidrs, is_container in found:
            self.reclaiming.add(ident)
            self._spawn(self._reclaim(ident, cidrs, is_container))

    async def _reclaim(self, ident: str, cidrs, is_container: bool):
        try:
            async with self.lock:
                for cidr in cidrs:
                    try:
                        await self._until_answered(ident, Claim(cidr), is_container)
                    except (AllocationError, AddressError) as exc:
                        log.error("%s is in use by %s on this host, but could not be claimed for it: %s",
                                  cidr, ident[:12], exc)
                        continue
                    log.info("claimed %s for %s again: it is in use here but was missing from the IPAM data",
                             cidr, ident[:12])
                self.persist()
        finally:
            self.reclaiming.discard(ident)

    async def _reattach(self, cid: str):
        """Give a (re)started container back its addresses, as it was attached before.

        An address claimed away while it was stopped (Weave's 300) is replaced by a new one from the
        same subnet when that subnet is in the allocation range; otherwise it is left off, and logged.
        """
        if not self.allocator.addresses(cid) and cid not in self.allocator.displaced:
            return
        async with self.lock:
            info = await self._info_if_running(cid)
            if info is None:
                return
            for lost in self.allocator.take_displaced(cid):
                holder = self.allocator.by_addr.get(int(lost.ip), "another container")
                try:
                    new = self.allocator.allocate(cid, lost.network, is_container=True)
                except (AllocationError, AddressError, Pending) as exc:
                    log.error("container %s restarted, but its address %s was claimed by %s while it was "
                              "stopped, and no other address could be given (%s)", cid[:12], lost, holder[:12], exc)
                    continue
                log.warning("container %s restarted; its address %s was claimed by %s while it was stopped, "
                            "so it gets %s instead", cid[:12], lost, holder[:12], new)
                self.persist()
            cidrs = self.allocator.addresses(cid)
            if not cidrs:
                return
            rec = self.records.get(cid, {})
            pid = info["State"]["Pid"]
            try:
                _, mac = await asyncio.to_thread(veth.attach, pid, cidrs, self.mtu, rec.get("multicast_route", True))
            except Exception as exc:
                log.warning("re-attaching %s failed: %s", cid[:12], exc)
                return
            self._announce(pid, mac, cidrs)
            if not rec.get("without_dns"):
                self._register(cid, info, cidrs)
            if rec.get("rewrite_hosts"):
                self._rewrite_hosts(info, cidrs, hosts_file.parse_add_hosts(rec.get("add_hosts", [])))
            log.info("re-attached %s: %s", cid[:12], " ".join(map(str, cidrs)))

    async def on_event(self, event: dict):
        cid, action = event.get("id") or event.get("Actor", {}).get("ID"), event.get("Action") or event.get("status")
        if not cid:
            return
        if action == "start":
            self.allocator.container_started(cid)
            await self._reattach(cid)
        elif action in ("die", "destroy") and cid in self._waiting:
            self._stopped_while_waiting.add(cid)
            self.allocator_changed.set()
        if action == "die":
            self.allocator.container_died(cid, time.monotonic())
            self._unregister(cid)
        elif action == "destroy":
            self._unregister(cid)
            async with self.lock:
                freed = self.allocator.container_destroyed(cid)
                self.records.pop(cid, None)
                if freed:
                    self.persist()
                    log.info("container %s destroyed; freed %s", cid[:12], " ".join(map(str, freed)))

    async def tick(self):
        self.allocator.tick()
        async with self.lock:
            expired = self.allocator.remove_dead(time.monotonic())
            for ident, freed in expired.items():
                self.records.pop(ident, None)
                log.info("container %s stayed dead; freed %s", ident[:12], " ".join(map(str, freed)))
            if expired:
                self.persist()


def _checked_ip(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise UserError(f"invalid IP address '{text}'") from None
