"""`weavepy status` and `weavepy report`: the daemon's report and its text forms, in Weave's formats."""
from __future__ import annotations

from weavepy import __version__
from weavepy.ipam.request import AllocateIn, Claim

PROTOCOL_MIN, PROTOCOL_MAX = 1, 2


def standalone_router(config, peer: str) -> dict:
    """The Router section when no mesh runs (tests of the other sections): just this peer."""
    nick = config.effective_nickname
    return {
        "Protocol": "weave",
        "ProtocolMinVersion": PROTOCOL_MIN,
        "ProtocolMaxVersion": PROTOCOL_MAX,
        "Encryption": bool(config.password),
        "PeerDiscovery": config.discovery,
        "Name": peer,
        "NickName": nick,
        "Port": config.port,
        "Peers": [{"Name": peer, "NickName": nick, "Connections": []}],
        "UnicastRoutes": [],
        "BroadcastRoutes": [],
        "Connections": [],
        "TerminationCount": 0,
        "Targets": list(config.peers),
        "TrustedSubnets": list(config.trusted_subnets),
    }


def ipam_report(config, peer: str, allocator, pending: dict[str, list]) -> dict:
    """Weave's IPAM section; `pending` is what waits on the cluster, ident -> its requests."""
    nick = config.effective_nickname
    entries = []
    for e, lo, hi in allocator.ring.spans():
        entries.append({"Token": _ip(lo), "Size": hi - lo, "Peer": e.peer, "Nickname": nick if e.peer == peer else "",
                        "IsKnownPeer": e.peer == peer, "Version": e.version})
    return {
        "Status": allocator.status_word(waiting=bool(pending)),
        "Range": str(allocator.universe),
        "RangeNumIPs": allocator.universe.num_addresses,
        "ActiveIPs": allocator.active_count(),
        "DefaultSubnet": str(allocator.default_subnet),
        "Entries": entries,
        "PeerSizes": allocator.ring.peer_sizes(),
        "PendingClaims": [{"Ident": ident, "CIDR": str(r.cidr)}
                          for ident, reqs in pending.items() for r in reqs if isinstance(r, Claim)],
        "PendingAllocates": [f"{ident} {r.subnet}"
                             for ident, reqs in pending.items() for r in reqs if isinstance(r, AllocateIn)],
    }


def build_report(config, peer: str, allocator, dns=None, dns_address=None, upstream=(),
                 proxy_addresses=None, router: dict | None = None, pending: dict | None = None) -> dict:
    """The whole report; the router (mesh/driver.py) renders its own section."""
    return {
        "Ready": True,
        "Version": __version__,
        "Router": router if router is not None else standalone_router(config, peer),
        "IPAM": None if allocator.universe is None else ipam_report(config, peer, allocator, pending or {}),
        "Proxy": None if proxy_addresses is None else {"Addresses": list(proxy_addresses)},
        "DNS": None if dns is None else {
            "Domain": dns.domain,
            "Upstream": list(upstream),
            "Address": f"{dns_address[0]}:{dns_address[1]}",
            "TTL": config.dns_ttl,
            "Entries": [e.to_dict() for e in dns.live()],
        },
    }


def _ip(n: int) -> str:
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def _block(rows) -> list[str]:
    return [f"{k:>15}: {v}" for k, v in rows]


def status_text(report: dict) -> str:
    r, ipam = report["Router"], report["IPAM"]
    conns = r["Connections"]
    lines = [""] + _block([("Version", f"{report['Version']}")]) + [""]
    lines += _block([
        ("Service", "router"),
        ("Protocol", f"{r['Protocol']} {r['ProtocolMinVersion']}..{r['ProtocolMaxVersion']}"),
        ("Name", f"{r['Name']}({r['NickName']})"),
        ("Encryption", "enabled" if r["Encryption"] else "disabled"),
        ("PeerDiscovery", "enabled" if r["PeerDiscovery"] else "disabled"),
        ("Targets", len(r["Targets"])),
        ("Connections", _connection_summary(conns)),
        ("Peers", _peer_summary(r["Peers"])),
        ("TrustedSubnets", ", ".join(r.get("TrustedSubnets", [])) or "none"),
    ]) + [""]
    if ipam is not None:              # None: launched with --ipalloc-range ""
        lines += _block([
            ("Service", "ipam"),
            ("Status", ipam["Status"]),
            ("Range", ipam["Range"]),
            ("DefaultSubnet", ipam["DefaultSubnet"]),
        ])
    else:
        lines.pop()                   # no blank line before a section that is not there
    proxy = report.get("Proxy")
    if proxy is not None:
        lines += [""] + _block([("Service", "proxy"), ("Address", ", ".join(proxy["Addresses"]))])
    dns = report.get("DNS")
    if dns is not None:
        lines += [""] + _block([
            ("Service", "dns"),
            ("Domain", dns["Domain"]),
            ("Upstream", ", ".join(dns["Upstream"]) or "none"),
            ("TTL", dns["TTL"]),
            ("Entries", len(dns["Entries"])),
        ])
    return "\n".join(lines) + "\n"


# Weave's order (prog/weaver/http.go printConnectionCounts)
CONNECTION_STATES = ("established", "pending", "retrying", "failed", "connecting")


def _counts(states, total: int, label: str = "") -> str:
    counts: dict[str, int] = {}
    for st in states:
        counts[st] = counts.get(st, 0) + 1
    parts = [f"{counts.pop(st)} {st}" for st in CONNECTION_STATES if st in counts]
    parts += [f"{n} {st}" for st, n in counts.items()]
    return f"{total} ({label}{', '.join(parts)}{' connections' if label else ''})" if parts else str(total)


def _connection_summary(conns) -> str:
    """`1 (1 established)`: every connection and target by state."""
    return _counts([c["State"] for c in conns], len(conns))


def _peer_summary(peers) -> str:
    """`2 (with 2 established connections)`: the connections every known peer reports, by state."""
    states = ["established" if c.get("Established") else "pending" for p in peers for c in p.get("Connections", [])]
    return _counts(states, len(peers), "with ")


def targets_text(report: dict) -> str:
    return "".join(f"{t}\n" for t in report["Router"]["Targets"])


def connections_text(report: dict) -> str:
    """`-> 10.0.0.2:6783  established fastdp 5a:..(host2) mtu=1376`, as `weave status connections`."""
    out = []
    for c in report["Router"]["Connections"]:
        # Weave prints the overlay's attributes but its name; the state column already says established,
        # and health is news only when it is bad
        shown = {k: v for k, v in (c.get("Attrs") or {}).items()
                 if k not in ("name", "established") and not (k == "healthy" and v)}
        attrs = " ".join(f"{k}={v}" for k, v in sorted(shown.items()))
        line = f"{'->' if c.get('Outbound') else '<-'} {c['Address']:<21} {c['State']:<11} {c.get('Info', '')}"
        out.append(f"{line} {attrs}".rstrip() if attrs else line.rstrip())
    return "".join(line + "\n" for line in out)


def peers_text(report: dict) -> str:
    out = []
    for p in report["Router"]["Peers"]:
        out.append(f"{p['Name']}({p['NickName']})")
        for c in p["Connections"]:
            out.append(f"   -> {c['Address']:<21} {c['Name']}({c['NickName']}) "
                       f"{'established' if c.get('Established') else 'pending'}")
    return "".join(line + "\n" for line in out)


def ipam_text(report: dict) -> str:
    """One line per peer owning ring space, ours first (empty while the ring is empty)."""
    ipam, me = report["IPAM"], report["Router"]["Name"]
    if ipam is None:
        return ""
    total = ipam["RangeNumIPs"]
    nick = {p["Name"]: p["NickName"] for p in report["Router"]["Peers"]}
    sizes = ipam["PeerSizes"]
    out = []
    for peer in sorted(sizes, key=lambda p: p != me):
        size = sizes[peer]
        suffix = f"({ipam['ActiveIPs']} active)" if peer == me else ("" if peer in nick else "- unreachable!")
        label = f"{peer}({nick.get(peer, '')})"
        out.append(f"{label:<37} {size:>8} IPs ({100.0 * size / total:04.1f}% of total) {suffix}".rstrip())
    return "".join(line + "\n" for line in out)


def dns_text(report: dict) -> str:
    """One line per live entry: name (domain trimmed), address, container (12 chars), origin."""
    dns = report.get("DNS")
    if dns is None:
        return ""
    suffix = "." + dns["Domain"]
    out = []
    for e in dns["Entries"]:
        name = e["Hostname"][: -len(suffix)] if e["Hostname"].lower().endswith(suffix.lower()) else e["Hostname"]
        out.append(f"{name:<12} {e['Addr']:<15} {e['ContainerID'][:12]:>12} {e['Origin']}")
    return "".join(line + "\n" for line in out)


SECTIONS = {
    "dns": dns_text,
    "targets": targets_text,
    "connections": connections_text,
    "peers": peers_text,
    "ipam": ipam_text,
}
