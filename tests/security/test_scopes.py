"""Who may do what: each scope refused without credentials (401) and with a token that
lacks it (403); expired, revoked, unknown and malformed tokens refused; tokens in the
path prefix with the real Seamless clients; network grants tested from a chosen source
address; tokens absent from logs, metrics, the token file and the command line's output.

Nodes here mostly run with ``access.networks: {}``: no address holds any scope, so only
a token can open a route (loopback would otherwise hold every scope but admin).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from node.access.tokens import create_token, revoke_tokens
from tests.helpers import checksum_of, random_buffer
from tests.interop.support import HERE as INTEROP
from tests.interop.support import run_tool
from tests.roles.jobless.support import JOBLESS, Transformations

from .raw_http import exchange, netloc, request

NOBODY = {"networks": {}}
TF = "c" * 64
RESULT = "d" * 64
ALL = frozenset({"buffers:read", "buffers:write", "results:read", "results:write", "jobs:submit"})


_names = itertools.count()


def token_for(node, *scopes: str, name: str | None = None, expires_in: float | None = 3600) -> str:  # type: ignore[no-untyped-def]
    name = name or f"t{next(_names)}"
    token, _ = create_token(node.config.tokens_file, name, frozenset(scopes), expires_in)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


CS, DATA = random_buffer(100)
#: one request per scope: method, path, JSON body or raw bytes
SCOPE_REQUESTS = {
    "buffers:read": ("GET", f"/buffers/{CS}", None),
    "buffers:write": ("PUT", f"/buffers/{CS}", DATA),
    "results:read": ("GET", "/database", {"type": "transformation", "checksum": TF}),
    "results:write": ("PUT", "/database", {"type": "transformation", "checksum": TF, "value": RESULT}),
    "jobs:submit": ("GET", "/api/v1/jobs", None),
    "admin": ("GET", "/no-such-route", None),
}


async def send(http: httpx.AsyncClient, url: str, scope: str, headers: dict[str, str] | None = None,
               prefix: str = "") -> httpx.Response:
    method, path, body = SCOPE_REQUESTS[scope]
    kwargs: dict = {"headers": headers or {}}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = body
    return await http.request(method, url + prefix + path, **kwargs)


@pytest.fixture
async def closed_node(start_node):  # type: ignore[no-untyped-def]
    """A node granting nothing to any network: tokens only."""
    return await start_node(node=JOBLESS, access=NOBODY, jobless={"workers": 1})


@pytest.mark.parametrize("scope", list(SCOPE_REQUESTS))
async def test_each_scope_is_refused_without_credentials(closed_node, http, scope):
    r = await send(http, closed_node.url, scope)
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert scope in r.text
    assert (await http.get(f"{closed_node.url}/buffers/healthcheck")).status_code == 200  # needs no scope


@pytest.mark.parametrize("scope", list(SCOPE_REQUESTS))
async def test_each_scope_is_refused_with_a_token_lacking_it(closed_node, http, scope):
    lacking = token_for(closed_node, *sorted(ALL - {scope}))
    r = await send(http, closed_node.url, scope, bearer(lacking))
    assert r.status_code == 403, r.text
    assert scope in r.text
    holding = token_for(closed_node, scope)
    r = await send(http, closed_node.url, scope, bearer(holding))
    assert r.status_code not in (401, 403), r.text
    if scope == "buffers:write":
        assert r.status_code == 200 and (await http.get(f"{closed_node.url}/buffers/{CS}",
                                                        headers=bearer(holding))).status_code == 403


async def test_admin_implies_every_scope(closed_node, http):
    admin = token_for(closed_node, "admin")
    for scope in SCOPE_REQUESTS:
        r = await send(http, closed_node.url, scope, bearer(admin))
        assert r.status_code not in (401, 403), (scope, r.text)


async def test_expired_token_is_refused(closed_node, http):
    token, _ = create_token(closed_node.config.tokens_file, "old", frozenset(ALL), 60, now=time.time() - 120)
    r = await send(http, closed_node.url, "buffers:read", bearer(token))
    assert r.status_code == 401 and "expired" in r.text
    r = await send(http, closed_node.url, "buffers:read", prefix=f"/t/{token}")
    assert r.status_code == 401 and "expired" in r.text


async def test_revoked_token_is_refused_at_once_and_new_tokens_work_without_a_restart(closed_node, http):
    token = token_for(closed_node, "buffers:read", name="alice")  # made while the node runs
    assert (await send(http, closed_node.url, "buffers:read", bearer(token))).status_code == 404
    assert (await send(http, closed_node.url, "buffers:read", prefix=f"/t/{token}")).status_code == 404
    revoke_tokens(closed_node.config.tokens_file, "alice")
    for kwargs in ({"headers": bearer(token)}, {"prefix": f"/t/{token}"}):
        r = await send(http, closed_node.url, "buffers:read", **kwargs)
        assert r.status_code == 401 and "revoked" in r.text


@pytest.mark.parametrize("token", [
    "snt_" + "A" * 43,  # well-formed, never issued
    "snt_short",
    "x" * 47,
    "",
])
async def test_unknown_and_malformed_tokens_are_refused(closed_node, http, token):
    token_for(closed_node, *ALL)  # a token file exists
    headers = bearer(token) if token else {"Authorization": "Bearer"}
    r = await send(http, closed_node.url, "buffers:read", headers)
    assert r.status_code == 401, r.text
    if token:
        r = await send(http, closed_node.url, "buffers:read", prefix=f"/t/{token}")
        assert r.status_code == 401, r.text


async def test_a_token_in_the_path_prefix_works_on_both_paths(closed_node, http):
    token = token_for(closed_node, "buffers:read", "buffers:write")
    cs, data = random_buffer(3000)
    base = f"{closed_node.url}/t/{token}/buffers"
    assert (await http.put(f"{base}/{cs}", content=data)).status_code == 200  # the front
    assert (await http.get(f"{base}/{cs}")).content == data
    r = await http.request("GET", f"{base}/has", json=[cs, "0" * 64])  # Quart, through hypercorn
    assert r.json() == [True, False]
    raw = request("GET", f"/t/{token}/buffers/{cs}", {"Host": netloc(closed_node.url)}, version="HTTP/1.0")
    status, _, body = await exchange(closed_node.url, raw)  # handed over from the first byte
    assert status == 200 and body == data
    # the prefix grants only what the token grants, and only for the request it is on
    assert (await http.get(f"{closed_node.url}/t/{token}/api/v1/jobs")).status_code == 403
    assert (await http.get(f"{closed_node.url}/buffers/{cs}")).status_code == 401


async def test_default_grants_loopback_every_scope_but_admin(start_node, http):
    node = await start_node(node=JOBLESS, jobless={"workers": 1})
    for scope in SCOPE_REQUESTS:
        r = await send(http, node.url, scope)
        if scope == "admin":
            assert r.status_code == 401, r.text
        else:
            assert r.status_code not in (401, 403), (scope, r.text)


async def test_a_network_grant_holds_for_its_source_addresses_only(start_node):
    grants = {"127.0.0.2/32": ["buffers:read"], "127.0.0.3/32": ["buffers:read", "buffers:write"]}
    node = await start_node(node={"roles": ["buffers", "database"]}, access={"networks": grants})
    cs, data = random_buffer(500)

    def client(source: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=source), timeout=10)

    async with client("127.0.0.1") as local, client("127.0.0.2") as reader, client("127.0.0.3") as writer:
        assert (await reader.put(f"{node.url}/buffers/{cs}", content=data)).status_code == 401
        assert (await local.put(f"{node.url}/buffers/{cs}", content=data)).status_code == 401
        assert (await writer.put(f"{node.url}/buffers/{cs}", content=data)).status_code == 200
        assert (await reader.get(f"{node.url}/buffers/{cs}")).content == data
        assert (await local.get(f"{node.url}/buffers/{cs}")).status_code == 401  # loopback: nothing listed
        query = {"type": "transformation", "checksum": TF}
        assert (await writer.request("GET", f"{node.url}/database", json=query)).status_code == 401
        assert (await reader.get(f"{node.url}/metrics")).status_code == 200  # it holds a scope


async def test_tokens_never_appear_in_logs_or_metrics(closed_node, http, caplog):
    caplog.set_level(logging.DEBUG)
    token = token_for(closed_node, "buffers:read", "results:read")
    other = "snt_" + "B" * 43
    url = closed_node.url
    for target, headers in (
        (f"/t/{token}/buffers/not-a-checksum", {}),  # allowed, then refused by the route (logged)
        (f"/t/{token}/buffers/{'0' * 64}", {}),
        (f"/t/{token}/api/v1/jobs", {}),  # 403: not granted
        (f"/t/{other}/buffers/{'0' * 64}", {}),  # 401: unknown
        (f"/t/{token}x/buffers/{'0' * 64}", {}),  # 401: malformed
        (f"/t/{token}/no-such-route", {}),
        ("/buffers/not-a-checksum", bearer(token)),
        ("/api/v1/jobs", bearer(other)),
    ):
        await http.get(url + target, headers=headers)
        raw = request("GET", target, {"Host": netloc(url), **headers}, version="HTTP/1.0")
        await exchange(url, raw)  # the hypercorn path
    metrics = (await http.get(f"{url}/t/{token}/metrics")).text
    # everything the node logged (the test's own HTTP client logs its URLs: not the node)
    logged = "\n".join(
        f"{record.name} {record.getMessage()} {record.exc_text or ''}"
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    )
    for secret in (token, other, token[4:20], other[4:20]):
        assert secret not in logged
        assert secret not in metrics
    assert 'area="t"' not in metrics
    assert "refused (401)" in logged and "refused (403)" in logged  # the refusals are logged


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_NODE")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True, env=full_env,
                          timeout=60)


async def test_token_commands_keep_only_a_hash_and_clients_take_the_token(closed_node, tmp_path):
    import trio

    data_dir = closed_node.config.node.data_dir
    created = await trio.to_thread.run_sync(
        lambda: cli("token", "create", "--data-dir", data_dir, "--name", "alice",
                    "--scopes", "buffers:read,buffers:write", "--expires", "90d"))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("snt_") and len(token) == 47 and token not in created.stderr
    stored = Path(closed_node.config.tokens_file)
    text, mode = await trio.to_thread.run_sync(lambda: (stored.read_text(), stored.stat().st_mode))
    assert token not in text and token[4:] not in text
    assert mode & 0o777 == 0o600
    listing = await trio.to_thread.run_sync(lambda: cli("token", "list", "--data-dir", data_dir))
    assert "alice" in listing.stdout and "active" in listing.stdout and token not in listing.stdout

    sample = tmp_path / "sample.bin"
    sample.write_bytes(b"some bytes\n")
    url = closed_node.url
    refused = await trio.to_thread.run_sync(lambda: cli("put", str(sample), "--url", url))
    assert refused.returncode != 0 and "401" in refused.stderr
    put = await trio.to_thread.run_sync(
        lambda: cli("put", str(sample), "--url", url, env={"SEAMLESS_NODE_TOKEN": token}))
    assert put.returncode == 0 and put.stdout.startswith(checksum_of(b"some bytes\n")), put.stderr
    has = await trio.to_thread.run_sync(lambda: cli("has", checksum_of(b"some bytes\n"), "--url", url,
                                                    "--token", token))
    assert has.returncode == 0 and "present" in has.stdout
    # not granted: the message names the scope and never the token, even from a /t/ URL
    for args in (("jobs", "--url", url, "--token", token), ("jobs", "--url", f"{url}/t/{token}"),
                 ("db", "get", TF, "--url", "http://127.0.0.1:1", "--token", token)):
        out = await trio.to_thread.run_sync(lambda args=args: cli(*args))
        assert out.returncode != 0
        assert token not in out.stdout + out.stderr and token[4:20] not in out.stdout + out.stderr
    revoked = await trio.to_thread.run_sync(lambda: cli("token", "revoke", "alice", "--data-dir", data_dir))
    assert revoked.returncode == 0 and "revoked token alice" in revoked.stdout
    again = await trio.to_thread.run_sync(lambda: cli("has", checksum_of(b"some bytes\n"), "--url", url,
                                                      "--token", token))
    assert again.returncode != 0 and "revoked" in again.stderr


CLOSE_TIME_WRITER = """
import sys
from seamless import Buffer, Checksum
from seamless.caching import buffer_writer
data = sys.argv[2].encode()
buf = Buffer(data)
ok = buffer_writer._put_sync(sys.argv[1], Checksum(buf.get_checksum()), buf, 5.0)
print("OK" if ok else "FAILED")
"""


@pytest.mark.parametrize(
    "networks, stored", [(None, True), ({}, False)], ids=["loopback-grant", "token-only"]
)
async def test_the_close_time_buffer_writer_reaches_the_root_aliases_where_a_network_allows(
    start_node, http, tmp_path, networks, stored
):
    access = {} if networks is None else {"networks": networks}
    node = await start_node(node={"roles": ["buffers"]}, access=access)
    token = token_for(node, "buffers:read", "buffers:write")
    data = f"written at close {networks}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")} | {"HOME": str(tmp_path)}
    run = await run_tool([sys.executable, "-c", CLOSE_TIME_WRITER, f"{node.url}/t/{token}/buffers", data],
                         env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().strip() == ("OK" if stored else "FAILED")
    r = await http.get(f"{node.url}/t/{token}/buffers/{checksum_of(data.encode())}")
    assert r.status_code == (200 if stored else 404)


def client_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def test_the_real_seamless_clients_work_through_a_token_path_prefix(start_node, http, tmp_path):
    """Buffer client, database client and jobserver client of Seamless 1.x, unmodified,
    given only ``http://node/t/<token>`` as their base: the results match in-process
    execution, and every job ran on the node."""
    node = await start_node(node=JOBLESS, access=NOBODY, jobless={"workers": 1})
    token = token_for(node, *ALL, name="seamless")
    driver = [sys.executable, str(INTEROP / "delayed_driver.py")]
    local = await run_tool([*driver, "local"], env=client_env(tmp_path / "h1"), cwd=tmp_path, timeout=180)
    assert local.returncode == 0, local.stderr[-3000:]
    remote = await run_tool([*driver, "remote", f"{node.url}/t/{token}"], env=client_env(tmp_path / "h2"),
                            cwd=tmp_path, timeout=180)
    assert remote.returncode == 0, remote.stderr[-3000:]

    def result(stdout: bytes) -> dict:
        line = next(x for x in stdout.decode().splitlines() if x.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])

    expected = result(local.stdout)
    assert result(remote.stdout) == expected
    listing = (await http.get(f"{node.url}/api/v1/jobs", headers=bearer(token))).json()
    ran = {job["result"] for job in listing["jobs"] if job["state"] == "done"}
    assert ran == {entry["checksum"] for entry in expected.values()}
    query = {"type": "transformation", "checksum": listing["jobs"][0]["checksum"]}
    r = await http.post(f"{node.url}/api/v1/database/read", json=query, headers=bearer(token))
    assert r.status_code == 200  # the client recorded the result through the prefix
    assert token not in remote.stderr and token not in remote.stdout.decode()


async def test_jobs_submit_is_the_scope_for_every_job_door(closed_node, http):
    tfs = Transformations()
    tf = tfs.bash("echo x > RESULT")
    writer = token_for(closed_node, "buffers:write")
    for cs, data in tfs.buffers.items():
        r = await http.put(f"{closed_node.url}/buffers/{cs}", content=data, headers=bearer(writer))
        assert r.status_code == 200
    lacking = token_for(closed_node, *sorted(ALL - {"jobs:submit"}))
    payload = {"transformation_dict": tf, "tf_checksum": "0" * 64}
    for method, path, body in (
        ("POST", "/api/v1/jobs", {"transformation": tf}),
        ("GET", "/jobserver/run-transformation", payload),
        ("POST", "/jobserver/cancel-transformation/" + "0" * 64, None),
        ("GET", "/jobserver/transformation-status/" + "0" * 64, None),
    ):
        r = await http.request(method, closed_node.url + path, json=body, headers=bearer(lacking))
        assert r.status_code == 403, (path, r.text)
    admin = token_for(closed_node, "admin")
    listing = (await http.get(f"{closed_node.url}/api/v1/jobs", headers=bearer(admin))).json()
    assert listing["counts"].get("submitted", 0) == 0
