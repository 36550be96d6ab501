"""The Linux calls a job sandbox is made of, through libc (ctypes): namespaces, mounts,
``pivot_root``, ``setns``, ``no_new_privs`` and bringing a network namespace's loopback up.

Each function raises ``OSError`` with the errno and the call that failed, so that a
sandbox that cannot be set up says exactly why. Nothing here decides anything: the plan
(``plan.py``) says what to mount, ``setup.py`` does it in order.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import fcntl
import os
import platform
import re
import socket
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

#: pivot_root's system call number, per machine (no libc wrapper exists)
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def bind(source: str, target: str, *, read_only: bool, recursive: bool = True) -> None:
    """Bind *source* at *target*; read-only binds are also nosuid and nodev."""
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if read_only:
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
        try:
            mount(None, target, None, flags)
        except OSError as exc:
            if exc.errno != errno_module.EPERM:
                raise
            # a mount that is nodev/noexec already keeps those flags (locked in a user namespace)
            mount(None, target, None, flags | _locked_flags(target))


def _locked_flags(target: str) -> int:
    st = os.statvfs(target)
    flags = 0
    if st.f_flag & os.ST_NOEXEC:
        flags |= MS_NOEXEC
    return flags


def make_private(path: str = "/") -> None:
    """Mounts below *path* stop propagating to and from other namespaces."""
    mount(None, path, None, MS_REC | MS_PRIVATE)


def pivot_root(new_root: str) -> None:
    """Make *new_root* (a mount point) the root, and detach the old root entirely."""
    number = _PIVOT_ROOT.get(platform.machine())
    os.chdir(new_root)
    if number is not None:
        _check(_libc.syscall(number, b".", b"."), "pivot_root")
        umount(".", MNT_DETACH)  # the old root, stacked under the new one
    else:  # no known number: move the new root over / and chroot into it
        mount(new_root, "/", None, MS_MOVE)
        os.chroot(".")
    os.chdir("/")


def drop_bounding_set() -> None:
    """Remove every capability from the bounding set: none can ever come back."""
    pr_capbset_drop = 24
    for cap in range(64):
        if _libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno_module.EINVAL:  # past the last capability
                return
            _check(-1, f"prctl(PR_CAPBSET_DROP, {cap})")


def die_with_parent() -> None:
    """SIGKILL this process when its parent ends (PR_SET_PDEATHSIG)."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def no_new_privs() -> None:
    """Neither setuid binaries nor file capabilities can raise privileges from here on."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def loopback_up() -> None:
    """Bring ``lo`` up in the current (new) network namespace."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack_from("16sH", fcntl.ioctl(s.fileno(), siocgifflags, request))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))


def mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, file system type, super options) of every mount this process sees,
    from /proc/self/mountinfo (whose paths escape space, tab, newline and backslash)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 3:
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                found.append((point, tail[0], set(tail[2].split(","))))
    return found


def write_file(path: str, text: str) -> None:
    """Write a small control file (cgroup, uid_map) in one call."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
