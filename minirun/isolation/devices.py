"""The default devices every container gets in /dev (runtime-spec config-linux.md).

Each device node is bound from the host's /dev onto an empty file in the container's /dev;
binding works inside user namespaces too, where mknod(2) is refused. Symlinks complete the
usual layout. Introduced by the namespaces stage (2008).
"""

from __future__ import annotations

import os
import stat

from minirun.errors import SyscallError
from minirun.isolation import paths, syscalls

DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEFAULT_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                 ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                 ("ptmx", "pts/ptmx"))


def populate(root_fd: int) -> None:
    """Bind the default device nodes and make the standard links under ``/dev``."""
    for name in DEFAULT_DEVICES:
        target_fd = paths.make_file(root_fd, f"/dev/{name}")
        try:
            syscalls.mount(f"/dev/{name}", paths.fd_path(target_fd), None, syscalls.MS_BIND,
                           shown_target=f"/dev/{name}")
        finally:
            os.close(target_fd)
    dev_fd = paths.make_dirs(root_fd, "/dev")
    try:
        for name, target in DEFAULT_LINKS:
            try:
                os.symlink(target, name, dir_fd=dev_fd)  # symlinkat takes an O_PATH dirfd
            except FileExistsError:
                pass
    finally:
        os.close(dev_fd)


def make_node(root_fd: int, path: str, kind: str, major: int, minor: int, mode: int,
              uid: int, gid: int) -> None:
    """mknod(2) one of config.json's ``linux.devices`` inside the root (c, b, u or p)."""
    types = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    parent, name = os.path.split(os.path.normpath("/" + path))
    parent_fd = paths.make_dirs(root_fd, parent)
    try:
        try:
            os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        device = os.makedev(major, minor) if kind != "p" else 0
        try:
            os.mknod(name, types[kind] | (mode & 0o7777), device, dir_fd=parent_fd)
            os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False)
        except OSError as error:
            raise SyscallError("mknod", f"{path}, {kind} {major}:{minor}",
                                        error.errno or 0) from None
    finally:
        os.close(parent_fd)


def describe() -> str:
    return ", ".join(f"/dev/{name}" for name in DEFAULT_DEVICES)

