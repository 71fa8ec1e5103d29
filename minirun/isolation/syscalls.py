"""The thin layer between minirun and the kernel.

Every system call minirun makes that Python's :mod:`os` does not offer goes through here, by
ctypes with declared argument types. Each wrapper raises :class:`SyscallError` naming the call,
its arguments (flags by name) and the errno symbol, so a failure reads like
``mount(proc -> /proc, MS_NOSUID|MS_NODEV): EPERM``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from minirun.errors import SyscallError

_libc = ctypes.CDLL(None, use_errno=True)

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.sethostname.restype = ctypes.c_int
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long

# x86_64 system call numbers for calls glibc 2.36 has no wrapper for.
SYS_PIVOT_ROOT = 155
SYS_CLOSE_RANGE = 436
SYS_OPENAT2 = 437

# mount(2) flags, in the order `describe_mount_flags` prints them.
MOUNT_FLAGS: dict[str, int] = {
    "MS_RDONLY": 0x1,
    "MS_NOSUID": 0x2,
    "MS_NODEV": 0x4,
    "MS_NOEXEC": 0x8,
    "MS_SYNCHRONOUS": 0x10,
    "MS_REMOUNT": 0x20,
    "MS_MANDLOCK": 0x40,
    "MS_DIRSYNC": 0x80,
    "MS_NOSYMFOLLOW": 0x100,
    "MS_NOATIME": 0x400,
    "MS_NODIRATIME": 0x800,
    "MS_BIND": 0x1000,
    "MS_MOVE": 0x2000,
    "MS_REC": 0x4000,
    "MS_SILENT": 0x8000,
    "MS_UNBINDABLE": 0x20000,
    "MS_PRIVATE": 0x40000,
    "MS_SLAVE": 0x80000,
    "MS_SHARED": 0x100000,
    "MS_RELATIME": 0x200000,
    "MS_STRICTATIME": 0x1000000,
    "MS_LAZYTIME": 0x2000000,
}
MS_RDONLY = MOUNT_FLAGS["MS_RDONLY"]
MS_NOSUID = MOUNT_FLAGS["MS_NOSUID"]
MS_NODEV = MOUNT_FLAGS["MS_NODEV"]
MS_NOEXEC = MOUNT_FLAGS["MS_NOEXEC"]
MS_REMOUNT = MOUNT_FLAGS["MS_REMOUNT"]
MS_BIND = MOUNT_FLAGS["MS_BIND"]
MS_REC = MOUNT_FLAGS["MS_REC"]
MS_PRIVATE = MOUNT_FLAGS["MS_PRIVATE"]
MS_SLAVE = MOUNT_FLAGS["MS_SLAVE"]
MS_SHARED = MOUNT_FLAGS["MS_SHARED"]
MS_UNBINDABLE = MOUNT_FLAGS["MS_UNBINDABLE"]
MNT_DETACH = 2

# openat2(2) resolve flags.
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_CHILD_SUBREAPER = 36


def describe_mount_flags(flags: int) -> str:
    names = [name for name, bit in MOUNT_FLAGS.items() if flags & bit]
    return "|".join(names) if names else "0"


def _fail(call: str, args: str) -> SyscallError:
    return SyscallError(call, args, ctypes.get_errno())


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None, *, shown_target: str | None = None) -> None:
    """mount(2). ``shown_target`` names the target in errors when ``target`` is a /proc fd."""
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        what = f"{source or 'none'} -> {shown_target or target}"
        if fstype:
            what += f", type {fstype}"
        what += f", {describe_mount_flags(flags)}"
        if data:
            what += f", {data}"
        raise _fail("mount", what)


def umount2(target: str, flags: int) -> None:
    if _libc.umount2(_b(target), flags) != 0:
        raise _fail("umount2", f"{target}, {'MNT_DETACH' if flags & MNT_DETACH else flags}")


def pivot_root(new_root: str, put_old: str) -> None:
    if _libc.syscall(SYS_PIVOT_ROOT, _b(new_root), _b(put_old)) != 0:
        raise _fail("pivot_root", f"{new_root}, {put_old}")


def unshare(flags: int, described: str) -> None:
    if _libc.unshare(flags) != 0:
        raise _fail("unshare", described)


def setns(fd: int, nstype: int, described: str) -> None:
    if _libc.setns(fd, nstype) != 0:
        raise _fail("setns", described)


def sethostname(name: str) -> None:
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) != 0:
        raise _fail("sethostname", repr(name))


def setdomainname(name: str) -> None:
    raw = name.encode()
    if _libc.setdomainname(raw, len(raw)) != 0:
        raise _fail("setdomainname", repr(name))


def prctl(option: int, arg2: int, described: str, arg3: int = 0) -> None:
    if _libc.prctl(option, arg2, arg3, 0, 0) != 0:
        raise _fail("prctl", described)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` below ``dirfd`` under the ``resolve`` restrictions."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(SYS_OPENAT2, ctypes.c_int(dirfd), _b(path), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        raise _fail("openat2", f"{path}, RESOLVE_IN_ROOT" if resolve & RESOLVE_IN_ROOT
                    else path)
    return int(fd)


def close_from(first: int, keep: Iterable[int] = ()) -> None:
    """Close every descriptor from ``first`` up but those in ``keep`` (close_range(2))."""
    kept = sorted(fd for fd in keep if fd >= first)
    start = first
    for fd in [*kept, None]:
        end = (fd - 1) if fd is not None else 0xFFFFFFFF
        if start <= end and _libc.syscall(SYS_CLOSE_RANGE, ctypes.c_uint(start),
                                          ctypes.c_uint(end), ctypes.c_uint(0)) != 0:
            raise _fail("close_range", f"{start}, {end}, 0")
        if fd is not None:
            start = fd + 1
