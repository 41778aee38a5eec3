# The weavepy router daemon in a container.  Run it with the host's network, PIDs and
# Docker socket, as Weave Net's router ran:
#   docker run -d --name weavepy --net=host --pid=host --privileged \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /var/lib/weavepy:/var/lib/weavepy -v /run/weavepy:/run/weavepy weavepy [PEER...]
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY weavepy weavepy
COPY proxy proxy
COPY mesh mesh
COPY dns dns
COPY ipam ipam
COPY net net
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /
# --foreground: Docker's restart policy takes the supervisor's place.
ENTRYPOINT ["weavepy", "launch", "--foreground"]
