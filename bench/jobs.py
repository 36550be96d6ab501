"""Benchmark: the node's jobless role side by side with seamless-jobserver 0.3.0.

Starts, each as its own processes on free ports of 127.0.0.1:

* upstream: hashserver 1.1 + seamless-database 2.1 + seamless-jobserver 0.3.0
  (``--workers W``; its buffer and database clients come from its status file, as
  remote-http-launcher writes it);
* seamless-node: one process with ``buffers,database,jobless`` (``jobless.workers=W``).

and drives both with the seamless-jobserver protocol (``GET /run-transformation`` with the
JSON body the Seamless client sends, over aiohttp as the real client), after uploading the
input buffers. Every transformation is distinct (no cache hits) unless said otherwise:

* round trip of a trivial Python and a trivial bash transformation, one at a time:
  p50 / p95 over ``--n`` requests (after a warm-up);
* throughput: ``--burst`` distinct trivial Python transformations submitted at once;
* cancel: a bash job ``sleep S & sleep S; wait`` is cancelled with
  ``POST /cancel-transformation``; the time until none of its processes exists (upstream
  cancels softly: the job runs on; measured up to ``--cancel-window`` seconds);
* cache hit: a transformation whose result is known. Upstream, the Seamless client finds
  it in seamless-database (``GET`` of the ``transformation`` entry); the node answers it on
  ``/jobserver`` itself and on ``POST /api/v1/jobs``.

Usage::

    python bench/jobs.py [--workers 2] [--n 100] [--burst 500] [--rounds 3] [--json out.json] [--no-sandbox]

The node's jobs run sandboxed, as by default (``--no-sandbox``: without, to measure what
the sandbox costs).

Both servers run for the whole benchmark; each round measures both, alternating which
goes first. The table shows medians over rounds; ratios are medians of each round's
ratio (a burst of load from elsewhere on the machine hits both servers of a round).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil
from common import bin_path, free_port, wait_healthy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from node.celltypes import serialize  # noqa: E402
from node.transformation import transformation_checksum  # noqa: E402

TIMEOUT = aiohttp.ClientTimeout(total=600)




@dataclass
class Stack:
    name: str
    buffers: str
    database: str
    jobserver: str
    api: str | None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _spawn(
    args: list[str], workdir: str, log: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    out = open(os.path.join(workdir, log), "wb")
    return subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env)



async def start_upstream(workdir: str, workers: int) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")}
    env["HOME"] = workdir
    hs, db, js = free_port(), free_port(), free_port()
    os.makedirs(os.path.join(workdir, "buffers"))
    stack = Stack("seamless-jobserver 0.3.0", f"http://127.0.0.1:{hs}", f"http://127.0.0.1:{db}",
                  f"http://127.0.0.1:{js}", None)
    stack.procs.append(_spawn([bin_path("hashserver"), "buffers", "--port", str(hs), "--host", "127.0.0.1",
                               "--writable"], workdir, "hashserver.log", env))
    stack.procs.append(_spawn([bin_path("seamless-database"), "up.db", "--writable", "--host", "127.0.0.1",
                               "--port", str(db)], workdir, "database.log", env))
    await wait_healthy(stack.buffers, stack.procs[0])
    await wait_healthy(stack.database, stack.procs[1])
    status = {"parameters": {
        "buffer": [{"remote_url": stack.buffers, "readonly": False}],
        "database": [{"remote_url": stack.database, "readonly": False}],
    }}
    with open(os.path.join(workdir, "status.json"), "w") as f:  # noqa: ASYNC230 - tiny, at start-up
        json.dump(status, f)
    stack.procs.append(_spawn([bin_path("seamless-jobserver"), "--port", str(js), "--host", "127.0.0.1",
                               "--workers", str(workers), "--status-file", "status.json"],
                              workdir, "jobserver.log", env))
    await wait_healthy(stack.jobserver, stack.procs[2])
    return stack


async def start_node(workdir: str, workers: int, sandbox: bool = True) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")}
    env["SEAMLESS_NODE__JOBLESS__WORKERS"] = str(workers)
    env["SEAMLESS_NODE__JOBLESS__SANDBOX"] = "true" if sandbox else "false"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn([sys.executable, "-m", "node", "run", "--roles", "buffers,database,jobless", "--port",
                   str(port), "--data-dir", os.path.join(workdir, "data"), "--log-level", "warning"],
                  workdir, "node.log", env)
    stack = Stack("seamless-node", url + "/buffers", url + "/database", url + "/jobserver", url + "/api/v1",
                  [proc])
    await wait_healthy(url, proc)
    return stack


# ------------------------------------------------------------------------ transformations


class Jobs:
    """Distinct trivial transformations and the buffers they need."""

    def __init__(self) -> None:
        self.buffers: dict[str, bytes] = {}

    def _add(self, value: Any, celltype: str) -> str:
        data = serialize(value, celltype)
        checksum = hashlib.sha256(data).hexdigest()
        self.buffers[checksum] = data
        return checksum

    def python(self, i: int) -> dict[str, Any]:
        return {
            "__language__": "python",
            "__output__": ["result", "mixed", None],
            "code": ["python", "transformer", self._add("def inc(a):\n    return a + 1\n", "python")],
            "a": ["mixed", None, self._add(i, "mixed")],
        }

    def bash(self, i: int, script: str = "echo $a > RESULT") -> dict[str, Any]:
        return {
            "__language__": "bash",
            "__output__": ["result", "bytes", None],
            "code": ["text", None, self._add(script, "text")],
            "a": ["str", None, self._add(str(i), "str")],
        }


async def upload(session: aiohttp.ClientSession, stack: Stack, buffers: dict[str, bytes]) -> None:
    sem = asyncio.Semaphore(16)

    async def one(cs: str, data: bytes) -> None:
        async with sem, session.put(f"{stack.buffers}/{cs}", data=data) as r:
            assert r.status in (200, 201), await r.text()

    await asyncio.gather(*(one(cs, data) for cs, data in buffers.items()))


async def run(session: aiohttp.ClientSession, stack: Stack, tf: dict[str, Any]) -> tuple[int, str]:
    body = {"transformation_dict": tf, "tf_checksum": transformation_checksum(tf), "tf_dunder": {},
            "scratch": False, "strict_dunder": False, "record": False}
    async with session.get(f"{stack.jobserver}/run-transformation", json=body) as r:
        return r.status, await r.text()


def check(status: int, text: str) -> str:
    if status != 200 or not text.startswith("{"):
        raise RuntimeError(f"transformation failed: {status} {text[:300]}")
    return str(json.loads(text)["result_checksum"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------- measurements


async def latency(session: aiohttp.ClientSession, stack: Stack, jobs: Jobs, kind: str, start: int,
                  n: int) -> list[float]:
    tfs = [getattr(jobs, kind)(start + i) for i in range(n + 5)]
    await upload(session, stack, jobs.buffers)
    times = []
    for i, tf in enumerate(tfs):
        t = time.perf_counter()
        check(*await run(session, stack, tf))
        if i >= 5:  # warm-up
            times.append((time.perf_counter() - t) * 1000)
    return times


async def throughput(session: aiohttp.ClientSession, stack: Stack, jobs: Jobs, start: int, n: int,
                     window: float) -> float:
    """Jobs per second for *n* submitted at once; the jobs not done within *window*
    seconds are abandoned (and the rate counts only the finished ones)."""
    tfs = [jobs.python(start + i) for i in range(n)]
    await upload(session, stack, jobs.buffers)
    t = time.perf_counter()
    tasks = [asyncio.ensure_future(run(session, stack, tf)) for tf in tfs]
    done, pending = await asyncio.wait(tasks, timeout=window)
    elapsed = time.perf_counter() - t
    for task in pending:
        task.cancel()
    if pending:
        print(f"  {stack.name}: {len(pending)} of {n} jobs unanswered after {window:g} s", file=sys.stderr)
    for task in done:
        check(*task.result())
    return len(done) / elapsed


def _sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


async def cancel_time(session: aiohttp.ClientSession, stack: Stack, jobs: Jobs, seconds: int,
                      window: float) -> float | None:
    marker = f"{seconds}.{os.getpid() % 1000}{len(jobs.buffers) % 97}"
    tf = jobs.bash(0, f"sleep {marker} & sleep {marker}; wait")
    await upload(session, stack, jobs.buffers)
    poll = asyncio.ensure_future(run(session, stack, tf))
    for _ in range(600):
        if len(_sleepers("sleep " + marker)) >= 2:
            break
        await asyncio.sleep(0.02)
    else:
        raise RuntimeError("the sleeping job never started")
    t = time.perf_counter()
    async with session.post(f"{stack.jobserver}/cancel-transformation/{transformation_checksum(tf)}") as r:
        await r.text()
    gone = None
    while time.perf_counter() - t < window:
        if not _sleepers("sleep " + marker):
            gone = time.perf_counter() - t
            break
        await asyncio.sleep(0.01)
    for proc in _sleepers("sleep " + marker):  # upstream lets the job run on: end it here
        proc.kill()
    try:
        await asyncio.wait_for(poll, 30)
    except (asyncio.TimeoutError, aiohttp.ClientError):
        pass
    return gone


async def cache_hits(session: aiohttp.ClientSession, stack: Stack, jobs: Jobs, n: int,
                     base: int) -> dict[str, list[float]]:
    tf = jobs.python(base - 1)
    await upload(session, stack, jobs.buffers)
    result = check(*await run(session, stack, tf))
    cs = transformation_checksum(tf)
    # what the Seamless client does after a remote run (upstream's jobserver records nothing)
    record = {"type": "transformation", "checksum": cs, "value": result}
    async with session.put(stack.database, json=record) as r:
        assert r.status == 200, await r.text()
    out: dict[str, list[float]] = {"database lookup": []}
    if stack.api:
        out["/jobserver run-transformation"] = []
        out["POST /api/v1/jobs"] = []
    for _ in range(n + 5):
        t = time.perf_counter()
        async with session.get(stack.database, json={"type": "transformation", "checksum": cs}) as r:
            assert r.status == 200, await r.text()
            await r.text()
        out["database lookup"].append((time.perf_counter() - t) * 1000)
        if stack.api:
            t = time.perf_counter()
            check(*await run(session, stack, tf))
            out["/jobserver run-transformation"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            async with session.post(f"{stack.api}/jobs", json={"transformation": tf}) as r:
                job = (await r.json())["job"]
                assert job["state"] == "done", job
            out["POST /api/v1/jobs"].append((time.perf_counter() - t) * 1000)
    return {k: v[5:] for k, v in out.items()}


async def measure(stack: Stack, args: argparse.Namespace, round_: int) -> dict[str, Any]:
    jobs = Jobs()
    base = round_ * 1_000_000  # every round's transformations are new to both servers
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        py = await latency(session, stack, jobs, "python", base, args.n)
        sh = await latency(session, stack, jobs, "bash", base, args.n)
        rate = await throughput(session, stack, jobs, base + 10_000, args.burst, args.burst_window)
        cancel = await cancel_time(session, stack, jobs, 30 + round_, args.cancel_window)
        hits = await cache_hits(session, stack, jobs, args.n, base)
    return {
        "python_p50_ms": statistics.median(py), "python_p95_ms": pct(py, 0.95),
        "bash_p50_ms": statistics.median(sh), "bash_p95_ms": pct(sh, 0.95),
        "throughput_per_s": rate,
        "cancel_s": cancel,
        "cache_hit_ms": {k: {"p50": statistics.median(v), "p95": pct(v, 0.95)} for k, v in hits.items()},
    }


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds (cancel: the slowest; None if any round left the job running)."""
    out: dict[str, Any] = {}
    for key in ("python_p50_ms", "python_p95_ms", "bash_p50_ms", "bash_p95_ms", "throughput_per_s"):
        out[key] = statistics.median(r[key] for r in rounds)
    cancels = [r["cancel_s"] for r in rounds]
    out["cancel_s"] = None if None in cancels else max(cancels)
    out["cache_hit_ms"] = {
        label: {q: statistics.median(r["cache_hit_ms"][label][q] for r in rounds) for q in ("p50", "p95")}
        for label in rounds[0]["cache_hit_ms"]
    }
    return out


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    up, node = combine(results["upstream"]), combine(results["node"])
    pairs = list(zip(results["upstream"], results["node"], strict=True))
    ratios = {key: statistics.median(n[key] / u[key] for u, n in pairs)
              for key in ("python_p50_ms", "python_p95_ms", "bash_p50_ms", "bash_p95_ms", "throughput_per_s")}
    print(f"\nworkers per server: {args.workers}; {args.n} round trips each; burst of {args.burst}; "
          f"{args.rounds} round(s): medians (ratios: median of each round's ratio)\n")
    print("| measure | seamless-jobserver 0.3.0 | seamless-node | node / upstream |")
    print("|---|---:|---:|---:|")
    labels = (
        ("python_p50_ms", "Python round trip p50 (ms)"), ("python_p95_ms", "Python round trip p95 (ms)"),
        ("bash_p50_ms", "bash round trip p50 (ms)"), ("bash_p95_ms", "bash round trip p95 (ms)"),
    )
    for key, label in labels:
        print(f"| {label} | {up[key]:.1f} | {node[key]:.1f} | {ratios[key]:.2f} |")
    print(f"| throughput, {args.burst} distinct at once (jobs/s) | {up['throughput_per_s']:.0f} | "
          f"{node['throughput_per_s']:.0f} | {ratios['throughput_per_s']:.1f}x |")

    def cancel_text(value: float | None) -> str:
        return f"{value:.3f}" if value is not None else f"still running after {args.cancel_window:g} s"

    cancels = f"{cancel_text(up['cancel_s'])} | {cancel_text(node['cancel_s'])}"
    print(f"| cancel -> processes gone (s) | {cancels} | |")
    for label, stats in up["cache_hit_ms"].items():
        quantiles = f"{stats['p50']:.2f} / {stats['p95']:.2f}"
        print(f"| cache hit: upstream {label}, p50 / p95 (ms) | {quantiles} | | |")
    for label, stats in node["cache_hit_ms"].items():
        print(f"| cache hit: node {label}, p50 / p95 (ms) | | {stats['p50']:.2f} / {stats['p95']:.2f} | |")


async def main_async(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    workdirs = {key: tempfile.mkdtemp(prefix=f"bench-jobs-{key}-") for key in ("upstream", "node")}
    stacks: dict[str, Stack] = {}
    results: dict[str, list[dict[str, Any]]] = {"upstream": [], "node": []}
    try:
        stacks["upstream"] = await start_upstream(workdirs["upstream"], args.workers)
        stacks["node"] = await start_node(workdirs["node"], args.workers, sandbox=not args.no_sandbox)
        for round_ in range(args.rounds):
            for key in ("upstream", "node") if round_ % 2 == 0 else ("node", "upstream"):
                print(f"round {round_ + 1}: measuring {stacks[key].name} ...", file=sys.stderr)
                results[key].append(await measure(stacks[key], args, round_))
    finally:
        for stack in stacks.values():
            stack.stop()
        for workdir in workdirs.values():
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n", type=int, default=100, help="round trips per measurement")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run the node's jobs without the sandbox (to measure what the sandbox costs)")
    parser.add_argument("--burst", type=int, default=500, help="transformations submitted at once")
    parser.add_argument("--cancel-window", type=float, default=5.0)
    parser.add_argument("--burst-window", type=float, default=120.0,
                        help="jobs of the burst not answered by then are abandoned")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, both servers measured in each")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
