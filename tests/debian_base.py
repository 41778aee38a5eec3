"""A Debian 12 root filesystem for building weavepy's image with nothing pulled from a registry.

debootstrap makes it from the mirror this machine's apt already uses, with every package the
Dockerfile would otherwise apt-get; the tarball is kept under /var/cache so a suite run pays
for it once per machine.  `docker import` of it gives the Dockerfile's BASE.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SUITE = "bookworm"
# The Dockerfile's apt-install-missing.sh lists, for both of its stages.
PACKAGES = ("python3", "python3-venv", "iptables", "iproute2", "gcc", "libc6-dev")
CACHE_DIR = Path(os.environ.get("WEAVEPY_TEST_CACHE", "/var/cache/weavepy-test"))


def apt_mirror(suite: str = SUITE) -> str | None:
    """The first Debian mirror apt is set up with for this suite (None: debootstrap's own default)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        stanzas = Path(path).read_text().split("\n\n")
        for stanza in stanzas:
            fields = dict(line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#"))
            if suite in fields.get("Suites", "").split() and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0]
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        for line in Path(path).read_text().splitlines() if os.path.exists(path) else []:
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    return None


def base_tarball() -> Path:
    """A tar of the root filesystem, built (once) if the cache does not hold one."""
    key = hashlib.sha256(" ".join((SUITE, *PACKAGES)).encode()).hexdigest()[:12]
    tarball = CACHE_DIR / f"debian-{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is not installed (scripts/setup.sh --tests installs it)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="weavepy-debootstrap-", dir="/var/tmp"))
    partial = tarball.with_suffix(".partial")
    try:
        mirror = apt_mirror()
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root)]
        proc = subprocess.run(argv + ([mirror] if mirror else []), capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            log = root / "debootstrap" / "debootstrap.log"
            detail = log.read_text()[-3000:] if log.exists() else proc.stderr[-3000:]
            raise RuntimeError(f"debootstrap failed ({proc.returncode}): {detail}")
        # Downloaded .debs and apt lists are not part of an image.
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / d).glob("*"):
                if entry.is_file():
                    entry.unlink()
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True,
                       capture_output=True)
        os.replace(partial, tarball)
    finally:
        partial.unlink(missing_ok=True)
        _unmount_below(root)  # a debootstrap that failed may leave /proc or /sys mounted in it
        shutil.rmtree(root, ignore_errors=True)
    return tarball


def _unmount_below(root: Path):
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
