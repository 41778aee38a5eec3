"""The proxy's decisions, without sockets: eligibility, WEAVE_CIDR, hostnames, the create rewrite."""
import ipaddress
import re

import pytest

from weavepy.ipam.request import AddressError
from weavepy.proxy.create import CreateError, CreateOptions, rewrite
from weavepy.proxy.hostname import derive, replace_all
from weavepy.proxy.server import route
from weavepy.proxy.weave_cidr import decide, validate

DEFAULT = ipaddress.IPv4Network("10.32.0.0/12")


@pytest.mark.parametrize("mode, env, attach, tokens", [
    (None, None, True, ("net:default",)),
    ("bridge", ["A=1"], True, ("net:default",)),
    ("none", ["WEAVE_CIDR=10.35.1.1/24"], True, ("10.35.1.1/24",)),
    ("default", ["WEAVE_CIDR=net:default net:10.32.0.0/24", "WEAVE_CIDR=none"], True,
     ("net:default", "net:10.32.0.0/24")),
    ("default", ["WEAVE_CIDR="], True, ("net:default",)),
    ("default", ["WEAVE_CIDR=none"], False, ()),
    ("host", None, False, ()),
    ("container:abc", None, False, ()),
    ("mynet", None, False, ()),
])
def test_who_joins_weave(mode, env, attach, tokens):
    d = decide(mode, env)
    assert d.attach == attach and d.tokens == tokens


def test_no_default_ipalloc_still_honours_an_empty_weave_cidr():
    assert not decide("default", [], default_ipalloc=False).attach
    assert decide("default", ["WEAVE_CIDR="], default_ipalloc=False).tokens == ("net:default",)


@pytest.mark.parametrize("token", ["10.2.1.1", "net:foo", "10.2.1.1/33"])
def test_bad_tokens_are_named(token):
    with pytest.raises(AddressError, match=re.escape(token)):
        validate(("net:default", token), DEFAULT)


def test_go_replacement_semantics():
    assert replace_all(re.compile("(.*)"), "my-app-$1", "foo") == "my-app-foo"  # one match, as Go
    assert replace_all(re.compile("(.*)"), "my-app-$1", "") == "my-app-"
    m = re.compile(r"^[^-]+-(?P<appname>[^-]*)-[^-]+$")
    assert replace_all(m, "${appname}", "proj-web-1") == "web"
    assert replace_all(m, "$appname", "plain") == "plain"
    assert replace_all(re.compile("(a)"), "$$-$2-$1x", "a") == "$--"  # unknown groups are empty
    assert derive("c1", {"app": "db"}, "app", re.compile("(.*)"), "$1") == "db"
    assert derive("c1", {"app": ""}, "app", re.compile("(.*)"), "$1") == "c1"


OPTS = CreateOptions("/var/lib/weavepy/w", "172.17.0.1", "weave.local.", "c1")


def test_rewrite_wraps_the_image_command_and_adds_one_read_only_mount():
    body = {"Image": "busybox", "Cmd": None, "HostConfig": {"Binds": ["/x:/w", "/data:/data"]}}
    new = rewrite(body, OPTS, {"Cmd": ["sh"], "Entrypoint": None})
    assert new["Entrypoint"] == ["/w/w"] and new["Cmd"] == ["sh"]
    assert new["HostConfig"]["Binds"] == ["/data:/data", "/var/lib/weavepy/w:/w:ro"]
    assert new["Hostname"] == "c1" and new["Domainname"] == "weave.local"
    assert new["HostConfig"]["Dns"] == ["172.17.0.1"] and new["HostConfig"]["DnsSearch"] == ["weave.local."]


def test_rewrite_keeps_user_choices_and_never_wraps_twice():
    body = {"Entrypoint": ["/w/w", "app"], "Cmd": ["--x"], "Hostname": "me.weave.local",
            "HostConfig": {"Dns": ["9.9.9.9"], "DnsSearch": ["corp"]}, "Unknown": {"kept": 1}}
    new = rewrite(body, OPTS, None)
    assert new["Entrypoint"] == ["/w/w", "app"] and new["Cmd"] == ["--x"]
    assert new["Hostname"] == "me.weave.local" and "Domainname" not in new
    assert new["HostConfig"]["Dns"] == ["9.9.9.9", "172.17.0.1"] and new["HostConfig"]["DnsSearch"] == ["corp"]
    assert new["Unknown"] == {"kept": 1}


def test_image_entrypoint_with_user_args_and_no_command_at_all():
    new = rewrite({"Cmd": ["-v"]}, OPTS, {"Entrypoint": ["/bin/app"], "Cmd": ["--default"]})
    assert new["Entrypoint"] == ["/w/w", "/bin/app"] and new["Cmd"] == ["-v"]
    with pytest.raises(CreateError, match="No command specified") as info:
        rewrite({"Cmd": []}, OPTS, {"Cmd": None, "Entrypoint": None})
    assert info.value.status == 400


def test_without_dns_leaves_names_alone():
    new = rewrite({"Cmd": ["sh"]}, CreateOptions("/w-dir", None, "weave.local.", "c1"), {})
    assert "Hostname" not in new and "Dns" not in new["HostConfig"]


@pytest.mark.parametrize("method, path, upgrade, rewrite_inspect, expected", [
    ("POST", "/v1.41/containers/create", False, False, ("create", None)),
    ("POST", "/containers/c1/start", False, False, ("start", "c1")),
    ("POST", "/v1.41/containers/c1/restart", False, False, ("start", "c1")),
    ("POST", "/v1.41/containers/c1/exec", False, False, ("exec_create", "c1")),
    ("POST", "/v1.41/containers/c1/attach", False, False, ("hijack", None)),
    ("POST", "/exec/abc/start", False, False, ("hijack", None)),
    ("POST", "/v1.41/session", True, False, ("hijack", None)),
    ("GET", "/v1.41/containers/c1/json", False, False, ("inspect", "c1")),
    ("GET", "/v1.41/containers/c1/json", False, True, ("weave_inspect", "c1")),
    ("GET", "/v1.41/containers/json", False, True, ("list", None)),
    ("GET", "/containers/json", False, False, ("list", None)),
    ("GET", "/v1.41/containers/c1/changes", False, False, ("changes", "c1")),
    ("GET", "/v1.41/exec/e1/json", False, False, ("exec_inspect", "e1")),
    ("POST", "/v1.41/commit", False, False, ("commit", None)),
    ("HEAD", "/v1.41/containers/json", False, False, ("forward", None)),
    ("POST", "/v1.41/containers/c1/wait", False, False, ("forward", None)),
    ("GET", "/v1.41/containers/create", False, False, ("forward", None)),
    ("POST", "/v1.41/containers/create/extra", False, False, ("forward", None)),
])
def test_what_the_proxy_does_with_each_request(method, path, upgrade, rewrite_inspect, expected):
    assert route(method, path, upgrade, rewrite_inspect) == expected
