"""The pure access rules: the route table, Host names, origins, network grants, the
token file and its live view."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.access.browser import NodeNames, is_json, origin_refused, parse_origins, split_host
from node.access.policy import AccessPolicy, NetworkGrants, facts_of
from node.access.routes import ANY_SCOPE, required
from node.access.scopes import SCOPES, ScopeError, parse_scopes, register_scope
from node.access.tokens import TokenBook, create_token, load_tokens, revoke_tokens, token_hash

CS = "0" * 64


@pytest.mark.parametrize("method, path, scope, json", [
    ("GET", "/healthcheck", None, False),
    ("GET", "/jobserver/healthcheck", None, False),
    ("PUT", "/healthcheck", "admin", False),
    ("GET", "/federation/buffers/" + CS, None, False),
    ("GET", "/buffers/" + CS, "buffers:read", False),
    ("HEAD", "/buffers/" + CS, "buffers:read", False),
    ("PUT", "/buffers/" + CS, "buffers:write", False),
    ("PUT", "/buffers/promise/" + CS, "buffers:write", False),
    ("POST", "/buffers/" + CS, "buffers:write", False),
    ("GET", "/buffers/has", "buffers:read", True),
    ("POST", "/buffers/has-now", "buffers:read", True),
    ("GET", "/buffers/buffer-length", "buffers:read", True),
    ("GET", "/has", "buffers:read", True),
    ("GET", "/has-now", "buffers:read", True),
    ("PUT", "/" + CS, "buffers:write", False),
    ("GET", "/" + CS, "buffers:read", False),
    ("GET", "/" + CS + "x", "admin", False),
    ("GET", "/", "admin", False),
    ("GET", "/database", "results:read", True),
    ("GET", "/database/anything", "results:read", True),
    ("PUT", "/database", "results:write", True),
    ("DELETE", "/database", "results:write", True),
    ("POST", "/api/v1/database/read", "results:read", True),
    ("POST", "/api/v1/database/read-many", "results:read", True),
    ("GET", "/api/v1/database/info", "results:read", False),
    ("POST", "/api/v1/database/write", "results:write", True),
    ("POST", "/api/v1/database/write-many", "results:write", True),
    ("POST", "/api/v1/buffers/has", "buffers:read", True),
    ("POST", "/api/v1/buffers/get", "buffers:read", True),
    ("POST", "/api/v1/buffers/put", "buffers:write", False),
    ("GET", "/jobserver/run-transformation", "jobs:submit", True),
    ("GET", "/jobserver/transformation-status/" + CS, "jobs:submit", False),
    ("POST", "/jobserver/cancel-transformation/" + CS, "jobs:submit", False),
    ("POST", "/api/v1/jobs", "jobs:submit", True),
    ("POST", "/api/v1/jobs/", "jobs:submit", False),
    ("GET", "/api/v1/jobs/" + CS + "/events", "jobs:submit", False),
    ("DELETE", "/api/v1/jobs/" + CS, "jobs:submit", False),
    ("GET", "/metrics", ANY_SCOPE, False),
    ("GET", "/api/v1/node", ANY_SCOPE, False),
    ("GET", "/api/v1/peers", ANY_SCOPE, False),
    ("POST", "/api/v1/peers", "admin", False),
    ("GET", "/api/v1/peers/results/" + CS, "results:read", False),
    ("POST", "/api/v1/peers/fetch/" + CS, "buffers:read", False),
    ("GET", "/api/v1/unknown", "admin", False),
    # other spellings of a route land in its area
    ("POST", "//api/v1//jobs", "jobs:submit", True),
    ("PUT", "/buffers//" + CS, "buffers:write", False),
])
def test_every_route_needs_its_scope(method, path, scope, json):
    need = required(method, path)
    assert (need.scope, need.json) == (scope, json)


def test_scopes_are_extensible_and_checked():
    assert parse_scopes("buffers:read, jobs:submit") == {"buffers:read", "jobs:submit"}
    with pytest.raises(ScopeError):
        parse_scopes(["buffers:read", "compile:submit"])
    register_scope("compile:submit", "submit compilations")
    try:
        assert parse_scopes(["compile:submit"]) == {"compile:submit"}
    finally:
        SCOPES.pop("compile:submit")
    with pytest.raises(ValueError):
        register_scope("Not A Scope", "")


def test_host_names():
    names = NodeNames.build(["node.lab.example", "proxy.example:443"], "0.0.0.0")
    local = ("10.1.2.3", 5533)
    for host in ("node.lab.example:5533", "NODE.lab.example", "node.lab.example.", "localhost:5533",
                 "10.1.2.3:5533", "proxy.example:443", None):
        assert names.allows(host, local), host
    for host in ("0.0.0.0:5533", "node.lab.example:80", "proxy.example:5533x", "evil.example:5533",
                 "10.1.2.4:5533", "[::1]:5533", "", "localhost:5533/x", "a..b", "proxy.example:8443"):
        assert not names.allows(host, local), host
    assert split_host("[::ffff:127.0.0.1]:80") == ("127.0.0.1", 80)
    assert split_host("host:99999") is None
    with pytest.raises(ValueError):
        NodeNames.build(["http://x"], "127.0.0.1")


def test_origins_and_content_types():
    allowed = parse_origins(["https://App.example/"])
    assert allowed == {"https://app.example"}
    assert not origin_refused("POST", "https://app.example", False, allowed)
    assert origin_refused("POST", "https://evil.example", False, allowed)
    assert origin_refused("PUT", "null", False, allowed)
    assert not origin_refused("GET", "https://evil.example", False, allowed)
    assert origin_refused("GET", "https://evil.example", True, allowed)  # a websocket
    assert not origin_refused("POST", None, False, frozenset())
    with pytest.raises(ValueError):
        parse_origins(["https://app.example/path"])
    assert is_json("application/json") and is_json("Application/JSON; charset=utf-8")
    assert not is_json("text/plain") and not is_json(None) and not is_json("application/jsonx")


def test_network_grants():
    grants = NetworkGrants(
        {"10.0.0.0/8": ["buffers:read"], "10.1.0.0/16": ["jobs:submit"], "::1/128": ["admin"]}
    )
    assert grants.scopes_for("10.1.2.3") == {"buffers:read", "jobs:submit"}
    assert grants.scopes_for("::ffff:10.9.9.9") == {"buffers:read"}
    assert grants.scopes_for("::1") == {"admin"}
    assert grants.scopes_for("127.0.0.1") == frozenset()  # listed networks only
    for bad in ({"10.0.0.1/8": ["buffers:read"]}, {"x": ["buffers:read"]}, {"10.0.0.0/8": ["nope"]}):
        with pytest.raises(ValueError):
            NetworkGrants(bad)


def test_token_file_round_trip_and_live_view(tmp_path):
    path = str(tmp_path / "tokens.json")
    book = TokenBook(path)
    assert book.check("snt_" + "A" * 43).problem == "unknown token"  # no file yet
    token, record = create_token(path, "alice", frozenset({"buffers:read"}), 3600)
    assert record.hash == token_hash(token) and token not in open(path).read()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert book.check(token).record == record
    with pytest.raises(ValueError):
        create_token(path, "alice", frozenset({"buffers:read"}), 3600)  # an active name
    assert book.check(token, now=time.time() + 7200).problem == "expired token"
    revoke_tokens(path, record.id)
    assert book.check(token).problem == "revoked token"
    assert [r.state(time.time()) for r in load_tokens(path)] == ["revoked"]
    os.chmod(path, 0o666)  # a file others may write grants nothing
    assert book.check(token).record is None


def test_the_path_prefix_is_cut_before_anything_sees_it(tmp_path):
    class Config:
        class node:
            public_names = ()
            host = "127.0.0.1"

        class access:
            networks = None
            allowed_origins = ()

        tokens_file = str(tmp_path / "tokens.json")

    policy = AccessPolicy.from_config(Config)
    token, _ = create_token(Config.tokens_file, "t", frozenset({"admin"}), None)
    target = f"/t/{token}/metrics"
    host = [(b"host", b"127.0.0.1:1")]
    facts = facts_of("GET", target, target.encode(), host, "10.0.0.1", ("127.0.0.1", 1))
    verdict = policy.decide(facts)
    assert verdict.allowed and verdict.path == "/metrics" and verdict.raw_path == b"/metrics"
    assert verdict.token_name == "t"
    bad = facts_of("GET", f"/t/{token}x/metrics", f"/t/{token}x/metrics".encode(), [(b"host", b"localhost")],
                   "10.0.0.1", ("127.0.0.1", 1))
    verdict = policy.decide(bad)
    assert verdict.status == 401 and token not in verdict.path and token not in verdict.message


_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=80)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    path=st.one_of(_text.map(lambda s: "/" + s), _text.map(lambda s: "/t/" + s)),
    fields=st.lists(st.tuples(st.sampled_from([b"host", b"origin", b"content-type", b"authorization",
                                               b"access-control-request-method"]),
                              st.binary(max_size=80)), max_size=6),
    client=st.one_of(st.none(), _text, st.sampled_from(["127.0.0.1", "::1", "10.0.0.1"])),
)
def test_the_decision_never_fails_on_hostile_input(tmp_path_factory, method, path, fields, client):
    policy = AccessPolicy.from_config(_config(str(tmp_path_factory.mktemp("t") / "tokens.json")))
    verdict = policy.decide(facts_of(method, path, path.encode("utf-8", "surrogateescape"), fields, client,
                                     ("127.0.0.1", 5533)))
    assert verdict.status in (0, 204, 401, 403, 415, 421)


def _config(tokens_file: str):  # type: ignore[no-untyped-def]
    class Config:
        class node:
            public_names = ("node.example",)
            host = "0.0.0.0"

        class access:
            networks = None
            allowed_origins = ("https://app.example",)

    Config.tokens_file = tokens_file  # type: ignore[attr-defined]
    return Config
