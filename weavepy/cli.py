"""The `weavepy` command: Weave Net's `weave` script, sub-command for sub-command.

It stays light (standard library only) so every command starts fast; the
daemon does the work and this talks to it over its HTTP API.
"""
from __future__ import annotations

import os
import sys
import time

from weavepy import __version__, client
from weavepy import config as cfg

USAGE = """\
Usage:
weavepy --help | help
        version
        launch        [--password <pass>] [--trusted-subnets <cidr>,...]
                      [--name <mac>] [--nickname <name>] [--mtu <mtu>]
                      [--ipalloc-range <cidr> [--ipalloc-default-subnet <cidr>]]
                      [--ipalloc-init <mode>] [--http-addr <host:port>]
                      [--port <port>] [--host <ip>] [--no-discovery]
                      [--no-restart] [--foreground] [--resume | <peer> ...]
        connect       [--replace] [<peer> ...]
        forget        <peer> ...
        stop
        reset         [--force]
        status        [targets | connections | peers | dns | ipam]
        report
        run           [<addr> ...] [--without-dns] [--no-multicast-route]
                      [--rewrite-hosts] [--add-host <host>:<ip>] <docker run args> ...
        attach        [<addr> ...] [--without-dns] [--no-multicast-route]
                      [--rewrite-hosts] [--add-host <host>:<ip>] <container_id>
        detach        [<addr> ...] <container_id>
        ps            [<container_id> ...]
        expose        [<addr> ...] [--without-masquerade] [-h <fqdn>]
        hide          [<addr> ...]
        env           [--restore]
        config
        dns-args
        dns-add       [<ip_address> ...] <container_id> [-h <fqdn>] |
                      <ip_address> ... -h <fqdn>
        dns-remove    [<ip_address> ...] <container_id> [-h <fqdn>] |
                      <ip_address> ... -h <fqdn>
        dns-lookup    <unqualified_name>

where <addr> = [ip:]<cidr> | net:<cidr> | net:default
      <cidr> = <ip_address>/<routing_prefix_length>
"""

HELP = {
    "launch": """Usage: weavepy launch [options] [<peer> ...]

Start this host's router daemon and wait until it answers (prints the peer name).

  <peer>                          peers to connect to (host or host:port)
  --resume                        connect to the peers of the last run (`connect`/`forget` included)
  --host <ip>                     the address the peer port listens on (default: all)
  --name <mac>                    peer name (default: derived from /etc/machine-id)
  --nickname <name>               nickname shown in status (default: hostname)
  --ipalloc-range <cidr>          the range IPAM allocates from (default 10.32.0.0/12; "" turns it off)
  --ipalloc-default-subnet <cidr> subnet for net:default (default: the range)
  --ipalloc-init <mode>           consensus[=N] | seed=<peer>,... | observer
  --mtu <mtu>                     MTU of the weave bridge and interfaces (default 1376, or $WEAVE_MTU)
  --port <port>                   peer port (default 6783)
  --password <pass>               encrypt traffic between peers (or $WEAVE_PASSWORD)
  --trusted-subnets <cidr>,...    peers on these subnets may skip encryption
  --no-discovery                  do not connect to peers learnt from other peers
  --no-fastdp                     carry container traffic in the sleeve only (or $WEAVE_NO_FASTDP)
  --conn-limit <n>                maximum number of peer connections (default 200)
  --http-addr <host:port>         status and control API (default 127.0.0.1:6784)
  --no-restart                    do not restart the daemon when it dies
  --foreground                    run in the foreground (for systemd or a container)
  --log-level <level>             debug | info | warning | error
  --no-dns                        do not run the weave.local name server
  --dns-domain <domain>           the DNS domain (default weave.local.)
  --dns-ttl <seconds>             TTL of DNS answers (default 1)
  --dns-listen-address <ip:port>  where DNS listens (default: the Docker bridge address, port 53)
  --resolv-conf <path>            upstream servers for other names (default /etc/resolv.conf)
  --no-proxy                      do not run the Docker API proxy
  -H <unix:///path|tcp://addr:port>  where the proxy listens (default unix:///run/weavepy/weave.sock)
  --no-default-ipalloc            only containers with WEAVE_CIDR join weave through the proxy
  --no-rewrite-hosts              leave proxied containers' /etc/hosts alone
  --without-dns                   proxied containers get no hostname or DNS settings
  --no-multicast-route            no 224.0.0.0/4 route in proxied containers
  --hostname-from-label <key>     take proxied containers' hostnames from this label
  --hostname-match <regexp>       --hostname-replacement <repl>: rewrite derived hostnames ($1, ${name})
  --rewrite-inspect               docker inspect shows the weave address
  --tls | --tlsverify  --tlscacert <f> --tlscert <f> --tlskey <f>   TLS for tcp:// proxy listeners
""",
    "stop": "Usage: weavepy stop\n\nStop the router daemon. Containers keep their interfaces and addresses.\n",
    "connect": ("Usage: weavepy connect [--replace] [<peer> ...]\n\n"
                "Add peers (host or host:port) for the router to connect to; --replace drops the others.\n"),
    "forget": ("Usage: weavepy forget <peer> ...\n\n"
               "Stop connecting to these peers. A live connection stays up; it is not re-made once it ends.\n"),
    "prime": ("Usage: weavepy prime\n\nMake the IP allocation ring now (the election among the initial peers, "
              "if any),\nand wait until it exists.\n"),
    "rmpeer": ("Usage: weavepy rmpeer <peer> ...\n\n"
               "Take over the IP space of peers that are gone for good (by name or nickname). Refused for a\n"
               "peer that is still connected.\n"),
    "reset": ("Usage: weavepy reset [--force]\n\nStop the daemon and remove everything weavepy made: the bridge, "
              "container interfaces,\niptables rules and all persisted state. --force carries on past errors.\n"),
    "version": "Usage: weavepy version\n\nPrint the versions of this script and of the running router.\n",
    "status": ("Usage: weavepy status [targets | connections | peers | dns | ipam]\n\n"
               "Show the router's status, or one part of it.\n"),
    "report": "Usage: weavepy report\n\nPrint the router's full state as JSON.\n",
    "run": ("Usage: weavepy run [<addr> ...] [--without-dns] [--no-multicast-route] [--rewrite-hosts]\n"
            "                   [--add-host <host>:<ip>] <docker run args> ...\n\n"
            "docker run -d, then attach the new container; prints its ID.\n"),
    "attach": ("Usage: weavepy attach [<addr> ...] [--without-dns] [--no-multicast-route] [--rewrite-hosts]\n"
               "                      [--add-host <host>:<ip>] <container>\n\n"
               "Attach a running container to the weave network; prints its addresses.\n"
               "<addr> = [ip:]<cidr> | net:<cidr> | net:default (default: net:default)\n"),
    "detach": ("Usage: weavepy detach [<addr> ...] <container>\n\n"
               "Remove those addresses (all when none is given) from a container; prints them.\n"),
    "ps": "Usage: weavepy ps [<container> ...]\n\nList attached containers: <id> <mac> <cidr>...\n",
    "expose": ("Usage: weavepy expose [<addr> ...] [--without-masquerade] [-h <fqdn>]\n\n"
               "Give this host an address on the weave network; prints it. -h registers it in DNS.\n"),
    "env": ("Usage: weavepy env [--restore]\n\nPrint the shell commands that point DOCKER_HOST at the proxy:\n"
            "  eval $(weavepy env)\nWith --restore, the commands that point it back.\n"),
    "config": "Usage: weavepy config\n\nPrint the docker client option for the proxy: docker $(weavepy config) ps\n",
    "dns-args": ("Usage: weavepy dns-args\n\nPrint docker run arguments that make a container use weaveDNS:\n"
                 "  docker run $(weavepy dns-args) ...\n"),
    "dns-add": ("Usage: weavepy dns-add [<ip> ...] <container> [-h <fqdn>]\n"
                "       weavepy dns-add <ip> ... -h <fqdn>\n\n"
                "Add DNS records. With a container, the addresses default to its weave addresses and the name\n"
                "to its hostname; without one, the records belong to weave:extern.\n"),
    "dns-remove": ("Usage: weavepy dns-remove [<ip> ...] <container> [-h <fqdn>]\n"
                   "       weavepy dns-remove <ip> ... -h <fqdn>\n\nRemove DNS records added on this host.\n"),
    "dns-lookup": "Usage: weavepy dns-lookup <name>\n\nPrint the addresses weaveDNS has for a name.\n",
    "hide": "Usage: weavepy hide [<addr> ...]\n\nTake the host's weave addresses away again; prints them.\n",
}


CLIError = client.ClientError


def fail(message: str, code: int = 1):
    print(f"weavepy: {message}" if not message.startswith("weavepy") else message, file=sys.stderr)
    sys.exit(code)


def show_addrs(cidrs: list[str]) -> str:
    """Addresses without their prefix, space-separated (as Weave prints them)."""
    return " ".join(c.split("/", 1)[0] for c in cidrs)


def split_args(args: list[str], flags: set[str], valued: set[str]) -> tuple[list[str], dict]:
    """Positional words, and the options among them (valued ones as lists)."""
    positional, opts = [], {}
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if name in valued:
            if not eq:
                i += 1
                if i >= len(args):
                    raise CLIError(f"option {name} needs a value")
                value = args[i]
            opts.setdefault(name, []).append(value)
        elif a in flags:
            opts[a] = True
        elif a.startswith("--"):
            raise CLIError(f"unknown option {a}")
        else:
            positional.append(a)
        i += 1
    return positional, opts


def check_addrs(tokens: list[str]):
    """Refuse malformed addresses before anything is created."""
    from weavepy.ipam.request import AddressError, parse_requests
    import ipaddress
    try:
        parse_requests(tokens, ipaddress.IPv4Network(cfg.DEFAULT_RANGE))
    except AddressError as exc:
        raise CLIError(str(exc)) from None


# -- launch / stop / reset --------------------------------------------------

LAUNCH_FLAGS = {"--no-restart", "--foreground", "--no-discovery", "--resume", "--no-dns", "--no-proxy",
                "--no-default-ipalloc", "--no-rewrite-hosts", "--without-dns", "--no-multicast-route",
                "--rewrite-inspect", "--tls", "--tlsverify", "--no-fastdp"}
LAUNCH_VALUED = {"--name", "--nickname", "--ipalloc-range", "--ipalloc-default-subnet", "--ipalloc-init",
                 "--mtu", "--port", "--host", "--password", "--trusted-subnets", "--conn-limit", "--http-addr",
                 "--log-level", "--docker-host", "--dns-domain", "--dns-ttl", "--dns-listen-address",
                 "--resolv-conf", "-H", "--proxy", "--hostname-from-label", "--hostname-match",
                 "--hostname-replacement", "--tlscacert", "--tlscert", "--tlskey"}


def launch_config(args: list[str]):
    from weavepy.launch_config import ConfigError, LaunchConfig
    peers, o = split_args(args, LAUNCH_FLAGS, LAUNCH_VALUED)
    last = lambda k, d=None: o[k][-1] if k in o else d

    def integer(flag, default):
        v = last(flag, default)
        try:
            return int(v)
        except (TypeError, ValueError):
            raise CLIError(f"{flag}: '{v}' is not a number") from None

    c = LaunchConfig(
        peers=peers,
        name=last("--name"),
        nickname=last("--nickname"),
        ipalloc_range=last("--ipalloc-range", cfg.DEFAULT_RANGE),
        ipalloc_default_subnet=last("--ipalloc-default-subnet"),
        ipalloc_init=last("--ipalloc-init"),
        mtu=integer("--mtu", os.environ.get("WEAVE_MTU") or cfg.DEFAULT_MTU),
        port=integer("--port", cfg.DEFAULT_PORT),
        host=last("--host", ""),
        resume="--resume" in o,
        password=last("--password", os.environ.get("WEAVE_PASSWORD") or None),
        trusted_subnets=[s for v in o.get("--trusted-subnets", []) for s in v.split(",") if s],
        discovery="--no-discovery" not in o,
        fastdp="--no-fastdp" not in o and not os.environ.get("WEAVE_NO_FASTDP"),
        conn_limit=integer("--conn-limit", 200),
        http_addr=last("--http-addr", cfg.DEFAULT_HTTP_ADDR),
        restart="--no-restart" not in o,
        log_level=last("--log-level", "info"),
        docker_host=last("--docker-host", os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"),
        dns="--no-dns" not in o,
        dns_domain=last("--dns-domain", "weave.local."),
        dns_ttl=integer("--dns-ttl", 1),
        dns_listen_address=last("--dns-listen-address"),
        resolv_conf=last("--resolv-conf", "/etc/resolv.conf"),
        proxy="--no-proxy" not in o and last("--proxy", "true") != "false",
        proxy_hosts=o.get("-H", []),
        default_ipalloc="--no-default-ipalloc" not in o,
        rewrite_hosts="--no-rewrite-hosts" not in o,
        proxy_without_dns="--without-dns" in o,
        multicast_route="--no-multicast-route" not in o,
        hostname_from_label=last("--hostname-from-label"),
        hostname_match=last("--hostname-match", "(.*)"),
        hostname_replacement=last("--hostname-replacement", "$1"),
        rewrite_inspect="--rewrite-inspect" in o,
        tls="--tls" in o, tlsverify="--tlsverify" in o,
        tlscacert=last("--tlscacert"), tlscert=last("--tlscert"), tlskey=last("--tlskey"),
    )
    try:
        c.validate()
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    return c, o


def cmd_launch(args):
    config, opts = launch_config(args)
    if client.running_pid() is not None or client.answers():
        raise CLIError("weavepy is already running. Use 'weavepy stop' first.")
    os.makedirs(cfg.RUN_DIR, exist_ok=True)
    from weavepy import statefile
    config.launch_id = os.urandom(8).hex()
    statefile.write_json(cfg.run_path(cfg.LAUNCH_FILE), config.to_dict())
    try:
        os.unlink(cfg.run_path(cfg.READY_FILE))
    except FileNotFoundError:
        pass
    if "--foreground" in opts:
        from weavepy import daemon
        daemon.main()
        return
    from weavepy import supervisor
    child = supervisor.detach_and_run(config.restart, cfg.run_path(cfg.LOG_FILE))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.waitpid(child, os.WNOHANG)[0]:
            tail = open(cfg.run_path(cfg.LOG_FILE), errors="replace").read().splitlines()[-5:]
            raise CLIError("the router failed to start:\n  " + "\n  ".join(tail))
        report = client.get_json("/report", timeout=0.5, quiet=True)
        if report is not None:
            print(report["Router"]["Name"])
            return
        time.sleep(0.01)
    raise CLIError(f"the router did not become ready; see {cfg.run_path(cfg.LOG_FILE)}")


def cmd_connect(args):
    peers, o = split_args(args, {"--replace"}, set())
    from weavepy.launch_config import check_peer_addresses, ConfigError
    try:
        check_peer_addresses(peers)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    client.post("/connect", {"peers": peers, "replace": "--replace" in o})


def cmd_forget(args):
    peers, _ = split_args(args, set(), set())
    if not peers:
        raise CLIError("forget: no peer given\n" + HELP["forget"])
    client.post("/forget", {"peers": peers})


def ipam_request(method: str, path: str, timeout: float = 120.0) -> str:
    """A call to the allocation API, which a router without IP allocation does not serve."""
    try:
        return client.request(method, path, timeout=timeout)
    except client.ClientError as exc:
        if str(exc).startswith("404"):
            raise CLIError('IP address allocation is off on this router (launched with --ipalloc-range "")') from None
        raise


def cmd_prime(args):
    split_args(args, set(), set())
    ipam_request("GET", "/ring", timeout=3600)


def cmd_rmpeer(args):
    peers, _ = split_args(args, set(), set())
    if not peers:
        raise CLIError("rmpeer: no peer given\n" + HELP["rmpeer"])
    for peer in peers:
        print(ipam_request("DELETE", f"/peer/{peer}"), end="")


def cmd_stop(args):
    split_args(args, set(), set())
    if os.environ.get("DOCKER_HOST", "").endswith("weave.sock"):
        print("WARNING: It appears that your environment is configured to use the weavepy Docker API proxy.",
              file=sys.stderr)
    if not client.stop_daemon():
        print("weavepy is not running.", file=sys.stderr)


def cmd_reset(args):
    _, o = split_args(args, {"--force"}, set())
    force = "--force" in o
    errors = []

    def step(what, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported, and --force carries on
            errors.append(f"{what}: {exc}")
            if not force:
                raise CLIError(f"reset: {what}: {exc} (use --force to carry on)") from None

    from weavepy.net import bridge, iptables, veth, vxlan
    from weavepy import statefile
    launched = statefile.read_json(cfg.run_path(cfg.LAUNCH_FILE)) or {}
    if client.running_pid() is not None:     # our IP space to another peer first, so none of it is lost
        try:
            client.request("POST", "/weavepy/leave", timeout=10)
        except CLIError:
            pass
    step("stopping the daemon", client.stop_daemon)
    step("removing container interfaces", lambda: [veth.delete_host_end(n) for n in veth.host_ends()])
    step("removing the bridge", bridge.delete_bridge)
    # the fast path's device outlives the router on purpose (containers keep talking); reset is
    # the end of that, as Weave's deletes its datapath
    step("removing the fast path device",
         lambda: vxlan.delete_device(vxlan.device_name(int(launched.get("port") or cfg.DEFAULT_PORT))))
    step("removing iptables rules", iptables.teardown)

    def wipe():
        import shutil
        for d in (cfg.STATE_DIR, cfg.RUN_DIR):
            if os.path.isdir(d):
                for name in os.listdir(d):
                    p = os.path.join(d, name)
                    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    step("removing state", wipe)
    for e in errors:
        print(f"weavepy: reset: {e}", file=sys.stderr)


# -- information ----------------------------------------------------------------

def cmd_version(args):
    split_args(args, set(), set())
    print(f"weavepy script {__version__}")
    report = client.get_json("/report", quiet=True)
    print(f"weavepy router {report['Version']}" if report else "weavepy router: not running")


def cmd_status(args):
    pos, _ = split_args(args, set(), set())
    if len(pos) > 1:
        raise CLIError("usage: weavepy status [targets | connections | peers | ipam]")
    path = "/status" + (f"/{pos[0]}" if pos else "")
    sys.stdout.write(client.request("GET", path))


def cmd_report(args):
    split_args(args, set(), set())
    sys.stdout.write(client.request("GET", "/report") + "\n")


# -- containers ---------------------------------------------------------------

ATTACH_FLAGS = {"--without-dns", "--no-multicast-route", "--rewrite-hosts"}
ATTACH_VALUED = {"--add-host"}


def attach_body(addrs, opts, container) -> dict:
    return {"container": container, "addrs": addrs, "without_dns": "--without-dns" in opts,
            "multicast_route": "--no-multicast-route" not in opts, "rewrite_hosts": "--rewrite-hosts" in opts,
            "add_hosts": opts.get("--add-host", [])}


def cmd_attach(args):
    pos, o = split_args(args, ATTACH_FLAGS, ATTACH_VALUED)
    if not pos:
        raise CLIError("attach: no container given\n" + HELP["attach"])
    addrs, container = pos[:-1], pos[-1]
    check_addrs(addrs)
    result = client.post("/weavepy/attach", attach_body(addrs, o, container))
    print(show_addrs(result["addrs"]))


def cmd_run(args):
    addrs, opts, i = [], {}, 0
    from weavepy.ipam.request import looks_like_cidr
    while i < len(args):
        a = args[i]
        if looks_like_cidr(a):
            addrs.append(a)
        elif a in ATTACH_FLAGS:
            opts[a] = True
        elif a == "--add-host" and i + 1 < len(args):
            opts.setdefault(a, []).append(args[i + 1])
            i += 1
        elif a.startswith("--add-host="):
            opts.setdefault("--add-host", []).append(a.split("=", 1)[1])
        else:
            break
        i += 1
    docker_args = args[i:]
    if not docker_args:
        raise CLIError("run: no docker run arguments given\n" + HELP["run"])
    check_addrs(addrs)
    if not client.answers():
        raise CLIError("weavepy is not running. Have you launched it?")
    import subprocess
    proc = subprocess.run(["docker", "run", "-d", *docker_args], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(proc.returncode or 1)
    cid = proc.stdout.strip().splitlines()[-1]
    try:
        client.post("/weavepy/attach", attach_body(addrs, opts, cid))
    except CLIError:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)  # leave no half-made container
        raise
    print(cid)


def cmd_detach(args):
    pos, _ = split_args(args, set(), set())
    if not pos:
        raise CLIError("detach: no container given\n" + HELP["detach"])
    check_addrs(pos[:-1])
    result = client.post("/weavepy/detach", {"container": pos[-1], "addrs": pos[:-1]})
    print(show_addrs(result["addrs"]))


def cmd_ps(args):
    pos, _ = split_args(args, set(), set())
    for line in client.post("/weavepy/ps", {"containers": pos})["lines"]:
        print(line)


def cmd_expose(args):
    pos, o = split_args(args, {"--without-masquerade"}, {"-h"})
    check_addrs(pos)
    result = client.post("/weavepy/expose", {"addrs": pos, "masquerade": "--without-masquerade" not in o,
                                             "fqdn": o.get("-h", [None])[-1]})
    print(show_addrs(result["addrs"]))


def cmd_hide(args):
    pos, _ = split_args(args, set(), set())
    check_addrs(pos)
    result = client.post("/weavepy/hide", {"addrs": pos})
    print(show_addrs(result["addrs"]))


def proxy_address() -> str:
    try:
        addrs = client.request("GET", "/proxyaddrs").split()
    except CLIError as exc:
        raise CLIError(f"{exc}" if "not running" in str(exc) else "the Docker API proxy is not running") from None
    if not addrs:
        raise CLIError("the Docker API proxy is not running")
    return addrs[0]


def cmd_env(args):
    _, o = split_args(args, {"--restore"}, set())
    if "--restore" in o:
        if "ORIG_DOCKER_HOST" not in os.environ:
            raise CLIError("Nothing to restore. This is most likely because there was no preceding "
                           "invocation of 'eval $(weavepy env)' in this shell.")
        orig = os.environ["ORIG_DOCKER_HOST"]
        print(f"export DOCKER_HOST={orig}" if orig else "unset DOCKER_HOST")
        return
    addr = proxy_address()
    current = os.environ.get("DOCKER_HOST", "")
    if current == addr:
        print(f"export DOCKER_HOST={addr}")
    else:
        print(f"export DOCKER_HOST={addr} ORIG_DOCKER_HOST={current}")


def cmd_config(args):
    split_args(args, set(), set())
    print(f"-H={proxy_address()}")


def cmd_dns_args(args):
    split_args(args, set(), set())
    try:
        address = client.request("GET", "/dns-address").strip()
        domain = client.request("GET", "/domain").strip()
    except CLIError as exc:
        if "disabled" in str(exc):
            return  # --no-dns: nothing to add to docker run
        raise
    sys.stdout.write(f"--dns={address} --dns-search={domain}")


def _dns_args(args) -> dict:
    pos, o = split_args(args, set(), {"-h"})
    ips = [p for p in pos if p.replace(".", "").isdigit()]
    others = [p for p in pos if p not in ips]
    if len(others) > 1:
        raise CLIError(f"only one container may be given, not {' '.join(others)}")
    fqdn = o.get("-h", [None])[-1]
    if not others and (not ips or not fqdn):
        raise CLIError("without a container, give the IP addresses and -h <fqdn>")
    return {"ips": ips, "container": others[0] if others else None, "fqdn": fqdn}


def cmd_dns_add(args):
    client.post("/weavepy/dns-add", _dns_args(args))


def cmd_dns_remove(args):
    client.post("/weavepy/dns-remove", _dns_args(args))


def cmd_dns_lookup(args):
    pos, _ = split_args(args, set(), set())
    if len(pos) != 1:
        raise CLIError("usage: weavepy dns-lookup <name>")
    host, _, port = client.request("GET", "/dns-address-port").strip().rpartition(":")
    from dnslib import DNSRecord, QTYPE
    try:
        reply = DNSRecord.parse(DNSRecord.question(pos[0]).send(host, int(port), tcp=True, timeout=5))
    except OSError as exc:
        raise CLIError(f"cannot query weaveDNS at {host}:{port}: {exc}") from None
    for rr in reply.rr:
        if rr.rtype == QTYPE.A:
            print(rr.rdata)


COMMANDS = {
    "env": cmd_env, "config": cmd_config,
    "dns-args": cmd_dns_args, "dns-add": cmd_dns_add, "dns-remove": cmd_dns_remove, "dns-lookup": cmd_dns_lookup,
    "launch": cmd_launch, "connect": cmd_connect, "forget": cmd_forget, "rmpeer": cmd_rmpeer, "prime": cmd_prime, "stop": cmd_stop, "reset": cmd_reset, "version": cmd_version,
    "status": cmd_status, "report": cmd_report, "run": cmd_run, "attach": cmd_attach,
    "detach": cmd_detach, "ps": cmd_ps, "expose": cmd_expose, "hide": cmd_hide,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("--help", "help", "-h"):
        sys.stdout.write(USAGE)
        return 0 if argv else 1
    name, args = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        fail(f"unknown command '{name}'\n{USAGE}")
    if "--help" in args and name != "run":
        sys.stdout.write(HELP[name])
        return 0
    if name == "run" and args[:1] == ["--help"]:
        sys.stdout.write(HELP[name])
        return 0
    try:
        command(args)
    except CLIError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
