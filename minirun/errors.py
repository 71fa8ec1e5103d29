"""Errors that reach the user as one line (plus an optional hint), never as a traceback.

Each error names what failed: the file and JSON path of a config field, or the syscall with
its arguments, flags by name and the errno symbol. Errors raised in the container's child
process after fork are serialised with :meth:`MiniRunError.to_wire` and rebuilt in the parent
with :func:`from_wire`, so they are printed once, intact, by the command line.
"""

from __future__ import annotations

import errno as _errno
import json
import os

# Exit statuses of minirun itself (the container's own status is passed through otherwise).
EXIT_FAILURE = 1
EXIT_USAGE = 2


class MiniRunError(Exception):
    """An error with a one-line message and an optional hint line."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> bytes:
        return json.dumps(
            {"kind": type(self).__name__, "message": self.message, "hint": self.hint,
             "exit": self.exit_code}
        ).encode()


class ConfigError(MiniRunError):
    """config.json (or another input file) is missing, unreadable or wrong."""

    exit_code = EXIT_USAGE

    def __init__(self, file: str, path: str, problem: str, hint: str | None = None) -> None:
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {problem}", hint)
        self.file = file
        self.path = path


class UnsupportedError(MiniRunError):
    """The host or the chosen stage cannot do what was asked."""

    exit_code = EXIT_USAGE


class SyscallError(MiniRunError):
    """A system call failed; the message reads like ``mount(proc -> /x, MS_NOSUID): EPERM``."""

    def __init__(self, call: str, args: str, err: int, hint: str | None = None) -> None:
        name = _errno.errorcode.get(err, str(err))
        message = f"{call}({args}): {name} ({os.strerror(err)})"
        super().__init__(message, hint if hint is not None else errno_hint(call, err))
        self.call = call
        self.errno = err


# Errno values that mislead: where they happen, what they usually mean.
_HINTS: dict[tuple[str, int], str] = {
    ("pivot_root", _errno.EINVAL): (
        "pivot_root needs: the new root to be a mount point, not on the same mount as the "
        "current root, a private (not shared) parent mount, and put_old under the new root; "
        "on a ramdisk root (initramfs) it cannot work: use --no-pivot"
    ),
    ("pivot_root", _errno.EBUSY): "the new root or put_old is already mounted on itself",
    ("execve", _errno.ENOENT): (
        "the program or its interpreter is missing: check the #! line (a CRLF line ending "
        "makes '/bin/sh\\r' the interpreter) and that the dynamic loader exists in the rootfs"
    ),
    ("execve", _errno.EACCES): "the file is not executable, or its file system is noexec",
    ("unshare", _errno.EPERM): (
        "creating namespaces needs root (CAP_SYS_ADMIN); for user namespaces, check "
        "/proc/sys/kernel/unprivileged_userns_clone and /proc/sys/user/max_user_namespaces"
    ),
    ("unshare", _errno.ENOSPC): "a namespace limit in /proc/sys/user/ is reached",
    ("write uid_map", _errno.EPERM): (
        "a uid map may be written once, by a process with CAP_SETUID in the parent user "
        "namespace, and must map ranges that the writer owns; some distributions restrict "
        "user namespaces (kernel.apparmor_restrict_unprivileged_userns)"
    ),
    ("write gid_map", _errno.EPERM): (
        "a gid map needs 'deny' in setgroups first when the writer lacks CAP_SETGID; "
        "see user_namespaces(7)"
    ),
    ("write cgroup.subtree_control", _errno.EBUSY): (
        "cgroup v2's no-internal-processes rule: a cgroup with processes in it cannot "
        "enable controllers for its children; move the processes into a leaf first"
    ),
    ("mount", _errno.ENODEV): "the file system type is not known to this kernel",
    ("setrlimit", _errno.EPERM): (
        "raising a hard limit above the current one needs CAP_SYS_RESOURCE in minirun "
        "itself (RLIMIT_NOFILE is also capped by /proc/sys/fs/nr_open)"
    ),
}


def errno_hint(call: str, err: int) -> str | None:
    return _HINTS.get((call, err))


def from_wire(data: bytes) -> MiniRunError:
    """Rebuild an error sent by a child process; unknown data still makes a readable error."""
    try:
        fields = json.loads(data)
        error = MiniRunError(str(fields["message"]), fields.get("hint"))
        error.exit_code = int(fields.get("exit", EXIT_FAILURE))
    except (ValueError, KeyError, TypeError):
        text = data.decode(errors="replace").strip()
        error = MiniRunError(f"container set-up failed: {text or 'no message'}")
    return error
