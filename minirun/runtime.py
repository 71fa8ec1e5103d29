"""Running a container: three processes and the pipes between them.

    minirun (the runtime, stays on the host)
      └─ init process: joins the cgroup, unshares the namespaces, forks and waits
           └─ container process: carries out the recipe's steps, then execve()

The init process exists because a new pid namespace applies only to children of the caller
(pid_namespaces(7)), and a user namespace must be created, and mapped by the runtime, before
the namespaces it will own. Errors in either child travel back over a close-on-exec pipe: if
the pipe reaches end-of-file without data, execve succeeded. Both children die with their
parent (PR_SET_PDEATHSIG), so killing minirun, even with SIGKILL, leaves no container behind;
mounts vanish with the mount namespace.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from minirun.errors import MiniRunError, SyscallError, from_wire
from minirun.isolation import namespaces, syscalls
from minirun.isolation.namespaces import Namespace
from minirun.isolation.process import reset_signals
from minirun.log import get as get_logger
from minirun.recipe import Context, Recipe
from minirun.record import record

log = get_logger(__name__)

# What the container process sends on the error pipe once it is created and waits for start.
READY = b"ready"

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)


class Aborted(MiniRunError):
    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} during set-up")
        self.exit_code = 128 + signum


@record
class Launch:
    """How the container is started: in the foreground (``run``), or created and left
    blocked until ``minirun start`` (``create``, ``run --detach``), or joined (``exec``)."""

    detach: bool = False
    join: tuple[tuple[Namespace, str], ...] = ()  # namespaces to enter with setns(2)
    console: int = -1  # a connected console socket: the pty master is sent over it
    on_pid: Callable[[int], None] | None = None  # told the container's host pid


class Hooks:
    """What the runtime does around the container, on the host (the cgroup manager)."""

    def __init__(self, place: Callable[[int], None] | None = None, cgroup: str | None = None,
                 cleanup: Callable[[], None] | None = None,
                 disarm: Callable[[], None] | None = None,
                 oom_killed: Callable[[], bool] | None = None) -> None:
        self.place = place  # put the container process into a cgroup
        self.cgroup = cgroup  # that cgroup's directory
        self.cleanup = cleanup
        self.disarm = disarm  # keep the cgroup after a successful create
        self.oom_killed = oom_killed


class _Pipes:
    def __init__(self) -> None:
        self.error_r, self.error_w = os.pipe2(os.O_CLOEXEC)   # children -> runtime: errors
        self.report_r, self.report_w = os.pipe2(os.O_CLOEXEC)  # init -> runtime: pid, status
        self.go_r, self.go_w = os.pipe2(os.O_CLOEXEC)          # runtime -> init: continue
        self.ready_r, self.ready_w = os.pipe2(os.O_CLOEXEC)    # container -> init: created

    def parent_side(self) -> None:
        for fd in (self.error_w, self.report_w, self.go_r, self.ready_r, self.ready_w):
            os.close(fd)

    def close_parent(self) -> None:
        for fd in (self.error_r, self.report_r, self.go_w):
            _close(fd)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def run(recipe: Recipe, hooks: Hooks | None = None, launch: Launch | None = None) -> int:
    """Run the container; in the foreground, return minirun's exit status; detached, return
    0 once the container is created and waits for ``minirun start``."""
    hooks = hooks or Hooks()
    launch = launch or Launch()
    pipes = _Pipes()
    sys.stdout.flush()
    sys.stderr.flush()
    runtime_pid = os.getpid()
    init_pid = os.fork()
    if init_pid == 0:
        _init_process(recipe, pipes, runtime_pid, launch)
    pipes.parent_side()
    if launch.console >= 0:
        os.close(launch.console)
    state = _Runtime(init_pid)
    previous = {sig: signal.signal(sig, state.on_signal) for sig in FORWARDED_SIGNALS}
    created = False
    try:
        if Namespace.USER in recipe.namespaces:
            _map_user_namespace(recipe, pipes, init_pid)
        reports = _LineReader(pipes.report_r)
        line = reports.next()
        if line.startswith("pid "):
            state.container_pid = int(line.split()[1])
            if hooks.place is not None:
                # Only the container's process joins the cgroup (minirun's init process
                # stays out of its limits); it waits for this, then enters its own cgroup
                # namespace, rooted at that cgroup.
                hooks.place(state.container_pid)
                os.write(pipes.go_w, b"c")
            if launch.on_pid is not None:
                launch.on_pid(state.container_pid)
            if recipe.runtime_hooks():
                from minirun import hooks as oci_hooks

                oci_hooks.run(recipe.runtime_hooks(),
                              recipe.hook_state("creating", state.container_pid))
                os.write(pipes.go_w, b"h")
        error = _read_all(pipes.error_r)
        if launch.detach and error in (READY, b""):  # created, or (exec -d) running
            state.reap()
            created = True
            return 0
        if error:
            state.kill_all()
            raise from_wire(error)
        state.started = True
        log.debug("container process %s is running %s", state.container_pid,
                  recipe.spec.process.args[0])
        _after_hooks(recipe, "poststart", "running", state.container_pid)
        line = reports.next() if state.container_pid else ""
        state.reap()
        if not line.startswith("exit "):
            raise MiniRunError("the container's init process ended without a status")
        status = int(line.split()[1])
        _after_hooks(recipe, "poststop", "stopped", state.container_pid)
        if hooks.oom_killed is not None and hooks.oom_killed():
            print("minirun: the container was killed by the OOM killer (memory.max reached)",
                  file=sys.stderr)
        return exit_status(status)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not created:
            state.kill_all()
        pipes.close_parent()
        if hooks.cleanup is not None and not created:
            hooks.cleanup()


def _after_hooks(recipe: Recipe, kind: str, status: str, pid: int) -> None:
    """poststart and poststop: a failure is reported, not fatal (config.md)."""
    if recipe.hooks.get(kind):
        from minirun import hooks as oci_hooks

        oci_hooks.run(recipe.hooks[kind], recipe.hook_state(status, pid), fatal=False)


def exit_status(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128 + the signal."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ \
            else f"signal {signum}"
        print(f"minirun: the container was killed by signal {signum} ({name})",
              file=sys.stderr)
        return 128 + signum
    return os.waitstatus_to_exitcode(status)


class _Runtime:
    """The runtime's view of its children, for signal forwarding and cleanup."""

    def __init__(self, init_pid: int) -> None:
        self.init_pid = init_pid
        self.container_pid = 0
        self.reaped = False
        self.forwarded: set[int] = set()
        self.started = False  # execve succeeded: the program can handle signals itself

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.started:
            # Before execve nothing would handle it (pid 1 ignores it, a hook may be running):
            # stop the set-up. A resize or a continue is no request to stop.
            if signum in (signal.SIGWINCH, signal.SIGCONT):
                return
            raise Aborted(signum)
        if signum in self.forwarded and signum in (signal.SIGINT, signal.SIGTERM):
            # Asked twice: a pid 1 without a handler ignores the forwarded signal.
            log.warning("%s again: killing the container", signal.Signals(signum).name)
            self._kill(self.container_pid, signal.SIGKILL)
            return
        self.forwarded.add(signum)
        self._kill(self.container_pid, signum)

    @staticmethod
    def _kill(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        if not self.reaped:
            os.waitpid(self.init_pid, 0)
            self.reaped = True

    def kill_all(self) -> None:
        """End the init process (its death ends the container through PDEATHSIG)."""
        if self.reaped:
            return
        if self.container_pid:
            self._kill(self.container_pid, signal.SIGKILL)
        self._kill(self.init_pid, signal.SIGKILL)
        self.reap()


class _LineReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 256)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


def _map_user_namespace(recipe: Recipe, pipes: _Pipes, init_pid: int) -> None:
    """Write the id maps of the init process's new user namespace (user_namespaces(7))."""
    reports = _LineReader(pipes.report_r)
    if reports.next() != "userns":
        error = _read_all(pipes.error_r)
        raise from_wire(error) if error else MiniRunError("the init process ended early")
    spec = recipe.spec
    for name, mappings in (("uid_map", spec.uid_mappings), ("gid_map", spec.gid_mappings)):
        text = "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)
        path = f"/proc/{init_pid}/{name}"
        try:
            with open(path, "w") as stream:
                stream.write(text)
        except OSError as error:
            raise SyscallError(f"write {name}", f"{path} <- {text.strip()!r}",
                                        error.errno or 0) from None
    os.write(pipes.go_w, b"g")


def _init_process(recipe: Recipe, pipes: _Pipes, runtime_pid: int, launch: Launch) -> None:
    """The first child: unshare or join, fork the container process, wait for it, report."""
    code = 1
    try:
        os.close(pipes.error_r)
        os.close(pipes.report_r)
        os.close(pipes.go_w)
        _die_with_parent(runtime_pid)
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # the runtime forwards them to the container
        # All namespace files are opened first: once inside the container's mount namespace,
        # /proc/PID of the host means nothing. The user namespace is entered first, since
        # it grants the rights to enter the ones it owns.
        opened = [(kind, path, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                  for kind, path in sorted(launch.join + recipe.joins,
                                           key=lambda item: item[0] is not Namespace.USER)]
        for kind, path, fd in opened:
            namespaces.join_fd(kind, fd, path)
            os.close(fd)
        if not launch.detach:
            # Orphans of the container come to this process, which ends them when the
            # container ends; without a pid namespace nothing else would.
            syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER, 1")
        # The host's /proc, kept open: pivot_root moves this process's root along with the
        # container's, and the orphans must still be found afterwards.
        proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        kinds = set(recipe.namespaces)
        if recipe.cgroup is not None:
            kinds.discard(Namespace.CGROUP)  # the container process makes it, once placed
        if Namespace.USER in kinds:
            _enter_user_namespace(pipes)
            kinds.discard(Namespace.USER)
        namespaces.unshare(kinds)
        child = os.fork()
        if child == 0:
            os.close(pipes.ready_r)
            _container_process(recipe, pipes.error_w, pipes.ready_w, launch, pipes.go_r)
        os.close(pipes.error_w)
        os.close(pipes.ready_w)
        os.write(pipes.report_w, f"pid {child}\n".encode())
        if launch.detach:
            # Created: the container process now waits for `minirun start` on its own,
            # reparented to init or to the caller's subreaper (conmon, containerd-shim).
            os.read(pipes.ready_r, 1)
            code = 0
            return
        _, status = os.waitpid(child, 0)
        _end_orphans(proc_fd)
        os.write(pipes.report_w, f"exit {status}\n".encode())
        code = 0
    except MiniRunError as error:
        _send(pipes.error_w, error)
    except BaseException as error:  # anything else still reaches the user as one line
        _send(pipes.error_w, MiniRunError(f"init process: {type(error).__name__}: {error}"))
    finally:
        os._exit(code)


def _end_orphans(proc_fd: int) -> None:
    """Kill and reap whatever the container left running (this process is their subreaper)."""
    me = os.getpid()
    for _ in range(100):
        try:
            fd = os.open(f"{me}/task/{me}/children", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
            try:
                children = [int(pid) for pid in os.read(fd, 65536).split()]
            finally:
                os.close(fd)
        except OSError:
            children = []
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        if not children:
            time.sleep(0.01)


def _enter_user_namespace(pipes: _Pipes) -> None:
    namespaces.unshare({Namespace.USER})
    os.write(pipes.report_w, b"userns\n")
    if os.read(pipes.go_r, 1) != b"g":
        raise MiniRunError("the runtime did not write the user namespace's id maps")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _die_with_parent(parent: int) -> None:
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG, SIGKILL")
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def _container_process(recipe: Recipe, error_fd: int, ready_fd: int, launch: Launch,
                       go_fd: int) -> None:
    """The second child: carry out every step; the last one is execve."""
    context = Context(error_fd, ready_fd, launch.console, go_fd)
    try:
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG, SIGKILL")
        reset_signals()
        for step in recipe.steps:
            log.debug("step: %s", step.text)
            step.action(context)
        raise MiniRunError("the recipe ended without execve")
    except MiniRunError as error:
        _report(context, error)
    except BaseException as error:
        _report(context, MiniRunError(f"container set-up: {type(error).__name__}: {error}"))
    os._exit(127)


def _report(context: Context, error: MiniRunError) -> None:
    """Send the error to the runtime, or print it once nobody waits (after start)."""
    if context.started:
        text = f"minirun: {error.message}\n" + (f"minirun: hint: {error.hint}\n"
                                                if error.hint else "")
        _write(2, text.encode())
    else:
        _write(context.error_fd, error.to_wire())


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass


def _send(fd: int, error: MiniRunError) -> None:
    _write(fd, error.to_wire())
