"""``seamless-node submit/status/cancel/jobs``: the job API from the command line.

All four talk to a running node with the jobless role (``--url``, through
``/api/v1/jobs``). A transformation's input buffers must already be in the node's store
(``seamless-node put``, or a Seamless client).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import httpx

from .checksum import is_checksum
from .client import with_ca_file
from .cli_token import auth_headers, redact, token_option

DEFAULT_URL = "http://127.0.0.1:5533"
TERMINAL = ("done", "failed", "cancelled")

url_option = with_ca_file(click.option(
    "--url",
    envvar="SEAMLESS_NODE_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Base URL of the node, http:// or https:// (env SEAMLESS_NODE_URL).",
))
json_option = click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"seamless-node: {redact(message)}", err=True)
    sys.exit(code)


def _call(method: str, url: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    try:
        with httpx.Client(timeout=httpx.Timeout(None, connect=10)) as client:
            r = client.request(method, url.rstrip("/") + path, headers=auth_headers(), **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the node at {url}: {exc}")
    try:
        body = r.json()
    except ValueError:
        _fail(f"the node at {url} answered {r.status_code} without JSON (does it run the jobless role?)")
    if r.status_code >= 400:
        _fail(f"{body.get('error', body)} (HTTP {r.status_code})", 2 if r.status_code in (400, 404) else 1)
    return r.status_code, body


def _checksum_arg(value: str) -> str:
    if not is_checksum(value):
        _fail(f"not a job id (a transformation checksum, 64 lowercase hex characters): {value!r}", 2)
    return value


def _show(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(job, indent=2))
        return
    click.echo(f"job      {job['checksum']}")
    state = job["state"] + (" (known result)" if job.get("cached") else "")
    click.echo(f"state    {state}")
    if job.get("result"):
        click.echo(f"result   {job['result']}")
    stats = job.get("stats") or {}
    if stats.get("wall_time_seconds") is not None:
        click.echo(f"time     {stats['wall_time_seconds']:.3f} s")
    if job.get("error"):
        click.echo("error    " + job["error"].rstrip("\n").replace("\n", "\n         "))


def _exit_for(job: dict[str, Any]) -> None:
    if job["state"] in ("failed", "cancelled"):
        sys.exit(1)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--wait", type=float, default=None, help="Wait up to this many seconds for the job to end.")
@url_option
@token_option
@json_option
def submit(file: str, wait: float | None, url: str, as_json: bool) -> None:
    """Submit the transformation in FILE (JSON: a transformation dict, or
    {"transformation": {...}, "tf_dunder": {...}}, or {"checksum": CS}).

    Prints the job (its id is the transformation checksum). Exit status 1 if it failed or
    was cancelled (with --wait), 2 if the node refused it."""
    try:
        with open(file, encoding="utf-8") as f:
            body = json.load(f)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read {file}: {exc}", 2)
    if isinstance(body, dict) and "transformation" not in body and "checksum" not in body:
        body = {"transformation": body}
    params = {"wait": wait} if wait else {}
    _, answer = _call("POST", url, "/api/v1/jobs", json=body, params=params)
    _show(answer["job"], as_json)
    _exit_for(answer["job"])


@click.command()
@click.argument("checksum")
@click.option("--wait", type=float, default=None, help="Wait up to this many seconds for the job to end.")
@url_option
@token_option
@json_option
def status(checksum: str, wait: float | None, url: str, as_json: bool) -> None:
    """Show the state of job CHECKSUM: timings, result checksum or error text."""
    _checksum_arg(checksum)
    deadline = time.monotonic() + (wait or 0)
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        _, answer = _call("GET", url, f"/api/v1/jobs/{checksum}", params={"wait": min(remaining, 600)})
        if answer["job"]["state"] in TERMINAL or remaining <= 0:
            break
    _show(answer["job"], as_json)
    _exit_for(answer["job"])


@click.command()
@click.argument("checksum")
@click.option("--hard", is_flag=True, help="Kill the job even if other clients wait for it.")
@url_option
@token_option
@json_option
def cancel(checksum: str, hard: bool, url: str, as_json: bool) -> None:
    """Cancel job CHECKSUM: detach this client (the job dies when nobody waits for it),
    or with --hard kill it at once."""
    _checksum_arg(checksum)
    _, answer = _call("DELETE", url, f"/api/v1/jobs/{checksum}", params={"hard": 1} if hard else {})
    if not as_json:
        click.echo("cancelled" if answer["cancelled"] else "nothing to cancel (the job had ended)")
    _show(answer["job"], as_json)


@click.command()
@click.option("--limit", type=int, default=50, show_default=True, help="How many jobs to list.")
@url_option
@token_option
@json_option
def jobs(limit: int, url: str, as_json: bool) -> None:
    """List running and recent jobs, newest first."""
    _, answer = _call("GET", url, "/api/v1/jobs", params={"limit": limit})
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    backend = answer["backend"]
    slots = f"{backend.get('busy', '?')}/{backend.get('slots', '?')} busy" if "slots" in backend else ""
    click.echo(f"backend: {backend['backend']} {slots}".rstrip())
    for job in answer["jobs"]:
        when = time.strftime("%H:%M:%S", time.localtime(job["submitted"]))
        result = job.get("result") or (job.get("failure") or "")
        click.echo(f"{job['checksum'][:16]}  {when}  {job['language']:<6} {job['state']:<9} {result}")
