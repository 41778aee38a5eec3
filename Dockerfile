# The weavepy router daemon in a container.  Run it with the host's network, PIDs and
# Docker socket, as Weave Net's router ran:
#   docker build -t weavepy .
#   docker run -d --name weavepy --net=host --pid=host --privileged \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /var/lib/weavepy:/var/lib/weavepy -v /run/weavepy:/run/weavepy weavepy [PEER...]
#
# BASE: a Debian 12 root; whichever of the packages below it lacks are installed from the
# Debian mirror.  WHEELS: a folder of the build context holding wheels of weavepy's
# dependencies and of setuptools, to build with no package index at all.  The tests build
# that way, from a debootstrapped base that holds every package:
#   docker build --build-arg BASE=<imported base> --build-arg WHEELS=wheels -t weavepy <context>
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS runtime
COPY scripts/apt-install-missing.sh /usr/local/sbin/
RUN apt-install-missing.sh python3 python3-venv iptables iproute2

# The package build compiles the static weavewait helper (setup.py): it needs gcc and libc.a,
# which stay in this stage.
FROM runtime AS build
RUN apt-install-missing.sh gcc libc6-dev
COPY . /src
ARG WHEELS
RUN python3 -m venv /opt/weavepy \
 && /opt/weavepy/bin/pip install --no-cache-dir ${WHEELS:+--no-index --find-links "/src/$WHEELS"} /src

FROM runtime
COPY --from=build /opt/weavepy /opt/weavepy
ENV PATH=/opt/weavepy/bin:$PATH
# --foreground: Docker's restart policy takes the supervisor's place.
ENTRYPOINT ["weavepy", "launch", "--foreground"]
