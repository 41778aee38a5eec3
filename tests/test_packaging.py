"""weavepy as people install it: `pip install .` into a fresh venv, and the Dockerfile's image.

Both are built from a copy of the checkout's files, as a clean clone would have them.  The
dependencies come from PyPI once, as wheels, so the image builds where nothing but those
wheels is at hand: on a simulated host, from a debootstrapped Debian base (debian_base.py).
"""
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from debian_base import base_tarball
from testbed import wait_for

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RANGE = ipaddress.IPv4Network("10.32.0.0/12")
BASE_IMAGE = "weavepy-test-base:bookworm"


def run(argv, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def copy_checkout(dest: Path) -> Path:
    """The checkout's tracked and new files (not what .gitignore names): what a clone holds."""
    files = run(["git", "-C", REPO, "ls-files", "-z", "-co", "--exclude-standard"]).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory, checkout) -> Path:
    """Wheels of weavepy, of all it depends on and of setuptools (its build backend)."""
    wheels = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "wheel", "-q", "-w", wheels, checkout])
    run([sys.executable, "-m", "pip", "download", "-q", "-d", wheels, "setuptools>=70.1"])
    return wheels


def build_offline(checkout: Path, wheelhouse: Path, out: Path, cc: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--find-links",
                           str(wheelhouse), "-w", str(out), str(checkout)],
                          capture_output=True, text=True, env={**os.environ, "CC": cc}, timeout=300)


def test_the_wheel_holds_the_weavewait_helper(wheelhouse):
    [wheel] = wheelhouse.glob("weavepy-*.whl")
    assert "-py3-none-linux_" in wheel.name  # it holds a native binary, for any Python 3
    with zipfile.ZipFile(wheel) as zf:
        mode = zf.getinfo("weavepy/proxy/weavewait").external_attr >> 16
    assert mode & 0o111, oct(mode)  # pip keeps the executable bits it finds here


def test_a_build_without_a_compiler_fails_naming_it(checkout, wheelhouse, tmp_path):
    proc = build_offline(checkout, wheelhouse, tmp_path, cc="/nonexistent/cc")
    assert proc.returncode != 0
    assert "no C compiler '/nonexistent/cc'" in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("*.whl"))


def test_a_build_without_a_static_libc_fails_naming_it(checkout, wheelhouse, tmp_path):
    # An empty sysroot: a compiler that finds neither libc's headers nor libc.a.
    proc = build_offline(checkout, wheelhouse, tmp_path, cc=f"gcc --sysroot={tmp_path}")
    assert proc.returncode != 0
    assert "no static C library" in proc.stdout + proc.stderr and "libc6-dev" in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("*.whl"))


@pytest.fixture(scope="module")
def host(testbed):
    """A simulated host of this module's own, gone when the module is done."""
    [h] = testbed.add_hosts(1)
    yield h
    h.destroy()
    testbed.hosts.remove(h)


def ethwe_address(host, weavepy_env_cmd: str) -> ipaddress.IPv4Interface:
    """The address `docker run` gives a container through the proxy `weavepy env` names."""
    out = host.run(f"eval $({weavepy_env_cmd}) && docker run --rm busybox ip -4 -o addr show ethwe").stdout
    return ipaddress.IPv4Interface(out.split()[3])


@pytest.mark.integration
def test_pip_install_into_a_fresh_venv_gives_a_working_launch(checkout, wheelhouse, host, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    # `pip install .` of the checkout, its build included; the index is the wheelhouse.
    run([venv / "bin" / "pip", "install", "-q", "--no-index", "--find-links", wheelhouse, "."], cwd=checkout)
    weavepy = str(venv / "bin" / "weavepy")
    try:
        launched = host.run([weavepy, "launch"], check=False, env={"WEAVEPY_WEAVEWAIT": ""})
        assert launched.returncode == 0, launched.stderr
        assert ethwe_address(host, f"{weavepy} env").ip in DEFAULT_RANGE
    finally:
        host.run([weavepy, "reset", "--force"], check=False)


# capabilities(7), by number: what Docker's --cap-drop calls them.
CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE "
    "NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT "
    "SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL "
    "SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
).split()


def privileged_here(argv: list[str]) -> list[str]:
    """--privileged as this machine can grant it.

    dockerd 20.10 gives a privileged container every capability the kernel knows, and runc
    fails ("unable to apply caps") where our own bounding set lacks some (this sandbox has no
    SYS_RESOURCE).  Then: all capabilities but those, with no seccomp filter and a writable
    /proc/sys, which is what the router uses of --privileged.
    """
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", Path("/proc/self/status").read_text(), re.M)[1], 16)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    lacking = [CAPABILITIES[n] for n in range(min(last + 1, len(CAPABILITIES))) if not bounding >> n & 1]
    if not lacking or "--privileged" not in argv:
        return argv
    at = argv.index("--privileged")
    granted = ["--cap-add=ALL", *(f"--cap-drop={c}" for c in lacking),
               "--security-opt=seccomp=unconfined", "--security-opt=systempaths=unconfined"]
    return argv[:at] + granted + argv[at + 1:]


def documented_run_command() -> list[str]:
    """The `docker run` of the Dockerfile's comment, without the optional peers."""
    lines = [line[1:].strip() for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("docker run "))
    command = ""
    for line in lines[start:]:
        command += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            break
    return shlex.split(command.replace("[PEER...]", ""))


@pytest.mark.integration
def test_the_dockerfile_builds_offline_and_its_container_runs_the_router(checkout, wheelhouse, host, tmp_path):
    context = shutil.copytree(checkout, tmp_path / "context")
    # Only the dependencies come as wheels: the image builds weavepy (and weavewait) itself.
    shutil.copytree(wheelhouse, context / "wheels", ignore=shutil.ignore_patterns("weavepy-*"))
    host.run(["docker", "import", str(base_tarball()), BASE_IMAGE], timeout=600)
    built = host.run(["docker", "build", "--build-arg", f"BASE={BASE_IMAGE}", "--build-arg", "WHEELS=wheels",
                      "-t", "weavepy", str(context)], check=False, timeout=1200, env={"DOCKER_BUILDKIT": "0"})
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    run_argv = documented_run_command()
    assert run_argv[-1] == "weavepy" and "--net=host" in run_argv, run_argv
    try:
        started = host.run(privileged_here(run_argv), check=False)
        assert started.returncode == 0, started.stderr
        status = wait_for(lambda: (r := host.weavepy("status", check=False)).returncode == 0 and r,
                          timeout=60, interval=0.5)
        logs = host.run(["docker", "logs", "weavepy"], check=False)
        assert status, f"weavepy status never answered; the container's log:\n{logs.stdout}{logs.stderr}"
        assert "Service: router" in status.stdout
        assert "Service: proxy" in status.stdout
        # The proxy in the container puts its weavewait in front of a static busybox: it must be static too.
        assert ethwe_address(host, " ".join(host.bed.weavepy_argv + ["env"])).ip in DEFAULT_RANGE
    finally:
        host.run(["docker", "rm", "-f", "weavepy"], check=False)
        host.weavepy("reset", "--force", check=False)
