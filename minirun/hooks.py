"""OCI hooks: programs the runtime runs at fixed points of a container's life.

Each hook gets the container's state (runtime-spec runtime.md) as JSON on its standard input.
Where they run (config.md, "POSIX-platform Hooks"):

    prestart, createRuntime   the runtime's namespaces, once the container's exist, before
                              pivot_root                         (a failure stops create)
    createContainer           the container's namespaces, before pivot_root (host paths)
    startContainer            the container, right before its process (container paths)
    poststart                 the runtime's namespaces, after the process started (warn only)
    poststop                  the runtime's namespaces, after delete             (warn only)
"""

from __future__ import annotations

import json
import os

from minirun.errors import ConfigError, MiniRunError
from minirun.log import get as get_logger
from minirun.record import record

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    from typing import Any


log = get_logger(__name__)

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
         "poststop")


@record
class Hook:
    kind: str
    index: int
    path: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    timeout: int | None

    @property
    def where(self) -> str:
        return f"hooks.{self.kind}[{self.index}]"


def parse(raw: object, file: str) -> dict[str, tuple[Hook, ...]]:
    """Read the config's ``hooks`` object, naming the JSON path of any bad field."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(file, "hooks", "must be an object")
    result: dict[str, tuple[Hook, ...]] = {}
    for kind, entries in raw.items():
        if kind not in KINDS:
            raise ConfigError(file, f"hooks.{kind}", f"unknown hook kind (one of "
                                                     f"{', '.join(KINDS)})")
        if not isinstance(entries, list):
            raise ConfigError(file, f"hooks.{kind}", "must be an array")
        result[kind] = tuple(_hook(kind, i, entry, file) for i, entry in enumerate(entries))
    return result


def _hook(kind: str, index: int, entry: object, file: str) -> Hook:
    where = f"hooks.{kind}[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(file, where, "must be an object")
    path = entry.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(file, f"{where}.path", "must be an absolute path")
    lists = {}
    for key in ("args", "env"):
        value = entry.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(file, f"{where}.{key}", "must be an array of strings")
        lists[key] = tuple(value)
    timeout = entry.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or timeout <= 0):
        raise ConfigError(file, f"{where}.timeout", "must be a positive number of seconds")
    return Hook(kind, index, path, lists["args"], lists["env"], timeout)


def state(container_id: str, status: str, pid: int, bundle: str,
          annotations: dict[str, Any]) -> dict[str, Any]:
    return {"ociVersion": "1.2.0", "id": container_id, "status": status, "pid": pid,
            "bundle": bundle, "annotations": annotations}


def run(hooks: tuple[Hook, ...], container_state: dict[str, Any], fatal: bool = True) -> None:
    """Run ``hooks`` in order; a failing one raises (``fatal``) or logs a warning."""
    import subprocess

    payload = json.dumps(container_state).encode()
    for hook in hooks:
        argv = list(hook.args) or [hook.path]
        try:
            result = subprocess.run(argv, executable=hook.path, input=payload,
                                    env=dict(item.split("=", 1) for item in hook.env
                                             if "=" in item),
                                    capture_output=True, timeout=hook.timeout, cwd="/")
            problem = (f"exited with status {result.returncode}: "
                       f"{result.stderr.decode(errors='replace').strip()[:200]}"
                       if result.returncode else "")
        except subprocess.TimeoutExpired:
            problem = f"did not finish within its timeout of {hook.timeout} s"
        except OSError as error:
            problem = f"cannot be run: {os.strerror(error.errno or 0)}"
        if problem:
            message = f"{hook.where} {hook.path} {problem}"
            if fatal:
                raise MiniRunError(message)
            log.warning("%s", message)
