"""Namespaces: what a process can see of pids, mounts, hosts, networks, IPC, cgroups, users.

Each kind has three spellings that a student meets: the runtime-spec's name (``mount``), the
name under /proc/PID/ns (``mnt``) and the clone(2) flag (``CLONE_NEWNS``). They live together
in :class:`Namespace`, in the order minirun creates them. See namespaces(7), unshare(2),
setns(2). The chroot stage has none; jail (2001) brings mount, uts and network; namespaces
(2008) brings pid, ipc, cgroup and user.
"""

from __future__ import annotations

import enum
import os

from minirun.isolation import syscalls


class Namespace(enum.Enum):
    # value: (OCI name, /proc/PID/ns name, clone flag); the user namespace comes first
    # because every other namespace created after it is owned by it.
    USER = ("user", "user", 0x10000000)
    MOUNT = ("mount", "mnt", 0x00020000)
    UTS = ("uts", "uts", 0x04000000)
    NETWORK = ("network", "net", 0x40000000)
    IPC = ("ipc", "ipc", 0x08000000)
    CGROUP = ("cgroup", "cgroup", 0x02000000)
    PID = ("pid", "pid", 0x20000000)
    TIME = ("time", "time", 0x00000080)

    @property
    def oci_name(self) -> str:
        return self.value[0]

    @property
    def proc_name(self) -> str:
        return self.value[1]

    @property
    def clone_flag(self) -> int:
        return self.value[2]

    @property
    def flag_name(self) -> str:
        return "CLONE_NEW" + ("NS" if self is Namespace.MOUNT else
                              "NET" if self is Namespace.NETWORK else self.name)

    @classmethod
    def from_oci(cls, name: str) -> Namespace:
        for kind in cls:
            if kind.oci_name == name:
                return kind
        raise ValueError(name)


def flag_names(kinds: frozenset[Namespace] | set[Namespace]) -> str:
    return "|".join(kind.flag_name for kind in Namespace if kind in kinds)


def unshare(kinds: frozenset[Namespace] | set[Namespace]) -> None:
    """Give the calling process new namespaces of ``kinds`` (a new pid namespace takes effect
    for its next child only, see pid_namespaces(7))."""
    flags = 0
    for kind in kinds:
        flags |= kind.clone_flag
    if flags:
        syscalls.unshare(flags, flag_names(kinds))


def join(kind: Namespace, path: str) -> None:
    """Enter the existing namespace at ``path`` (for example /proc/PID/ns/net)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        join_fd(kind, fd, path)
    finally:
        os.close(fd)


def join_fd(kind: Namespace, fd: int, path: str) -> None:
    """Enter the namespace behind ``fd`` (opened from ``path``)."""
    syscalls.setns(fd, kind.clone_flag, f"{path}, {kind.flag_name}")
