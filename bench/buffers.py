"""Buffer server benchmark: seamless-node against hashserver 1.1 and nginx, side by side.

Run it as ``.venv/bin/python bench/buffers.py`` (``--quick`` for a shorter run; ``make bench``
installs nginx and wrk first; see docs/performance.md). It starts, each on 127.0.0.1 with a
free port and its own temporary directory:

* the node (``python -m node run --roles buffers``), with its default configuration;
* upstream hashserver 1.1 (``hashserver DIR --writable --layout prefix``), the reference;
* nginx (one worker, sendfile) serving the node's buffer directory read-only, the ceiling
  for GETs: ``/<checksum>`` is rewritten to ``/<first two characters>/<checksum>``;
* the node again with ``buffers.fsync = false``, for the PUT figures only: hashserver
  does not fsync, so this separates the cost of durability from the cost of the server.

and measures, for each:

0. GETs per second of ``/healthcheck`` (16 connections): the cost of a request alone, a
   reference for the next two figures, not a goal;
1. 1 KiB GETs per second, 16 concurrent keep-alive connections (wrk, C, its own process);
2. 1 KiB PUTs per second, 16 connections, every PUT a new buffer (wrk with a Lua script);
3. 64 MiB GET MB/s, one client (raw keep-alive socket, nothing copied or hashed on the
   client side while timed);
4. 64 MiB PUT MB/s, one client, every PUT a new buffer;
5. ``/has`` of 10,000 checksums, half present, latency in ms;
6. single-core SHA-256 speed (hashlib over 64 MiB), the bound for a verified PUT.

MB is 10^6 bytes. Every buffer read is from the page cache. The servers all run for the
whole benchmark, but only one is measured at a time (an idle server takes no CPU). Each
figure is measured in rounds, every server in turn in each round, the order alternating,
and the value reported is the median over the rounds: on a machine shared with other work,
load from elsewhere then falls on every server alike. The load generator shares the
machine's cores with the server under test, so the CPU used by the server, by the client
and by everything else during each figure is recorded (in cores); before each figure the
script waits (within ``--max-wait`` seconds in all) for the machine to be idle, and a figure
during which other processes used more than DISTURBED cores is marked with ``*``.

Results go to the terminal and to bench/results/buffers.json. Every process and temporary
directory the script starts is stopped and removed on exit, Ctrl-C included.

``--profile`` attaches py-spy (``pip install py-spy``) to the node during each of its
figures and writes collapsed stacks to bench/results/profile-*.txt, with a summary on
the terminal; figures measured under the profiler are slower than without.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator
from common import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
HOST = "127.0.0.1"
KIB, MIB, MB = 1024, 1024 * 1024, 1_000_000
SMALL = 1 * KIB
LARGE = 64 * MIB
GET_CORPUS = 5000  # 1 KiB buffers stored before the GET figure; also the present half of /has
HAS_COUNT = 10_000
LISTEN_RE = re.compile(r"seamless-node listening on (http://\S+)")


# -- a minimal keep-alive HTTP/1.1 client --------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection over a plain socket: nothing but what is needed to
    time requests without the client's own overhead getting in the way."""

    def __init__(self, port: int, timeout: float = 120.0, bulk: bool = False) -> None:
        self.port = port
        self.timeout = timeout
        self.bulk = bulk
        self.sock = self._connect()
        self.rest = b""
        self.reconnects = 0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.bulk:  # large socket buffers: fewer, larger copies on the client side
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
        return sock

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | memoryview | None = None,
        headers: dict[str, str] | None = None,
        into: bytearray | None = None,
    ) -> tuple[int, memoryview]:
        """Send a request, return (status, body). With *into*, a body that fits is received
        straight into that buffer (no allocation per request). After an answer with
        ``Connection: close`` the next request opens a new connection."""
        if self.sock.fileno() == -1:
            self.sock, self.rest = self._connect(), b""
            self.reconnects += 1
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body is not None and len(body) <= 65536:
            self.sock.sendall(head + bytes(body))
        else:
            self.sock.sendall(head)
            if body is not None:
                self.sock.sendall(body)
        return self._response(into)

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.rest:
            self.rest += self._recv()
        line, self.rest = self.rest.split(b"\r\n", 1)
        return line

    def _exact(self, n: int, into: bytearray | None) -> memoryview:
        view = memoryview(into)[:n] if into is not None and len(into) >= n else memoryview(bytearray(n))
        k = min(n, len(self.rest))
        view[:k] = self.rest[:k]
        self.rest = self.rest[k:]
        while k < n:
            got = self.sock.recv_into(view[k:], n - k)
            if not got:
                raise ConnectionError("server closed the connection mid-body")
            k += got
        return view

    def _response(self, into: bytearray | None) -> tuple[int, memoryview]:
        while b"\r\n\r\n" not in self.rest:
            self.rest += self._recv()
        head, self.rest = self.rest.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        body = self._body(headers, into)
        if headers.get("connection", "").lower() == "close":
            self.sock.close()
        return status, body

    def _body(self, headers: dict[str, str], into: bytearray | None) -> memoryview:
        if "content-length" in headers:
            return self._exact(int(headers["content-length"]), into)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers, then the empty line
                        pass
                    return memoryview(b"".join(parts))
                parts.append(bytes(self._exact(size, None)))
                self._line()
        return memoryview(b"")


# -- the servers -----------------------------------------------------------------------------



def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    prefix: str  # the buffer protocol's base path: "/buffers" on the node, "" elsewhere
    log: Path
    writable: bool = True
    has_route: bool = True

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def path(self, checksum: str) -> str:
        return f"{self.prefix}/{checksum}"

    def stop(self) -> None:
        """SIGTERM (nginx: fast shutdown, master and workers), then SIGKILL to its group."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only its processes
            self.proc.wait(5)


def _spawn(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, stdout: Any = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else open(log, "ab"),
        stderr=open(log, "ab"),
        start_new_session=True,  # Ctrl-C reaches the benchmark only; it stops the servers
    )


def _fail_start(server: Server, why: str) -> None:
    server.stop()
    tail = server.log.read_text(errors="replace")[-3000:] if server.log.exists() else ""
    raise RuntimeError(f"{server.name} did not start ({why}); log tail:\n{tail}")


def wait_healthy(server: Server, path: str, timeout: float = 30.0) -> None:
    """Wait until *path* answers 200. On any failure, Ctrl-C included, stop the server."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                _fail_start(server, f"exited with status {server.proc.returncode}")
            try:
                with Conn(server.port, timeout=2) as conn:
                    if conn.request("GET", path)[0] == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        _fail_start(server, f"no answer on {path} after {timeout:g} s")
    except BaseException:
        server.stop()
        raise


def start_node(name: str, data_dir: Path, logs: Path, env: dict[str, str] | None = None) -> Server:
    log = logs / f"{name}.log"
    proc = _spawn(
        [sys.executable, "-m", "node", "run", "--roles", "buffers",
         "--host", HOST, "--port", "0", "--data-dir", str(data_dir)],
        log, env, stdout=subprocess.PIPE,
    )
    server = Server(name, proc, 0, "/buffers", log)
    found: list[str] = []

    def read_stdout() -> None:  # the listening line, then keep draining the pipe
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            m = LISTEN_RE.search(line)
            if m and not found:
                found.append(m.group(1))

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not found and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if not found:
            _fail_start(server, "no 'listening' line on stdout")
        server.port = int(found[0].rsplit(":", 1)[1].strip("/"))
    except BaseException:
        server.stop()
        raise
    wait_healthy(server, "/buffers/healthcheck")
    return server


def start_hashserver(directory: Path, logs: Path) -> Server:
    exe = Path(sys.executable).parent / "hashserver"
    port = free_port()
    log = logs / "hashserver.log"
    cmd = [str(exe) if exe.exists() else "hashserver", str(directory), "--writable",
           "--host", HOST, "--port", str(port), "--layout", "prefix"]
    server = Server("hashserver", _spawn(cmd, log), port, "", log)
    wait_healthy(server, "/healthcheck")
    return server


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
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
        location / {{
            rewrite "^/([0-9a-f]{{2}})([0-9a-f]{{62}})$" /$1/$1$2 break;
            return 404;
        }}
    }}
}}
"""


def start_nginx(root: Path, tmp: Path, logs: Path) -> Server:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    user = ""
    if os.geteuid() == 0:  # workers drop to nobody; they only need to read the directory
        import grp
        import pwd

        user = f"user {pwd.getpwuid(65534).pw_name} {grp.getgrgid(65534).gr_name};"
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, user=user, host=HOST, port=port, root=root))
    log = logs / "nginx.log"
    proc = _spawn([exe, "-p", str(tmp), "-c", str(conf), "-e", "stderr"], log)
    server = Server("nginx", proc, port, "", log, writable=False, has_route=False)
    wait_healthy(server, "/healthcheck")
    return server


# -- data -----------------------------------------------------------------------------------


def small_body(seed: bytes, i: int) -> bytes:
    """The i-th 1 KiB buffer of a corpus (the wrk script builds the same bytes)."""
    return seed + b"%010d" % i


@dataclass
class Corpus:
    get_seed: bytes
    get_checksums: list[str]
    put_seed: bytes
    put_checksums: list[str]
    large_get: bytes
    large_get_checksum: str
    large_puts: list[tuple[str, bytes]]
    has_query: bytes
    has_expected: list[bool]


def make_corpus(put_count: int, large_reps: int) -> Corpus:
    get_seed, put_seed = os.urandom(SMALL - 10), os.urandom(SMALL - 10)
    get_cs = [hashlib.sha256(small_body(get_seed, i)).hexdigest() for i in range(GET_CORPUS)]
    put_cs = [hashlib.sha256(small_body(put_seed, i)).hexdigest() for i in range(put_count)]
    large = os.urandom(LARGE)
    large_puts = []
    for _ in range(large_reps):
        data = os.urandom(LARGE)
        large_puts.append((hashlib.sha256(data).hexdigest(), data))
    absent = [hashlib.sha256(os.urandom(32)).hexdigest() for _ in range(HAS_COUNT - GET_CORPUS)]
    query = [(cs, True) for cs in get_cs[:HAS_COUNT // 2]] + [(cs, False) for cs in absent]
    random.Random(1).shuffle(query)
    return Corpus(
        get_seed, get_cs, put_seed, put_cs, large, hashlib.sha256(large).hexdigest(), large_puts,
        json.dumps([cs for cs, _ in query]).encode(), [present for _, present in query],
    )


def store_directly(directory: Path, corpus: Corpus) -> None:
    """Lay the GET corpus out as hashserver does (prefix layout, read-only files)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".HASHSERVER_PREFIX").write_bytes(b"1\n")
    items = [(cs, small_body(corpus.get_seed, i)) for i, cs in enumerate(corpus.get_checksums)]
    items.append((corpus.large_get_checksum, corpus.large_get))
    for cs, data in items:
        shard = directory / cs[:2]
        shard.mkdir(mode=0o755, exist_ok=True)
        path = shard / cs
        path.write_bytes(data)
        path.chmod(0o444)


# -- wrk --------------------------------------------------------------------------------------

WRK_LUA = """\
-- args: method, path prefix, checksum file, seed file, thread count, first buffer (PUT)
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  method, prefix, nthreads, first = args[1], args[2], tonumber(args[5]), tonumber(args[6])
  paths, index = {}, {}
  local i = 0
  for line in io.lines(args[3]) do
    if method ~= "PUT" or (i >= first and i % nthreads == id) then  -- PUT: own buffers
      paths[#paths + 1] = prefix .. "/" .. line
      index[#index + 1] = i
    end
    i = i + 1
  end
  local f = io.open(args[4], "rb")
  seed = f:read("*a")
  f:close()
  n, wraps, s200, s201, s202, sother = 0, 0, 0, 0, 0, 0
  if method ~= "PUT" then n = id * math.floor(#paths / nthreads) end  -- GETs: spread out
  headers = {["Content-Type"] = "application/octet-stream"}
end

function request()
  n = n + 1
  if method == "PUT" and n > #paths then wraps = wraps + 1 end
  local k = (n - 1) % #paths + 1
  if method == "PUT" then
    return wrk.format("PUT", paths[k], headers, seed .. string.format("%010d", index[k]))
  end
  return wrk.format("GET", paths[k])
end
"""

WRK_LUA_STATUS = """\
function response(status, headers, body)
  if status == 200 then s200 = s200 + 1
  elseif status == 201 then s201 = s201 + 1
  elseif status == 202 then s202 = s202 + 1
  else sother = sother + 1 end
end
"""

WRK_LUA_DONE = """\
function done(summary, latency, requests)
  local t = {s200 = 0, s201 = 0, s202 = 0, sother = 0, wraps = 0}
  for _, thread in ipairs(threads) do
    for key, _ in pairs(t) do t[key] = t[key] + (thread:get(key) or 0) end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p99": %d, ' ..
    '"mean": %.1f}, "status": {"200": %d, "201": %d, "202": %d, "other": %d}, "wraps": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean,
    t.s200, t.s201, t.s202, t.sother, t.wraps))
end
"""


@dataclass
class Wrk:
    work: Path
    connections: int
    threads: int

    def write_files(self, corpus: Corpus) -> None:
        (self.work / "get.lua").write_text(WRK_LUA + WRK_LUA_DONE)
        (self.work / "put.lua").write_text(WRK_LUA + WRK_LUA_STATUS + WRK_LUA_DONE)
        (self.work / "get.txt").write_text("\n".join(corpus.get_checksums) + "\n")
        (self.work / "put.txt").write_text("\n".join(corpus.put_checksums) + "\n")
        (self.work / "health.txt").write_text("healthcheck\n")
        (self.work / "get.seed").write_bytes(corpus.get_seed)
        (self.work / "put.seed").write_bytes(corpus.put_seed)

    def run(
        self, server: Server, method: str, duration: float, paths: str = "", start: int = 0
    ) -> dict[str, Any]:
        """Run wrk for *duration* seconds over the checksums in <paths>.txt; PUTs start with
        the *start*-th buffer of the corpus, GETs cycle over all."""
        kind = method.lower()
        cmd = [
            "wrk", f"-t{self.threads}", f"-c{self.connections}", f"-d{max(1, round(duration))}s",
            "--timeout", "10s", "-s", str(self.work / f"{kind}.lua"), f"http://{HOST}:{server.port}",
            "--", method, server.prefix, str(self.work / f"{paths or kind}.txt"),
            str(self.work / f"{kind}.seed"), str(self.threads), str(start),
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if out.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        result: dict[str, Any] = json.loads(line[len("BENCH "):])
        result["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return result


# -- the figures -------------------------------------------------------------------------------


@dataclass
class Settings:
    duration: float
    large_reps: int  # per round
    has_reps: int  # per round
    rounds: int = 1
    put_per_round: int = 0  # 1 KiB PUT buffers set aside for each round
    max_wait: float = 0.0
    profile: bool = False


@dataclass
class Measure:
    value: float
    unit: str
    detail: dict[str, Any] = field(default_factory=dict)


#: Other processes using more CPU than this (in cores) during a figure disturb it.
DISTURBED = 0.25
#: Before each figure, wait (within --max-wait) until the whole machine is this quiet.
QUIET = 0.15


def system_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / tick, v[7] / tick


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextlib.contextmanager
def cpu_meter(server: Server, detail: dict[str, Any]) -> Iterator[None]:
    """Record CPU use during the block, in cores (1.0 = one core busy): the server's, the
    client's (wrk, or this process for the large transfers) and everything else's, which
    should be close to 0 (another program running on the machine disturbs the figure)."""
    server0, (busy0, steal0), own0, t0 = server.cpu(), system_cpu(), own_cpu(), time.perf_counter()
    yield
    elapsed = time.perf_counter() - t0
    server_s = server.cpu() - server0
    busy1, steal1 = system_cpu()
    client_s = detail.pop("client_cpu_s", 0.0) + own_cpu() - own0
    others = max(0.0, busy1 - busy0 - server_s - client_s) / elapsed
    detail["server_cpu_cores"] = round(server_s / elapsed, 3)
    detail["client_cpu_cores"] = round(client_s / elapsed, 3)
    detail["others_cpu_cores"] = round(others, 3)
    detail["steal_cores"] = round((steal1 - steal0) / elapsed, 3)
    if others > DISTURBED:
        detail["disturbed"] = True


def wait_quiet(settings: Settings) -> None:
    """Wait until the machine is idle (its cores are shared with whatever else runs on it),
    spending at most what is left of settings.max_wait over the whole run."""
    announced = False
    while settings.max_wait > 0:
        busy0 = system_cpu()[0]
        time.sleep(0.5)
        busy = (system_cpu()[0] - busy0) / 0.5
        if busy < QUIET:
            return
        settings.max_wait -= 0.5
        if not announced:
            print(f" (waiting: other processes use {busy:.1f} cores)", end="", flush=True, file=sys.stderr)
            announced = True


@contextlib.contextmanager
def profiled(settings: Settings, server: Server, figure: str, notes: list[str]) -> Iterator[None]:
    """With --profile, run py-spy on the node while the block runs."""
    if not settings.profile or not server.name.startswith("node"):
        yield
        return
    exe = Path(sys.executable).parent / "py-spy"
    out = RESULTS_DIR / f"profile-{server.name}-{figure}.txt"
    spy = subprocess.Popen(
        [str(exe if exe.exists() else "py-spy"), "record", "--pid", str(server.proc.pid),
         "--rate", "400", "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    time.sleep(1.0)  # attach
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        notes.append(summarize_profile(out, f"{server.name} {figure}"))


def summarize_profile(path: Path, title: str, top: int = 10) -> str:
    """Where the sampled stacks are: by package, and the node's functions (inclusive).
    Samples include threads that wait (trio's epoll, idle worker threads)."""
    if not path.exists():
        return f"{title}: no profile written"
    packages: dict[str, int] = {}
    mine: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        leaf = re.search(r"\(([^/.)]+)", frames[-1])
        package = leaf.group(1) if leaf else frames[-1]
        packages[package] = packages.get(package, 0) + n
        for frame in set(frames):
            if "(node/" in frame and not frame.startswith(("<module>", "run (")):
                mine[frame] = mine.get(frame, 0) + n
    share = lambda n: f"{100 * n / max(total, 1):5.1f}%"  # noqa: E731
    rows = [f"{title}: {total} samples ({path.relative_to(ROOT)})", "  self time by package:"]
    rows += [f"    {share(n)}  {p}" for p, n in sorted(packages.items(), key=lambda kv: -kv[1])[:top]]
    rows.append("  node functions, inclusive:")
    rows += [f"    {share(n)}  {f}" for f, n in sorted(mine.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(rows)


def small_rate(
    wrk: Wrk, server: Server, method: str, settings: Settings, rnd: int, paths: str = ""
) -> Measure:
    if method == "GET" and rnd == 0:  # warm the server's code paths and connections first
        wrk.run(server, method, 1, paths)
    detail: dict[str, Any] = {}
    with cpu_meter(server, detail):
        # every round PUTs buffers of its own: the same ones on every server
        detail.update(wrk.run(server, method, settings.duration, paths, start=rnd * settings.put_per_round))
    rate = detail["requests"] / (detail["duration_us"] / 1e6)
    errors = sum(detail["errors"].values())
    if errors:
        detail["warning"] = f"{errors} failed requests (see errors)"
    if method == "PUT" and (detail["status"]["other"] or detail["wraps"]):
        detail["warning"] = "some PUTs failed or repeated a buffer (see status, wraps)"
    return Measure(rate, "req/s", detail)


def large_get(server: Server, corpus: Corpus, settings: Settings, rnd: int) -> Measure:
    sink = bytearray(LARGE)
    times = []
    detail: dict[str, Any] = {}
    with Conn(server.port, bulk=True) as conn:
        status, body = conn.request("GET", server.path(corpus.large_get_checksum), into=sink)
        if status != 200 or hashlib.sha256(body).hexdigest() != corpus.large_get_checksum:
            raise RuntimeError(f"{server.name}: large GET answered {status} or wrong bytes")
        conn.request("GET", server.path(corpus.large_get_checksum), into=sink)  # a second warm-up
        with cpu_meter(server, detail):
            for _ in range(settings.large_reps):
                t0 = time.perf_counter()
                status, body = conn.request("GET", server.path(corpus.large_get_checksum), into=sink)
                times.append(time.perf_counter() - t0)
                if status != 200 or len(body) != LARGE:
                    raise RuntimeError(f"{server.name}: large GET answered {status}, {len(body)} bytes")
        detail["reconnects"] = conn.reconnects  # the server closed keep-alive connections
    detail["mb_per_s"] = [round(LARGE / t / MB, 1) for t in times]
    return Measure(LARGE / statistics.median(times) / MB, "MB/s", detail)


def large_put(server: Server, corpus: Corpus, settings: Settings, rnd: int) -> Measure:
    times = []
    detail: dict[str, Any] = {}
    reps = settings.large_reps
    with Conn(server.port, bulk=True) as conn, cpu_meter(server, detail):
        for checksum, data in corpus.large_puts[rnd * reps: (rnd + 1) * reps]:
            t0 = time.perf_counter()
            status, answer = conn.request("PUT", server.path(checksum), body=memoryview(data))
            times.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"{server.name}: large PUT answered {status}: {bytes(answer)[:200]!r}")
        detail["reconnects"] = conn.reconnects
    detail["mb_per_s"] = [round(LARGE / t / MB, 1) for t in times]
    return Measure(LARGE / statistics.median(times) / MB, "MB/s", detail)


def has_latency(server: Server, corpus: Corpus, settings: Settings, rnd: int) -> Measure:
    times: list[float] = []
    detail: dict[str, Any] = {}
    headers = {"Content-Type": "application/json"}
    with Conn(server.port) as conn, cpu_meter(server, detail):
        started = time.perf_counter()
        for i in range(settings.has_reps + (rnd == 0)):  # the very first one is a warm-up
            t0 = time.perf_counter()
            status, body = conn.request("GET", f"{server.prefix}/has", body=corpus.has_query, headers=headers)
            if i or rnd:
                times.append(time.perf_counter() - t0)
            if status != 200 or json.loads(bytes(body)) != corpus.has_expected:
                raise RuntimeError(f"{server.name}: /has answered {status} or a wrong list")
            if times and time.perf_counter() - started > settings.duration:
                break  # a slow server: enough samples
    detail["ms"] = [round(t * 1000, 2) for t in times]
    return Measure(statistics.median(times) * 1000, "ms", detail)


def sha256_speed(corpus: Corpus, settings: Settings, reps: int = 5) -> Measure:
    """hashlib's SHA-256 over 64 MiB in this process: the best of *reps* (a core's speed)."""
    wait_quiet(settings)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        hashlib.sha256(corpus.large_get).digest()
        times.append(time.perf_counter() - t0)
    return Measure(LARGE / min(times) / MB, "MB/s", {"mb_per_s": [round(LARGE / t / MB, 1) for t in times]})


FIGURES = [
    # key, label, higher is better
    ("health", "GET /healthcheck, 16 clients (req/s)", True),
    ("get_1k", "1 KiB GET, 16 clients (req/s)", True),
    ("put_1k", "1 KiB PUT, 16 clients (req/s)", True),
    ("get_64m", "64 MiB GET, 1 client (MB/s)", True),
    ("put_64m", "64 MiB PUT, 1 client (MB/s)", True),
    ("has_10k", "/has of 10,000, half present (ms, lower is better)", False),
]


def applies(server: Server, key: str) -> bool:
    if key.startswith("put"):
        return server.writable
    if server.name == "node-nofsync":  # only there to show what fsync costs the PUTs
        return False
    return key != "has_10k" or server.has_route


def measure_all(
    servers: list[Server], wrk: Wrk, corpus: Corpus, settings: Settings, only: set[str], notes: list[str]
) -> dict[str, dict[str, Measure]]:
    """Each figure in rounds; in each round every server in turn (the order alternating),
    so that a server is never measured only while something else loads the machine. A
    figure's value is the median over the rounds."""
    run: dict[str, Callable[[Server, int], Measure]] = {
        "health": lambda srv, rnd: small_rate(wrk, srv, "GET", settings, rnd, "health"),
        "get_1k": lambda srv, rnd: small_rate(wrk, srv, "GET", settings, rnd),
        "put_1k": lambda srv, rnd: small_rate(wrk, srv, "PUT", settings, rnd),
        "get_64m": lambda srv, rnd: large_get(srv, corpus, settings, rnd),
        "put_64m": lambda srv, rnd: large_put(srv, corpus, settings, rnd),
        "has_10k": lambda srv, rnd: has_latency(srv, corpus, settings, rnd),
    }
    samples: dict[str, dict[str, list[Measure]]] = {srv.name: {} for srv in servers}
    for key, _, _ in FIGURES:
        if key not in only:
            continue
        for rnd in range(settings.rounds):
            for server in servers if rnd % 2 == 0 else servers[::-1]:
                if not applies(server, key):
                    continue
                print(f"  round {rnd + 1}/{settings.rounds} {server.name}: {key} ...", end="", flush=True,
                      file=sys.stderr)
                wait_quiet(settings)
                with profiled(settings, server, f"{key}-{rnd + 1}", notes):
                    m = run[key](server, rnd)
                samples[server.name].setdefault(key, []).append(m)
                busy = " (disturbed by other processes)" if m.detail.get("disturbed") else ""
                print(f" {m.value:,.1f} {m.unit}{busy}", file=sys.stderr)
    results: dict[str, dict[str, Measure]] = {}
    for name, by_key in samples.items():
        for key, ms in by_key.items():
            disturbed = sum(bool(m.detail.get("disturbed")) for m in ms) > len(ms) / 2
            detail: dict[str, Any] = {"rounds": [{"value": m.value, **m.detail} for m in ms]}
            if disturbed:
                detail["disturbed"] = True
            for field_name in ("server_cpu_cores", "client_cpu_cores", "others_cpu_cores"):
                detail[field_name] = round(statistics.median(m.detail[field_name] for m in ms), 3)
            warnings = {m.detail["warning"] for m in ms if "warning" in m.detail}
            if warnings:
                detail["warning"] = "; ".join(sorted(warnings))
            value = statistics.median(m.value for m in ms)
            results.setdefault(name, {})[key] = Measure(value, ms[0].unit, detail)
    return results


# -- report --------------------------------------------------------------------------------------

COLUMNS = ["node", "hashserver", "nginx", "node-nofsync"]


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def goals(values: dict[str, dict[str, float]], sha: float) -> list[dict[str, Any]]:
    node, hs, ngx = values.get("node", {}), values.get("hashserver", {}), values.get("nginx", {})
    out = []
    for key, _, higher in FIGURES:
        if key in node and key in hs and key != "health":  # health: a reference, not a goal
            met = node[key] >= hs[key] if higher else node[key] <= hs[key]
            out.append({"goal": f"{key}: at least hashserver's", "node": node[key], "target": hs[key],
                        "met": met})
    if "get_64m" in node and "get_64m" in ngx:
        target = 0.7 * ngx["get_64m"]
        out.append({"goal": "get_64m: at least 0.7x nginx", "node": node["get_64m"], "target": target,
                    "met": node["get_64m"] >= target})
    if "put_64m" in node:
        target = 0.7 * sha
        out.append({"goal": "put_64m: at least 0.7x single-core SHA-256", "node": node["put_64m"],
                    "target": target, "met": node["put_64m"] >= target})
    return out


def render(results: dict[str, dict[str, Measure]], sha: float, goal_list: list[dict[str, Any]]) -> str:
    values = {s: {k: m.value for k, m in r.items()} for s, r in results.items()}
    head = ["figure", *COLUMNS, "node/hashserver", "node/nginx"]
    rows = [head]
    for key, label, _ in FIGURES:
        cells = [values.get(c, {}).get(key) for c in COLUMNS]
        marks = ["*" if results.get(c, {}).get(key, Measure(0, "")).detail.get("disturbed") else ""
                 for c in COLUMNS]
        rows.append([label, *(fmt(v) + m for v, m in zip(cells, marks, strict=True)),
                     ratio(cells[0], cells[1]), ratio(cells[0], cells[2])])
    rows.append(["SHA-256, one core, hashlib, best of 5 (MB/s)", fmt(sha), "", "", "", "", ""])
    rows.append(["64 MiB PUT / SHA-256 speed", ratio(values.get("node", {}).get("put_64m"), sha), "", "",
                 ratio(values.get("node-nofsync", {}).get("put_64m"), sha), "", ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    align = [str.ljust] + [str.rjust] * (len(head) - 1)
    lines = ["  ".join(a(c, w) for a, c, w in zip(align, r, widths, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if any(m.detail.get("disturbed") for r in results.values() for m in r.values()):
        lines.append(f"* other processes used more than {DISTURBED} cores during this figure")
    lines += ["", f"CPU used during each figure, in cores (the machine has {os.cpu_count()}): "
              "server / client (wrk, or this script) / other processes:"]
    for key, _, _ in FIGURES:
        cpu_cells = []
        for c in COLUMNS:
            d = results.get(c, {}).get(key)
            if d is not None and "server_cpu_cores" in d.detail:
                cpu_cells.append(f"{c} {d.detail['server_cpu_cores']:.2f}/{d.detail['client_cpu_cores']:.2f}"
                                 f"/{d.detail['others_cpu_cores']:.2f}")
        if cpu_cells:
            lines.append(f"  {key:8} " + ", ".join(cpu_cells))
    lines += ["", "goals:"]
    for g in goal_list:
        lines.append(f"  [{'met' if g['met'] else 'MISSED'}] {g['goal']}: node {fmt(g['node'])}, "
                     f"target {fmt(g['target'])}")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    def cmd(args: list[str]) -> str:
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = cmd(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return {
        "seamless-node": dist("seamless-node"), "commit": commit, "hashserver": dist("hashserver"),
        "nginx": cmd(["nginx", "-v"]), "wrk": cmd(["wrk", "-v"]).split(" [")[0],
        "python": platform.python_version(), "cpu": cpu_model, "cores": str(os.cpu_count()),
        "kernel": platform.release(),
    }


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter run: one round of 2 s per figure")
    parser.add_argument("--rounds", type=int, help="rounds of every figure (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per 1 KiB figure and round (default 3)")
    parser.add_argument("--reps", type=int, help="64 MiB transfers per round (default 2, quick 3)")
    parser.add_argument("--connections", type=int, default=16, help="connections for the 1 KiB figures")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--systems", default=",".join(COLUMNS), help=f"which of {','.join(COLUMNS)}")
    parser.add_argument("--figures", default=",".join(k for k, _, _ in FIGURES), help="which figures")
    parser.add_argument("--max-wait", type=float, help="seconds to wait in all for an idle machine "
                        "before figures (default 90, quick 30)")
    parser.add_argument("--profile", action="store_true", help="run py-spy on the node (slows it down)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "buffers.json", help="JSON results file")
    args = parser.parse_args()
    settings = Settings(
        duration=args.duration or (2.0 if args.quick else 3.0),
        large_reps=args.reps or (3 if args.quick else 2),
        has_reps=3 if args.quick else 2,
        rounds=args.rounds or (1 if args.quick or args.profile else 3),
        max_wait=args.max_wait if args.max_wait is not None else (30.0 if args.quick else 90.0),
        profile=args.profile,
    )
    if args.profile:  # enough samples for the profiler
        settings.large_reps = max(settings.large_reps, 12)
    systems = [s for s in args.systems.split(",") if s]
    only = set(args.figures.split(","))
    missing = [exe for exe in ("wrk", "nginx") if not (shutil.which(exe) or Path("/usr/sbin", exe).exists())]
    if missing:
        print(f"missing {' and '.join(missing)}: run `bash scripts/install-system-deps.sh bench` "
              "(as root) or `make bench`", file=sys.stderr)
        return 2
    # every PUT is of a new buffer: enough for a fast server (12,000/s) in every round
    settings.put_per_round = int(max(20_000, 12_000 * settings.duration))

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Measure]] = {}
    notes: list[str] = []
    started = time.time()
    load_at_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="seamless-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        tmp.chmod(0o755)  # nginx's workers run as nobody when started by root
        logs = tmp / "logs"
        logs.mkdir()
        print(f"preparing data in {tmp} ...", file=sys.stderr)
        corpus = make_corpus(settings.put_per_round * settings.rounds, settings.large_reps * settings.rounds)
        wrk = Wrk(tmp, args.connections, args.wrk_threads)
        wrk.write_files(corpus)
        node_dir = tmp / "node"
        store_directly(node_dir / "buffers", corpus)
        store_directly(tmp / "hashserver", corpus)
        sha = sha256_speed(corpus, settings)
        starters: dict[str, Callable[[], Server]] = {
            "node": lambda: start_node("node", node_dir, logs),
            "hashserver": lambda: start_hashserver(tmp / "hashserver", logs),
            "nginx": lambda: start_nginx(node_dir / "buffers", tmp / "nginx", logs),
            "node-nofsync": lambda: start_node(
                "node-nofsync", tmp / "node-nofsync", logs, {"SEAMLESS_NODE__BUFFERS__FSYNC": "false"}
            ),
        }
        (tmp / "nginx").mkdir()
        servers = []
        for name in systems:  # all run at once; an idle one takes no CPU from the others
            servers.append(starters[name]())
            stack.callback(servers[-1].stop)
        results = measure_all(servers, wrk, corpus, settings, only, notes)
    values = {s: {k: m.value for k, m in r.items()} for s, r in results.items()}
    goal_list = goals(values, sha.value)
    table = render(results, sha.value, goal_list)
    info = versions()
    print()
    print(f"seamless-node buffer benchmark, {datetime.date.today()}, {info['cores']} cores ({info['cpu']}), "
          f"median of {settings.rounds} round(s); per round {settings.duration:g} s per 1 KiB figure, "
          f"{settings.large_reps} x 64 MiB")
    print("client and server share the cores: the figures are for this machine, not for the servers alone")
    print()
    print(table)
    for note in notes:
        print()
        print(note)
    warnings = [f"{s} {k}: {m.detail['warning']}" for s, r in results.items() for k, m in r.items()
                if "warning" in m.detail]
    for w in warnings:
        print(f"WARNING {w}")
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["bench/buffers.py", *sys.argv[1:]]),
        "machine": info,
        "settings": {"rounds": settings.rounds, "duration_s": settings.duration,
                     "large_reps": settings.large_reps, "has_reps": settings.has_reps,
                     "connections": args.connections,
                     "wrk_threads": args.wrk_threads, "profiled": settings.profile,
                     "wait_left_s": settings.max_wait},
        "load_average_at_start": load_at_start,
        "sha256_mb_per_s": sha.value,
        "results": {s: {k: {"value": m.value, "unit": m.unit, **m.detail} for k, m in r.items()}
                    for s, r in results.items()},
        "goals": goal_list,
        "elapsed_s": round(time.time() - started, 1),
        "warnings": warnings,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.output}; took {report['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
