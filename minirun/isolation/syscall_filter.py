"""seccomp: which system calls the container may make at all.

The runtime-spec's ``linux.seccomp`` (a default action, then rules naming syscalls, optional
argument comparisons and an action each) is compiled into a BPF filter by libseccomp through
its Python binding (Debian's python3-seccomp), and loaded last, right before execve, so the
set-up itself is not filtered (seccomp(2), seccomp_rule_add(3)). Part of the oci stage (2015).
A syscall this kernel or libseccomp does not know is skipped, as other runtimes do, so one
profile serves several kernels.
"""

from __future__ import annotations

from collections.abc import Mapping

from minirun.errors import ConfigError
from minirun.log import get as get_logger

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    from typing import Any

log = get_logger(__name__)

_ARCHES = {
    "SCMP_ARCH_X86": "X86", "SCMP_ARCH_X86_64": "X86_64", "SCMP_ARCH_X32": "X32",
    "SCMP_ARCH_ARM": "ARM", "SCMP_ARCH_AARCH64": "AARCH64", "SCMP_ARCH_MIPS": "MIPS",
    "SCMP_ARCH_MIPS64": "MIPS64", "SCMP_ARCH_MIPS64N32": "MIPS64N32",
    "SCMP_ARCH_MIPSEL": "MIPSEL", "SCMP_ARCH_MIPSEL64": "MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32": "MIPSEL64N32", "SCMP_ARCH_PPC": "PPC", "SCMP_ARCH_PPC64": "PPC64",
    "SCMP_ARCH_PPC64LE": "PPC64LE", "SCMP_ARCH_S390": "S390", "SCMP_ARCH_S390X": "S390X",
    "SCMP_ARCH_RISCV64": "RISCV64",
}
_OPS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE", "SCMP_CMP_EQ": "EQ",
        "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT", "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}
_EPERM = 1


class Filter:
    """A compiled filter, ready to load in the container process."""

    def __init__(self, compiled: Any, rules: int) -> None:
        self.compiled = compiled
        self.rules = rules

    def load(self) -> None:
        from minirun.errors import SyscallError

        try:
            self.compiled.load()
        except OSError as error:
            raise SyscallError("seccomp", f"SECCOMP_SET_MODE_FILTER, {self.rules} rules",
                               error.errno or 0) from None


def compile_filter(config: Mapping[str, Any], file: str) -> Filter:
    """Build the filter from ``linux.seccomp``; every bad field is named by its JSON path."""
    import seccomp

    where = "linux.seccomp"
    default = _action(seccomp, config.get("defaultAction"), config.get("defaultErrnoRet"),
                      file, f"{where}.defaultAction")
    compiled = seccomp.SyscallFilter(defaction=default)
    for i, name in enumerate(config.get("architectures") or []):
        arch = _ARCHES.get(name)
        if arch is None:
            raise ConfigError(file, f"{where}.architectures[{i}]", f"unknown architecture "
                                                                   f"{name!r}")
        try:
            compiled.add_arch(getattr(seccomp.Arch, arch))
        except (OSError, ValueError, AttributeError, RuntimeError):
            # The native architecture is in every filter already (EEXIST).
            log.debug("seccomp: architecture %s already present or unsupported", name)
    if config.get("listenerPath"):
        raise ConfigError(file, f"{where}.listenerPath", "seccomp notification listeners are "
                                                         "not supported by minirun yet")
    rules = 0
    for i, rule in enumerate(config.get("syscalls") or []):
        path = f"{where}.syscalls[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(file, path, "must be an object")
        action = _action(seccomp, rule.get("action"), rule.get("errnoRet"), file,
                         f"{path}.action")
        if action == default:
            continue  # libseccomp refuses a rule that repeats the default action
        conditions = [_arg(seccomp, arg, file, f"{path}.args[{j}]")
                      for j, arg in enumerate(rule.get("args") or [])]
        for name in rule.get("names") or []:
            rules += _add(compiled, action, name, conditions)
    return Filter(compiled, rules)


def _add(compiled: Any, action: Any, name: str, conditions: list[tuple[int, Any]]) -> int:
    # libseccomp takes one comparison per argument index in a rule; several on the same
    # index mean "any of them", so each becomes a rule of its own.
    indexes = [index for index, _ in conditions]
    args = [arg for _, arg in conditions]
    groups = [args] if len(set(indexes)) == len(indexes) else [[a] for a in args]
    added = 0
    for group in groups:
        try:
            compiled.add_rule(action, name, *group)
            added += 1
        except (ValueError, OSError, RuntimeError, TypeError) as error:
            log.debug("seccomp: skipping %s: %s", name, error)
    return added


def _action(seccomp: Any, name: object, errno_ret: object, file: str, path: str) -> Any:
    errno_value = errno_ret if isinstance(errno_ret, int) else _EPERM
    actions = {
        "SCMP_ACT_KILL": lambda: seccomp.KILL,
        "SCMP_ACT_KILL_THREAD": lambda: seccomp.KILL,
        "SCMP_ACT_KILL_PROCESS": lambda: seccomp.KILL_PROCESS,
        "SCMP_ACT_TRAP": lambda: seccomp.TRAP,
        "SCMP_ACT_ERRNO": lambda: seccomp.ERRNO(errno_value),
        "SCMP_ACT_TRACE": lambda: seccomp.TRACE(errno_value),
        "SCMP_ACT_ALLOW": lambda: seccomp.ALLOW,
        "SCMP_ACT_LOG": lambda: seccomp.LOG,
    }
    if name not in actions:
        raise ConfigError(file, path, f"unknown or unsupported seccomp action {name!r}")
    return actions[str(name)]()


def _arg(seccomp: Any, arg: object, file: str, path: str) -> tuple[int, Any]:
    if not isinstance(arg, dict):
        raise ConfigError(file, path, "must be an object")
    op = _OPS.get(str(arg.get("op")))
    index = arg.get("index")
    if op is None:
        raise ConfigError(file, f"{path}.op", f"unknown comparison {arg.get('op')!r}")
    if not isinstance(index, int) or not 0 <= index <= 5:
        raise ConfigError(file, f"{path}.index", "must be 0 to 5")
    value = int(arg.get("value") or 0)
    second = int(arg.get("valueTwo") or 0)
    if op == "MASKED_EQ":
        return index, seccomp.Arg(index, seccomp.MASKED_EQ, value, second)
    return index, seccomp.Arg(index, getattr(seccomp, op), value)
