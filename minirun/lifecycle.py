"""The OCI lifecycle: create, start, state, kill, delete, and what podman and containerd
call besides (exec, ps, list, pause, resume, features).

``create`` leaves the container's process blocked on ROOT/ID/exec.fifo with its whole
set-up done; ``start`` opens the fifo and reads one byte, which lets it execve. Between the
two only the container's own process exists (runtime-spec runtime.md, "Lifecycle").
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time

from minirun import state as state_dir
from minirun.errors import ConfigError, MiniRunError, UnsupportedError
from minirun.log import get as get_logger
from minirun.record import record
from minirun.spec import Spec
from minirun.stages import Stage
from minirun.state import Container, ContainerError

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    from typing import Any

log = get_logger(__name__)


@record
class CreateOptions:
    root: str
    bundle: str
    container_id: str
    pid_file: str | None = None
    console_socket: str | None = None
    stage: Stage = Stage.OCI
    detach: bool = True
    no_pivot: bool = False
    preserve_fds: int = 0


def create(options: CreateOptions) -> int:
    """Set the container up and leave it waiting for ``start``."""
    from minirun import recipe as recipe_module
    from minirun import runtime
    from minirun.cgroup_setup import hooks_for
    from minirun.spec import load_bundle

    spec = load_bundle(options.bundle)
    container = state_dir.new(options.root, options.container_id, _initial_data(spec))
    try:
        fifo = container.fifo
        os.mkfifo(fifo, 0o622)
        hooks = hooks_for(spec, options.stage, options.container_id)
        console = connect_console(options.console_socket) if spec.process.terminal else -1
        recipe = recipe_module.build(spec, options.stage, hooks.cgroup, fifo=fifo,
                                     console=console >= 0, no_pivot=options.no_pivot,
                                     preserve_fds=options.preserve_fds,
                                     container_id=options.container_id)
        container.data["cgroup"] = hooks.cgroup

        def record(pid: int) -> None:
            container.data["pid"] = pid
            container.data["pidStart"] = _start_time(pid)
            container.save()
            if options.pid_file:
                write_pid_file(options.pid_file, pid)

        launch = runtime.Launch(detach=True, console=console, on_pid=record)
        runtime.run(recipe, hooks, launch)
        if hooks.disarm is not None:
            hooks.disarm()
    except BaseException:
        _discard(container)
        raise
    return 0


def _initial_data(spec: Spec) -> dict[str, Any]:
    return {"ociVersion": spec.raw.get("ociVersion", "1.2.0"), "bundle": spec.bundle,
            "rootfs": spec.root, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "annotations": spec.raw.get("annotations") or {}, "owner": "root",
            "namespaces": [e.kind.oci_name for e in spec.namespaces if e.path is None]}


def _start_time(pid: int) -> int | None:
    return state_dir.process_start_time(pid)


def write_pid_file(path: str, pid: int) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as stream:
        stream.write(str(pid))
    os.rename(temporary, path)


def connect_console(path: str | None) -> int:
    if not path:
        raise UnsupportedError("process.terminal is set: give --console-socket PATH")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as error:
        sock.close()
        raise MiniRunError(f"--console-socket {path}: cannot connect: {error.strerror}") \
            from None
    return sock.detach()


def _discard(container: Container) -> None:
    with contextlib.suppress(OSError):
        if container.pid and container.alive():
            os.kill(container.pid, signal.SIGKILL)
    _destroy_cgroup(container)
    state_dir.remove(container)


def start(root: str, container_id: str) -> int:
    with state_dir.locked(root, container_id):
        container = state_dir.load(root, container_id)
        status = container.status()
        if status != "created":
            raise ContainerError(f"container {container_id!r} is {status}, not created: "
                                 "only a created container can be started")
        fd = os.open(container.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            _wait_readable(fd, container)
            os.read(fd, 1)
        finally:
            os.close(fd)
        os.unlink(container.fifo)
        _run_hooks(container, "poststart", "running")
    return 0


def _run_hooks(container: Container, kind: str, status: str) -> None:
    """poststart and poststop, read again from the bundle's config.json; warnings only."""
    from minirun import hooks as oci_hooks

    path = os.path.join(container.data.get("bundle", ""), "config.json")
    try:
        with open(path) as stream:
            config = json.load(stream)
        entries = oci_hooks.parse(config.get("hooks"), path).get(kind, ())
    except (OSError, ValueError, MiniRunError) as error:
        log.warning("%s hooks not run: %s", kind, error)
        return
    if entries:
        oci_hooks.run(entries, oci_hooks.state(container.id, status, container.pid,
                                               container.data.get("bundle", ""),
                                               container.data.get("annotations", {})),
                      fatal=False)


def _wait_readable(fd: int, container: Container) -> None:
    import select

    while True:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            return
        if not container.alive():
            raise ContainerError(f"container {container.id!r} died before it started")


def state(root: str, container_id: str) -> int:
    container = state_dir.load(root, container_id)
    print(json.dumps(container.oci_state(), indent=2))
    return 0


def parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        number = int(name)
        if 0 < number < signal.NSIG:
            return number
    else:
        with contextlib.suppress(KeyError):
            return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    raise ConfigError("command line", "SIGNAL", f"{text!r} is not a signal")


def kill(root: str, container_id: str, signum: int, all_processes: bool) -> int:
    container = state_dir.load(root, container_id)
    status = container.status()
    if status == "stopped":
        raise ContainerError(f"container {container_id!r} is not running")
    pids = container_pids(container) if all_processes else [container.pid]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    return 0


def container_pids(container: Container) -> list[int]:
    """Every process of the container: its cgroup's, or those in its pid namespace."""
    if container.cgroup:
        with contextlib.suppress(OSError), open(os.path.join(container.cgroup,
                                                             "cgroup.procs")) as stream:
            return [int(line) for line in stream if line.strip()]
    try:
        target = os.readlink(f"/proc/{container.pid}/ns/pid")
    except OSError:
        return []
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/ns/pid") == target:
                    pids.append(int(name))
    return sorted(pids)


def delete(root: str, container_id: str, force: bool) -> int:
    if force and not os.path.isdir(os.path.join(root, container_id)):
        # As runc and crun: nothing to delete is success with --force. containerd-shim
        # deletes with --force once more after every task, and warns when that fails.
        state_dir.check_id(container_id)
        return 0
    with state_dir.locked(root, container_id):
        container = state_dir.load(root, container_id)
        status = container.status()
        if status in ("running", "paused") and not force:
            raise ContainerError(f"container {container_id!r} is {status}: stop it first "
                                 "or use delete --force")
        if status != "stopped":
            if status == "paused":
                _thaw(container)
            for pid in container_pids(container) or [container.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_gone(container)
        _destroy_cgroup(container)
        _run_hooks(container, "poststop", "stopped")
        state_dir.remove(container)
    return 0


def _wait_gone(container: Container, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while container.alive() and time.monotonic() < deadline:
        time.sleep(0.01)


def _manager(container: Container) -> Any:
    from pathlib import Path

    from minirun.isolation import cgroups

    path = Path(container.cgroup or "")
    manager = cgroups.CgroupManager(cgroups.CGROUP_ROOT,
                                    "/" + str(path.relative_to(cgroups.CGROUP_ROOT)))
    manager.created = [path]
    return manager


def _destroy_cgroup(container: Container) -> None:
    if container.cgroup and os.path.isdir(container.cgroup):
        _manager(container).destroy()


def _thaw(container: Container) -> None:
    _manager(container).thaw()


def pause(root: str, container_id: str, freeze: bool) -> int:
    with state_dir.locked(root, container_id):
        container = state_dir.load(root, container_id)
        status = container.status()
        if not container.cgroup:
            raise UnsupportedError(f"container {container_id!r} has no cgroup: pause and "
                                   "resume need the cgroup v2 freezer")
        if freeze and status != "running":
            raise ContainerError(f"container {container_id!r} is {status}, not running")
        if not freeze and status != "paused":
            raise ContainerError(f"container {container_id!r} is {status}, not paused")
        manager = _manager(container)
        manager.freeze() if freeze else manager.thaw()
    return 0


def list_containers(root: str, as_json: bool) -> int:
    rows = []
    for container_id in state_dir.all_ids(root):
        with contextlib.suppress(ContainerError):
            container = state_dir.load(root, container_id)
            rows.append({**container.oci_state(), "pid": container.pid
                         if container.alive() else 0, "created": container.data["created"],
                         "owner": container.data.get("owner", "root")})
    if as_json:
        print(json.dumps(rows))
        return 0
    print(f"{'ID':<20}{'PID':>8}  {'STATUS':<9}{'BUNDLE':<40}{'CREATED':<22}OWNER")
    for row in rows:
        print(f"{row['id']:<20}{row['pid']:>8}  {row['status']:<9}{row['bundle']:<40}"
              f"{row['created']:<22}{row['owner']}")
    return 0


def ps(root: str, container_id: str, as_json: bool) -> int:
    container = state_dir.load(root, container_id)
    pids = container_pids(container) if container.alive() else []
    if as_json:
        print(json.dumps(pids))
        return 0
    print(f"{'PID':>8}  CMD")
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as stream:
            command = stream.read().replace(b"\0", b" ").decode(errors="replace").strip()
            print(f"{pid:>8}  {command}")
    return 0


def features() -> int:
    from minirun.hooks import KINDS
    from minirun.isolation import mounts
    from minirun.isolation.capabilities import NAMES
    from minirun.isolation.namespaces import Namespace

    document = {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": list(KINDS),
        "mountOptions": sorted(mounts.known_options()),
        "linux": {
            "namespaces": [k.oci_name for k in Namespace if k is not Namespace.TIME],
            "capabilities": list(NAMES),
            "cgroup": {"v1": False, "v2": True, "systemd": False, "systemdUser": False},
            # python3-seccomp is a dependency (setup/apt-packages.txt): always there.
            "seccomp": {"enabled": True},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.minirun.stages": ",".join(s.label for s in Stage)},
    }
    print(json.dumps(document, indent=2))
    return 0
