"""The container's process: who it runs as, with what limits, and the final execve(2).

Order matters and follows credentials(7) and capabilities(7): resource limits and the umask
first; then supplementary groups, gid and uid, with keep-caps set so the permitted set
survives the uid change; then the capability sets; then no_new_privs (prctl(2)), which must
come after anything that needs privilege; execve last. Introduced by the namespaces stage
(2008); chroot and jail run the program as the caller.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
from collections.abc import Sequence

from minirun.errors import SyscallError, errno_hint
from minirun.isolation import capabilities, syscalls

PR_SET_KEEPCAPS = 8
RLIM_INFINITY_SPEC = (1 << 64) - 1


def set_rlimits(limits: Sequence[tuple[str, int, int]]) -> None:
    for name, soft, hard in limits:
        kind = getattr(resource, name)
        values = (_rlim(soft), _rlim(hard))
        try:
            resource.setrlimit(kind, values)
        except (OSError, ValueError) as error:
            code = error.errno if isinstance(error, OSError) and error.errno else errno.EPERM
            raise SyscallError("setrlimit", f"{name}, soft={soft}, hard={hard}", code) from None


def _rlim(value: int) -> int:
    return resource.RLIM_INFINITY if value == RLIM_INFINITY_SPEC else value


def set_oom_score_adj(value: int) -> None:
    with open("/proc/self/oom_score_adj", "w") as stream:
        stream.write(str(value))


def set_identity(uid: int, gid: int, groups: Sequence[int],
                 caps: dict[str, tuple[str, ...]] | None) -> None:
    """Become ``uid``:``gid`` with ``groups``, then set the capability sets."""
    if caps is not None:
        # Dropping from the bounding set needs CAP_SETPCAP, which a non-root uid loses.
        capabilities.drop_bounding(capabilities.mask(caps.get("bounding", ())))
        syscalls.prctl(PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS, 1")
    _call("setgroups", str(list(groups)), os.setgroups, list(groups))
    _call("setresgid", f"{gid}, {gid}, {gid}", os.setresgid, gid, gid, gid)
    _call("setresuid", f"{uid}, {uid}, {uid}", os.setresuid, uid, uid, uid)
    if caps is not None:
        syscalls.prctl(PR_SET_KEEPCAPS, 0, "PR_SET_KEEPCAPS, 0")
        capabilities.set_process_sets(caps)


def _call(name: str, described: str, function: object, *args: object) -> None:
    try:
        function(*args)  # type: ignore[operator]
    except OSError as error:
        raise SyscallError(name, described, error.errno or 0) from None


def set_no_new_privileges() -> None:
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS, 1")


def reset_signals() -> None:
    """Give the program default signal dispositions and an empty mask.

    Python ignores SIGPIPE and SIGXFSZ and minirun's own handlers would be inherited as
    ignored; a program must not start with them.
    """
    for number in range(1, signal.NSIG):
        if number in (signal.SIGKILL, signal.SIGSTOP) or 32 <= number < signal.SIGRTMIN:
            continue
        try:
            signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def find_program(name: str, env: dict[str, str]) -> str:
    """Resolve ``name`` against the container's PATH, as execvp(3) would."""
    if "/" in name:
        if not os.path.exists(name):
            raise SyscallError("execve", f"{name} (no such file in the container)",
                               errno.ENOENT, hint="")
        return name
    for directory in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SyscallError("execve", f"{name} (not found in PATH={env.get('PATH', '')})",
                       errno.ENOENT, hint="")


def exec_program(args: Sequence[str], env: dict[str, str]) -> None:
    path = find_program(args[0], env)
    try:
        os.execve(path, list(args), env)
    except OSError as error:
        code = error.errno or errno.ENOEXEC
        raise SyscallError("execve", path, code, hint=exec_hint(path, code)) from None


def exec_hint(path: str, code: int) -> str | None:
    """Name the likely cause of a misleading exec error."""
    if code != errno.ENOENT:
        return errno_hint("execve", code)
    try:
        with open(path, "rb") as stream:
            head = stream.read(256)
    except OSError:
        return None
    if head.startswith(b"#!"):
        line = head.split(b"\n", 1)[0]
        interpreter = line[2:].strip().split(b" ")[0]
        if line.endswith(b"\r"):
            return (f"{path} has a CRLF line ending: the kernel looks for the interpreter "
                    f"{interpreter.decode(errors='replace')!r} with a carriage return; "
                    "convert the file to LF line endings")
        return f"{path} asks for the interpreter {interpreter.decode(errors='replace')}, " \
               "which is missing in the container"
    if head.startswith(b"\x7fELF"):
        return (f"{path} is a dynamically linked program whose loader (its PT_INTERP, "
                "for example /lib64/ld-linux-x86-64.so.2) is missing in the container")
    return None
