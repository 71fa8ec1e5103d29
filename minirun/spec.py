"""The bundle and its config.json, read into immutable records (minirun.record).

Every value is checked where it is read; a problem names the file, the JSON path of the field
and what is wrong (``config.json: process.cwd: must be an absolute path, got 'tmp'``). The
parsed :class:`Spec` keeps the raw document too, for the fields later stages read themselves.
"""

from __future__ import annotations

import json
import os

from minirun.errors import ConfigError
from minirun.isolation.namespaces import Namespace
from minirun.record import record

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    from typing import Any

CONFIG_NAME = "config.json"
MAX_CONFIG_BYTES = 4 << 20

CAPABILITY_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


@record
class User:
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: tuple[int, ...] = ()


@record
class Rlimit:
    type: str
    soft: int
    hard: int


@record
class Process:
    args: tuple[str, ...]
    cwd: str
    env: tuple[str, ...] = ()
    user: User = User()
    capabilities: dict[str, tuple[str, ...]] | None = None
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    terminal: bool = False
    oom_score_adj: int | None = None


@record
class MountEntry:
    destination: str
    type: str | None
    source: str | None
    options: tuple[str, ...]
    index: int

    @property
    def where(self) -> str:
        return f"mounts[{self.index}]"


@record
class IdMapping:
    container_id: int
    host_id: int
    size: int


@record
class NamespaceEntry:
    kind: Namespace
    path: str | None
    index: int


@record
class Spec:
    bundle: str
    file: str
    root: str
    root_readonly: bool
    process: Process
    hostname: str | None
    domainname: str | None
    mounts: tuple[MountEntry, ...]
    namespaces: tuple[NamespaceEntry, ...]
    uid_mappings: tuple[IdMapping, ...]
    gid_mappings: tuple[IdMapping, ...]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    rootfs_propagation: str | None
    sysctl: dict[str, str]
    resources: dict[str, Any]
    cgroups_path: str | None
    raw: dict[str, Any]

    def asks_for_limits(self) -> bool:
        """Whether ``linux.resources`` sets any limit (device rules alone are not limits)."""
        return any(value not in (None, {}, []) for key, value in self.resources.items()
                   if key != "devices")

    def namespace(self, kind: Namespace) -> NamespaceEntry | None:
        for entry in self.namespaces:
            if entry.kind is kind:
                return entry
        return None


class _Reader:
    """Typed access to one JSON document that names the path of every bad field."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(self.file, path, problem)

    def get(self, obj: dict[str, Any], key: str, path: str, kind: type | tuple[type, ...],
            required: bool = False, default: Any = None) -> Any:
        where = f"{path}.{key}" if path else key
        if key not in obj or obj[key] is None:
            if required:
                raise self.fail(where, "is required but missing")
            return default
        value = obj[key]
        # JSON true/false are ints to Python; a boolean is never a number here.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            raise self.fail(where, f"must be {_kind_name(kind)}, got {json.dumps(value)}")
        if not isinstance(value, kind):
            raise self.fail(where, f"must be {_kind_name(kind)}, got {_json_type(value)}")
        return value

    def strings(self, obj: dict[str, Any], key: str, path: str,
                required: bool = False) -> tuple[str, ...]:
        items = self.get(obj, key, path, list, required, [])
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.fail(f"{path}.{key}[{i}]", f"must be a string, got {_json_type(item)}")
            if "\0" in item:  # the kernel would see the string cut short at the NUL
                raise self.fail(f"{path}.{key}[{i}]", "must not contain a NUL character")
        return tuple(items)

    def uint(self, obj: dict[str, Any], key: str, path: str, bits: int = 32,
             required: bool = False, default: int | None = None) -> int | None:
        value = self.get(obj, key, path, int, required, default)
        if value is not None and not 0 <= value < (1 << bits):
            raise self.fail(f"{path}.{key}", f"must be between 0 and {(1 << bits) - 1}, "
                                             f"got {value}")
        return None if value is None else int(value)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "an array", str: "a string", int: "an integer",
             bool: "a boolean", float: "a number"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def load_bundle(bundle: str) -> Spec:
    """Read ``bundle``/config.json; relative paths in it are taken from the bundle directory."""
    bundle = os.path.abspath(bundle)
    file = os.path.join(bundle, CONFIG_NAME)
    if not os.path.isdir(bundle):
        raise ConfigError(bundle, "", "bundle directory does not exist")
    try:
        with open(file, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(file, "", "missing: a bundle needs a config.json "
                                    "('minirun spec' writes a default one)") from None
    except OSError as error:
        raise ConfigError(file, "", f"cannot be read: {error.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(file, "", f"larger than {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        document = json.loads(data)
    except UnicodeDecodeError:
        raise ConfigError(file, "", "is not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(file, "", "invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as error:
        raise ConfigError(file, "", f"invalid JSON at line {error.lineno} column "
                                    f"{error.colno}: {error.msg}") from None
    return parse(document, bundle, file)


def parse(document: Any, bundle: str, file: str) -> Spec:
    r = _Reader(file)
    if not isinstance(document, dict):
        raise r.fail("", f"the document must be a JSON object, got {_json_type(document)}")
    r.get(document, "ociVersion", "", str, required=True)

    root_obj = r.get(document, "root", "", dict, required=True)
    root_path = r.get(root_obj, "path", "root", str, required=True)
    if not root_path:
        raise r.fail("root.path", "must not be empty")
    root = os.path.normpath(os.path.join(bundle, root_path))
    if not os.path.isdir(root):
        problem = "does not exist" if not os.path.lexists(root) else "is not a directory"
        raise r.fail("root.path", f"{root} {problem}")

    linux = r.get(document, "linux", "", dict, default={})
    mounts = tuple(_mount(r, entry, i) for i, entry in
                   enumerate(r.get(document, "mounts", "", list, default=[])))
    namespaces = _namespaces(r, linux)
    return Spec(
        bundle=bundle,
        file=file,
        root=root,
        root_readonly=r.get(root_obj, "readonly", "root", bool, default=False),
        process=_process(r, r.get(document, "process", "", dict, required=True)),
        hostname=r.get(document, "hostname", "", str),
        domainname=r.get(document, "domainname", "", str),
        mounts=mounts,
        namespaces=namespaces,
        uid_mappings=_mappings(r, linux, "uidMappings"),
        gid_mappings=_mappings(r, linux, "gidMappings"),
        masked_paths=_abs_paths(r, linux, "maskedPaths"),
        readonly_paths=_abs_paths(r, linux, "readonlyPaths"),
        rootfs_propagation=_propagation(r, linux),
        sysctl=_sysctl(r, linux),
        resources=r.get(linux, "resources", "linux", dict, default={}),
        cgroups_path=r.get(linux, "cgroupsPath", "linux", str),
        raw=document,
    )


def _process(r: _Reader, obj: dict[str, Any]) -> Process:
    args = r.strings(obj, "args", "process", required=True)
    if not args:
        raise r.fail("process.args", "must name at least the program to run")
    cwd = r.get(obj, "cwd", "process", str, required=True)
    if not cwd.startswith("/"):
        raise r.fail("process.cwd", f"must be an absolute path, got {cwd!r}")
    if "\0" in cwd:
        raise r.fail("process.cwd", "must not contain a NUL character")
    oom_score_adj = r.get(obj, "oomScoreAdj", "process", int)
    if oom_score_adj is not None and not -1000 <= oom_score_adj <= 1000:
        raise r.fail("process.oomScoreAdj", f"must be between -1000 and 1000, got "
                                            f"{oom_score_adj}")
    env = r.strings(obj, "env", "process")
    for i, item in enumerate(env):
        if "=" not in item:
            raise r.fail(f"process.env[{i}]", f"must be NAME=VALUE, got {item!r}")
    return Process(
        args=args,
        cwd=cwd,
        env=env,
        user=_user(r, r.get(obj, "user", "process", dict, default={})),
        capabilities=_capabilities(r, obj),
        rlimits=_rlimits(r, obj),
        no_new_privileges=r.get(obj, "noNewPrivileges", "process", bool, default=False),
        terminal=r.get(obj, "terminal", "process", bool, default=False),
        oom_score_adj=oom_score_adj,
    )


def _user(r: _Reader, obj: dict[str, Any]) -> User:
    extra = r.get(obj, "additionalGids", "process.user", list, default=[])
    for i, gid in enumerate(extra):
        if isinstance(gid, bool) or not isinstance(gid, int) or not 0 <= gid < 1 << 32:
            raise r.fail(f"process.user.additionalGids[{i}]", "must be a gid (0 to 4294967295)")
    umask = r.uint(obj, "umask", "process.user")
    if umask is not None and umask > 0o777:
        raise r.fail("process.user.umask", f"must be at most 0777 (511), got {umask}")
    return User(
        uid=r.uint(obj, "uid", "process.user", default=0) or 0,
        gid=r.uint(obj, "gid", "process.user", default=0) or 0,
        umask=umask,
        additional_gids=tuple(extra),
    )


def _capabilities(r: _Reader, obj: dict[str, Any]) -> dict[str, tuple[str, ...]] | None:
    caps = r.get(obj, "capabilities", "process", dict)
    if caps is None:
        return None
    from minirun.isolation.capabilities import number

    result: dict[str, tuple[str, ...]] = {}
    for name in CAPABILITY_SETS:
        values = r.strings(caps, name, "process.capabilities")
        for i, cap in enumerate(values):
            if number(cap) is None:
                raise r.fail(f"process.capabilities.{name}[{i}]",
                             f"unknown capability {cap!r}")
        result[name] = values
    return result


_RLIMITS = ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE",
            "RLIMIT_LOCKS", "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE",
            "RLIMIT_NPROC", "RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING",
            "RLIMIT_STACK")


def _rlimits(r: _Reader, obj: dict[str, Any]) -> tuple[Rlimit, ...]:
    result = []
    seen: set[str] = set()
    for i, item in enumerate(r.get(obj, "rlimits", "process", list, default=[])):
        path = f"process.rlimits[{i}]"
        if not isinstance(item, dict):
            raise r.fail(path, f"must be an object, got {_json_type(item)}")
        kind = r.get(item, "type", path, str, required=True)
        if kind not in _RLIMITS:
            raise r.fail(f"{path}.type", f"unknown resource limit {kind!r}")
        if kind in seen:
            raise r.fail(f"{path}.type", f"{kind} is given twice")
        seen.add(kind)
        soft = r.uint(item, "soft", path, bits=64, required=True) or 0
        hard = r.uint(item, "hard", path, bits=64, required=True) or 0
        if soft > hard:
            raise r.fail(path, f"soft limit {soft} is above the hard limit {hard}")
        result.append(Rlimit(kind, soft, hard))
    return tuple(result)


def _mount(r: _Reader, entry: Any, index: int) -> MountEntry:
    path = f"mounts[{index}]"
    if not isinstance(entry, dict):
        raise r.fail(path, f"must be an object, got {_json_type(entry)}")
    destination = r.get(entry, "destination", path, str, required=True)
    if not destination.startswith("/"):
        raise r.fail(f"{path}.destination", f"must be an absolute path, got {destination!r}")
    for key in ("uidMappings", "gidMappings"):
        if entry.get(key):
            raise r.fail(f"{path}.{key}", "id-mapped mounts are not supported by minirun yet")
    return MountEntry(
        destination=os.path.normpath(destination),
        type=r.get(entry, "type", path, str),
        source=r.get(entry, "source", path, str),
        options=r.strings(entry, "options", path),
        index=index,
    )


def _namespaces(r: _Reader, linux: dict[str, Any]) -> tuple[NamespaceEntry, ...]:
    result: list[NamespaceEntry] = []
    for i, item in enumerate(r.get(linux, "namespaces", "linux", list, default=[])):
        path = f"linux.namespaces[{i}]"
        if not isinstance(item, dict):
            raise r.fail(path, f"must be an object, got {_json_type(item)}")
        name = r.get(item, "type", path, str, required=True)
        try:
            kind = Namespace.from_oci(name)
        except ValueError:
            raise r.fail(f"{path}.type", f"unknown namespace type {name!r}") from None
        if any(e.kind is kind for e in result):
            raise r.fail(f"{path}.type", f"namespace {name!r} is listed twice")
        ns_path = r.get(item, "path", path, str)
        if ns_path is not None and not ns_path.startswith("/"):
            raise r.fail(f"{path}.path", f"must be an absolute path, got {ns_path!r}")
        result.append(NamespaceEntry(kind, ns_path, i))
    return tuple(result)


def _mappings(r: _Reader, linux: dict[str, Any], key: str) -> tuple[IdMapping, ...]:
    result = []
    for i, item in enumerate(r.get(linux, key, "linux", list, default=[])):
        path = f"linux.{key}[{i}]"
        if not isinstance(item, dict):
            raise r.fail(path, f"must be an object, got {_json_type(item)}")
        size = r.uint(item, "size", path, required=True) or 0
        if size == 0:
            raise r.fail(f"{path}.size", "must be at least 1")
        result.append(IdMapping(r.uint(item, "containerID", path, required=True) or 0,
                                r.uint(item, "hostID", path, required=True) or 0, size))
    return tuple(result)


def _abs_paths(r: _Reader, linux: dict[str, Any], key: str) -> tuple[str, ...]:
    paths = r.strings(linux, key, "linux")
    for i, item in enumerate(paths):
        if not item.startswith("/"):
            raise r.fail(f"linux.{key}[{i}]", f"must be an absolute path, got {item!r}")
    return paths


_PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave",
                 "unbindable", "runbindable")


def _propagation(r: _Reader, linux: dict[str, Any]) -> str | None:
    value = r.get(linux, "rootfsPropagation", "linux", str)
    if value is not None and value not in _PROPAGATIONS:
        raise r.fail("linux.rootfsPropagation", f"must be one of {', '.join(_PROPAGATIONS)}, "
                                                f"got {value!r}")
    return None if value is None else str(value)


def _sysctl(r: _Reader, linux: dict[str, Any]) -> dict[str, str]:
    table = r.get(linux, "sysctl", "linux", dict, default={})
    for key, value in table.items():
        if not isinstance(value, str):
            raise r.fail(f"linux.sysctl.{key}", f"must be a string, got {_json_type(value)}")
        if "/" in key or ".." in key.split("."):
            raise r.fail(f"linux.sysctl.{key}", "is not a valid sysctl name")
    return dict(table)


def default_config(args: list[str] | None = None) -> dict[str, Any]:
    """The config.json that ``minirun spec`` writes: a busybox-friendly, unprivileged-looking
    container with the three capabilities Docker and runc grant by default."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.2.0",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args or ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "minirun",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in
                           ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
                            "/sys/devices/virtual/powercap"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }
