"""Paths inside the container's root, resolved without ever leaving it.

An image may plant symlinks (``proc -> /tmp/x``, ``data -> ../../..``) so that a runtime
preparing a mount point or a working directory follows them onto the host (CVE-2021-30465,
CVE-2024-21626). Every lookup here goes through openat2(2) with RESOLVE_IN_ROOT, which treats
the rootfs as ``/`` for absolute symlinks and ``..``, and RESOLVE_NO_MAGICLINKS, which refuses
/proc/self/fd-style jumps. Missing directories are created one component at a time, each in a
directory already resolved inside the root.
"""

from __future__ import annotations

import errno
import os

from minirun.errors import MiniRunError, SyscallError
from minirun.isolation import syscalls

_RESOLVE = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
_MAX_LINKS = 40


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH, mode: int = 0) -> int:
    """Open ``path`` (taken as inside the root ``root_fd``) and return the descriptor."""
    return syscalls.openat2(root_fd, path.lstrip("/") or ".", flags, _RESOLVE, mode)


def _components(path: str) -> list[str]:
    return [part for part in os.path.normpath("/" + path).split("/") if part]


def make_dirs(root_fd: int, path: str, mode: int = 0o755) -> int:
    """Create ``path`` and its parents inside the root; return an O_PATH descriptor to it.

    A dangling symlink met on the way is followed inside the root: its target is created
    there, never on the host.
    """
    parts = _components(path)
    links = 0
    i = 0
    while i < len(parts):
        prefix = "/".join(parts[: i + 1])
        try:
            os.close(open_in_root(root_fd, prefix, os.O_PATH | os.O_DIRECTORY))
            i += 1
            continue
        except SyscallError as error:
            if error.errno != errno.ENOENT:
                raise
        parent_fd = open_in_root(root_fd, "/".join(parts[:i]), os.O_PATH | os.O_DIRECTORY)
        try:
            os.mkdir(parts[i], mode, dir_fd=parent_fd)
            i += 1
        except FileExistsError:
            # The name exists but did not resolve: a symlink whose target is missing.
            # Continue with the target spelled as a path inside the root.
            links += 1
            if links > _MAX_LINKS:
                raise SyscallError("mkdir", f"{path} (inside the rootfs)", errno.ELOOP) from None
            target = os.readlink(parts[i], dir_fd=parent_fd)
            base = "/" if target.startswith("/") else "/" + "/".join(parts[:i])
            parts = _components(os.path.join(base, target)) + parts[i + 1:]
            i = 0
        except OSError as error:
            raise SyscallError("mkdir", f"{'/' + prefix} (inside the rootfs)",
                               error.errno or errno.EIO) from None
        finally:
            os.close(parent_fd)
    return open_in_root(root_fd, "/".join(parts), os.O_PATH | os.O_DIRECTORY)


def make_file(root_fd: int, path: str) -> int:
    """Create an empty file at ``path`` inside the root (as a mount point for a file bind);
    return an O_PATH descriptor to it."""
    for _ in range(_MAX_LINKS):
        parent, name = os.path.split(os.path.normpath("/" + path))
        if not name:
            raise MiniRunError(f"{path}: a file mount point cannot be the root itself")
        parent_fd = make_dirs(root_fd, parent)
        try:
            return open_in_root(root_fd, path, os.O_PATH)
        except SyscallError as error:
            if error.errno != errno.ENOENT:
                raise
            try:
                # A dangling symlink: create its target, spelled inside the root.
                target = os.readlink(name, dir_fd=parent_fd)
            except OSError:
                return open_in_root(root_fd, path, os.O_CREAT | os.O_WRONLY | os.O_NOCTTY,
                                    0o644)
            path = os.path.join(parent if not target.startswith("/") else "/", target)
        finally:
            os.close(parent_fd)
    raise SyscallError("open", f"{path} (inside the rootfs)", errno.ELOOP)


def fd_path(fd: int) -> str:
    """The /proc path through which a mount(2) call reaches the object behind ``fd``."""
    return f"/proc/self/fd/{fd}"
