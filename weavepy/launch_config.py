"""The launch configuration: flags as `weavepy launch` took them, validated, shared by CLI and daemon."""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import asdict, dataclass, field

from weavepy.config import DEFAULT_HTTP_ADDR, DEFAULT_MTU, DEFAULT_PORT, DEFAULT_RANGE


class ConfigError(ValueError):
    pass


def check_peer_addresses(peers: list[str]) -> None:
    """Refuse a malformed host[:port] before anything starts (launch and connect)."""
    from weavepy.mesh.targets import parse_address
    for peer in peers:
        try:
            parse_address(peer)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class LaunchConfig:
    peers: list[str] = field(default_factory=list)
    name: str | None = None
    nickname: str | None = None
    ipalloc_range: str = DEFAULT_RANGE
    ipalloc_default_subnet: str | None = None
    ipalloc_init: str | None = None
    mtu: int = DEFAULT_MTU
    port: int = DEFAULT_PORT
    host: str = ""           # --host: the address the control port binds (default: all)
    resume: bool = False     # --resume: connect to the targets saved by the last run, not PEER arguments
    launch_id: str = ""      # new at every `launch`; a restart after a crash keeps it (and the saved targets)
    password: str | None = None
    trusted_subnets: list[str] = field(default_factory=list)
    discovery: bool = True
    fastdp: bool = True          # False: --no-fastdp or WEAVE_NO_FASTDP, the sleeve only
    conn_limit: int = 200
    http_addr: str = DEFAULT_HTTP_ADDR
    restart: bool = True
    log_level: str = "info"
    docker_host: str = "unix:///var/run/docker.sock"
    dns: bool = True
    dns_domain: str = "weave.local."
    dns_ttl: int = 1
    dns_listen_address: str | None = None  # default: the Docker bridge's address, port 53
    resolv_conf: str = "/etc/resolv.conf"
    proxy: bool = True
    proxy_hosts: list[str] = field(default_factory=list)  # -H; default unix:///run/weavepy/weave.sock
    default_ipalloc: bool = True
    rewrite_hosts: bool = True
    proxy_without_dns: bool = False
    multicast_route: bool = True
    hostname_from_label: str | None = None
    hostname_match: str = "(.*)"
    hostname_replacement: str = "$1"
    rewrite_inspect: bool = False
    tls: bool = False
    tlsverify: bool = False
    tlscacert: str | None = None
    tlscert: str | None = None
    tlskey: str | None = None

    def validate(self) -> "LaunchConfig":
        from weavepy.ipam.request import AddressError, check_allocatable, parse_subnet
        from weavepy.mesh import peer_name
        try:
            if self.ipalloc_range:         # "" turns IP address allocation off, as in Weave
                universe = parse_subnet(self.ipalloc_range, "--ipalloc-range")
                check_allocatable(universe, f"--ipalloc-range {universe}")
            elif self.ipalloc_default_subnet:
                raise ConfigError("--ipalloc-default-subnet needs IP address allocation, which "
                                  "--ipalloc-range \"\" turns off")
            if self.ipalloc_default_subnet:
                default = parse_subnet(self.ipalloc_default_subnet, "--ipalloc-default-subnet")
                check_allocatable(default, f"--ipalloc-default-subnet {default}")
                if not default.overlaps(universe):
                    raise ConfigError(f"IP address allocation default subnet {default} does not overlap "
                                      f"with allocation range {universe}")
            for s in self.trusted_subnets:
                parse_subnet(s, "--trusted-subnets")
        except AddressError as exc:
            raise ConfigError(str(exc)) from None
        if self.name:
            try:
                self.name = peer_name.parse(self.name)
            except peer_name.PeerNameError as exc:
                raise ConfigError(f"--name: {exc}") from None
        if not 68 <= self.mtu <= 65535:
            raise ConfigError(f"invalid MTU {self.mtu}: must be between 68 and 65535")
        if not 1 <= self.port <= 65534:  # the fast path uses port+1
            raise ConfigError(f"invalid --port {self.port}: must be between 1 and 65534")
        if self.host:
            try:
                ipaddress.IPv4Address(self.host)
            except ValueError:
                raise ConfigError(f"invalid --host '{self.host}': an IPv4 address of this host is required") from None
        if self.password:
            # Accepting it and sending plaintext would be worse than refusing: encryption is still to come.
            raise ConfigError("--password (or WEAVE_PASSWORD): encryption between peers is not available in "
                              "this release; refusing to run the mesh unencrypted when a password was given")
        if self.resume and self.peers:
            raise ConfigError("You must not specify an initial peer list in conjunction with --resume")
        host, _, port = self.http_addr.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"invalid --http-addr '{self.http_addr}': expected HOST:PORT")
        if self.ipalloc_init is not None:
            self.ipam_bootstrap(0)     # raises ConfigError naming what does not parse
        if self.dns_ttl < 0:
            raise ConfigError(f"invalid --dns-ttl {self.dns_ttl}")
        if not self.dns_domain.strip(".") or " " in self.dns_domain:
            raise ConfigError(f"invalid --dns-domain '{self.dns_domain}'")
        if not self.dns_domain.endswith("."):
            self.dns_domain += "."
        if self.dns_listen_address is not None:
            host, _, port = self.dns_listen_address.rpartition(":")
            try:
                ipaddress.IPv4Address(host or self.dns_listen_address)
            except ValueError:
                raise ConfigError(f"invalid DNS listen address '{self.dns_listen_address}'") from None
            if host and not port.isdigit():
                raise ConfigError(f"invalid DNS listen address '{self.dns_listen_address}'")
        import re
        try:
            re.compile(self.hostname_match)
        except re.error as exc:
            raise ConfigError(f"Incorrect hostname match '{self.hostname_match}': {exc}") from None
        for h in self.proxy_hosts:
            if h.startswith("unix://") or h.startswith("/"):
                if not h.replace("unix://", "").startswith("/"):
                    raise ConfigError("When launching the proxy, unix sockets must be specified as an absolute path.")
            else:
                addr = h[len("tcp://"):] if h.startswith("tcp://") else h
                _, _, port = addr.rpartition(":")
                if not port.isdigit():
                    raise ConfigError(f"invalid -H '{h}': expected unix:///path or tcp://host:port")
        if (self.tls or self.tlsverify) and not (self.tlscert and self.tlskey):
            raise ConfigError("--tls/--tlsverify need --tlscert and --tlskey")
        if self.tlsverify and not self.tlscacert:
            raise ConfigError("--tlsverify needs --tlscacert")
        check_peer_addresses(self.peers)
        return self

    @property
    def universe(self) -> ipaddress.IPv4Network | None:
        """The allocation range; None when IP address allocation is off (`--ipalloc-range ""`)."""
        return ipaddress.IPv4Network(self.ipalloc_range) if self.ipalloc_range else None

    @property
    def default_subnet(self) -> ipaddress.IPv4Network | None:
        if not self.ipalloc_range:
            return None
        return ipaddress.IPv4Network(self.ipalloc_default_subnet or self.ipalloc_range)

    @property
    def effective_nickname(self) -> str:
        return self.nickname or socket.gethostname()

    def to_dict(self) -> dict:
        return asdict(self)

    def ipam_bootstrap(self, targets: int) -> tuple[int, list[str], bool]:
        """(quorum, seeds, observer) from --ipalloc-init, as Weave's weaver reads it.

        consensus=N: a majority of N peers agree on the first ring (N defaults to the number of
        initial peers, `targets`, plus this one); seed=NAME,...: those peers' ring, at once and
        the same everywhere; observer: never votes, takes the ring from others.
        """
        spec = self.ipalloc_init or "consensus"
        mode, _, arg = spec.partition("=")
        bad = f"Unable to parse --ipalloc-init: {spec!r}"
        if mode == "consensus":
            if arg and not (arg.isdigit() and int(arg) > 0):
                raise ConfigError(f"{bad}: consensus=N needs a positive number of peers")
            n = int(arg) if arg else targets + 1
            return n // 2 + 1, [], False
        if mode == "seed":
            from weavepy.mesh import peer_name
            try:     # the names as --name takes them: ::1 is 00:00:00:00:00:01 (Weave's 380)
                seeds = [peer_name.parse(name) for name in arg.split(",") if name.strip()]
            except peer_name.PeerNameError as exc:
                raise ConfigError(f"{bad}: {exc}") from None
            if not seeds:
                raise ConfigError(f"{bad}: seed= needs a comma-separated list of peer names (MACs)")
            return 1, seeds, False
        if mode == "observer" and not arg:
            return 1, [], True
        raise ConfigError(f"{bad}: the modes are consensus[=N], seed=NAME,... and observer")

    @classmethod
    def from_dict(cls, data: dict) -> "LaunchConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
