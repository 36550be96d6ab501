"""Federation benchmark: fetching a buffer from a peer, against nginx-to-curl.

Run it as ``.venv/bin/python bench/federation.py`` (``--size-mib 64 --rounds 2`` for a
quick run; nginx and curl must be installed: ``apt-get install nginx-light curl``). It
creates two nodes in a temporary directory, each with its own key (``seamless-node
keygen``), B granting A ``buffers:read`` (``seamless-node link grant``), starts them as
processes (A on 127.0.0.1, B on 127.0.0.2, free ports), uploads one random buffer of
``--size-mib`` MiB to B, and measures, in alternating rounds (median reported):

1. **peer fetch**: ``POST /api/v1/peers/fetch/<cs>`` on A, which does what a GET of a
   missing buffer does: presence query to B, signed streamed download, verified write into
   A's store (hash, fsync, rename). The buffer is removed from A's store between rounds.
   Also with A's ``buffers.fsync`` off, which isolates the cost of durability.
2. **nginx to curl**: nginx (one worker, sendfile) serving B's buffer directory, and
   ``curl -o /dev/null`` downloading the same buffer: the ceiling of a plain HTTP copy on
   this machine (no hashing, no disk write). For reference also ``curl -o FILE`` on A's
   disk followed by an fsync of the file: a plain download that lands durably.

3. **forwarded job** (``--job-rounds``): two nodes with the jobless role, B granting A
   ``jobs:submit`` and ``buffers:read``. A trivial Python transformation (``lambda data,
   n: n``) with a 2 MiB input held by B only, submitted with ``POST /api/v1/jobs?wait=``
   at A, where placement forwards it to B (inputs A holds travel along, B answers with
   the result, its signed claim and the result buffer), against the same kind of
   transformation submitted at B, which runs it locally. Each round uses a new value of
   ``n`` (a new transformation, nothing cached); the difference of the medians is the
   added latency of forwarding. ``--job-rounds 0`` skips it; ``--fetch-rounds 0`` skips
   the fetch part.

Before each measurement the script waits for the machine to be idle (other sessions share
it), within ``--max-wait`` seconds in all. Goals (issue #5): peer fetch at least 0.5x
nginx-to-curl; forwarding overhead of a trivial job under 20 ms. MB is 10^6 bytes; every
read is from the page cache. Results go to the terminal and to
bench/results/federation.json; every process and the temporary directory are removed on
exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
from common import free_port

ROOT = Path(__file__).resolve().parent.parent
LISTEN_RE = re.compile(r"seamless-node listening on (http://\S+)")
MB = 1e6


def cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "node", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


class Proc:
    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def url(self, timeout: float = 30.0) -> str:
        found: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                m = LISTEN_RE.search(raw.decode(errors="replace"))
                if m and not found:
                    found.append(m.group(1))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        if not found:
            self.stop()
            raise RuntimeError(f"did not start; see {self.log}:\n{self.log.read_text()[-2000:]}")
        return found[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)



NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
{user}
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    server {{
        listen {host}:{port};
        root {root};
        location = /healthcheck {{ return 200 "OK"; }}
        location / {{ rewrite "^/([0-9a-f]{{2}})([0-9a-f]{{62}})$" /$1/$1$2 break; return 404; }}
    }}
}}
"""


def start_nginx(root: Path, tmp: Path, host: str) -> tuple[Proc, str]:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    user = ""
    if os.geteuid() == 0:  # workers run as nobody: they only read the directory
        import grp
        import pwd

        user = f"user {pwd.getpwuid(65534).pw_name} {grp.getgrgid(65534).gr_name};"
    port = free_port(host)
    tmp.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, user=user, host=host, port=port, root=root))
    proc = Proc([exe, "-p", str(tmp), "-c", str(conf), "-e", "stderr"], tmp / "nginx.log")
    url = f"http://{host}:{port}"
    for _ in range(100):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthcheck").status_code == 200:
                return proc, url
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError("nginx did not start")


def curl_mb_s(url: str) -> float:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if out[1] != "200":
        raise RuntimeError(f"curl got HTTP {out[1]} from {url}")
    return float(out[0]) / MB


def curl_to_disk_mb_s(url: str, target: Path) -> float:
    """curl into a file on the node's disk, then fsync it: a plain download that lands."""
    started = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(target), url], check=True)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    size = target.stat().st_size
    target.unlink()
    return size / elapsed / MB


def busy_cores(interval: float = 0.5) -> float:
    """Cores busy machine-wide over *interval* (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(interval)
    busy1, total1 = sample()
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(total1 - total0, 1)


class Quiet:
    """Waits, before each measurement, for the machine to be idle (other sessions' work
    shares it), within a total allowance of *max_wait* seconds."""

    def __init__(self, max_wait: float, threshold: float = 0.3) -> None:
        self.left = max_wait
        self.threshold = threshold
        self.disturbed = 0

    def wait(self) -> None:
        while self.left > 0:
            started = time.monotonic()
            if busy_cores() < self.threshold:
                return
            time.sleep(1)
            self.left -= time.monotonic() - started
        self.disturbed += 1


def write_yaml(path: Path, text: str) -> None:
    path.write_text(text)


@contextlib.contextmanager
def federation(tmp: Path, fsync: bool) -> Iterator[tuple[str, str, str, Path]]:
    """Nodes A (127.0.0.1) and B (127.0.0.2), B granting A buffers:read."""
    a_dir, b_dir = tmp / "a", tmp / "b"
    a_id, b_id = (
        cli("keygen", "--data-dir", str(a_dir)).strip(),
        cli("keygen", "--data-dir", str(b_dir)).strip(),
    )
    link = tmp / "b-grants-a.link"
    link.write_text(cli("link", "grant", "--data-dir", str(b_dir), "--to", a_id, "--grant", "buffers:read"))
    write_yaml(b_dir / "peers.yaml", f"peers:\n  - node_id: {a_id}\n    name: a\n    links: [{link}]\n")
    procs = []
    try:
        b = Proc(
            [
                sys.executable,
                "-m",
                "node",
                "run",
                "--roles",
                "buffers",
                "--host",
                "127.0.0.2",
                "--port",
                "0",
                "--data-dir",
                str(b_dir),
            ],
            tmp / "b.log",
        )
        procs.append(b)
        b_url = b.url()
        write_yaml(
            a_dir / "peers.yaml",
            f"peers:\n  - node_id: {b_id}\n    name: b\n    urls: [{b_url}]\n    links: [{link}]\n",
        )
        config = tmp / "a.yaml"
        write_yaml(config, f"buffers:\n  fsync: {'true' if fsync else 'false'}\n")
        a = Proc(
            [
                sys.executable,
                "-m",
                "node",
                "run",
                "--roles",
                "buffers",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(a_dir),
                "--config",
                str(config),
            ],
            tmp / "a.log",
        )
        procs.append(a)
        yield a.url(), b_url, b_id, a_dir
    finally:
        for proc in reversed(procs):
            proc.stop()


def stored_path(data_dir: Path, cs: str) -> Path:
    return data_dir / "buffers" / cs[:2] / cs


def measure(size: int, rounds: int, quiet: Quiet) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="seamless-bench-fed-"))
    tmp.chmod(0o755)  # nginx's workers read B's buffer directory
    data = os.urandom(size)
    import hashlib

    cs = hashlib.sha256(data).hexdigest()
    results: dict[str, list[float]] = {
        "peer_fetch": [],
        "peer_fetch_nofsync": [],
        "nginx_curl": [],
        "nginx_curl_to_disk": [],
    }
    try:
        for fsync, key in ((True, "peer_fetch"), (False, "peer_fetch_nofsync")):
            sub = tmp / key
            sub.mkdir()
            with federation(sub, fsync) as (a_url, b_url, _b_id, a_dir), httpx.Client(timeout=600) as http:
                r = http.put(f"{b_url}/buffers/{cs}", content=data)
                assert r.status_code in (200, 201), r.text
                ngx = None
                if key == "peer_fetch":
                    b_buffers = sub / "b" / "buffers"
                    for d in (sub, sub / "b", b_buffers, b_buffers / cs[:2]):
                        d.chmod(0o755)
                    stored_path(sub / "b", cs).chmod(0o444)
                    ngx, ngx_url = start_nginx(b_buffers, sub / "nginx", "127.0.0.2")
                try:
                    for _ in range(rounds):
                        with contextlib.suppress(FileNotFoundError):
                            stored_path(a_dir, cs).unlink()
                        quiet.wait()
                        started = time.perf_counter()
                        r = http.post(f"{a_url}/api/v1/peers/fetch/{cs}")
                        elapsed = time.perf_counter() - started
                        if r.status_code != 200 or not r.json()["present"]:
                            raise RuntimeError(
                                f"fetch failed: {r.text}\n{(sub / 'a.log').read_text()[-3000:]}"
                            )
                        results[key].append(size / elapsed / MB)
                        if ngx is not None:
                            quiet.wait()
                            results["nginx_curl"].append(curl_mb_s(f"{ngx_url}/{cs}"))
                            results["nginx_curl_to_disk"].append(
                                curl_to_disk_mb_s(f"{ngx_url}/{cs}", sub / "a" / "curl-download")
                            )
                finally:
                    if ngx is not None:
                        ngx.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    return {
        "size_bytes": size,
        "rounds": rounds,
        "mb_s": med,
        "all_mb_s": results,
        "peer_fetch_vs_nginx": med["peer_fetch"] / med["nginx_curl"],
        "peer_fetch_nofsync_vs_nginx": med["peer_fetch_nofsync"] / med["nginx_curl"],
        "goal": "peer fetch at least 0.5x nginx-to-curl",
        "measurements_without_quiet": quiet.disturbed,
        "cores": os.cpu_count(),
    }


JOB_ROLES = "buffers,database,jobless"


@contextlib.contextmanager
def job_nodes(tmp: Path) -> Iterator[tuple[str, str]]:
    """Nodes A (127.0.0.1) and B (127.0.0.2) with the jobless role; B grants A jobs:submit
    and buffers:read, A grants B buffers:read."""
    a_dir, b_dir = tmp / "a", tmp / "b"
    a_id = cli("keygen", "--data-dir", str(a_dir)).strip()
    b_id = cli("keygen", "--data-dir", str(b_dir)).strip()
    b_link, a_link = tmp / "b-grants-a.link", tmp / "a-grants-b.link"
    b_link.write_text(
        cli("link", "grant", "--data-dir", str(b_dir), "--to", a_id, "--grant", "jobs:submit,buffers:read")
    )
    a_link.write_text(cli("link", "grant", "--data-dir", str(a_dir), "--to", b_id, "--grant", "buffers:read"))
    procs: list[Proc] = []
    try:
        urls = {}
        for name, host, data_dir in (("b", "127.0.0.2", b_dir), ("a", "127.0.0.1", a_dir)):
            if name == "a":
                write_yaml(
                    a_dir / "peers.yaml",
                    f"peers:\n  - node_id: {b_id}\n    name: b\n    urls: [{urls['b']}]\n"
                    f"    links: [{b_link}, {a_link}]\n",
                )
            proc = Proc(
                [sys.executable, "-m", "node", "run", "--roles", JOB_ROLES, "--host", host, "--port", "0",
                 "--data-dir", str(data_dir)],
                tmp / f"{name}.log",
            )
            procs.append(proc)
            urls[name] = proc.url()
            if name == "b":
                write_yaml(
                    b_dir / "peers.yaml",
                    f"peers:\n  - node_id: {a_id}\n    name: a\n    links: [{b_link}, {a_link}]\n",
                )
        yield urls["a"], urls["b"]
    finally:
        for proc in reversed(procs):
            proc.stop()


def measure_jobs(rounds: int, quiet: Quiet) -> dict[str, object]:
    import hashlib

    sys.path.insert(0, str(ROOT))
    from node import celltypes

    def buffer(value: object, celltype: str) -> tuple[str, bytes]:
        data = celltypes.serialize(value, celltype)
        return hashlib.sha256(data).hexdigest(), data

    code_cs, code = buffer("lambda data, n: n", "python")
    data_cs, data = buffer(os.urandom(2 * 1024 * 1024), "bytes")
    tmp = Path(tempfile.mkdtemp(prefix="seamless-bench-fwd-"))
    results: dict[str, list[float]] = {"local": [], "forwarded": []}
    try:
        with job_nodes(tmp) as (a_url, b_url), httpx.Client(timeout=120) as http:
            for url, cs, value in ((a_url, code_cs, code), (b_url, code_cs, code), (b_url, data_cs, data)):
                assert http.put(f"{url}/buffers/{cs}", content=value).status_code in (200, 201)

            def run(url: str, n: int) -> tuple[float, dict[str, object]]:
                n_cs, n_data = buffer(n, "mixed")
                assert http.put(f"{url}/buffers/{n_cs}", content=n_data).status_code in (200, 201)
                tf = {
                    "__language__": "python",
                    "__output__": ["result", "mixed", None],
                    "code": ["python", "transformer", code_cs],
                    "data": ["bytes", None, data_cs],
                    "n": ["mixed", None, n_cs],
                }
                started = time.perf_counter()
                r = http.post(f"{url}/api/v1/jobs", params={"wait": 60}, json={"transformation": tf})
                elapsed = time.perf_counter() - started
                job = r.json()["job"]
                if r.status_code != 200 or job["state"] != "done":
                    raise RuntimeError(f"job failed: {r.text}\n{(tmp / 'a.log').read_text()[-3000:]}")
                return elapsed, job

            seed = int(time.time() * 1000)
            for i in range(3):  # warm up: worker pools, connections, presence caches
                run(b_url, seed + 2 * i)
                _, job = run(a_url, seed + 2 * i + 1)
                if job.get("executor") is None:
                    raise RuntimeError("the job submitted at A was not forwarded to B")
            for i in range(rounds):
                n = seed + 1000 + 2 * i
                quiet.wait()
                results["local"].append(run(b_url, n)[0] * 1000)
                quiet.wait()
                elapsed, job = run(a_url, n + 1)
                if job.get("executor") is None:
                    raise RuntimeError("the job submitted at A was not forwarded to B")
                results["forwarded"].append(elapsed * 1000)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "rounds": rounds,
        "ms": med,
        "all_ms": results,
        "overhead_ms": med["forwarded"] - med["local"],
        "goal": "forwarding overhead of a trivial job under 20 ms",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", "--fetch-rounds", dest="rounds", type=int, default=5)
    parser.add_argument("--job-rounds", type=int, default=15)
    parser.add_argument("--max-wait", type=float, default=120, help="Seconds to wait for quiet, in all.")
    args = parser.parse_args()
    quiet = Quiet(args.max_wait)
    report: dict[str, object] = {}
    if args.job_rounds > 0:
        jobs = measure_jobs(args.job_rounds, quiet)
        ms = jobs["ms"]
        assert isinstance(ms, dict)
        overhead = jobs["overhead_ms"]
        assert isinstance(overhead, float)
        print(f"trivial job, median of {args.job_rounds} rounds, ms (POST /api/v1/jobs?wait= until done):")
        print(f"  run locally (submitted at B)           {ms['local']:8.1f}")
        print(f"  forwarded (submitted at A, run at B)   {ms['forwarded']:8.1f}")
        print(
            f"  forwarding overhead                    {overhead:8.1f}   "
            f"(goal < 20 ms: {'met' if overhead < 20 else 'NOT met'}; "
            f"{ms['forwarded'] / ms['local']:.2f}x the local job)"
        )
        report["jobs"] = jobs
    if args.rounds > 0:
        report.update(fetch_report(args, quiet))
    if quiet.disturbed:
        print(f"  ({quiet.disturbed} measurements taken while the machine was busy with other work)")
    out = ROOT / "bench" / "results" / "federation.json"
    out.parent.mkdir(exist_ok=True)
    with contextlib.suppress(OSError, ValueError):  # a part not run keeps its last figures
        report = {**json.loads(out.read_text()), **report}
    out.write_text(json.dumps(report, indent=2) + "\n")


def fetch_report(args: argparse.Namespace, quiet: Quiet) -> dict[str, object]:
    report = measure(args.size_mib * 1024 * 1024, args.rounds, quiet)
    mb = report["mb_s"]
    assert isinstance(mb, dict)
    print(f"buffer of {args.size_mib} MiB, median of {args.rounds} rounds, MB/s (10^6 bytes/s):")
    print(f"  peer fetch (verified, stored, fsync)   {mb['peer_fetch']:8.0f}")
    print(f"  peer fetch (verified, stored, no fsync){mb['peer_fetch_nofsync']:8.0f}")
    print(f"  nginx -> curl (-o /dev/null)           {mb['nginx_curl']:8.0f}")
    print(f"  nginx -> curl (-o file, then fsync)    {mb['nginx_curl_to_disk']:8.0f}   (reference)")
    ratio = report["peer_fetch_vs_nginx"]
    assert isinstance(ratio, float)
    print(
        f"  peer fetch / nginx-to-curl             {ratio:8.2f}x   "
        f"(goal >= 0.5x: {'met' if ratio >= 0.5 else 'NOT met'})"
    )
    return report


if __name__ == "__main__":
    main()
