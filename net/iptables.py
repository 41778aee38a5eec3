"""weavepy's iptables rules.  They live in chains of their own, reached by one
jump each from the built-in chains, so `reset` can remove them without
touching anybody else's rules.

iptables has no netlink API that pyroute2 speaks, so this drives iptables(8)
with -w (wait for the xtables lock) and checks before adding.
"""
from __future__ import annotations

import ipaddress
import subprocess

FORWARD_CHAIN = "WEAVE-FORWARD"   # filter: what may cross the bridge
EXPOSE_CHAIN = "WEAVE-EXPOSE"     # filter: subnets exposed to the host
NAT_CHAIN = "WEAVE"               # nat: masquerade for exposed subnets
MULTICAST = "224.0.0.0/4"


class IptablesError(Exception):
    pass


def _run(args: list[str], check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise IptablesError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _exists(table: str, chain: str, rule: list[str]) -> bool:
    return _run(["-t", table, "-C", chain, *rule], check=False).returncode == 0


def _chain_exists(table: str, chain: str) -> bool:
    return _run(["-t", table, "-S", chain], check=False).returncode == 0


def _ensure_chain(table: str, chain: str):
    if not _chain_exists(table, chain):
        _run(["-t", table, "-N", chain])


def _append(table: str, chain: str, rule: list[str]):
    if not _exists(table, chain, rule):
        _run(["-t", table, "-A", chain, *rule])


def _delete(table: str, chain: str, rule: list[str]):
    while _exists(table, chain, rule):
        _run(["-t", table, "-D", chain, *rule])


def forward_rules(bridge: str) -> list[list[str]]:
    return [
        ["-i", "docker0", "-o", bridge, "-j", "DROP"],             # docker0 containers stay off weave
        ["-i", bridge, "-o", bridge, "-j", "ACCEPT"],              # the switch itself (br_netfilter)
        ["-o", bridge, "-j", EXPOSE_CHAIN],
        ["-i", bridge, "!", "-o", bridge, "-j", "ACCEPT"],
        ["-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
    ]


def setup(bridge: str):
    """Install the launch-time rules; safe to run again."""
    _ensure_chain("filter", EXPOSE_CHAIN)
    _ensure_chain("filter", FORWARD_CHAIN)
    current = _run(["-t", "filter", "-S", FORWARD_CHAIN]).stdout.splitlines()[1:]
    wanted = forward_rules(bridge)
    if len(current) != len(wanted):
        _run(["-t", "filter", "-F", FORWARD_CHAIN])
        for rule in wanted:
            _run(["-t", "filter", "-A", FORWARD_CHAIN, *rule])
    # Our jump goes first: dockerd may have set the FORWARD policy to DROP.
    if not _exists("filter", "FORWARD", ["-j", FORWARD_CHAIN]):
        _run(["-t", "filter", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN])
    _ensure_chain("nat", NAT_CHAIN)
    _append("nat", "POSTROUTING", ["-j", NAT_CHAIN])


def expose_rules(subnet: ipaddress.IPv4Network) -> list[tuple[str, str, list[str]]]:
    c = str(subnet)
    return [
        ("nat", NAT_CHAIN, ["-s", c, "-d", MULTICAST, "-j", "RETURN"]),
        ("nat", NAT_CHAIN, ["-d", c, "!", "-s", c, "-j", "MASQUERADE"]),
        ("nat", NAT_CHAIN, ["-s", c, "!", "-d", c, "-j", "MASQUERADE"]),
    ]


def expose(subnet: ipaddress.IPv4Network, masquerade: bool = True):
    if masquerade:
        for table, chain, rule in expose_rules(subnet):
            _append(table, chain, rule)
    _append("filter", EXPOSE_CHAIN, ["-d", str(subnet), "-j", "ACCEPT"])


def hide(subnet: ipaddress.IPv4Network):
    for table, chain, rule in expose_rules(subnet):
        _delete(table, chain, rule)
    _delete("filter", EXPOSE_CHAIN, ["-d", str(subnet), "-j", "ACCEPT"])


def teardown():
    """Remove every weavepy chain and the jumps to them."""
    _delete("filter", "FORWARD", ["-j", FORWARD_CHAIN])
    _delete("nat", "POSTROUTING", ["-j", NAT_CHAIN])
    for table, chain in (("filter", FORWARD_CHAIN), ("filter", EXPOSE_CHAIN), ("nat", NAT_CHAIN)):
        if _chain_exists(table, chain):
            _run(["-t", table, "-F", chain])
            _run(["-t", table, "-X", chain])


def our_rules() -> list[str]:
    """Every rule that mentions a weavepy chain (for tests and `reset` checks)."""
    out = []
    for table in ("filter", "nat"):
        for line in _run(["-t", table, "-S"], check=False).stdout.splitlines():
            if any(name in line for name in (FORWARD_CHAIN, EXPOSE_CHAIN, f" {NAT_CHAIN}")) or \
               line.endswith(f"-j {NAT_CHAIN}"):
                out.append(f"{table}: {line}")
    return out
