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

from minirun.errors import ConfigError, SyscallError, errno_hint
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


PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}
IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}
SYS_IOPRIO_SET = 251
SCHED_POLICIES = {"SCHED_OTHER": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3,
                  "SCHED_IDLE": 5}


def personality_domain(raw: object, file: str) -> int:
    if not isinstance(raw, dict) or raw.get("domain") not in PERSONALITY_DOMAINS:
        raise ConfigError(file, "linux.personality.domain", "must be LINUX or LINUX32")
    if raw.get("flags"):
        raise ConfigError(file, "linux.personality.flags", "personality flags are not "
                                                           "supported by minirun yet")
    return PERSONALITY_DOMAINS[str(raw["domain"])]


def set_personality(domain: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.personality(ctypes.c_ulong(domain)) == -1:
        raise SyscallError("personality", f"{domain:#x}", ctypes.get_errno())


def io_priority(raw: object, file: str) -> int:
    if not isinstance(raw, dict) or raw.get("class") not in IOPRIO_CLASSES:
        raise ConfigError(file, "process.ioPriority.class", "must be IOPRIO_CLASS_RT, "
                                                            "IOPRIO_CLASS_BE or IOPRIO_CLASS_IDLE")
    level = raw.get("priority", 0)
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 7:
        raise ConfigError(file, "process.ioPriority.priority", "must be 0 to 7")
    return (IOPRIO_CLASSES[str(raw["class"])] << 13) | level


def set_io_priority(value: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_IOPRIO_SET, 1, 0, value) != 0:
        raise SyscallError("ioprio_set", f"IOPRIO_WHO_PROCESS, 0, {value:#x}",
                           ctypes.get_errno())


def scheduler(raw: object, file: str) -> tuple[int, int, int]:
    where = "process.scheduler"
    if not isinstance(raw, dict) or raw.get("policy") not in SCHED_POLICIES:
        raise ConfigError(file, f"{where}.policy", "must be one of " + ", ".join(SCHED_POLICIES)
                          + " (SCHED_DEADLINE is not supported by minirun yet)")
    for key in ("flags", "runtime", "deadline", "period"):
        if raw.get(key):
            raise ConfigError(file, f"{where}.{key}", "is not supported by minirun yet")
    values = []
    for key in ("priority", "nice"):
        value = raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, f"{where}.{key}", "must be an integer")
        values.append(value)
    return SCHED_POLICIES[str(raw["policy"])], values[0], values[1]


def set_scheduler(policy: int, priority: int, nice: int) -> None:
    _call("sched_setscheduler", f"0, {policy}, {priority}", os.sched_setscheduler, 0, policy,
          os.sched_param(priority))
    if nice:
        _call("setpriority", f"PRIO_PROCESS, 0, {nice}", os.setpriority, os.PRIO_PROCESS, 0,
              nice)


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


# As a shell does, and as podman and Docker report it: 127 when the program is not there,
# 126 when it is there but cannot be run.
EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126


def _exec_error(path: str, code: int, hint: str | None) -> SyscallError:
    error = SyscallError("execve", path, code, hint=hint)
    error.exit_code = EXIT_NOT_FOUND if code == errno.ENOENT else EXIT_CANNOT_RUN
    return error


def find_program(name: str, env: dict[str, str]) -> str:
    """Resolve ``name`` against the container's PATH, as execvp(3) would."""
    if "/" in name:
        if not os.path.exists(name):
            raise _exec_error(f"{name} (no such file in the container)", errno.ENOENT, "")
        return name
    for directory in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise _exec_error(f"{name} (not found in PATH={env.get('PATH', '')})", errno.ENOENT, "")


def exec_program(args: Sequence[str], env: dict[str, str]) -> None:
    path = find_program(args[0], env)
    try:
        os.execve(path, list(args), env)
    except OSError as error:
        code = error.errno or errno.ENOEXEC
        raise _exec_error(path, code, exec_hint(path, code)) from None


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
