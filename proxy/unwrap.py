"""A container the proxy wrapped, as its user would see it without the wait helper (sans-IO).

The proxy starts a wrapped container's process under /w/w (weavewait), so
dockerd reports /w/w as the container's command and lists the /w mountpoint
it made as a change.  These functions take dockerd's answer bodies and put
them back as they would read had the container been created directly.  Each
returns the new body, or None when the body needs no change: the usual case,
found by one substring search before any parsing.

A container counts as wrapped when its command starts with /w/w *and* the
proxy's weavewait directory is mounted at /w: a container of an image that
itself starts /w/w, created directly, has no such mount and is left as it is.
"""
from __future__ import annotations

import json
from typing import Callable

from .create import WAIT_DIR, WAIT_PROGRAM

BodyRewrite = Callable[[bytes], "bytes | None"]

_PROGRAM = WAIT_PROGRAM.encode()
_MOUNTPOINT = b'"' + WAIT_DIR.encode() + b'"'
ADDED = 1  # a change's Kind: 0 modified, 1 added, 2 deleted (dockerd's archive.ChangeType)


def encode(value) -> bytes:
    """JSON as dockerd writes it: Go's encoder, compact, UTF-8, HTML left unescaped, a final newline."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Go escapes these two even with HTML escaping off; they can only occur inside strings
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode() + b"\n"


def _decode(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def mounts_wait_dir(mounts, wait_dir: str) -> bool:
    """The proxy's weavewait directory is among these mounts (an inspect's or a listing's Mounts)."""
    return isinstance(mounts, list) and any(
        isinstance(m, dict) and m.get("Destination") == WAIT_DIR and m.get("Source") == wait_dir for m in mounts)


def _unwrapped_command(command) -> str | None:
    if isinstance(command, str) and command.startswith(WAIT_PROGRAM + " "):
        return command[len(WAIT_PROGRAM) + 1:]
    return None


def listing(body: bytes, wait_dir: str) -> bytes | None:
    """GET /containers/json: each wrapped container's Command without "/w/w "."""
    if _PROGRAM not in body:
        return None
    entries = _decode(body)
    if not isinstance(entries, list):
        return None
    changed = False
    for entry in entries:
        if isinstance(entry, dict) and mounts_wait_dir(entry.get("Mounts"), wait_dir):
            command = _unwrapped_command(entry.get("Command"))
            if command is not None:
                entry["Command"] = command
                changed = True
    return encode(entries) if changed else None


def is_wrapped(info: dict, wait_dir: str) -> bool:
    """A container inspect's answer shows a container the proxy wrapped."""
    config = info.get("Config")
    entrypoint = config.get("Entrypoint") if isinstance(config, dict) else None
    args = info.get("Args")
    return (isinstance(entrypoint, list) and entrypoint[:1] == [WAIT_PROGRAM] and info.get("Path") == WAIT_PROGRAM
            and isinstance(args, list) and len(args) > 0 and mounts_wait_dir(info.get("Mounts"), wait_dir))


def unwrap_inspect(info: dict) -> None:
    """Entrypoint, Path and Args as Docker would have set them from the same create request."""
    # dockerd reports an empty entrypoint as null, as it does for a container that never had one
    info["Config"]["Entrypoint"] = info["Config"]["Entrypoint"][1:] or None
    info["Path"], info["Args"] = info["Args"][0], info["Args"][1:]


def inspect(body: bytes, wait_dir: str) -> bytes | None:
    """GET /containers/{id}/json of a wrapped container: Config.Entrypoint, Path and Args unwrapped."""
    if _PROGRAM not in body:
        return None
    info = _decode(body)
    if not isinstance(info, dict) or not is_wrapped(info, wait_dir):
        return None
    unwrap_inspect(info)
    return encode(info)


def exec_inspect(body: bytes) -> bytes | None:
    """GET /exec/{id}/json of an exec the proxy put behind /w/w: its ProcessConfig without it."""
    if _PROGRAM not in body:
        return None
    info = _decode(body)
    process = info.get("ProcessConfig") if isinstance(info, dict) else None
    if not isinstance(process, dict) or process.get("entrypoint") != WAIT_PROGRAM:
        return None
    arguments = process.get("arguments")
    if not isinstance(arguments, list) or not arguments:
        return None
    process["entrypoint"], process["arguments"] = arguments[0], arguments[1:]
    return encode(info)


def has_mountpoint_change(body: bytes) -> bool:
    """GET /containers/{id}/changes may list the /w the proxy's bind mount made (worth a look)."""
    return _MOUNTPOINT in body


def changes(body: bytes) -> bytes | None:
    """The changes of a wrapped container without the /w that dockerd added for the bind mount.

    Only an *added* /w is the proxy's: when the image has /w, dockerd makes none and lists none.
    """
    entries = _decode(body)
    if not isinstance(entries, list):
        return None
    kept = [e for e in entries if not (isinstance(e, dict) and e.get("Path") == WAIT_DIR and e.get("Kind") == ADDED)]
    if len(kept) == len(entries):
        return None
    return encode(kept or None)  # dockerd answers null, not [], when there are no changes


def commit_config(user: dict | None, container: dict) -> dict:
    """The config to commit a wrapped container with (container: its inspect's Config).

    Given no config, dockerd commits the container's own; given one, it fills an
    empty Entrypoint (and then an empty Cmd) from the container's: either way the
    image would start /w/w.  So a config is always given, its Entrypoint and Cmd
    filled as dockerd's merge would fill them from the unwrapped container.  An
    entrypoint the container never had goes as [], since dockerd would fill a null
    one; an image runs the same with either.
    """
    entrypoint = container["Entrypoint"][1:]
    if user is None:
        return {**container, "Entrypoint": entrypoint}
    config = dict(user)
    if not config.get("Entrypoint"):
        if not config.get("Cmd"):
            config["Cmd"] = container.get("Cmd")
        if config.get("Entrypoint") is None:
            config["Entrypoint"] = entrypoint
    return config
