"""The state directory: one directory per container under ``--root`` (default /run/minirun).

    ROOT/ID/state.json   what ``minirun state`` reports, plus what later commands need
    ROOT/ID/exec.fifo    present while the container is created but not started
    ROOT/ID/lock         flock(2)-ed by every command that changes the container

state.json is written to a temporary file and renamed into place, so a reader never sees half
of it. The status is not stored: it is derived from the init process (alive, and the same
process: its start time is recorded), the fifo and the cgroup's freezer, so it stays right
after the init dies without anyone noticing (runtime-spec runtime.md, "State").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator

from minirun.errors import MiniRunError

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ROOT = "/run/minirun"
STATE = "state.json"
FIFO = "exec.fifo"


class ContainerError(MiniRunError):
    """An id that does not exist or already exists, or a command the status does not allow."""


def valid_id(text: str, longest: int = 1024) -> bool:
    """Letters and digits, then also _ . + -; no path separator, no newline."""
    return (0 < len(text) <= longest and text[0].isascii() and text[0].isalnum()
            and all(c.isascii() and (c.isalnum() or c in "_.+-") for c in text))


def check_id(container_id: str) -> None:
    if not valid_id(container_id):
        raise ContainerError(f"{container_id!r} is not a valid container id (letters, digits "
                             "and _ . + - after the first character)")


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None if the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class Container:
    def __init__(self, root: str, container_id: str, data: dict[str, Any]) -> None:
        self.root = root
        self.id = container_id
        self.data = data

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.id)

    @property
    def pid(self) -> int:
        return int(self.data.get("pid", 0))

    @property
    def fifo(self) -> str:
        return os.path.join(self.dir, FIFO)

    @property
    def cgroup(self) -> str | None:
        value = self.data.get("cgroup")
        return str(value) if value else None

    def alive(self) -> bool:
        return bool(self.pid) and process_start_time(self.pid) == self.data.get("pidStart")

    def status(self) -> str:
        if not self.alive():
            return "stopped"
        if os.path.exists(self.fifo):
            return "created"
        if self.cgroup and _frozen(self.cgroup):
            return "paused"
        return "running"

    def oci_state(self) -> dict[str, Any]:
        status = self.status()
        state = {"ociVersion": self.data.get("ociVersion", "1.2.0"), "id": self.id,
                 "status": status, "bundle": self.data.get("bundle", ""),
                 "annotations": self.data.get("annotations", {})}
        if status != "stopped":
            state["pid"] = self.pid
        return state

    def save(self) -> None:
        temporary = os.path.join(self.dir, f".{STATE}.{os.getpid()}")
        with open(temporary, "w") as stream:
            json.dump(self.data, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(temporary, os.path.join(self.dir, STATE))


def _frozen(cgroup: str) -> bool:
    try:
        with open(os.path.join(cgroup, "cgroup.events")) as stream:
            return "frozen 1" in stream.read()
    except OSError:
        return False


def new(root: str, container_id: str, data: dict[str, Any]) -> Container:
    """Claim ROOT/ID; fail if a container of that id exists."""
    check_id(container_id)
    os.makedirs(root, mode=0o711, exist_ok=True)
    path = os.path.join(root, container_id)
    try:
        os.mkdir(path, 0o711)
    except FileExistsError:
        raise ContainerError(f"container {container_id!r} exists already") from None
    return Container(root, container_id, dict(data))


def load(root: str, container_id: str) -> Container:
    check_id(container_id)
    path = os.path.join(root, container_id, STATE)
    for _ in range(50):
        try:
            with open(path) as stream:
                return Container(root, container_id, json.load(stream))
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(path)):
                break
            time.sleep(0.01)  # being created: state.json comes once the init is ready
        except ValueError as error:
            raise ContainerError(f"{path}: unreadable state ({error})") from None
    raise ContainerError(f"container {container_id!r} does not exist")


def all_ids(root: str) -> list[str]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(root, n, STATE)))


@contextlib.contextmanager
def locked(root: str, container_id: str) -> Iterator[None]:
    """Hold the container's lock so two commands on one id cannot interleave."""
    check_id(container_id)
    try:
        fd = os.open(os.path.join(root, container_id, "lock"),
                     os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise ContainerError(f"container {container_id!r} does not exist") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove(container: Container) -> None:
    for name in (STATE, FIFO, "lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(container.dir, name))
    try:
        os.rmdir(container.dir)
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise
