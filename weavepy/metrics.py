"""`GET /metrics`: the report and the routers' counters in Prometheus' text format (version 0.0.4).

Names and labels follow Weave Net's (site/tasks/manage/metrics.md): `weave_connections{state,type,
encryption}` counts connections and targets by state, overlay and whether they are encrypted.
"""
from __future__ import annotations

from weavepy.status import CONNECTION_STATES


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Exposition:
    """Collects samples, then renders each metric family once with its HELP and TYPE."""

    def __init__(self):
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value, **labels):
        family = self.families.setdefault(name, (kind, help_text, []))
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        family[2].append(f"{name}{{{label_text}}} {value}" if labels else f"{name} {value}")

    def render(self) -> str:
        out = []
        for name, (kind, help_text, samples) in self.families.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(out) + "\n"


def render(report: dict, samples=()) -> str:
    """samples: more (name, type, help, value, labels) from the router and its overlays."""
    exp = Exposition()
    router = report["Router"]
    by_kind: dict[tuple, int] = {}
    for c in router["Connections"]:
        attrs = c.get("Attrs") or {}
        key = (c["State"], attrs.get("name", "unknown") if c["State"] == "established" else "unknown",
               "yes" if attrs.get("encrypted") else "")
        by_kind[key] = by_kind.get(key, 0) + 1
    for state in CONNECTION_STATES:
        if not any(k[0] == state for k in by_kind):
            by_kind[(state, "unknown", "")] = 0  # every state present, so dashboards see zeros
    for (state, kind, enc), n in sorted(by_kind.items()):
        exp.add("weave_connections", "gauge", "Number of peer-to-peer connections.", n,
                state=state, type=kind, encryption=enc)
    exp.add("weave_connection_terminations_total", "counter", "Number of peer-to-peer connections terminated.",
            router.get("TerminationCount", 0))
    exp.add("weave_peers", "gauge", "Number of peers known in the topology.", len(router["Peers"]))
    for name, kind, help_text, value, labels in samples:
        exp.add(name, kind, help_text, value, **labels)
    ipam = report.get("IPAM")
    if ipam:
        exp.add("weave_ips", "gauge", "Number of IP addresses.", ipam["ActiveIPs"], state="local-used")
        exp.add("weave_max_ips", "gauge", "Size of the IP address space used by the allocator.", ipam["RangeNumIPs"])
        exp.add("weave_ipam_pending_allocates", "gauge", "Number of pending allocates.",
                len(ipam.get("PendingAllocates") or []))
        exp.add("weave_ipam_pending_claims", "gauge", "Number of pending claims.", len(ipam.get("PendingClaims") or []))
    dns = report.get("DNS")
    if dns:
        exp.add("weave_dns_entries", "gauge", "Number of DNS entries.", len(dns["Entries"]),
                state="local")
    return exp.render()
