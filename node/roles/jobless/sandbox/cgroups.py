"""One cgroup per job: its whole process tree counted and limited together.

A job's processes all live in one cgroup, made for it before it starts and removed
after: ``pids.max`` caps how many processes (and threads) it may have at once (a fork
bomb stops there), the memory limit applies to the whole tree (files it writes to its
tmpfs included), and whether the kernel's OOM killer struck is read back to name the
failure. Killing is the PID namespace's job (when the job's first process dies, the
kernel kills every other process of the namespace); the cgroup kills what is left as a
second line.

Cgroup v2 is used where the unified hierarchy offers the ``memory`` and ``pids``
controllers to the node's own cgroup; else cgroup v1, one directory per controller
(``pids``, ``memory``, and ``freezer`` when mounted). Job cgroups are made inside the
cgroup the supervising process runs in, named ``seamless-job-<pid>-<n>``.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass, field

from .linux import mounts, write_file

V1_CONTROLLERS = ("pids", "memory", "freezer")
V1_REQUIRED = ("pids", "memory")


class CgroupUnavailable(Exception):
    """No cgroup can be made for jobs here; the text says why."""


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, super options) of every cgroup file system."""
    return [m for m in mounts() if m[1] in ("cgroup", "cgroup2")]


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path in that hierarchy."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name.removeprefix("name=")] = path
    return paths


@dataclass
class Hierarchy:
    """Where job cgroups go: v2 (one directory) or v1 (one per controller)."""

    version: int
    #: controller -> the directory job cgroups are made in ("" for v2)
    parents: dict[str, str] = field(default_factory=dict)


def find_hierarchy() -> Hierarchy:
    mounts, own = _mounts(), _own_paths()
    for point, fstype, _options in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        parent = os.path.join(point, own[""].lstrip("/"))
        try:
            with open(os.path.join(parent, "cgroup.controllers")) as f:
                available = set(f.read().split())
        except OSError:
            continue
        if {"memory", "pids"} <= available:
            _enable_v2(parent)
            return Hierarchy(2, {"": parent})
    parents = {}
    for point, fstype, options in mounts:
        for name in V1_CONTROLLERS:
            if fstype == "cgroup" and name in options and name in own:
                parents[name] = os.path.join(point, own[name].lstrip("/"))
    missing = [name for name in V1_REQUIRED if name not in parents]
    if missing:
        raise CgroupUnavailable(
            "no cgroup for jobs: neither cgroup v2 with the memory and pids controllers nor "
            f"cgroup v1 {' and '.join(missing)} controller(s) are available to this process"
        )
    for name, parent in parents.items():
        if not os.access(parent, os.W_OK):
            raise CgroupUnavailable(f"no cgroup for jobs: cannot write to {parent} (cgroup v1 {name})")
    return Hierarchy(1, parents)


def _enable_v2(parent: str) -> None:
    try:
        write_file(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
    except OSError as exc:
        raise CgroupUnavailable(
            f"no cgroup for jobs: cannot enable the memory and pids controllers in {parent} "
            f"({exc.strerror}); "
            "run the node in a cgroup of its own that is delegated to it (systemd: Delegate=yes)"
        ) from None


class JobCgroup:
    """The cgroup of one job: made, joined by its first process, killed, removed."""

    def __init__(self, hierarchy: Hierarchy, name: str, *, memory: int, max_processes: int) -> None:
        self.hierarchy = hierarchy
        self.dirs = {c: os.path.join(parent, name) for c, parent in hierarchy.parents.items()}
        made = []
        try:
            for path in self.dirs.values():
                os.mkdir(path, 0o755)
                made.append(path)
            if hierarchy.version == 2:
                d = self.dirs[""]
                write_file(os.path.join(d, "pids.max"), str(max_processes))
                if memory:
                    write_file(os.path.join(d, "memory.max"), str(memory))
                    _try_write(os.path.join(d, "memory.swap.max"), "0")
            else:
                write_file(os.path.join(self.dirs["pids"], "pids.max"), str(max_processes))
                if memory:
                    write_file(os.path.join(self.dirs["memory"], "memory.limit_in_bytes"), str(memory))
                    _try_write(os.path.join(self.dirs["memory"], "memory.memsw.limit_in_bytes"), str(memory))
        except OSError:
            for path in reversed(made):
                _rmdir(path)
            raise

    def add(self, pid: int) -> None:
        for path in self.dirs.values():
            write_file(os.path.join(path, "cgroup.procs"), str(pid))

    def pids(self) -> list[int]:
        path = self.dirs.get("") or self.dirs["pids"]
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    @property
    def oom_file(self) -> str:
        """The file that counts the job's OOM kills (``oom_kill N``)."""
        if self.hierarchy.version == 2:
            return os.path.join(self.dirs[""], "memory.events")
        return os.path.join(self.dirs["memory"], "memory.oom_control")

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this job."""
        try:
            fd = os.open(self.oom_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                found = oom_kills(fd)
            finally:
                os.close(fd)
            if found is not None:
                return found > 0
        if self.hierarchy.version == 1:  # kernels without an oom_kill count: the limit was hit
            try:
                with open(os.path.join(self.dirs["memory"], "memory.failcnt")) as f:
                    return int(f.read().strip() or 0) > 0
            except (OSError, ValueError):
                pass
        return False

    def kill(self) -> None:
        """SIGKILL every process of the job (frozen first where a freezer exists)."""
        if self.hierarchy.version == 2:
            if _try_write(os.path.join(self.dirs[""], "cgroup.kill"), "1"):
                return
        freezer = self.dirs.get("freezer")
        if freezer:
            _try_write(os.path.join(freezer, "freezer.state"), "FROZEN")
        for _ in range(10):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if freezer:
                _try_write(os.path.join(freezer, "freezer.state"), "THAWED")  # frozen tasks die on thaw
        if freezer:
            _try_write(os.path.join(freezer, "freezer.state"), "THAWED")

    def remove(self) -> None:
        """Remove the cgroup (killing what is left); a busy one is left to the next sweep."""
        if self.pids():
            self.kill()
        for path in self.dirs.values():
            _rmdir(path)


def oom_kills(fd: int) -> int | None:
    """The ``oom_kill`` count read from an open memory.events / memory.oom_control."""
    try:
        text = os.pread(fd, 4096, 0).decode()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill":
            return int(parts[1])
    return None


def sweep(hierarchy: Hierarchy, prefix: str = "seamless-job-") -> None:
    """Remove job cgroups of supervising processes that have ended (empty ones only)."""
    for parent in hierarchy.parents.values():
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefix):
                continue
            owner = name[len(prefix):].split("-")[0]
            if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                _rmdir(os.path.join(parent, name))


def _try_write(path: str, text: str) -> bool:
    try:
        write_file(path, text)
        return True
    except OSError:
        return False


def _rmdir(path: str) -> None:
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return
            os.sched_yield()
