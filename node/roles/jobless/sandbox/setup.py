"""Setting the sandbox up: once per supervising process, then a little per job.

The supervising process (a local pool worker, or the runner of a Dask task or a Slurm
job) calls ``Sandbox.open`` once, as root: it moves into a mount namespace and a network
namespace of its own (only ``lo``, up), mounts a private tmpfs "area" and builds the
jobs' root in it (``plan.py``: a read-only tmpfs with the system and the Python
installation bound read-only). Building it costs a few milliseconds, once.

Per job, ahead of time (the job's process is forked before its job arrives):

1. ``new_slot``: a tmpfs of the job's own (its ``/job``, ``/tmp`` and ``/dev/shm``,
   sized to the output limit) and a cgroup (``cgroups.py``);
2. ``before_fork``: a new PID namespace for the next child, whose first process
   (the job's) is its init: when it ends, the kernel kills everything else in it, so
   nothing escapes by ``setsid``, a double fork or the death of its supervisor;
3. in the child, ``enter``: new mount, IPC and UTS namespaces, the slot bound at
   ``/job``, a fresh ``/proc``, ``pivot_root`` into the jobs' root;
4. the parent puts the child into the job's cgroup (``adopt``) before offering it.

When the job's spec has arrived, the child calls ``restrict``: the tmpfs grows by the
size of the job's inputs, the host's network is joined only if the job may have it,
then the child drops to the unprivileged uid and gid (no groups, no capabilities,
``no_new_privs``) and a clean environment. ``release`` removes the cgroup (killing what
is left) and unmounts the slot, which frees its memory at once.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

from . import linux, seccomp
from .cgroups import CgroupUnavailable, Hierarchy, JobCgroup, find_hierarchy, oom_kills, sweep
from .plan import DEVICES, SYSTEM_PATHS, SandboxSettings, job_environment, plan_mounts

#: where a job sees its own tmpfs
JOB_DIR = "/job"
WORKDIR = "/job/work"
CTLDIR = "/job/ctl"
#: at most this many files and directories per job tmpfs
MAX_INODES = 65536
READ_ONLY = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV
#: inputs up to this size fit in the room a job tmpfs has beyond the output limit
INPUT_SLACK = 256 * 1024
#: a job tmpfs with less room than this left is full
FULL_BELOW = 64 * 1024


class SandboxUnavailable(Exception):
    """The sandbox cannot be set up here; the text says why, in one line."""


def refusal_line(reason: str) -> str:
    """The one line a job refused for want of a sandbox fails with (and the log says)."""
    return (
        f"jobs are refused: {reason}. Setting jobless.sandbox: off runs jobs without a sandbox, "
        "as the node's own user, with its data directory and key in reach (unsafe; docs/security.md)"
    )


@dataclass
class Slot:
    """One job's tmpfs and cgroup, as the supervising process sees them."""

    number: int
    path: str
    cgroup: JobCgroup

    @property
    def ctldir(self) -> str:
        return os.path.join(self.path, "ctl")


def _node_package_dir() -> str:
    import node

    return os.path.dirname(os.path.abspath(node.__file__))


def python_paths() -> list[str]:
    """Every directory the running interpreter may import from, and its prefixes."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, _node_package_dir(),
             os.path.dirname(os.path.realpath(sys.executable))}
    cwd = os.getcwd()
    for entry in sys.path:
        if entry and os.path.abspath(entry) != cwd and os.path.exists(entry):
            paths.add(entry)
    return sorted(paths)


class Sandbox:
    def __init__(self, settings: SandboxSettings, area: str) -> None:
        self.settings = settings
        self.area = area
        self.root = os.path.join(area, "root")
        self.slots = os.path.join(area, "slots")
        self.host_net = -1
        self.oom_fd = -1
        self.hierarchy: Hierarchy | None = None
        self._count = 0

    # -- once per supervising process ---------------------------------------------------

    def open(self) -> None:
        """Build the jobs' root; raise SandboxUnavailable with the reason."""
        if os.geteuid() != 0:
            raise SandboxUnavailable(
                "the job sandbox needs the node to run as root (to give jobs a uid of their own, "
                "namespaces and a cgroup)"
            )
        try:
            self.hierarchy = find_hierarchy()
            sweep(self.hierarchy)
            self.host_net = os.open("/proc/self/ns/net", os.O_RDONLY)
            linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWNET)
            linux.make_private("/")
            linux.loopback_up()
            os.makedirs(self.area, mode=0o700, exist_ok=True)
            linux.mount("tmpfs", self.area, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0700,size=1m")
            os.mkdir(self.root, 0o755)
            os.mkdir(self.slots, 0o700)
            linux.mount("tmpfs", self.root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755,size=1m")
            self._build_root()
        except CgroupUnavailable as exc:
            raise SandboxUnavailable(str(exc)) from None
        except OSError as exc:
            raise SandboxUnavailable(f"cannot set up the job sandbox: {exc}") from None

    def _build_root(self) -> None:
        hidden = [os.path.realpath(p) for p in self.settings.hidden]
        symlinks = {p: os.readlink(p) for p in SYSTEM_PATHS if os.path.islink(p)}
        shown = [p for p in SYSTEM_PATHS if os.path.exists(p)]
        extra = [os.path.realpath(p) for p in (*python_paths(), *self.settings.read_only)]
        plan = plan_mounts(shown + [p for p in extra if os.path.exists(p)], hidden, symlinks)
        for name, target in plan.symlinks.items():
            os.symlink(target, self._inside(name))
        for path in plan.binds:
            target = self._inside(path)
            if os.path.isdir(path):
                os.makedirs(target, 0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
                open(target, "wb").close()
            linux.bind(path, target, read_only=True)
            self._read_only_submounts(path, target)
        for path in plan.masks:
            target = self._inside(path)
            if os.path.isdir(target):
                linux.mount("tmpfs", target, "tmpfs", linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV,
                            "size=4k,mode=0555")
            elif os.path.exists(target):
                linux.bind("/dev/null", target, read_only=True, recursive=False)
        for name in ("proc", "tmp", "job", "dev"):
            os.mkdir(self._inside("/" + name), 0o755)
        for name in DEVICES:
            open(self._inside("/dev/" + name), "wb").close()
            linux.bind("/dev/" + name, self._inside("/dev/" + name), read_only=False, recursive=False)
        os.mkdir(self._inside("/dev/shm"), 0o755)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, self._inside("/dev/" + name))
        linux.mount(None, self.root, None, READ_ONLY | linux.MS_REMOUNT, "mode=0755")

    def _read_only_submounts(self, path: str, target: str) -> None:
        """Mounts below a bound path (an /etc/hosts of its own, say) are read-only too."""
        prefix = target.rstrip("/") + "/"
        for point, _fstype, _options in linux.mounts():
            if point.startswith(prefix):
                try:
                    linux.mount(None, point, None, READ_ONLY | linux.MS_BIND | linux.MS_REMOUNT)
                except OSError:
                    pass

    def _inside(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def close(self) -> None:
        if self.host_net >= 0:
            os.close(self.host_net)
            self.host_net = -1

    # -- per job, in the supervising process ---------------------------------------------

    def new_slot(self) -> Slot:
        assert self.hierarchy is not None
        self._count += 1
        path = os.path.join(self.slots, str(self._count))
        os.mkdir(path, 0o700)
        size = max(self.settings.output, 1 << 20) + (1 << 20)
        try:
            linux.mount("tmpfs", path, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                        f"mode=0755,size={size},nr_inodes={MAX_INODES}")
        except OSError:
            os.rmdir(path)
            raise
        uid, gid = self.settings.uid, self.settings.gid
        # ctl/ is root's: the job writes its stdout and stderr but cannot put anything else
        # (a link to a host file, say) where the supervisor reads them
        for name, mode, owner in (("work", 0o700, (uid, gid)), ("ctl", 0o755, (0, 0)),
                                  ("tmp", 0o1777, (0, 0)), ("shm", 0o1777, (0, 0))):
            sub = os.path.join(path, name)
            os.mkdir(sub)
            os.chmod(sub, mode)
            os.chown(sub, *owner)
        for name in ("stdout", "stderr"):  # the job's own, written by it
            fd = os.open(os.path.join(path, "ctl", name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchown(fd, uid, gid)
            os.close(fd)
        name = f"seamless-job-{os.getpid()}-{self._count}"
        try:
            cgroup = JobCgroup(self.hierarchy, name, memory=self.settings.memory,
                               max_processes=self.settings.max_processes)
        except OSError:
            self._unmount(path)
            raise
        return Slot(self._count, path, cgroup)

    def before_fork(self) -> None:
        """The next child starts a PID namespace of its own (as its init)."""
        linux.unshare(linux.CLONE_NEWPID)

    def adopt(self, slot: Slot, pid: int) -> None:
        slot.cgroup.add(pid)

    def release(self, slot: Slot) -> None:
        slot.cgroup.remove()
        self._unmount(slot.path)

    def _unmount(self, path: str) -> None:
        try:
            linux.umount(path, linux.MNT_DETACH)
        except OSError:
            pass
        try:
            os.rmdir(path)
        except OSError:
            pass

    # -- in the job's process --------------------------------------------------------------

    def enter(self, slot: Slot) -> None:
        """In the forked child (root, init of its PID namespace): see only the jobs' root."""
        try:  # kept open: the job's process reads it after a failure (see limit_hit)
            self.oom_fd = os.open(slot.cgroup.oom_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.oom_fd = -1
        linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS)
        linux.make_private("/")
        rw = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NODEV
        for source, target in ((slot.path, JOB_DIR), (os.path.join(slot.path, "tmp"), "/tmp"),
                               (os.path.join(slot.path, "shm"), "/dev/shm")):
            inside = self._inside(target)
            linux.bind(source, inside, read_only=False, recursive=False)
            linux.mount(None, inside, None, rw)
        linux.mount("proc", self._inside("/proc"), "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        socket.sethostname("seamless-job")
        linux.pivot_root(self.root)

    def limit_hit(self) -> str | None:
        """In the job's process, after a failure: "memory" when the OOM killer struck a
        process of the job, "output" when its tmpfs is full (a full tmpfs also swallows
        the "No space left on device" its writer would have printed); else None."""
        if self.oom_fd >= 0 and (oom_kills(self.oom_fd) or 0) > 0:
            return "memory"
        try:
            st = os.statvfs(JOB_DIR)
        except OSError:
            return None
        return "output" if st.f_bavail * st.f_frsize < FULL_BELOW else None

    def restrict(self, input_bytes: int, network: bool) -> None:
        """In the job's process, once its spec is in: the last steps as root, then drop."""
        if input_bytes > INPUT_SLACK:  # bash jobs find their inputs as files there
            size = max(self.settings.output, 1 << 20) + input_bytes + (1 << 20)
            linux.mount(None, JOB_DIR, None, linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NODEV,
                        f"size={size}")
        if network:
            linux.setns(self.host_net, linux.CLONE_NEWNET)
        if self.host_net >= 0:
            os.close(self.host_net)
            self.host_net = -1
        linux.drop_bounding_set()
        os.setgroups([])
        os.setresgid(self.settings.gid, self.settings.gid, self.settings.gid)
        os.setresuid(self.settings.uid, self.settings.uid, self.settings.uid)
        linux.die_with_parent()  # a change of uid cleared it
        linux.no_new_privs()
        seccomp.install()
        env = job_environment(os.path.join(sys.prefix, "bin"), dict(os.environ))
        os.environ.clear()
        os.environ.update(env)
