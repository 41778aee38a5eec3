"""Simulated Docker hosts for weavepy's integration tests, demo and benchmarks.

A host is a network namespace, a persisted mount + UTS namespace (private /run,
/var/lib/docker, /var/lib/weavepy, /etc/machine-id, /etc/resolv.conf) and a
dockerd of its own.  Hosts are joined by veth pairs to a bridge that lives in a
"lan" namespace of its own.  Everything is named with a unique prefix and torn
down by what was recorded: only processes we started (by PID) or that live in
our own namespaces are ever signalled.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

LAN_SUBNET = "10.250.{n}.0/24"
STUB_RESOLVER = "10.250.{n}.254"  # an address inside the lan namespace; nothing else is ever named
IMAGE = "busybox:latest"


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, capture_output=True, text=True, **kw)


def build_busybox_rootfs(dest: Path) -> Path:
    """A busybox root filesystem made from the machine's busybox-static: no pull needed."""
    busybox = shutil.which("busybox")
    if not busybox:
        raise RuntimeError("busybox-static is not installed (apt-get install busybox-static)")
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    for d in ("etc", "tmp", "proc", "sys", "dev", "root", "var", "usr/bin", "sbin"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    applets = sh([busybox, "--list"]).stdout.split()
    for applet in applets:
        link = dest / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    return dest


class Host:
    def __init__(self, bed: "Testbed", name: str, index: int):
        self.bed = bed
        self.name = name
        self.index = index
        self.netns = f"{bed.prefix}-{name}"
        self.dir = bed.data_dir / name
        self.mnt_file = bed.ns_dir / f"{name}.mnt"
        self.uts_file = bed.ns_dir / f"{name}.uts"
        self.ip = f"10.250.{bed.lan_index}.{index + 1}"
        self.dockerd: subprocess.Popen | None = None
        self.mnt_inode: int | None = None

    # -- entering the host ------------------------------------------------
    def nsenter_prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", f"--mount={self.mnt_file}", f"--uts={self.uts_file}"]

    def env(self, extra: dict | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(extra or {})
        return env

    def run(self, cmd, check=True, timeout=120, input=None, env=None) -> subprocess.CompletedProcess:
        """Run a command on this host; cmd is a list or a shell string."""
        argv = cmd if isinstance(cmd, list) else ["sh", "-c", cmd]
        proc = subprocess.run(self.nsenter_prefix() + argv, capture_output=True, text=True,
                              timeout=timeout, input=input, env=self.env(env))
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def popen(self, argv, **kw) -> subprocess.Popen:
        kw.setdefault("env", self.env())
        return subprocess.Popen(self.nsenter_prefix() + argv, **kw)

    def docker(self, *args, check=True, timeout=120) -> str:
        return self.run(["docker", *args], check=check, timeout=timeout).stdout.strip()

    def weavepy(self, *args, check=True, timeout=60, env=None) -> subprocess.CompletedProcess:
        return self.run(self.bed.weavepy_argv + list(args), check=check, timeout=timeout, env=env)

    # -- what a user would look at -----------------------------------------
    def ethwe(self, container: str) -> list[str]:
        """The CIDRs on a container's ethwe ([] when it has none)."""
        out = self.docker("exec", container, "ip", "-4", "-o", "addr", "show", "dev", "ethwe", check=False)
        return [w[w.index("inet") + 1] for w in (line.split() for line in out.splitlines()) if "inet" in w]

    def ping(self, container: str, ip: str, timeout: int = 2) -> bool:
        return self.run(["docker", "exec", container, "ping", "-c1", f"-W{timeout}", ip], check=False).returncode == 0

    def host_ping(self, ip: str, timeout: int = 2) -> bool:
        return self.run(["busybox", "ping", "-c1", f"-W{timeout}", ip], check=False).returncode == 0

    def veths(self) -> list[str]:
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if "vethwepl" in line]

    def links(self) -> list[str]:
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def dns_query(self, server: str, name: str, qtype: str = "A", transport: str = "udp") -> dict:
        import json
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dns_query.py")
        return json.loads(self.run([sys.executable, script, server, name, qtype, transport]).stdout)

    def daemon_pid(self) -> int | None:
        out = self.run("cat /run/weavepy/weavepy.pid", check=False).stdout.strip()
        return int(out) if out.isdigit() else None

    # -- life cycle -----------------------------------------------------------
    def create(self):
        self.dir.mkdir(parents=True)
        for sub in ("docker", "weavepy", "run"):
            (self.dir / sub).mkdir()
        (self.dir / "machine-id").write_text(uuid.uuid4().hex + "\n")
        (self.dir / "resolv.conf").write_text(f"nameserver {STUB_RESOLVER.format(n=self.bed.lan_index)}\n")
        sh(["ip", "netns", "add", self.netns])
        sh(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        # Host end of the LAN link lives in the lan namespace; eth0 goes straight into the host.
        sh(["ip", "-n", self.bed.lan_netns, "link", "add", self.name, "type", "veth",
            "peer", "name", "eth0", "netns", self.netns])
        sh(["ip", "-n", self.bed.lan_netns, "link", "set", self.name, "master", "lan0", "up"])
        sh(["ip", "-n", self.netns, "addr", "add", f"{self.ip}/24", "dev", "eth0"])
        sh(["ip", "-n", self.netns, "link", "set", "eth0", "up"])
        self.mnt_file.touch()
        self.uts_file.touch()
        mounts = " && ".join([
            "mount -t tmpfs -o mode=755 tmpfs /run",
            f"mount --bind {self.dir}/docker /var/lib/docker",
            f"mkdir -p /var/lib/weavepy && mount --bind {self.dir}/weavepy /var/lib/weavepy",
            f"mount --bind {self.dir}/machine-id /etc/machine-id",
            f"mount --bind {self.dir}/resolv.conf /etc/resolv.conf",
            f"hostname {self.name}",
        ])
        os.makedirs("/var/lib/docker", exist_ok=True)
        sh(["unshare", f"--mount={self.mnt_file}", f"--uts={self.uts_file}", "--propagation", "private",
            "sh", "-c", mounts])
        self.mnt_inode = os.stat(self.mnt_file).st_ino

    def start_dockerd(self):
        log = open(self.dir / "dockerd.log", "w")
        self.dockerd = self.popen(
            ["dockerd", "--data-root", "/var/lib/docker", "-H", "unix:///run/docker.sock",
             "--pidfile", "/run/docker.pid", "--cgroup-parent", f"/{self.netns}",
             "--storage-driver", "overlay2", "--userland-proxy=false"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def wait_dockerd(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.dockerd.poll() is not None:
                raise RuntimeError(f"dockerd on {self.name} exited: {(self.dir / 'dockerd.log').read_text()[-2000:]}")
            if self.run(["docker", "version", "--format", "{{.Server.Version}}"], check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd on {self.name} not ready: {(self.dir / 'dockerd.log').read_text()[-2000:]}")

    def stop_dockerd(self):
        """Stop this host's dockerd (the one we started)."""
        self.dockerd.send_signal(signal.SIGTERM)
        self.dockerd.wait(60)

    def load_image(self):
        tar = self.bed.image_tar()
        with open(tar, "rb") as f:
            proc = subprocess.run(self.nsenter_prefix() + ["docker", "import", "-c", 'CMD ["sh"]', "-", IMAGE],
                                  stdin=f, capture_output=True, text=True, env=self.env(), timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"docker import failed on {self.name}: {proc.stderr}")

    def remove_all_containers(self):
        ids = self.docker("ps", "-aq", check=False).split()
        if ids:
            self.run(["docker", "rm", "-f", *ids], check=False, timeout=120)

    def processes_in_my_namespaces(self) -> list[int]:
        pids = set()
        listed = sh(["ip", "netns", "pids", self.netns], check=False).stdout.split()
        pids.update(int(p) for p in listed if p.isdigit())
        if self.mnt_inode is not None:
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    if os.stat(f"/proc/{entry}/ns/mnt").st_ino == self.mnt_inode:
                        pids.add(int(entry))
                except OSError:
                    pass
        pids.discard(os.getpid())
        return sorted(pids)

    def destroy(self):
        if self.dockerd is not None and self.dockerd.poll() is None:
            try:
                self.remove_all_containers()
            except Exception:
                pass
            self.dockerd.send_signal(signal.SIGTERM)
            try:
                self.dockerd.wait(20)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()
                self.dockerd.wait(5)
        # Whatever is left in this host's own namespaces (weavepy daemons, shims) goes too.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.processes_in_my_namespaces()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pids and sig == signal.SIGTERM:
                time.sleep(1)
        for f in (self.mnt_file, self.uts_file):
            if f.exists():
                subprocess.run(["umount", "-l", str(f)], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class Testbed:
    """N simulated hosts on one LAN.  Use as a context manager or call teardown()."""

    def __init__(self, weavepy_argv: list[str] | None = None):
        self.uid = uuid.uuid4().hex[:6]
        self.prefix = f"wpt{self.uid}"
        self.lan_index = int(self.uid[:2], 16) % 200 + 1
        self.lan_netns = f"{self.prefix}-lan"
        self.ns_dir = Path(f"/run/{self.prefix}")
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir="/var/tmp"))
        self.hosts: list[Host] = []
        self._made = 0
        self._image_tar: Path | None = None
        self.weavepy_argv = weavepy_argv or [shutil.which("weavepy") or "weavepy"]
        self._created_lan = False
        self._bound_ns_dir = False
        self.stubs: list[subprocess.Popen] = []
        # A script that forgets teardown(), or dies of an exception before reaching it, still
        # removes what it made when the interpreter exits (teardown is safe to call twice).
        atexit.register(self.teardown)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()

    def setup_lan(self):
        self.ns_dir.mkdir(parents=True)
        sh(["mount", "--bind", str(self.ns_dir), str(self.ns_dir)])
        self._bound_ns_dir = True
        sh(["mount", "--make-private", str(self.ns_dir)])
        sh(["ip", "netns", "add", self.lan_netns])
        self._created_lan = True
        sh(["ip", "-n", self.lan_netns, "link", "add", "lan0", "type", "bridge"])
        sh(["ip", "-n", self.lan_netns, "addr", "add", f"{STUB_RESOLVER.format(n=self.lan_index)}/24", "dev", "lan0"])
        sh(["ip", "-n", self.lan_netns, "link", "set", "lan0", "up"])
        sh(["ip", "-n", self.lan_netns, "link", "set", "lo", "up"])

    def image_tar(self) -> Path:
        if self._image_tar is None:
            rootfs = build_busybox_rootfs(self.data_dir / "busybox-rootfs")
            tar = self.data_dir / "busybox.tar"
            sh(["tar", "-C", str(rootfs), "-cf", str(tar), "."])
            self._image_tar = tar
        return self._image_tar

    def add_hosts(self, count: int, dockerd: bool = True) -> list[Host]:
        """count more hosts on the LAN; without dockerd they are cheap (control-plane scale tests)."""
        if not self._created_lan:
            self.setup_lan()
        new = []
        for _ in range(count):
            self._made += 1  # never reused, even after remove_host: names and addresses stay unique
            host = Host(self, f"h{self._made}", self._made - 1)
            self.hosts.append(host)
            host.create()
            if dockerd:
                host.start_dockerd()
            new.append(host)
        for host in new:  # dockerds start in parallel
            if dockerd:
                host.wait_dockerd()
                host.load_image()
        return new

    def remove_host(self, host: Host):
        """Tear one host down early (its processes, namespaces, files)."""
        host.destroy()
        self.hosts.remove(host)

    def start_dns_stub(self) -> subprocess.Popen:
        """A stub upstream resolver at the address every host's resolv.conf names (torn down with the bed)."""
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dns_stub.py")
        proc = subprocess.Popen(["ip", "netns", "exec", self.lan_netns, sys.executable, script,
                                 STUB_RESOLVER.format(n=self.lan_index)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        self.stubs.append(proc)
        return proc

    def stop_dns_stub(self, proc: subprocess.Popen):
        proc.terminate()
        proc.wait(5)
        self.stubs.remove(proc)

    def teardown(self):
        for proc in self.stubs:
            proc.kill()
            proc.wait(5)
        self.stubs.clear()
        for host in reversed(self.hosts):
            try:
                host.destroy()
            except Exception as exc:  # keep tearing down the rest
                print(f"testbed: teardown of {host.name} failed: {exc}")
        self.hosts.clear()
        if self._created_lan:
            subprocess.run(["ip", "netns", "del", self.lan_netns], capture_output=True)
            self._created_lan = False
        if self._bound_ns_dir:
            subprocess.run(["umount", "-l", str(self.ns_dir)], capture_output=True)
            self._bound_ns_dir = False
        shutil.rmtree(self.ns_dir, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        atexit.unregister(self.teardown)


def launch_joining(hosts, *flags) -> float:
    """Launch the first host's router, then all the others' at once, each given the first's
    address; the monotonic time the last launch returned.  A failed launch raises."""
    first = hosts[0]
    first.weavepy("launch", *flags)
    with concurrent.futures.ThreadPoolExecutor(max(1, len(hosts) - 1)) as pool:
        for launched in [pool.submit(h.weavepy, "launch", *flags, first.ip) for h in hosts[1:]]:
            launched.result()
    return time.monotonic()


def wait_for(predicate, timeout=10.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()

