"""Attacks from inside a job: each test runs hostile code as a job and checks that the
sandbox holds (docs/security.md, "Jobs run sandboxed").

Every job here runs through the node's own job API on a real node with the local
backend, sandboxed as by default; a few tests run the same attack on a node with the
permission that would let it through, to show that the test can fail.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio

from node.roles.jobless.sandbox.setup import python_paths
from node.transformation import transformation_checksum
from tests.conftest import LISTEN_RE
from tests.roles.jobless.support import JOBLESS, Transformations, processes_matching, wait_for, workers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the job sandbox needs root")


@pytest.fixture
async def sandboxed(start_node):  # type: ignore[no-untyped-def]
    """A node with the jobless role, one local worker, sandboxed as by default."""
    return await start_node(node=JOBLESS, jobless={"workers": 1})


async def run_job(http: httpx.AsyncClient, url: str, tfs: Transformations, tf: dict[str, Any],
                  wait: float = 60) -> dict[str, Any]:
    await tfs.upload(http, url)
    r = await http.post(f"{url}/api/v1/jobs", params={"wait": wait}, json={"transformation": tf})
    assert r.status_code in (200, 202), r.text
    return dict(r.json()["job"])


async def result_text(http: httpx.AsyncClient, url: str, job: dict[str, Any]) -> str:
    assert job["state"] == "done", job
    return (await http.get(f"{url}/buffers/{job['result']}")).content.decode()


async def test_a_job_cannot_read_the_node_key(start_node, http, tmp_path):
    data_dir = tmp_path / "data"
    await trio.run_process([sys.executable, "-m", "node", "keygen", "--data-dir", str(data_dir)],
                           capture_stdout=True)
    key = (data_dir / "node.key").read_bytes()
    node = await start_node(data_dir=data_dir, node=JOBLESS, jobless={"workers": 1})
    tfs = Transformations()
    script = f"cat ../../../node.key ../../node.key {data_dir}/node.key > RESULT 2>&1 || true"
    job = await run_job(http, node.url, tfs, tfs.bash(script))
    text = await result_text(http, node.url, job)
    assert "No such file or directory" in text
    assert key.strip() not in text.encode() and b"PRIVATE" not in text.encode()


async def test_a_job_cannot_see_the_data_directory_the_store_or_other_jobs(sandboxed, http, tmp_path):
    node = sandboxed
    data_dir = Path(node.config.node.data_dir)
    buffers = Path(node.config.buffer_directory)
    tfs = Transformations()
    script = (
        f"for p in {data_dir} {buffers} {node.config.jobs_directory} {node.config.database_path} "
        f"{tmp_path}; do if [ -e $p ]; then echo \"visible $p\"; else echo \"absent $p\"; fi; done > RESULT; "
        "ls / >> RESULT"
    )
    job = await run_job(http, node.url, tfs, tfs.bash(script))
    text = await result_text(http, node.url, job)
    assert "visible" not in text, text
    assert text.count("absent") == 5
    top = set(text.split("\n")[5:]) - {""}
    allowed = {"bin", "dev", "etc", "job", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
    # the top directories holding the Python installation and the node package, wherever
    # the checkout lives: those are shown read-only, nothing else
    allowed |= {Path(p).parts[1] for p in python_paths() if len(Path(p).parts) > 1}
    assert top <= allowed, top
    assert "job" in top and "usr" in top


async def test_a_job_runs_as_an_unprivileged_uid_without_capabilities(sandboxed, http):
    node = sandboxed
    tfs = Transformations()
    code = (
        "def f():\n"
        "    import os\n"
        "    status = open('/proc/self/status').read().splitlines()\n"
        "    caps = [line.split()[1] for line in status if line.startswith(('CapEff', 'CapPrm'))]\n"
        "    return [os.getuid(), os.getgid(), os.getgroups(), caps, os.getpid()]\n"
    )
    job = await run_job(http, node.url, tfs, tfs.python(code, output="plain"))
    import json

    uid, gid, groups, caps, pid = json.loads(await result_text(http, node.url, job))
    assert (uid, gid) == (65534, 65534) and uid != os.geteuid()
    assert groups in ([], [65534])
    assert caps == ["0000000000000000", "0000000000000000"]
    assert pid == 1  # the init of its own PID namespace: no other process is visible


async def test_a_job_holds_no_descriptor_of_its_worker(sandboxed, http):
    """A forked job process must not keep the worker's socket to the node (it could forge
    the worker's messages) nor any other descriptor it was not given."""
    node = sandboxed
    tfs = Transformations()
    code = (
        "def f():\n"
        "    import os, stat\n"
        "    kinds = {}\n"
        "    for name in os.listdir('/proc/self/fd'):\n"
        "        try:\n"
        "            mode = os.fstat(int(name)).st_mode\n"
        "        except OSError:\n"
        "            continue\n"
        "        kind = 'socket' if stat.S_ISSOCK(mode) else 'pipe' if stat.S_ISFIFO(mode) else 'file'\n"
        "        kinds[name] = kind\n"
        "    return kinds\n"
    )
    job = await run_job(http, node.url, tfs, tfs.python(code, output="plain"))
    import json

    kinds = json.loads(await result_text(http, node.url, job))
    assert "socket" not in kinds.values(), kinds
    assert list(kinds.values()).count("pipe") <= 1, kinds  # its own outcome pipe
    assert len(kinds) <= 6, kinds  # stdin/out/err, the outcome pipe, the OOM counter, the listing


async def test_a_job_cannot_read_the_nodes_environment(start_node, http, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "node-secret-4711")
    node = await start_node(node=JOBLESS, jobless={"workers": 1})
    tfs = Transformations()
    code = (
        "def f():\n"
        "    import os\n"
        "    seen = str(sorted(os.environ.items()))\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit():\n"
        "            try:\n"
        "                seen += open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')\n"
        "            except OSError:\n"
        "                pass\n"
        "    return seen\n"
    )
    job = await run_job(http, node.url, tfs, tfs.python(code, output="str"))
    text = await result_text(http, node.url, job)
    assert "PATH" in text and "node-secret-4711" not in text


@pytest.mark.parametrize("swap", ["symlink", "fifo"])
async def test_a_job_cannot_make_its_supervisor_read_a_host_file_as_its_stderr(
    sandboxed, http, tmp_path, swap
):
    """The supervisor (root, seeing the host) reads the tail of a failed job's stderr:
    a job that swaps that file for a link to a host secret, or a FIFO, gets neither read."""
    secret = tmp_path / "secret"
    secret.write_text("host-secret-0815\n")
    secret.chmod(0o600)
    node = sandboxed
    make = f"os.symlink({str(secret)!r}, p)" if swap == "symlink" else "os.mkfifo(p)"
    code = (
        "def f():\n"
        "    import os\n"
        "    p = '/job/ctl/stderr'\n"
        "    try:\n"
        "        os.remove(p)\n"
        f"        {make}\n"
        "    except OSError:\n"
        "        pass\n"
        "    os._exit(1)\n"
    )
    tfs = Transformations()
    job = await run_job(http, node.url, tfs, tfs.python(code), wait=30)
    assert job["state"] == "failed", job
    assert "host-secret-0815" not in job["error"]


async def test_a_job_cannot_make_a_user_namespace(sandboxed, http):
    """Where most kernel exploits start: a user namespace, with every capability inside
    it. The job's seccomp filter refuses it; threads and programs still run."""
    node = sandboxed
    script = (
        "for cmd in 'unshare -U true' 'unshare -Ur true' 'unshare -Urn true'; do "
        "if $cmd >/dev/null 2>&1; then echo \"allowed $cmd\"; else echo \"refused $cmd\"; fi; done > RESULT; "
        "python3 -c 'import threading; t = threading.Thread(target=print); t.start(); t.join(); "
        "print(\"threads\")' >> RESULT"
    )
    tfs = Transformations()
    job = await run_job(http, node.url, tfs, tfs.bash(script))
    text = await result_text(http, node.url, job)
    assert "allowed" not in text and text.count("refused") == 3 and "threads" in text, text


async def test_a_job_cannot_write_outside_its_own_directory(sandboxed, http):
    node = sandboxed
    tfs = Transformations()
    target = os.path.join(sys.prefix, "poisoned")
    script = (
        f"for p in {target} /usr/poisoned /etc/poisoned /poisoned /job/poisoned; do "
        "if touch $p 2>/dev/null; then echo \"wrote $p\"; else echo \"refused $p\"; fi; done > RESULT"
    )
    job = await run_job(http, node.url, tfs, tfs.bash(script))
    text = await result_text(http, node.url, job)
    assert not Path(target).exists()  # noqa: ASYNC240 - one stat
    assert text.count("refused") == 5, text


def _listener() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


NET_SCRIPT = (
    "if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo reached; "
    "else echo unreachable; fi > RESULT"
)


#: what loopback may do on a node whose jobs may reach the network (the test client's needs)
LOOPBACK = {"networks": {"127.0.0.0/8": ["buffers:read", "buffers:write", "jobs:submit", "results:read"]}}


@pytest.mark.parametrize("policy", ["none", "always"])
async def test_a_job_cannot_reach_the_network(start_node, http, policy):
    node = await start_node(node=JOBLESS, jobless={"workers": 1, "network": policy}, access=LOOPBACK)
    with _listener() as server:
        port = server.getsockname()[1]
        tfs = Transformations()
        job = await run_job(http, node.url, tfs, tfs.bash(NET_SCRIPT.format(port=port), salt=policy))
        text = await result_text(http, node.url, job)
    assert text.strip() == ("unreachable" if policy == "none" else "reached")


async def test_a_job_cannot_call_the_node_it_runs_on(sandboxed, http):
    node = sandboxed
    port = int(node.url.rsplit(":", 1)[1])
    tfs = Transformations()
    code = (
        "def f():\n"
        "    import socket\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n"
        "        return 'reached'\n"
        "    except OSError as exc:\n"
        "        return 'unreachable: ' + str(exc)\n"
    )
    job = await run_job(http, node.url, tfs, tfs.python(code, output="str"))
    assert (await result_text(http, node.url, job)).startswith('"unreachable')


@pytest.mark.parametrize("policy,asks,reached", [("requested", True, True), ("requested", False, False),
                                                 ("none", True, False)])
async def test_network_only_for_a_job_that_asks_where_the_node_permits(
    start_node, http, policy, asks, reached
):
    node = await start_node(node=JOBLESS, jobless={"workers": 1, "network": policy}, access=LOOPBACK)
    with _listener() as server:
        tfs = Transformations()
        tf = tfs.bash(NET_SCRIPT.format(port=server.getsockname()[1]), salt=f"{policy}{asks}")
        env = {"powers": {"network": True}} if asks else {"which": ["bash"]}
        tf["__env__"] = tfs.add(env, "plain")
        job = await run_job(http, node.url, tfs, tf)
        text = await result_text(http, node.url, job)
    assert text.strip() == ("reached" if reached else "unreachable")


def test_a_node_whose_jobs_reach_the_network_must_say_what_loopback_may_do():
    from node.config import build_config
    from node.errors import ConfigError

    with pytest.raises(ConfigError, match="access.networks"):
        build_config(flags={"jobless": {"network": "requested"}})


async def test_a_networked_job_cannot_write_results_through_the_nodes_loopback(start_node, http):
    node = await start_node(node=JOBLESS, jobless={"workers": 1, "network": "always"}, access=LOOPBACK)
    port = int(node.url.rsplit(":", 1)[1])
    body = '{"type": "transformation", "checksum": "' + "a" * 64 + '", "value": "' + "b" * 64 + '"}'
    script = (
        f"exec 3<>/dev/tcp/127.0.0.1/{port}\n"
        f"printf 'PUT /database HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\nContent-Type: application/json"
        f"\\r\\nContent-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n%s' '{body}' >&3\n"
        "head -n 1 <&3 > RESULT"
    )
    tfs = Transformations()
    job = await run_job(http, node.url, tfs, tfs.bash(script))
    status_line = await result_text(http, node.url, job)
    assert status_line.split()[1] in ("401", "403"), status_line
    query = {"type": "transformation", "checksum": "a" * 64}
    assert (await http.request("GET", f"{node.url}/database", json=query)).status_code == 404


MARK = "seamless-sandbox-escape"


def _escapees(salt: str) -> list[psutil.Process]:
    return processes_matching(f"{MARK}-{salt}")


async def test_a_chain_of_setsid_processes_does_not_survive_cancel(sandboxed, http):
    node = sandboxed
    tfs = Transformations()
    # each level starts the next in a new session, then sleeps under a recognisable name
    script = (
        "cat > chain.sh <<'EOF'\n"
        "depth=$1\n"
        "if [ $depth -lt 10 ]; then setsid bash chain.sh $((depth + 1)) & fi\n"
        f"exec -a {MARK}-chain-$depth sleep 1000\n"
        "EOF\n"
        "setsid bash chain.sh 0 &\n"
        "sleep 1000"
    )
    tf = tfs.bash(script)
    await tfs.upload(http, node.url)
    r = await http.post(f"{node.url}/api/v1/jobs", json={"transformation": tf})
    assert r.status_code == 202
    await wait_for(lambda: len(_escapees("chain")) == 11, timeout=20)
    cs = transformation_checksum(tf)
    r = await http.delete(f"{node.url}/api/v1/jobs/{cs}", params={"hard": 1})
    assert r.json()["job"]["state"] == "cancelled"
    await wait_for(lambda: not _escapees("chain"), timeout=2)


async def test_a_job_whose_worker_dies_leaves_no_process_behind(sandboxed, http):
    node = sandboxed
    tfs = Transformations()
    script = (
        # try to kill its parent, as a job without a sandbox could (and then its worker)
        "kill -9 $PPID 2>/dev/null || true\n"
        f"setsid bash -c 'exec -a {MARK}-orphan sleep 1000' &\n"
        "sleep 1000"
    )
    tf = tfs.bash(script)
    await tfs.upload(http, node.url)
    r = await http.post(f"{node.url}/api/v1/jobs", json={"transformation": tf})
    assert r.status_code == 202
    await wait_for(lambda: len(_escapees("orphan")) == 1, timeout=20)
    (worker,) = [w for w in workers() if node.config.jobs_directory in w.cmdline()]
    assert worker.is_running()  # the job could not reach it
    worker.send_signal(signal.SIGKILL)  # the worker dies anyway (a crash, the OOM killer)
    await wait_for(lambda: not _escapees("orphan"), timeout=5)


async def test_max_output_is_per_job_not_per_file(start_node, http):
    node = await start_node(node=JOBLESS, jobless={"workers": 1, "max_output": "1MiB"})
    tfs = Transformations()
    script = "for i in $(seq 150); do head -c 1000000 /dev/zero > f$i; done; echo done > RESULT"
    job = await run_job(http, node.url, tfs, tfs.bash(script))
    assert job["state"] == "failed" and job["failure"] == "output", job
    assert "jobless.max_output" in job["error"]


async def test_max_memory_is_per_job_not_per_process(start_node, http):
    node = await start_node(node=JOBLESS, jobless={"workers": 1, "max_memory": "256MiB"})
    tfs = Transformations()
    hog = "python3 -c 'import time; x = bytearray(120 << 20); x[::4096] = b\"x\" * 30720; time.sleep(3)'"
    script = (
        f"pids=; for i in 1 2 3 4; do {hog} & pids=\"$pids $!\"; done; "
        "for p in $pids; do wait $p; done; echo ok > RESULT"
    )
    job = await run_job(http, node.url, tfs, tfs.bash(script))
    assert job["state"] == "failed" and job["failure"] == "memory", job


async def test_a_fork_bomb_stops_at_max_processes(start_node, http):
    node = await start_node(node=JOBLESS, jobless={"workers": 1, "max_processes": 64, "max_wall_time": 5})
    tfs = Transformations()
    script = f"bomb() {{ bomb | bomb & }}; bomb; exec -a {MARK}-bomb sleep 1000"
    job = await run_job(http, node.url, tfs, tfs.bash(script))
    assert job["state"] == "failed" and job["failure"] in ("timeout", "error"), job
    await wait_for(lambda: not _escapees("bomb"), timeout=2)
    quick = Transformations()
    job = await run_job(http, node.url, quick, quick.bash("echo ok > RESULT"))
    assert (await result_text(http, node.url, job)) == "ok\n"  # the node and its worker are fine


def _node_without_cgroups(data_dir: Path, log_path: Path) -> subprocess.Popen[str]:
    """A node process in a mount namespace of its own where /sys/fs/cgroup is empty."""
    command = (
        "mount -t tmpfs none /sys/fs/cgroup && exec \"$0\" -m node run --host 127.0.0.1 --port 0 "
        f"--data-dir {data_dir} --roles buffers,database,jobless"
    )
    with open(log_path, "ab") as log:
        return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", command,
                                 sys.executable], stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def test_jobs_are_refused_with_one_clear_line_when_no_sandbox_can_be_made(tmp_path, http):
    """A node that finds no cgroup to put jobs in (here: /sys/fs/cgroup hidden from it)
    refuses every job, says why in one line, and runs nothing."""
    marker = tmp_path / "ran"
    log_path = tmp_path / "node.log"
    proc = _node_without_cgroups(tmp_path / "data", log_path)
    try:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        match = LISTEN_RE.search(line)
        assert match, log_path.read_text()
        url = match.group(1)
        tfs = Transformations()
        job = await run_job(http, url, tfs, tfs.bash(f"touch {marker}; echo ran > RESULT"))
        assert job["state"] == "failed", job
        assert job["error"].startswith("jobs are refused: no cgroup for jobs")
        assert "jobless.sandbox: off" in job["error"] and "\n" not in job["error"]
        assert not marker.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(proc.wait)
    lines = log_path.read_text().splitlines()
    logged = [line for line in lines if "jobs are refused" in line and "seamless_node.jobless:" in line]
    assert len(logged) == 1, logged
    # and the job's own line says why it failed
    assert [line for line in lines if "seamless_node.jobs:" in line and "jobs are refused" in line]


async def test_an_unsandboxed_node_says_so_at_start(start_node, caplog):
    await start_node(node=JOBLESS, jobless={"workers": 1, "sandbox": False})
    assert any(re.search(r"jobless.sandbox is off.*unsafe", r.getMessage()) for r in caplog.records)
