"""A container's /etc/hosts that maps its hostname to its weave address (attach --rewrite-hosts)."""
from __future__ import annotations

import ipaddress

DEFAULTS = [
    ("127.0.0.1", "localhost"),
    ("::1", "localhost ip6-localhost ip6-loopback"),
    ("fe00::0", "ip6-localnet"),
    ("ff00::0", "ip6-mcastprefix"),
    ("ff02::1", "ip6-allnodes"),
    ("ff02::2", "ip6-allrouters"),
]


def parse_add_hosts(values: list[str]) -> list[tuple[str, str]]:
    """--add-host HOST:IP, as docker run takes it."""
    out = []
    for v in values:
        host, sep, ip = v.partition(":")
        if not sep or not host:
            raise ValueError(f"invalid --add-host '{v}': expected HOST:IP")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"invalid --add-host '{v}': '{ip}' is not an IP address") from None
        out.append((host, ip))
    return out


def render(fqdn: str, ips, extra: list[tuple[str, str]]) -> str:
    lines = ["# created by weavepy - BEGIN", "# container hostname"]
    short = fqdn.split(".", 1)[0]
    names = f"{fqdn} {short}" if short != fqdn else fqdn
    lines += [f"{ip}\t{names}" for ip in ips]
    if extra:
        lines.append("# static names added with --add-host")
        lines += [f"{ip}\t{host}" for host, ip in extra]
    lines.append("# default localhost entries")
    lines += [f"{ip}\t{names}" for ip, names in DEFAULTS]
    lines.append("# created by weavepy - END")
    return "\n".join(lines) + "\n"


def rewrite(path: str, fqdn: str, ips, extra):
    # Written in place: the file is bind-mounted into the container, so it must keep its inode.
    with open(path, "w") as f:
        f.write(render(fqdn, ips, extra))
