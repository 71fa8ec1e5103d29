"""Open paths so that they stay inside a directory, whatever symlinks and ``..`` they meet.

openat2(2) with RESOLVE_IN_ROOT resolves a path as if the directory fd were ``/`` after a
chroot: ``..`` stops at it, absolute symlinks start from it, and magic links (/proc/self/fd/N)
are refused with RESOLVE_NO_MAGICLINKS. The final component is then handled with the *at()
calls Python exposes (``dir_fd=``, ``follow_symlinks=False``), so nothing is ever opened through
a plain joined path. Needs Linux 5.6 or newer (see openat2(2)).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from minirun.errors import SyscallError, UnsupportedError

_SYS_OPENAT2 = 437  # x86_64 and the generic table alike
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """Raw openat2(2); returns an fd or raises OSError with the errno (EAGAIN retried)."""
    how = struct.pack("=QQQ", flags | os.O_CLOEXEC, mode, resolve)
    encoded = os.fsencode(path)
    for _attempt in range(64):
        fd = _syscall(
            ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(encoded),
            ctypes.c_char_p(how), ctypes.c_size_t(len(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        # EAGAIN: a concurrent rename raced the ".." check; the man page says to retry.
        if err != errno.EAGAIN:
            break
    if err == errno.ENOSYS:
        raise UnsupportedError("openat2(2) is missing: safe unpacking needs Linux 5.6 or newer")
    raise OSError(err, os.strerror(err), path)


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """Open ``path`` resolved inside ``root_fd`` as if it were ``/`` (chroot semantics)."""
    return openat2(root_fd, path or ".", flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, mode)


def open_beneath(dir_fd: int, path: str, flags: int) -> int:
    """Open ``path`` strictly below ``dir_fd``: no symlinks, no ``..`` out, no other mounts."""
    return openat2(dir_fd, path, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)


def open_dir(path: str) -> int:
    """An O_PATH fd on a directory given by the caller (trusted: the rootfs or the layout)."""
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SyscallError("open", f"{path}, O_PATH|O_DIRECTORY", exc.errno or 0) from exc
