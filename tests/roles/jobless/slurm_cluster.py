"""A throwaway Slurm cluster on localhost for tests: munged, slurmctld and slurmd as
root, with a minimal slurm.conf (proctrack/linuxproc, task/none, no accounting) on free
ports, everything under one temporary directory. ``start`` raises Unavailable with the
reason when it cannot run here (not root, packages missing, daemons not coming up)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class Unavailable(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONF = """\
ClusterName=seamless-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={dir}/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
KillWait=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.conf = directory / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise Unavailable("the Slurm test cluster needs root (slurmd runs jobs as their users)")
        for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"):
            if shutil.which(tool) is None:
                raise Unavailable(f"{tool} is not installed (apt-get install slurm-wlm munge)")
        for sub in ("munge", "state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, mode=0o700)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.dir / "munge").chmod(0o711)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(CONF.format(host=host, ctld_port=_free_port(), d_port=_free_port(),
                                         dir=self.dir, cpus=os.cpu_count() or 1))
        munge = self.dir / "munge"
        self._spawn("munged", ["munged", "-f", "-F", f"--socket={munge}/munge.sock", f"--key-file={key}",
                               f"--log-file={self.dir}/log/munged.log", f"--pid-file={munge}/munged.pid",
                               f"--seed-file={munge}/seed"])
        self._wait_for(lambda: (munge / "munge.sock").exists(), "munged")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait_for(self._node_idle, "slurmctld/slurmd (node idle)")
        return self

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "wb")
        self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _node_idle(self) -> bool:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def _wait_for(self, ready, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            if ready():
                return
            time.sleep(0.1)
        logs = "\n".join(
            f"{p.name}: {p.read_text(errors='replace')[-800:]}" for p in (self.dir / "log").iterdir()
        )
        self.stop()
        raise Unavailable(f"{what} did not come up:\n{logs}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
