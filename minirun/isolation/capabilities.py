"""Capabilities: root's power cut into pieces, and which pieces the container keeps.

A process has five sets (capabilities(7)): bounding (the most it can ever gain), permitted,
effective (what the kernel checks), inheritable and ambient (what survives execve of a
program without file capabilities). The namespaces stage (2008, LXC) drops what the config
does not list. Inheritable and ambient stay empty unless the config asks for them: non-empty
defaults let a non-root program regain capabilities across execve (CVE-2022-27650).

The sets are written with capset(2) and prctl(2) directly: python-prctl (used for the
parent-death signal and no_new_privs) knows neither the ambient set nor capabilities newer
than CAP_BPF.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterable

from minirun.errors import SyscallError
from minirun.isolation import syscalls

# capability.h numbering; CAP_LAST_CAP is 40 on 6.x kernels.
NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def number(name: str) -> int | None:
    try:
        return NAMES.index(name)
    except ValueError:
        return None


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as stream:
            return int(stream.read())
    except OSError:
        return len(NAMES) - 1


def mask(names: Iterable[str]) -> int:
    bits = 0
    for name in names:
        cap = number(name)
        if cap is not None:
            bits |= 1 << cap
    return bits


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        raise SyscallError("capset", f"effective={effective:#x}, permitted={permitted:#x}, "
                                     f"inheritable={inheritable:#x}", ctypes.get_errno())


def drop_bounding(keep: int) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last_cap() + 1):
        if not keep & (1 << cap):
            try:
                syscalls.prctl(PR_CAPBSET_DROP, cap, f"PR_CAPBSET_DROP, {NAMES[cap]}")
            except SyscallError as error:
                if error.errno != errno.EINVAL:  # EINVAL: the kernel does not know it
                    raise


def set_process_sets(sets: dict[str, tuple[str, ...]]) -> None:
    """Set effective, permitted, inheritable and ambient; the bounding set is dropped first,
    while still root, by :func:`drop_bounding` (see process.py for the order)."""
    inheritable = mask(sets.get("inheritable", ()))
    _capset(mask(sets.get("effective", ())), mask(sets.get("permitted", ())), inheritable)
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL,
                   "PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL")
    for name in sets.get("ambient", ()):
        cap = number(name)
        if cap is not None:
            syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE,
                           f"PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, {name} (an ambient "
                           "capability must be permitted and inheritable too)", cap)
