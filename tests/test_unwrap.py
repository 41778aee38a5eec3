"""Answers that would show the wait helper, put back as they read without it (no sockets)."""
import json

import pytest
from hypothesis import given, strategies as st

from weavepy.proxy import unwrap
from weavepy.proxy.answer_body import dechunk, rewrite_answer

WAIT_DIR = "/var/lib/weavepy/w"
WAIT_MOUNT = {"Type": "bind", "Source": WAIT_DIR, "Destination": "/w", "Mode": "ro", "RW": False,
              "Propagation": "rprivate"}


def listed(name, command, mounts):
    return {"Id": name * 8, "Names": [f"/{name}"], "Image": "busybox", "Command": command, "Created": 1764581374,
            "Labels": {"note": "<&>\u2028"}, "Mounts": mounts}


def test_a_listing_shows_each_wrapped_command_as_given_and_leaves_the_rest():
    body = unwrap.encode([listed("a", "/w/w sleep 600", [WAIT_MOUNT]),
                          listed("b", "/w/w true", []),  # an image that starts /w/w itself, run directly
                          listed("c", "sh -c '/w/w x'", [WAIT_MOUNT])])
    out = json.loads(unwrap.listing(body, WAIT_DIR))
    assert [c["Command"] for c in out] == ["sleep 600", "/w/w true", "sh -c '/w/w x'"]
    assert out[0]["Created"] == 1764581374 and out[0]["Labels"] == {"note": "<&>\u2028"}


def test_answers_without_the_helper_are_left_alone():
    plain = unwrap.encode([listed("a", "sleep 600", [])])
    assert unwrap.listing(plain, WAIT_DIR) is None
    assert unwrap.listing(unwrap.encode([listed("b", "/w/w true", [])]), WAIT_DIR) is None
    assert unwrap.inspect(b'{"Path":"sh","Args":[]}\n', WAIT_DIR) is None
    assert unwrap.exec_inspect(b'{"ProcessConfig":{"entrypoint":"ls","arguments":["/w/w"]}}') is None


def test_written_as_dockerd_writes_json():
    assert unwrap.encode({"a": "<é>", "b": [1, None], "c": "\u2028"}) == '{"a":"<é>","b":[1,null],"c":"\\u2028"}\n'.encode()


def inspected(entrypoint, cmd, mounts=(WAIT_MOUNT,)):
    args = (entrypoint or []) + (cmd or [])
    return {"Id": "c1" * 32, "Path": args[0], "Args": args[1:], "Mounts": list(mounts),
            "Config": {"Entrypoint": entrypoint, "Cmd": cmd, "Image": "busybox"}}


@pytest.mark.parametrize("entrypoint, cmd, want_entrypoint, want_path, want_args", [
    (["/w/w"], ["sh"], None, "sh", []),
    (["/w/w", "/bin/app", "-x"], ["--y"], ["/bin/app", "-x"], "/bin/app", ["-x", "--y"]),
    (["/w/w", ""], ["x"], [""], "", ["x"]),
])
def test_an_inspect_shows_the_entrypoint_path_and_args_docker_would_have(entrypoint, cmd, want_entrypoint,
                                                                         want_path, want_args):
    out = json.loads(unwrap.inspect(unwrap.encode(inspected(entrypoint, cmd)), WAIT_DIR))
    assert (out["Config"]["Entrypoint"], out["Config"]["Cmd"]) == (want_entrypoint, cmd)
    assert (out["Path"], out["Args"]) == (want_path, want_args)


def test_an_inspect_of_a_container_not_wrapped_by_this_proxy_is_left_alone():
    assert unwrap.inspect(unwrap.encode(inspected(["/w/w"], ["sh"], mounts=())), WAIT_DIR) is None
    other = dict(WAIT_MOUNT, Source="/elsewhere")
    assert unwrap.inspect(unwrap.encode(inspected(["/w/w"], ["sh"], mounts=[other])), WAIT_DIR) is None


def test_an_exec_inspect_without_the_helper():
    body = b'{"ID":"e1","ProcessConfig":{"tty":false,"entrypoint":"/w/w","arguments":["ls","-l"]},"ExitCode":0}\n'
    out = json.loads(unwrap.exec_inspect(body))
    assert out["ProcessConfig"] == {"tty": False, "entrypoint": "ls", "arguments": ["-l"]}


def test_changes_lose_the_added_mountpoint_only():
    assert unwrap.changes(b'[{"Path":"/w","Kind":1}]\n') == b"null\n"
    kept = b'[{"Path":"/w","Kind":0},{"Path":"/tmp","Kind":0},{"Path":"/tmp/w","Kind":1}]\n'
    assert unwrap.changes(kept) is None
    assert json.loads(unwrap.changes(b'[{"Path":"/tmp","Kind":0},{"Path":"/w","Kind":1}]')) == [
        {"Path": "/tmp", "Kind": 0}]
    assert unwrap.has_mountpoint_change(b'[{"Path":"/w","Kind":1}]') and not unwrap.has_mountpoint_change(b"null\n")


CONTAINER = {"Hostname": "c1", "Env": ["A=1"], "Cmd": ["sh"], "Entrypoint": ["/w/w"], "Labels": {}}


@pytest.mark.parametrize("user, entrypoint, cmd", [
    (None, [], ["sh"]),  # docker commit: the container's own config, unwrapped
    ({}, [], ["sh"]),  # dockerd's merge fills both from the container
    ({"Cmd": ["top"]}, [], ["top"]),
    ({"Entrypoint": ["/bin/app"]}, ["/bin/app"], None),  # the user's entrypoint stands alone
    ({"Entrypoint": []}, [], ["sh"]),
])
def test_a_commit_config_never_carries_the_helper(user, entrypoint, cmd):
    config = unwrap.commit_config(user, CONTAINER)
    assert (config["Entrypoint"], config.get("Cmd")) == (entrypoint, cmd)
    if user is None:
        assert config["Env"] == ["A=1"] and config["Hostname"] == "c1"
    wrapped_app = dict(CONTAINER, Entrypoint=["/w/w", "/bin/app"], Cmd=["-v"])
    assert unwrap.commit_config(None, wrapped_app)["Entrypoint"] == ["/bin/app"]
    assert unwrap.commit_config({}, wrapped_app) == {"Entrypoint": ["/bin/app"], "Cmd": ["-v"]}


# -- whole answers -----------------------------------------------------------------------
HEAD = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n"
LISTING = unwrap.encode([listed("a", "/w/w sleep 600", [WAIT_MOUNT])])


def chunked(body: bytes, sizes) -> bytes:
    out, pos = b"", 0
    for size in sizes:
        out += b"%x\r\n%s\r\n" % (len(body[pos:pos + size]), body[pos:pos + size])
        pos += size
    if pos < len(body):
        out += b"%x\r\n%s\r\n" % (len(body) - pos, body[pos:])
    return out + b"0\r\n\r\n"


def listing(body):
    return unwrap.listing(body, WAIT_DIR)


def test_a_sized_answer_gets_its_new_length_where_the_old_one_was():
    answer = HEAD + b"Content-Length: %d\r\nServer: Docker\r\n\r\n" % len(LISTING) + LISTING
    out = rewrite_answer(answer, listing)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[3:] == [b"Content-Length: %d" % len(body), b"Server: Docker"]
    assert json.loads(body)[0]["Command"] == "sleep 600"


def test_a_chunked_answer_is_read_across_chunks_and_sent_sized():
    # the marker cut in two by a chunk boundary still counts
    cut = LISTING.index(b"/w/w") + 2
    answer = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(LISTING, [cut, 7])
    out = rewrite_answer(answer, listing)
    assert b"Transfer-Encoding" not in out and b"chunked" not in out
    assert json.loads(out.partition(b"\r\n\r\n")[2])[0]["Command"] == "sleep 600"


def test_answers_that_need_nothing_are_returned_byte_for_byte():
    plain = unwrap.encode([listed("a", "sleep 600", [])])
    for answer in (HEAD + b"Content-Length: %d\r\n\r\n" % len(plain) + plain,
                   HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(plain, [10]),
                   b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(LISTING) + LISTING):
        assert rewrite_answer(answer, listing) is answer


@given(st.binary(max_size=300))
def test_any_bytes_as_an_answer_or_a_body_never_raise(data):
    for answer in (data, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + data,
                   HEAD + b"Content-Length: 1\r\n\r\n" + data):
        assert rewrite_answer(answer, lambda body: None) is answer
        rewrite_answer(answer, listing)
    dechunk(data)
    for body in (data, b"[" + data, b'{"ProcessConfig":' + data):
        unwrap.listing(body + b"/w/w", WAIT_DIR)
        unwrap.inspect(body + b"/w/w", WAIT_DIR)
        unwrap.exec_inspect(body + b"/w/w")
        unwrap.changes(body)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                max_size=3),
                    max_leaves=12))
def test_any_json_shaped_like_an_answer_never_raises(value):
    for shaped in ([value], {"Config": value, "Path": "/w/w", "Args": value, "Mounts": [WAIT_MOUNT]},
                   [{"Command": "/w/w x", "Mounts": value}], {"ProcessConfig": {"entrypoint": "/w/w",
                                                                                "arguments": value}}):
        body = unwrap.encode(shaped)
        unwrap.listing(body, WAIT_DIR)
        unwrap.inspect(body, WAIT_DIR)
        unwrap.exec_inspect(body)
        unwrap.changes(body)
