"""The demo: a simulated Docker host running weavepy; plain `docker run` through the proxy,
and containers that find each other by name.

Every command is printed as a user would type it on the host, followed by what it printed.
Everything is torn down at the end, also on failure.
"""
import os
import sys

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
    print("Building a simulated Docker host (network + mount namespace, own dockerd)...", flush=True)
    with Testbed() as bed:
        (h1,) = bed.add_hosts(1)
        show(h1, ["weavepy", "launch"])
        show(h1, ["weavepy", "env"])
        print(f"{h1.name}$ eval $(weavepy env)", flush=True)
        show(h1, ["docker", "run", "-dt", "--name", "c1", "busybox", "sh"], env=PROXY)
        show(h1, ["docker", "run", "-dt", "--name", "c2", "busybox", "sh"], env=PROXY)
        show(h1, ["weavepy", "ps"])
        show(h1, ["docker", "exec", "c1", "ping", "-c", "3", "c2"], env=PROXY)
        show(h1, ["docker", "exec", "c2", "ping", "-c", "3", "c1.weave.local"], env=PROXY)
        show(h1, ["weavepy", "run", "10.36.1.1/24", "-t", "--name", "c4", "busybox", "sh"])
        print("# c4 is in another subnet: it cannot reach c1", flush=True)
        show(h1, ["docker", "exec", "c4", "ping", "-c", "1", "-W", "1", "c1"], env=PROXY, check=False)
        show(h1, ["weavepy", "status"])
        show(h1, ["weavepy", "status", "dns"])
        show(h1, ["weavepy", "reset"])
    print("Demo finished: c1 and c2 talked over the weave network by name; everything was cleaned up.")


if __name__ == "__main__":
    main()
