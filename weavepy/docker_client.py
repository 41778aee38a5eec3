"""The few Docker Engine API calls the daemon makes, over aiohttp."""
from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import aiohttp


class DockerError(Exception):
    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


class NoSuchContainer(DockerError):
    def __init__(self, name: str):
        super().__init__(f"no such container: {name}", 404)


class NoSuchImage(DockerError):
    def __init__(self, name: str):
        super().__init__(f"No such image: {name}", 404)


def connector_for(docker_host: str) -> tuple[aiohttp.BaseConnector, str]:
    if docker_host.startswith("unix://"):
        return aiohttp.UnixConnector(path=docker_host[len("unix://"):]), "http://docker"
    if docker_host.startswith("tcp://"):
        return aiohttp.TCPConnector(), "http://" + docker_host[len("tcp://"):]
    raise DockerError(f"unsupported DOCKER_HOST '{docker_host}'")


class DockerClient:
    def __init__(self, docker_host: str):
        self.docker_host = docker_host
        connector, self.base = connector_for(docker_host)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    async def close(self):
        await self.session.close()

    async def _get(self, path: str, params=None):
        try:
            async with self.session.get(self.base + path, params=params,
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
                body = await resp.read()
                return resp.status, body
        except aiohttp.ClientError as exc:
            raise DockerError(f"cannot reach the Docker daemon at {self.docker_host}: {exc}", 503) from None

    async def _inspect(self, path: str, name: str, missing) -> dict:
        status, body = await self._get(path)
        if status == 404:
            raise missing(name)
        if status != 200:
            raise DockerError(f"inspecting {name}: {body.decode(errors='replace').strip()}", status)
        return json.loads(body)

    async def inspect(self, name: str) -> dict:
        return await self._inspect(f"/containers/{quote(name, safe='')}/json", name, NoSuchContainer)

    async def image(self, name: str) -> dict:
        return await self._inspect(f"/images/{quote(name, safe='')}/json", name, NoSuchImage)

    async def kill(self, cid: str) -> None:
        try:
            async with self.session.post(f"{self.base}/containers/{cid}/kill",
                                         timeout=aiohttp.ClientTimeout(total=30)) as resp:
                await resp.read()
        except aiohttp.ClientError as exc:
            raise DockerError(f"killing {cid[:12]}: {exc}", 503) from None

    async def running_ids(self) -> set[str]:
        status, body = await self._get("/containers/json")
        if status != 200:
            raise DockerError(f"listing containers: {body.decode(errors='replace').strip()}", status)
        return {c["Id"] for c in json.loads(body)}

    async def events(self, types=("start", "die", "destroy")):
        """Container events as they happen; the generator ends when the stream breaks."""
        filters = json.dumps({"type": ["container"], "event": list(types)})
        try:
            async with self.session.get(self.base + "/events", params={"filters": filters}) as resp:
                if resp.status != 200:
                    raise DockerError(f"events: HTTP {resp.status}", resp.status)
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield json.loads(line)
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise DockerError(f"event stream from {self.docker_host} broke: {exc}", 503) from None
