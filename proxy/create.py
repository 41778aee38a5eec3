"""Rewriting a container-create request so the container joins weave (sans-IO).

Given the request body and, when needed, the image's Config, returns the new
body.  Follows Docker's own merge of image Entrypoint/Cmd so that argv after
/w/w is exactly what Docker would have run.
"""
from __future__ import annotations

from dataclasses import dataclass

WAIT_DIR = "/w"
WAIT_PROGRAM = "/w/w"
HOSTNAME_MAX = 64


class CreateError(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class CreateOptions:
    wait_host_dir: str
    dns_address: str | None      # None: no DNS settings (--without-dns or --no-dns)
    dns_domain: str              # with trailing dot
    hostname: str                # derived from the container name ('' when unnamed)


def needs_image(body: dict) -> bool:
    ep = body.get("Entrypoint")
    return not ep


def _list(value, field: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise CreateError(f"Wrong type for {field} field, expected array of strings", 400)


def rewrite(body: dict, opts: CreateOptions, image_config: dict | None) -> dict:
    body = dict(body)
    host = dict(body.get("HostConfig") or {})
    binds = [b for b in _list(host.get("Binds"), "Binds") if b.split(":")[1:2] != [WAIT_DIR]]
    host["Binds"] = binds + [f"{opts.wait_host_dir}:{WAIT_DIR}:ro"]

    entrypoint = _list(body.get("Entrypoint"), "Entrypoint")
    cmd = _list(body.get("Cmd"), "Cmd")
    if not entrypoint:
        image = image_config or {}
        if not cmd:
            cmd = _list(image.get("Cmd"), "Cmd")
            body["Cmd"] = cmd or body.get("Cmd")
        if body.get("Entrypoint") is None:
            entrypoint = _list(image.get("Entrypoint"), "Entrypoint")
    if not entrypoint and not cmd:
        raise CreateError("No command specified", 400)
    if entrypoint[:1] != [WAIT_PROGRAM]:
        entrypoint = [WAIT_PROGRAM] + entrypoint
    body["Entrypoint"] = entrypoint

    if opts.dns_address is not None:
        domain = opts.dns_domain.rstrip(".")
        user_hostname = bool(body.get("Hostname"))
        if not user_hostname and opts.hostname and len(opts.hostname) + 1 + len(domain) <= HOSTNAME_MAX:
            body["Hostname"] = opts.hostname
            body["Domainname"] = domain
        host["Dns"] = _list(host.get("Dns"), "Dns") + [opts.dns_address]
        if not _list(host.get("DnsSearch"), "DnsSearch"):
            # "." lets a user-given FQDN hostname supply its own domain; where we named the
            # container ourselves (kernel hostname "c1") the weave domain must be searched,
            # or `ping c2` would not resolve.
            host["DnsSearch"] = ["."] if user_hostname else [opts.dns_domain]
    body["HostConfig"] = host
    return body
