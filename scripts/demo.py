"""The demo: two simulated Docker hosts whose weavepy routers join them into one network
(the walkthrough's `weave launch` / `weave launch <host1>`), then plain `docker run` through
the proxy and containers that find each other by name.

Every command is printed as a user would type it on the host, followed by what it printed.
Everything is torn down at the end, also on failure.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from testbed import Testbed  # noqa: E402

PROXY = {"DOCKER_HOST": "unix:///run/weavepy/weave.sock"}


def show(host, argv, env=None, check=True):
    print(f"{host.name}$ {' '.join(argv)}", flush=True)
    r = host.run(argv, check=False, env=env)
    out = (r.stdout + r.stderr).rstrip()
    if out:
        print("    " + out.replace("\n", "\n    "), flush=True)
    if check and r.returncode != 0:
        raise SystemExit(f"demo: '{' '.join(argv)}' failed")
    return r.stdout.strip()


def main():
    print("Building two simulated Docker hosts (network + mount namespaces, own dockerds) on one LAN...",
          flush=True)
    with Testbed() as bed:
        h1, h2 = bed.add_hosts(2)
        def run_named(h, name):
            dns_args = show(h, ["weavepy", "dns-args"]).split()
            show(h, ["weavepy", "run", "-t", "--name", name, "-h", f"{name}.weave.local", *dns_args,
                     "busybox", "sh"])
            show(h, ["weavepy", "ps", name])

        print("# host 1: the router, and a container named in weaveDNS; IPAM gives it an address", flush=True)
        show(h1, ["weavepy", "launch"])
        run_named(h1, "c1")
        print("# host 2 joins host 1: one network, one address range, one DNS", flush=True)
        show(h2, ["weavepy", "launch", h1.ip])
        print(f"# waiting for the two routers to connect (TCP 6783) and prove the fast path (UDP 6784)...",
              flush=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all("1 established" in h.run(["weavepy", "status"], check=False).stdout for h in (h1, h2)):
                break
            time.sleep(0.5)
        for h in (h1, h2):
            show(h, ["weavepy", "status"])
            show(h, ["weavepy", "status", "connections"])
        print("# host 2's container: its address is from space host 1 gave it, never one in use", flush=True)
        run_named(h2, "c2")
        show(h2, ["weavepy", "status", "ipam"])
        show(h2, ["weavepy", "dns-lookup", "c1"])
        show(h1, ["docker", "exec", "c1", "ping", "-c", "3", "c2"])
        show(h2, ["docker", "exec", "c2", "ping", "-c", "3", "c1"])

        print("# through the Docker API proxy, plain docker run joins the network too", flush=True)
        show(h1, ["weavepy", "env"])
        print(f"{h1.name}$ eval $(weavepy env)", flush=True)
        show(h1, ["docker", "run", "-dt", "--name", "c3", "busybox", "sh"], env=PROXY)
        show(h1, ["docker", "run", "-dt", "--name", "c4", "busybox", "sh"], env=PROXY)
        show(h1, ["docker", "exec", "c3", "ping", "-c", "3", "c4"], env=PROXY)
        show(h1, ["weavepy", "status", "peers"])
        for h in (h1, h2):
            show(h, ["weavepy", "reset"])
    print("Demo finished: containers on two hosts found each other by name and talked over one weave network;"
          " everything was cleaned up.")


if __name__ == "__main__":
    main()
