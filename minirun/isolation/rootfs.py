"""The root change: which directory the container calls ``/``.

chroot(2) (1979) only changes how paths are looked up; a root process can chdir above it
again (see stages/chroot). pivot_root(2) (the jail stage, 2001) moves the whole mount
namespace onto the new root and lets the old one be detached, so there is nothing above to
climb to.
"""

from __future__ import annotations

import os

from minirun.errors import SyscallError
from minirun.isolation import syscalls
from minirun.isolation.syscalls import MNT_DETACH, MS_BIND, MS_PRIVATE, MS_REC

PROPAGATION = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC,
    "slave": syscalls.MS_SLAVE, "rslave": syscalls.MS_SLAVE | MS_REC,
    "shared": syscalls.MS_SHARED, "rshared": syscalls.MS_SHARED | MS_REC,
    "unbindable": syscalls.MS_UNBINDABLE, "runbindable": syscalls.MS_UNBINDABLE | MS_REC,
}


def chroot(rootfs: str) -> None:
    """chroot(2) into ``rootfs`` and stand at its top."""
    try:
        os.chroot(rootfs)
    except OSError as error:
        raise SyscallError("chroot", rootfs, error.errno or 0) from None
    os.chdir("/")


def make_private() -> None:
    """Stop mount events crossing between the host and the new mount namespace.

    Under systemd ``/`` is shared, so without this every mount the container makes would
    appear on the host too (mount_namespaces(7), "Shared subtrees").
    """
    syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)


def bind_onto_itself(rootfs: str) -> None:
    """pivot_root needs the new root to be a mount point: bind the directory onto itself."""
    syscalls.mount(rootfs, rootfs, None, MS_BIND | MS_REC)


def pivot(rootfs: str) -> None:
    """pivot_root into ``rootfs`` and detach the old root.

    pivot_root(".", ".") stacks the old root on top of the new one, so no put_old directory
    is needed inside the image; the unmount then removes the old root (pivot_root(2), NOTES).
    """
    os.chdir(rootfs)
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", MNT_DETACH)
    os.chdir("/")


def move_onto_root(rootfs: str) -> None:
    """Move the rootfs mount onto / and chroot into it: for a root on a ramdisk (initramfs),
    where pivot_root(2) is refused. The old root stays reachable to a process with
    CAP_SYS_CHROOT, as in the chroot stage."""
    os.chdir(rootfs)
    syscalls.mount(rootfs, "/", None, syscalls.MOUNT_FLAGS["MS_MOVE"])
    chroot(".")


def set_propagation(mode: str) -> None:
    syscalls.mount(None, "/", None, PROPAGATION[mode])


def remount_root_readonly() -> None:
    syscalls.mount(None, "/", None, syscalls.MS_REMOUNT | MS_BIND | syscalls.MS_RDONLY)
