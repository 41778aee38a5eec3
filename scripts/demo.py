"""The demo: a simulated Docker host running weavepy, and two containers on the weave network.

Every command is printed as a user would type it on the host, followed by what it printed.
Everything is torn down at the end, also on failure.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from testbed import Testbed  # noqa: E402


def show(host, argv, check=True):
    print(f"{host.name}$ {' '.join(argv)}", flush=True)
    r = host.run(argv, check=False)
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
        show(h1, ["weavepy", "run", "-t", "--name", "c1", "busybox", "sh"])
        show(h1, ["docker", "run", "-dt", "--name", "c2", "busybox", "sh"])
        c2 = show(h1, ["weavepy", "attach", "c2"])
        show(h1, ["weavepy", "ps"])
        show(h1, ["docker", "exec", "c1", "ping", "-c", "3", c2])
        c1 = h1.ethwe("c1")[0].split("/")[0]
        show(h1, ["docker", "exec", "c2", "ping", "-c", "3", c1])
        show(h1, ["weavepy", "status"])
        show(h1, ["weavepy", "reset"])
    print("Demo finished: c1 and c2 talked over the weave network; everything was cleaned up.")


if __name__ == "__main__":
    main()
