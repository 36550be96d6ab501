"""What a job may see: the sandbox's settings and the pure logic of its file system.

A job's root is a fresh, read-only tmpfs holding only:

* the system's programs and libraries, read-only (``/usr``, ``/bin``, ``/lib*``,
  ``/sbin``, ``/etc``; on merged-usr systems the top-level ones are symlinks, kept as
  such);
* the Python installation the node runs on (its prefixes, every ``sys.path`` entry, the
  node's own package), read-only, at the same paths, so that a Python job (a fork of its
  worker) can still import, and ``python`` in a bash job is the node's interpreter;
* the extra read-only paths an operator lists (``jobless.sandbox_paths``);
* ``/job`` (the job's own tmpfs: ``work/`` is the working directory and ``HOME``,
  ``ctl/`` holds stdout and stderr), ``/tmp`` and ``/dev/shm`` (on the same tmpfs, so
  they count toward the job's output limit), a fresh ``/proc`` of the job's own PID
  namespace, and ``/dev/null``, ``zero``, ``full``, ``random``, ``urandom``.

Everything else is absent: the node's data directory, key, configuration, store,
database and other jobs' directories among them. Should one of the node's own paths lie
inside a directory that is shown (a data directory inside the virtual environment, say),
it is masked: an empty read-only directory or an empty file is mounted over it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: the system's directories shown read-only when they exist
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
#: device nodes bound into the job's /dev
DEVICES = ("null", "zero", "full", "random", "urandom")
#: paths the sandbox makes itself: nothing of the host is shown there
RESERVED = ("/proc", "/tmp", "/dev", "/job", "/sys")
#: network policies (jobless.network)
NETWORK_POLICIES = ("none", "requested", "always")


@dataclass(frozen=True)
class SandboxSettings:
    """How a supervising process (a local worker, a Dask or Slurm runner) sandboxes jobs."""

    enabled: bool = True
    #: the unprivileged user and group jobs run as (when the node runs as root)
    uid: int = 65534
    gid: int = 65534
    #: extra paths shown read-only (reference data, tools)
    read_only: tuple[str, ...] = ()
    #: the node's own paths, never shown (masked where they lie inside a shown path)
    hidden: tuple[str, ...] = ()
    #: processes (and threads) a job may have at once
    max_processes: int = 4096
    #: bytes of memory for the job's whole process tree (0: no limit)
    memory: int = 0
    #: bytes the job may write in all (files, stdout, stderr), beyond its inputs
    output: int = 1 << 30

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str) -> "SandboxSettings":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SandboxSettings":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("read_only", "hidden"):
            values[key] = tuple(values.get(key) or ())
        return cls(**values)


def network_allowed(policy: str, powers: object) -> bool:
    """Whether a job gets the host's network: never under ``none``, always under
    ``always``; under ``requested`` when its environment's ``powers`` ask for
    ``network``."""
    if policy == "always":
        return True
    if policy == "requested":
        return isinstance(powers, dict) and bool(powers.get("network"))
    return False


def is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def topmost(paths: list[str]) -> list[str]:
    """The paths without those inside another one of them (each shown once), sorted."""
    result: list[str] = []
    for path in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if path != "/" and not any(is_within(path, kept) for kept in result):
            result.append(path)
    return sorted(result)


@dataclass(frozen=True)
class MountPlan:
    #: host paths shown read-only at the same path
    binds: tuple[str, ...]
    #: node paths inside a shown path, to be masked
    masks: tuple[str, ...]
    #: top-level symlinks to recreate (name -> target), e.g. /bin -> usr/bin
    symlinks: dict[str, str] = field(default_factory=dict)


def plan_mounts(shown: list[str], hidden: list[str], symlinks: dict[str, str]) -> MountPlan:
    """*shown*: resolved, existing paths to show read-only; *hidden*: resolved node paths;
    *symlinks*: top-level system paths that are symlinks (shown as symlinks instead).

    Shown paths inside a hidden path or a reserved one (``/tmp``, ``/proc``...) are
    dropped (a sys.path entry inside the data directory shows nothing of it); hidden
    paths inside a shown one become masks."""
    hidden_top = topmost([h for h in hidden if h != "/"])
    shown = [p for p in shown if not any(is_within(p, r) for r in RESERVED)]
    binds = [p for p in topmost(shown) if not any(is_within(p, h) for h in hidden_top)]
    binds = [p for p in binds if p not in symlinks]
    masks = sorted(h for h in hidden_top if any(is_within(h, b) and h != b for b in binds))
    return MountPlan(tuple(binds), tuple(masks), dict(symlinks))


def job_environment(prefix_bin: str, source: dict[str, str]) -> dict[str, str]:
    """The environment a sandboxed job starts with: nothing of the node's but the locale."""
    env = {
        "PATH": os.pathsep.join([prefix_bin, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": "/job/work",
        "TMPDIR": "/tmp",
        "USER": "seamless-job",
    }
    for key in ("LANG", "LC_ALL", "TZ"):
        if key in source:
            env[key] = source[key]
    return env
