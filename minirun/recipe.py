"""The container set-up as one flat, ordered list of steps, built from config.json and a stage.

``minirun run`` executes the list and ``minirun run --explain`` prints it, so the teaching view
cannot drift from what runs. A step says which system call it makes, with what arguments, and
which stage introduced it. Fields of the config that the chosen stage leaves out are listed
with the stage that would apply them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from minirun import hooks as hooks_module
from minirun.errors import ConfigError, MiniRunError, SyscallError, UnsupportedError
from minirun.isolation import (
    devices,
    mounts,
    network,
    overlay,
    paths,
    process,
    rootfs,
    syscalls,
)
from minirun.isolation import namespaces as namespaces_module
from minirun.isolation.namespaces import Namespace, flag_names
from minirun.isolation.overlay import Overlay
from minirun.record import record
from minirun.spec import Spec
from minirun.stages import Stage

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    from minirun.hooks import Hook

# Namespaces each stage may create, in the order history added them.
_STAGE_NAMESPACES = {
    Stage.JAIL: {Namespace.MOUNT, Namespace.UTS, Namespace.NETWORK},
    Stage.NAMESPACES: {Namespace.PID, Namespace.IPC, Namespace.CGROUP, Namespace.USER},
}

# Mount types whose file system belongs to a namespace the jail stage does not have yet.
_NAMESPACED_MOUNT_TYPES = {"proc": "pid", "mqueue": "ipc", "cgroup": "cgroup",
                           "cgroup2": "cgroup"}

# Fields no stage carries out yet. At the oci stage they are refused; earlier stages list
# them as left out. Remove an entry when its feature lands.
NOT_YET = {
    "linux.intelRdt": "Intel RDT",
    "process.apparmorProfile": "AppArmor profiles",
    "process.selinuxLabel": "SELinux labels",
    "linux.mountLabel": "SELinux mount labels",
    "linux.timeOffsets": "time namespace offsets",
    "linux.netDevices": "network devices moved into the container",
    "linux.memoryPolicy": "NUMA memory policies",
    "process.execCPUAffinity": "CPU affinity for the container's process",
}


class Context:
    """What the steps share inside the container process."""

    def __init__(self, error_fd: int, ready_fd: int = -1, console: int = -1,
                 go_fd: int = -1) -> None:
        self.error_fd = error_fd
        self.go_fd = go_fd  # the runtime writes one byte here once its hooks have run
        self.host_pid = 0
        self.ready_fd = ready_fd
        self.console = console
        self.started = False  # past `minirun start`: nobody reads the error pipe any more
        self.root_fd = -1
        self.proc_fd = -1
        self.fifo_fd = -1
        self.env: dict[str, str] = dict(os.environ)


@record
class Step:
    stage: Stage
    text: str
    action: Callable[[Context], None]


class Recipe:
    """The steps of one container, and what the runtime needs to know to carry them out."""

    def __init__(self, spec: Spec, stage: Stage, namespaces: frozenset[Namespace],
                 cgroup: str | None = None, overlay: Overlay | None = None,
                 preserve_fds: int = 0, no_pivot: bool = False,
                 container_id: str = "") -> None:
        self.spec = spec
        self.stage = stage
        self.namespaces = namespaces
        self.cgroup = cgroup  # the container's cgroup directory on the host, if it has one
        self.overlay = overlay  # image layers to stack on the rootfs (image stage)
        self.joins: tuple[tuple[Namespace, str], ...] = ()  # existing namespaces (path)
        self.preserve_fds = preserve_fds  # descriptors 3 .. 3+N-1 the container keeps
        self.no_pivot = no_pivot  # MS_MOVE + chroot instead of pivot_root (ramdisk root)
        self.container_id = container_id
        self.hooks: dict[str, tuple[Hook, ...]] = {}
        self.runtime_notes: list[str] = []  # what the runtime does, for explain
        self.steps: list[Step] = []
        self.left_out: list[str] = []

    def runtime_hooks(self) -> tuple[Hook, ...]:
        """The hooks the runtime itself runs once the container's namespaces exist."""
        return self.hooks.get("prestart", ()) + self.hooks.get("createRuntime", ())

    def hook_state(self, status: str, pid: int) -> dict[str, object]:
        return hooks_module.state(self.container_id, status, pid, self.spec.bundle,
                                  self.spec.raw.get("annotations") or {})

    def add(self, stage: Stage, text: str, action: Callable[[Context], None]) -> None:
        self.steps.append(Step(stage, text, action))

    def leave_out(self, what: str, stage: Stage | None) -> None:
        if stage is None:
            self.left_out.append(f"{what}: not supported by minirun yet")
        else:
            self.left_out.append(f"{what}: applied from stage {stage.label} ({stage.year})")

    def explain(self) -> list[str]:
        lines = [f"stage {self.stage.label} ({self.stage.year}): {self.stage.summary}"]
        lines.extend(f"  {'runtime: ' + note:<72} [cgroups]" for note in self.runtime_notes)
        if self.namespaces:
            lines.append(f"  {'unshare(' + flag_names(self.namespaces) + ')':<72} "
                         f"[{_ns_stage(self.namespaces)}]")
            for kind, path in self.joins:
                lines.append(f"  {'setns(' + path + ', ' + kind.flag_name + ')':<72} [oci]")
            if Namespace.PID in self.namespaces:
                lines.append(f"  {'fork() -> pid 1 of the new pid namespace':<72} "
                             f"[{Stage.NAMESPACES.label}]")
        for step in self.steps:
            lines.append(f"  {step.text:<72} [{step.stage.label}]")
        lines.extend(f"  left out: {item}" for item in self.left_out)
        return lines


def _ns_stage(kinds: frozenset[Namespace]) -> str:
    late = kinds & _STAGE_NAMESPACES[Stage.NAMESPACES]
    return Stage.NAMESPACES.label if late else Stage.JAIL.label


def build(spec: Spec, stage: Stage, cgroup: str | None = None,
          overlay: Overlay | None = None, fifo: str | None = None,
          console: bool = False, no_pivot: bool = False, preserve_fds: int = 0,
          container_id: str = "") -> Recipe:
    """Turn ``spec`` into the ordered steps that ``stage`` carries out; ``cgroup`` is the
    container's cgroup directory when the cgroup manager made one, ``overlay`` the image
    layers when the rootfs is assembled from an image."""
    if overlay is not None and not stage.has(Stage.IMAGE):
        raise UnsupportedError(f"running an image needs stage image or oci, not {stage.label}"
                               " (or unpack it first: minirun unpack IMAGE BUNDLE)")
    recipe = Recipe(spec, stage, _namespaces(spec, stage), cgroup, overlay,
                    preserve_fds=preserve_fds, no_pivot=no_pivot, container_id=container_id)
    _check_unsupported(spec, stage, recipe, console)
    _hooks(spec, stage, recipe)
    if fifo is not None:
        recipe.add(Stage.OCI, f"open({fifo}, O_PATH); open(/proc, O_PATH) (for the start "
                   "handshake)", lambda ctx: _open_fifo(ctx, fifo))
    if stage.has(Stage.JAIL):
        _jail_root(spec, stage, recipe)
    else:
        recipe.add(Stage.CHROOT, f"chroot({spec.root})", lambda ctx: rootfs.chroot(spec.root))
        for item in ("mounts", "hostname"):
            if spec.raw.get(item):
                recipe.leave_out(item, Stage.JAIL)
        for entry in spec.namespaces:
            if entry.kind in _STAGE_NAMESPACES[Stage.JAIL]:
                recipe.leave_out(f"linux.namespaces[{entry.index}] ({entry.kind.oci_name} "
                                 "namespace)", Stage.JAIL)
    _process(spec, stage, recipe)
    _cgroup_steps(spec, stage, recipe)
    return recipe


def build_process(spec: Spec, console: bool = False, detach: bool = False,
                  cgroup: str | None = None) -> Recipe:
    """The steps of a process that joins an existing container (``minirun exec``)."""
    recipe = Recipe(spec, Stage.OCI, frozenset(), cgroup)
    _check_unsupported(spec, Stage.OCI, recipe, console)
    _process(spec, Stage.OCI, recipe)
    if cgroup is not None:
        recipe.steps.insert(0, Step(Stage.CGROUPS, f"read(sync pipe): wait until the runtime "
                                    f"has moved this process into {cgroup}",
                                    _wait_for_cgroup))
    if detach:
        # A detached process outlives minirun: it must not die with its parent.
        recipe.steps.insert(len(recipe.steps) - 1, Step(
            Stage.OCI, "prctl(PR_SET_PDEATHSIG, 0)",
            lambda ctx: syscalls.prctl(syscalls.PR_SET_PDEATHSIG, 0, "PR_SET_PDEATHSIG, 0")))
    return recipe


def _namespaces(spec: Spec, stage: Stage) -> frozenset[Namespace]:
    if not stage.has(Stage.JAIL):
        return frozenset()
    allowed = set(_STAGE_NAMESPACES[Stage.JAIL])
    if stage.has(Stage.NAMESPACES):
        allowed |= _STAGE_NAMESPACES[Stage.NAMESPACES]
    wanted = {entry.kind for entry in spec.namespaces if entry.path is None}
    # pivot_root needs a mount namespace of its own, whatever the config says.
    return frozenset((wanted & allowed) | {Namespace.MOUNT})


def _check_unsupported(spec: Spec, stage: Stage, recipe: Recipe, console: bool) -> None:
    for dotted, what in NOT_YET.items():
        value: object = spec.raw
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value:
            if stage is Stage.OCI:
                raise UnsupportedError(f"{spec.file}: {dotted}: {what} are not supported by "
                                       "minirun yet")
            recipe.leave_out(dotted, None)
    for entry in spec.namespaces:
        where = f"linux.namespaces[{entry.index}]"
        if entry.path is not None:
            if entry.kind in (Namespace.MOUNT, Namespace.USER):
                raise UnsupportedError(f"{spec.file}: {where}.path: joining an existing "
                                       f"{entry.kind.oci_name} namespace is not supported by "
                                       "minirun yet")
            if not stage.has(Stage.OCI):
                recipe.leave_out(f"{where}.path (join {entry.path})", Stage.OCI)
                continue
            if not os.path.exists(entry.path):
                raise ConfigError(spec.file, f"{where}.path", f"{entry.path} does not exist")
            recipe.joins += ((entry.kind, entry.path),)
        if entry.kind is Namespace.TIME:
            raise UnsupportedError(f"{spec.file}: {where}.type: time namespaces are not "
                                   "supported by minirun yet")
        if entry.kind in _STAGE_NAMESPACES[Stage.NAMESPACES] and not stage.has(
                Stage.NAMESPACES):
            recipe.leave_out(f"{where} ({entry.kind.oci_name} namespace)", Stage.NAMESPACES)
    if spec.process.terminal and not console:
        raise UnsupportedError(f"{spec.file}: process.terminal: a terminal needs "
                               "--console-socket (minirun create) to hand the pty to; or set "
                               "process.terminal to false")
    if (spec.uid_mappings or spec.gid_mappings) and not spec.namespace(Namespace.USER):
        raise ConfigError(spec.file, "linux.uidMappings",
                          "id mappings need a user namespace in linux.namespaces")
    if spec.namespace(Namespace.USER) and stage.has(Stage.NAMESPACES) and not (
            spec.uid_mappings and spec.gid_mappings):
        raise ConfigError(spec.file, "linux.uidMappings",
                          "a user namespace needs uidMappings and gidMappings")


def _jail_root(spec: Spec, stage: Stage, recipe: Recipe) -> None:
    root = spec.root
    recipe.add(Stage.JAIL, "mount(none -> /, MS_REC|MS_PRIVATE)",
               lambda ctx: rootfs.make_private())
    layers = recipe.overlay
    if layers is not None:
        recipe.add(Stage.IMAGE, layers.describe(root), lambda ctx: overlay.mount(layers, root))
    recipe.add(Stage.JAIL, f"mount({root} -> {root}, bind, MS_BIND|MS_REC)",
               lambda ctx: rootfs.bind_onto_itself(root))
    recipe.add(Stage.JAIL, f"open({root}, O_PATH|O_DIRECTORY)", lambda ctx: _open_root(ctx, root))
    for entry in spec.mounts:
        need = _NAMESPACED_MOUNT_TYPES.get(entry.type or "")
        if need == "cgroup" and recipe.cgroup is not None:
            need = None  # the container's own cgroup is bound there (see _mount_plan)
        if need and not stage.has(Stage.NAMESPACES):
            recipe.leave_out(f"{entry.where} ({entry.type} on {entry.destination}, needs its "
                             f"own {need} namespace)", Stage.NAMESPACES)
            continue
        plan = _mount_plan(spec, entry.index, recipe)
        if plan is None:
            continue
        needs_stage = Stage.NAMESPACES if need else Stage.JAIL
        recipe.add(needs_stage, plan.describe() + " (mount point inside the rootfs)",
                   functools.partial(_perform_mount, plan))
    if stage.has(Stage.NAMESPACES):
        recipe.add(Stage.NAMESPACES, f"mount(/dev/X -> /dev/X, bind) for {devices.describe()}",
                   lambda ctx: devices.populate(ctx.root_fd))
    _config_devices(spec, stage, recipe)
    for hook in recipe.hooks.get("createContainer", ()):
        recipe.add(Stage.OCI, f"run hook {hook.where} {hook.path} (container namespaces)",
                   functools.partial(_run_hook, recipe, hook, "created"))
    if recipe.no_pivot:
        recipe.add(Stage.OCI, f"mount({root} -> /, MS_MOVE); chroot(.) (--no-pivot)",
                   lambda ctx: _move_root(ctx, root))
    else:
        recipe.add(Stage.JAIL, f"pivot_root({root}, {root}); umount2(old root, MNT_DETACH)",
                   lambda ctx: _pivot(ctx, root))
    # sysctls go first: readonlyPaths usually makes /proc/sys read-only.
    _sysctls(spec, stage, recipe)
    _oci_filesystem(spec, stage, recipe)
    namespaces = recipe.namespaces
    if spec.hostname is not None:
        if Namespace.UTS in namespaces:
            name = spec.hostname
            recipe.add(Stage.JAIL, f"sethostname({name!r})", lambda ctx: syscalls.sethostname(name))
        else:
            raise ConfigError(spec.file, "hostname", "setting a hostname needs a uts "
                                                     "namespace in linux.namespaces")
    if spec.domainname is not None and Namespace.UTS in namespaces:
        if stage.has(Stage.OCI):
            domain = spec.domainname
            recipe.add(Stage.OCI, f"setdomainname({domain!r})",
                       lambda ctx: syscalls.setdomainname(domain))
        else:
            recipe.leave_out("domainname", Stage.OCI)
    if Namespace.NETWORK in namespaces:
        recipe.add(Stage.JAIL, "ioctl(lo, SIOCSIFFLAGS, IFF_UP)", lambda ctx: network.bring_up())


def _sysctls(spec: Spec, stage: Stage, recipe: Recipe) -> None:
    if spec.sysctl:
        if stage.has(Stage.OCI):
            table = dict(spec.sysctl)
            recipe.add(Stage.OCI, f"write /proc/sys/... for {', '.join(table)}",
                       lambda ctx: _sysctl(table))
        else:
            recipe.leave_out("linux.sysctl", Stage.OCI)


# Files below /proc that a bind mount may replace: the ones lxcfs virtualises.
PROC_BIND_ALLOWED = frozenset({
    "/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
    "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
})


def _check_proc_destination(spec: Spec, index: int) -> None:
    """Refuse a mount that would put something else than procfs where the runtime and the
    kernel expect procfs: a fake /proc/self/attr bypasses LSM confinement (CVE-2019-16884)."""
    entry = spec.mounts[index]
    if entry.destination != "/proc" and not entry.destination.startswith("/proc/"):
        return
    if entry.destination == "/proc" and entry.type == "proc":
        return
    if entry.destination in PROC_BIND_ALLOWED and "bind" in (entry.type or "") + \
            " ".join(entry.options):
        return
    raise ConfigError(spec.file, f"{entry.where}.destination",
                      f"{entry.destination}: only procfs may be mounted on /proc, and below it "
                      "only binds of the files lxcfs provides (a fake /proc could mislead the "
                      "runtime and the kernel's security modules)")


def _config_devices(spec: Spec, stage: Stage, recipe: Recipe) -> None:
    """linux.devices: device nodes made with mknod(2) inside the rootfs."""
    entries = spec.raw.get("linux", {}).get("devices") or []
    if not entries:
        return
    if not stage.has(Stage.OCI):
        recipe.leave_out("linux.devices", Stage.OCI)
        return
    if not isinstance(entries, list):
        raise ConfigError(spec.file, "linux.devices", "must be an array")
    for i, entry in enumerate(entries):
        where = f"linux.devices[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(spec.file, where, "must be an object")
        path, kind = entry.get("path"), entry.get("type")
        if not isinstance(path, str) or not path.startswith("/dev/"):
            raise ConfigError(spec.file, f"{where}.path", "must be an absolute path under /dev")
        if kind not in ("c", "b", "u", "p"):
            raise ConfigError(spec.file, f"{where}.type", f"must be c, b, u or p, got {kind!r}")
        numbers = []
        for key in ("major", "minor"):
            value = entry.get(key, 0 if kind == "p" else None)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(spec.file, f"{where}.{key}", "must be a device number")
            numbers.append(value)
        mode = entry.get("fileMode", 0o666)
        owner = (entry.get("uid", 0), entry.get("gid", 0))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (mode, *owner)):
            raise ConfigError(spec.file, where, "fileMode, uid and gid must be integers")
        recipe.add(Stage.OCI, f"mknod({path}, {kind} {numbers[0]}:{numbers[1]}, {mode:o})",
                   functools.partial(_make_device, path, kind, numbers[0], numbers[1], mode,
                                     owner[0], owner[1]))


def _make_device(path: str, kind: str, major: int, minor: int, mode: int, uid: int, gid: int,
                 ctx: Context) -> None:
    devices.make_node(ctx.root_fd, path, kind, major, minor, mode, uid, gid)


def _mount_plan(spec: Spec, index: int, recipe: Recipe) -> mounts.MountPlan | None:
    _check_proc_destination(spec, index)
    entry = spec.mounts[index]
    fstype = entry.type
    if fstype in ("cgroup", "cgroup2") and recipe.cgroup is not None:
        options = (*(o for o in entry.options if o not in ("rw", "ro")), "ro")
        if Namespace.CGROUP in recipe.namespaces:
            # Inside its cgroup namespace a fresh cgroup2 mount shows the container's own
            # cgroup as the root (cgroup_namespaces(7)).
            return mounts.plan(entry.destination, "cgroup2", "cgroup", options, entry.where,
                               spec.bundle)
        # Without a cgroup namespace: bind the container's own cgroup directory, which the
        # runtime makes only after fork (so the source is not checked here).
        return mounts.MountPlan(entry.destination, None, recipe.cgroup,
                                syscalls.MS_BIND | syscalls.MS_REC | syscalls.MS_RDONLY
                                | syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
                                0, "", entry.where)
    if fstype in ("cgroup", "cgroup2"):
        # Without a cgroup of its own (no cgroup v2 here), a fresh cgroup2 mount would show
        # the host's tree, so the container gets an empty read-only directory instead.
        recipe.left_out.append(f"{entry.where} ({fstype} on {entry.destination}): no cgroup "
                               "for this container, an empty read-only tmpfs instead")
        return mounts.plan(entry.destination, "tmpfs", "cgroup", ("ro", "nosuid", "nodev",
                           "noexec", "size=0k"), entry.where, spec.bundle)
    if fstype == "sysfs" and Namespace.NETWORK not in recipe.namespaces:
        # sysfs belongs to the network namespace; without one, bind the host's read-only.
        options = (*(o for o in entry.options if o != "rw"), "rbind", "ro")
        return mounts.plan(entry.destination, None, "/sys", options, entry.where, spec.bundle)
    try:
        return mounts.plan(entry.destination, fstype, entry.source, entry.options,
                           entry.where, spec.bundle)
    except ValueError as error:
        raise ConfigError(spec.file, entry.where, str(error)) from None


def _oci_filesystem(spec: Spec, stage: Stage, recipe: Recipe) -> None:
    fields = {
        "linux.maskedPaths": spec.masked_paths,
        "linux.readonlyPaths": spec.readonly_paths,
        "linux.rootfsPropagation": spec.rootfs_propagation,
        "root.readonly": spec.root_readonly,
    }
    if not stage.has(Stage.OCI):
        for name, value in fields.items():
            if value:
                recipe.leave_out(name, Stage.OCI)
        return
    for path in spec.masked_paths:
        recipe.add(Stage.OCI, f"mount(/dev/null or empty tmpfs -> {path}) (maskedPaths)",
                   functools.partial(_mask, path))
    for path in spec.readonly_paths:
        recipe.add(Stage.OCI, f"mount({path} -> {path}, MS_BIND|MS_REC); remount MS_RDONLY",
                   functools.partial(_readonly, path))
    if spec.rootfs_propagation:
        mode = spec.rootfs_propagation
        recipe.add(Stage.OCI, f"mount(none -> /, {mode}) (rootfsPropagation)",
                   lambda ctx: rootfs.set_propagation(mode))
    if spec.root_readonly:
        recipe.add(Stage.OCI, "mount(none -> /, MS_REMOUNT|MS_BIND|MS_RDONLY)",
                   lambda ctx: rootfs.remount_root_readonly())


def _process(spec: Spec, stage: Stage, recipe: Recipe) -> None:
    proc = spec.process
    late = stage.has(Stage.NAMESPACES)
    cwd = proc.cwd
    # Created as root, before the uid change; entered after it, as the user.
    recipe.add(Stage.CHROOT, f"mkdir -p {cwd} (inside the root, never through a link out)",
               lambda ctx: _make_cwd(cwd))
    if proc.terminal:
        from minirun.isolation import terminal  # needs socket: imported only when used

        recipe.add(Stage.OCI, "openpty(); sendmsg(console socket, SCM_RIGHTS master); "
                   "setsid(); ioctl(slave, TIOCSCTTY); dup2(slave, 0/1/2)",
                   lambda ctx: terminal.attach(ctx.console, proc.user.uid, proc.user.gid))
    if any(step.text.startswith("open(") and "start handshake" in step.text
           for step in recipe.steps):
        program = proc.args[0]
        recipe.add(Stage.OCI, "report created; open(exec.fifo, O_WRONLY) blocks until "
                   "minirun start", lambda ctx: _wait_for_start(ctx, program))
    if recipe.hooks.get("startContainer"):
        # hooks.run imports subprocess when called: after pivot_root the host's Python
        # library is out of reach, so import it now, before the fork.
        import subprocess  # noqa: F401
    for hook in recipe.hooks.get("startContainer", ()):
        recipe.add(Stage.OCI, f"run hook {hook.where} {hook.path} (inside the container)",
                   functools.partial(_run_hook, recipe, hook, "created"))
    _scheduling(spec, stage, recipe)
    if late:
        limits = [(r.type, r.soft, r.hard) for r in proc.rlimits]
        if limits:
            recipe.add(Stage.NAMESPACES, "setrlimit(" + ", ".join(
                f"{name}={soft}/{hard}" for name, soft, hard in limits) + ")",
                lambda ctx: process.set_rlimits(limits))
        if proc.oom_score_adj is not None:
            if stage.has(Stage.OCI):
                value = proc.oom_score_adj
                recipe.add(Stage.OCI, f"write /proc/self/oom_score_adj <- {value}",
                           lambda ctx: process.set_oom_score_adj(value))
            else:
                recipe.leave_out("process.oomScoreAdj", Stage.OCI)
        user = proc.user
        if user.umask is not None:
            umask = user.umask
            recipe.add(Stage.NAMESPACES, f"umask({umask:04o})", lambda ctx: _umask(umask))
        caps = proc.capabilities if proc.capabilities is not None else {}
        sets = "; ".join(
            f"{name}={','.join(c.removeprefix('CAP_') for c in caps.get(name, ())) or '-'}"
            for name in ("bounding", "effective", "permitted", "inheritable", "ambient"))
        recipe.add(Stage.NAMESPACES,
                   f"setgroups({list(user.additional_gids)}); setresgid({user.gid}); "
                   f"setresuid({user.uid}); capset({sets}); prctl(PR_SET_PDEATHSIG, SIGKILL)",
                   lambda ctx: _set_identity(user.uid, user.gid, user.additional_gids, caps))
        if proc.no_new_privileges:
            recipe.add(Stage.NAMESPACES, "prctl(PR_SET_NO_NEW_PRIVS, 1)",
                       lambda ctx: process.set_no_new_privileges())
        env = dict(item.split("=", 1) for item in proc.env)
        home = "" if "HOME" in env else ", HOME from /etc/passwd"
        recipe.add(Stage.NAMESPACES, f"environment <- process.env ({len(env)} variables{home})",
                   lambda ctx: _set_env(ctx, env, user.uid))
    else:
        given: tuple[tuple[str, object], ...] = (
            ("process.user", proc.user.uid or proc.user.gid or proc.user.additional_gids
             or proc.user.umask is not None),
            ("process.capabilities", proc.capabilities is not None),
            ("process.rlimits", proc.rlimits),
            ("process.noNewPrivileges", proc.no_new_privileges),
            ("process.env", proc.env))
        for name, present in given:
            if present:
                recipe.leave_out(name, Stage.NAMESPACES)
    recipe.add(Stage.CHROOT, f"close_range({3 + recipe.preserve_fds}, ~0) but the error pipe",
               lambda ctx: syscalls.close_from(3 + recipe.preserve_fds,
                                               keep=(ctx.error_fd, ctx.ready_fd, ctx.console)))
    recipe.add(Stage.CHROOT, f"chdir({cwd})", lambda ctx: _enter_cwd(cwd))
    seccomp_config = spec.raw.get("linux", {}).get("seccomp")
    if seccomp_config:
        if stage.has(Stage.OCI):
            from minirun.isolation import syscall_filter

            # Compiled now, in the runtime, where libseccomp can still be imported.
            compiled = syscall_filter.compile_filter(seccomp_config, spec.file)
            recipe.add(Stage.OCI, f"seccomp(SECCOMP_SET_MODE_FILTER, {compiled.rules} rules, "
                       f"default {seccomp_config.get('defaultAction')})",
                       lambda ctx: compiled.load())
        else:
            recipe.leave_out("linux.seccomp", Stage.OCI)
    args = proc.args
    recipe.add(Stage.CHROOT, f"execve({args[0]}, {list(args)})",
               lambda ctx: process.exec_program(args, ctx.env))


def _cgroup_steps(spec: Spec, stage: Stage, recipe: Recipe) -> None:
    """Report limits the stage leaves out; with a cgroup, say what the runtime writes and
    have the container process wait for it (and then make its cgroup namespace)."""
    limits = spec.asks_for_limits()
    if not stage.has(Stage.CGROUPS):
        if limits:
            recipe.leave_out("linux.resources", Stage.CGROUPS)
        return
    if limits or stage is Stage.CGROUPS:
        from minirun.isolation import cgroups

        files = cgroups.resources_to_files(spec.resources, spec.file)
        where = spec.cgroups_path or f"minirun/{recipe.container_id or 'ID'}"
        recipe.runtime_notes.append(f"mkdir {where} under /sys/fs/cgroup; write " + (
            ", ".join(f"{name}={value}" for name, value in files.items()) or "no limits"))
        recipe.runtime_notes.append("write cgroup.procs <- the container process's pid")
    if recipe.cgroup is None:
        return
    first = [Step(Stage.CGROUPS, f"read(sync pipe): wait until the runtime has moved this "
                  f"process into {recipe.cgroup}", _wait_for_cgroup)]
    if Namespace.CGROUP in recipe.namespaces:
        first.append(Step(Stage.NAMESPACES, "unshare(CLONE_NEWCGROUP) (rooted at that cgroup)",
                          lambda ctx: namespaces_module.unshare({Namespace.CGROUP})))
    recipe.steps[0:0] = first


def _wait_for_cgroup(ctx: Context) -> None:
    if os.read(ctx.go_fd, 1) != b"c":
        raise MiniRunError("the runtime did not place the container in its cgroup")


def _hooks(spec: Spec, stage: Stage, recipe: Recipe) -> None:
    parsed = hooks_module.parse(spec.raw.get("hooks"), spec.file)
    if not any(parsed.values()):
        return
    if not stage.has(Stage.OCI):
        recipe.leave_out("hooks", Stage.OCI)
        return
    recipe.hooks = parsed
    # The state hooks read names the container's pid as the host sees it: read it while the
    # host's /proc is still the one mounted.
    recipe.add(Stage.OCI, "readlink(/proc/self) (the pid hooks are told)", _note_host_pid)
    if recipe.runtime_hooks():
        recipe.add(Stage.OCI, "read(sync pipe): wait while the runtime runs prestart and "
                   "createRuntime hooks", _wait_for_runtime_hooks)


def _note_host_pid(ctx: Context) -> None:
    ctx.host_pid = int(os.readlink("/proc/self"))


def _wait_for_runtime_hooks(ctx: Context) -> None:
    if os.read(ctx.go_fd, 1) != b"h":
        raise MiniRunError("the runtime's createRuntime hooks did not finish")


def _run_hook(recipe: Recipe, hook: Hook, status: str, ctx: Context) -> None:
    hooks_module.run((hook,), recipe.hook_state(status, ctx.host_pid))


def _scheduling(spec: Spec, stage: Stage, recipe: Recipe) -> None:
    """linux.personality, process.ioPriority and process.scheduler (oci stage)."""
    linux = spec.raw.get("linux") or {}
    raw_process = spec.raw.get("process") or {}
    given = {"linux.personality": linux.get("personality"),
             "process.ioPriority": raw_process.get("ioPriority"),
             "process.scheduler": raw_process.get("scheduler")}
    if not stage.has(Stage.OCI):
        for name, value in given.items():
            if value:
                recipe.leave_out(name, Stage.OCI)
        return
    if given["linux.personality"]:
        domain = process.personality_domain(given["linux.personality"], spec.file)
        recipe.add(Stage.OCI, f"personality({domain:#x})",
                   lambda ctx: process.set_personality(domain))
    if given["process.ioPriority"]:
        value = process.io_priority(given["process.ioPriority"], spec.file)
        recipe.add(Stage.OCI, f"ioprio_set(IOPRIO_WHO_PROCESS, 0, {value:#x})",
                   lambda ctx: process.set_io_priority(value))
    if given["process.scheduler"]:
        policy, priority, nice = process.scheduler(given["process.scheduler"], spec.file)
        recipe.add(Stage.OCI, f"sched_setscheduler(0, {policy}, {priority}); nice {nice}",
                   lambda ctx: process.set_scheduler(policy, priority, nice))


def _set_identity(uid: int, gid: int, groups: tuple[int, ...],
                  caps: dict[str, tuple[str, ...]]) -> None:
    import signal

    process.set_identity(uid, gid, groups, caps)
    # A new uid or gid clears the parent-death signal (prctl(2)): armed again, a container
    # of a non-root user still dies with minirun (a detached one clears it later on purpose).
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG, SIGKILL")


def _open_fifo(ctx: Context, fifo: str) -> None:
    # Opened now, while the host's paths are visible; reopened for writing through /proc
    # after pivot_root, when the container's own root hides the state directory.
    ctx.fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
    ctx.proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _wait_for_start(ctx: Context, program: str) -> None:
    from minirun.runtime import READY

    process.find_program(program, ctx.env)  # a missing program fails create, not start
    # From here the container outlives the runtime: it must not die with its parent.
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, 0, "PR_SET_PDEATHSIG, 0")
    os.write(ctx.error_fd, READY)
    os.write(ctx.ready_fd, b"r")
    os.close(ctx.error_fd)
    os.close(ctx.ready_fd)
    ctx.error_fd = ctx.ready_fd = -1
    ctx.started = True
    fd = os.open(f"self/fd/{ctx.fifo_fd}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=ctx.proc_fd)
    os.write(fd, b"0")
    for item in (fd, ctx.fifo_fd, ctx.proc_fd):
        os.close(item)


def _open_root(ctx: Context, root: str) -> None:
    ctx.root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _pivot(ctx: Context, root: str) -> None:
    os.close(ctx.root_fd)
    ctx.root_fd = -1
    rootfs.pivot(root)


def _perform_mount(plan: mounts.MountPlan, ctx: Context) -> None:
    mounts.perform(plan, ctx.root_fd)


def _mask(path: str, ctx: Context) -> None:
    mounts.mask(path)


def _move_root(ctx: Context, root: str) -> None:
    os.close(ctx.root_fd)
    ctx.root_fd = -1
    rootfs.move_onto_root(root)


def _readonly(path: str, ctx: Context) -> None:
    if os.path.exists(path):
        mounts.make_readonly(path)


def _sysctl(table: dict[str, str]) -> None:
    for key, value in table.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as stream:
                stream.write(value)
        except OSError as error:
            raise SyscallError("write", f"{path} <- {value!r} (linux.sysctl.{key})",
                                        error.errno or 0) from None


def _umask(value: int) -> None:
    os.umask(value)


def _set_env(ctx: Context, env: dict[str, str], uid: int) -> None:
    ctx.env = dict(env)
    if "HOME" not in ctx.env:
        # As runc and crun do: the user's home from the container's /etc/passwd, else /.
        ctx.env["HOME"] = _home_of(uid)


def _home_of(uid: int) -> str:
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid) and fields[5].startswith("/"):
                    return fields[5]
    except OSError:
        pass
    return "/"


def _make_cwd(cwd: str) -> None:
    root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(paths.make_dirs(root_fd, cwd))
    except SyscallError as error:
        raise MiniRunError(f"process.cwd {cwd}: {error.message}", error.hint) from None
    finally:
        os.close(root_fd)


def _enter_cwd(cwd: str) -> None:
    root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = paths.open_in_root(root_fd, cwd, os.O_PATH | os.O_DIRECTORY)
    finally:
        os.close(root_fd)
    try:
        os.fchdir(fd)
    except OSError as error:  # EACCES: the user may not search it
        raise SyscallError("chdir", f"{cwd} (process.cwd)", error.errno or 0) from None
    finally:
        os.close(fd)
    try:
        where = os.getcwd()
    except OSError:
        where = ""
    if not where.startswith("/"):
        raise MiniRunError(f"process.cwd {cwd}: the working directory is outside the "
                           "container's root")
