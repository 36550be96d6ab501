"""A seccomp filter for jobs: the kernel interfaces a job has no use for, refused.

Most local privilege escalations start from an interface an unprivileged process may
use: making a user namespace (in which it holds every capability), io_uring, bpf,
perf events, userfaultfd, the kernel keyrings. A job needs none of them, so after it has
dropped its privileges (``no_new_privs`` is set first, as the kernel requires) it
installs a classic BPF filter that answers them with EPERM:

* ``unshare`` and ``clone`` with ``CLONE_NEWUSER`` in their flags (other flags pass:
  ``fork`` and threads are ``clone``);
* ``clone3`` with ENOSYS, whose flags sit in memory a filter cannot read (the C
  library then falls back to ``clone``);
* ``keyctl``, ``add_key``, ``request_key``, ``bpf``, ``io_uring_*``,
  ``perf_event_open``, ``userfaultfd``, ``open_by_handle_at``, module and kexec calls;
* every system call of another ABI than the machine's own (on x86-64: i386 and x32),
  through which a filter keyed on numbers could be bypassed.

The filter is pure data (``program``); ``install`` loads it into the calling process,
and every process the job starts inherits it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

#: (audit arch, system call numbers) per machine
_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_CALLS = {
    "x86_64": {
        "unshare": 272, "clone": 56, "clone3": 435,
        "denied": [250, 248, 249, 321, 425, 426, 427, 298, 323, 304, 175, 313, 176, 246, 320],
    },
    "aarch64": {
        "unshare": 97, "clone": 220, "clone3": 435,
        "denied": [219, 217, 218, 280, 425, 426, 427, 241, 282, 265, 105, 273, 106, 104, 294],
    },
}
CLONE_NEWUSER = 0x10000000
X32_BIT = 0x40000000

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
ALLOW = 0x7FFF0000
_ERRNO = 0x00050000


def _errno(code: int) -> int:
    return _ERRNO | code


def program(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter for *machine*, as (code, jt, jf, k) instructions; [] if unknown."""
    if machine not in _ARCH:
        return []
    calls = _CALLS[machine]
    denied = calls["denied"]
    assert isinstance(denied, list)
    ops: list[tuple[int, int, int, int]] = [
        (_LD_ABS, 0, 0, 4),  # arch
        (_JEQ, 1, 0, _ARCH[machine]),
        (_RET, 0, 0, _errno(errno.ENOSYS)),  # another ABI
        (_LD_ABS, 0, 0, 0),  # system call number
    ]
    if machine == "x86_64":
        ops += [(_JGE, 0, 1, X32_BIT), (_RET, 0, 0, _errno(errno.ENOSYS))]
    ops += [(_JEQ, 0, 1, int(calls["clone3"])), (_RET, 0, 0, _errno(errno.ENOSYS))]
    for number in denied:
        ops += [(_JEQ, 0, 1, number), (_RET, 0, 0, _errno(errno.EPERM))]
    # unshare and clone: look at the flags (the low word of the first argument)
    ops += [
        (_JEQ, 2, 0, int(calls["unshare"])),
        (_JEQ, 1, 0, int(calls["clone"])),
        (_RET, 0, 0, ALLOW),
        (_LD_ABS, 0, 0, 16),
        (_JSET, 0, 1, CLONE_NEWUSER),
        (_RET, 0, 0, _errno(errno.EPERM)),
        (_RET, 0, 0, ALLOW),
    ]
    return ops


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> bool:
    """Load the filter into this process (no_new_privs must be set); False when this
    machine has no filter here. Raises OSError if the kernel refuses it."""
    ops = program(platform.machine())
    if not ops:
        return False
    data = b"".join(struct.pack("<HBBI", *op) for op in ops)
    buffer = ctypes.create_string_buffer(data, len(data))
    prog = _Program(len(ops), ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_seccomp, seccomp_mode_filter = 22, 2
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
    return True
