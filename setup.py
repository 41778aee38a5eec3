"""The build step pyproject.toml cannot say: compile the static weavewait helper into the package.

The proxy puts weavewait in front of every container's entrypoint, mounted from the
host, so it must run in any image, even one holding a single static binary: it is
linked with -static and lands next to weavepy/proxy/server.py, where find_weavewait()
looks.  A build without a C compiler or a static libc fails here, saying which is missing,
rather than installing a router that cannot start its proxy.
"""
import os
import shlex
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

SOURCE = os.path.join("proxy", "weavewait.c")
PACKAGE = "weavepy.proxy"
BINARY = "weavewait"


def compile_weavewait(output: str) -> None:
    compiler = shlex.split(os.environ.get("CC", "gcc"))
    if not shutil.which(compiler[0]):
        raise SystemExit(f"weavepy build: no C compiler '{compiler[0]}' to build the static weavewait helper "
                         f"from {SOURCE} (Debian: apt-get install gcc libc6-dev; or set CC)")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    argv = [*compiler, "-static", "-Os", "-s", "-Wall", "-o", output, SOURCE]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        hint = ""
        if "cannot find -lc" in proc.stderr or ".h: No such file" in proc.stderr:
            hint = " (no static C library: libc.a and its headers; Debian: apt-get install libc6-dev)"
        raise SystemExit(f"weavepy build: compiling {SOURCE} with {' '.join(argv)} failed{hint}:\n{proc.stderr}")
    os.chmod(output, 0o755)


class BuildPyWithWeavewait(build_py):
    """build_py, plus the helper compiled into the built weavepy.proxy package."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install imports proxy/ from the source tree itself
            target = os.path.join(self.get_package_dir(PACKAGE), BINARY)
        else:
            target = os.path.join(self.build_lib, *PACKAGE.split("."), BINARY)
        compile_weavewait(target)


class NativeDistribution(Distribution):
    """Holds a native binary: installed as platform-specific (platlib), as an extension module is."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """The binary runs under any Python 3, so the wheel is tagged for this platform alone."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(distclass=NativeDistribution, cmdclass={"build_py": BuildPyWithWeavewait, "bdist_wheel": PlatformWheel})
