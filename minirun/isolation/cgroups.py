"""Resource limits with cgroup v2: what a group of processes may use, and one handle to all of it.

What the kernel isolates: a control group is a directory in the cgroup2 file system. Every
process belongs to exactly one cgroup; its children are born there. Controllers enabled for a
cgroup (memory, pids, cpu, cpuset, io, hugetlb, rdma) count what all its processes use together
and enforce limits written to plain files: ``memory.max``, ``pids.max``, ``cpu.max``, ``io.max``
and so on. The cgroup is also a handle: ``cgroup.kill`` kills every process in it,
``cgroup.freeze`` stops them all, ``cgroup.events`` says when the last one is gone. Limits are
not a view (that is the cgroup namespace's job): they only decide how much may be used.

Read: cgroups(7), and the kernel's Documentation/admin-guide/cgroup-v2.rst (file formats, the
no-internal-processes rule, delegation). Stage: cgroups (2006, Paul Menage and Rohit Seth's
"process containers", merged in Linux 2.6.24; the unified v2 hierarchy became stable in 4.5).

This module is cgroup v2 only. A hybrid host (v1 controllers in /sys/fs/cgroup/<name>, an empty
cgroup2 at /sys/fs/cgroup/unified) is detected by :func:`probe` and refused by :func:`require`
with the remedy; nothing here writes to a v1 hierarchy.

Use::

    host = probe()
    files = resources_to_files(spec_resources, "config.json")
    require(host, controllers_needed(files))
    manager = CgroupManager.for_container(host.root, cgroups_path, container_id)
    manager.create(files)
    guard_fd = guard(manager)          # cleans up if minirun is killed with SIGKILL
    manager.add(child_pid)
    ...
    manager.destroy()
    disarm(guard_fd)

Not yet: ``linux.resources.devices`` (cgroup v2 filters devices with a BPF program attached to
the cgroup, not with files); resources_to_files ignores it. Remove this note when a device BPF
filter exists.
Not yet: the systemd cgroup driver (``slice:prefix:name`` paths); such paths are refused.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import errno
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from minirun.errors import ConfigError, MiniRunError, SyscallError, UnsupportedError
from minirun.log import get as get_logger
from minirun.record import record

TYPE_CHECKING = False  # typing itself costs start-up time; mypy still reads this
if TYPE_CHECKING:
    from typing import Any

log = get_logger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PARENT = "minirun"

_REMEDY = (
    "boot the host with systemd.unified_cgroup_hierarchy=1 (or cgroup_no_v1=all) to get a pure "
    "cgroup v2 hierarchy, or use the workshop VM or the test VM: "
    "/usr/bin/python3 -m tests.vm run -- ..."
)


# ----------------------------------------------------------------------------------------------
# Probing the host
# ----------------------------------------------------------------------------------------------


class CgroupMode(enum.Enum):
    """How cgroups are mounted at the probed root."""

    UNIFIED = "unified"  # root is a cgroup2 mount: what this module needs
    HYBRID = "hybrid"  # root is a tmpfs with v1 hierarchies and a cgroup2 mount below it
    LEGACY = "legacy"  # root is a tmpfs with v1 hierarchies only
    NONE = "none"  # no cgroup file system at root


@record
class Cgroup2Host:
    """What :func:`probe` found at ``root``."""

    root: Path
    mode: CgroupMode
    root_fstype: str  # file system type of the mount holding root ("cgroup2", "tmpfs", ...)
    cgroup2_path: Path | None  # where a cgroup2 file system is mounted (root itself if unified)
    controllers: frozenset[str]  # from cgroup2_path/cgroup.controllers
    v1_controllers: frozenset[str]  # controllers bound to cgroup v1 hierarchies under root

    def describe(self) -> str:
        """One phrase for messages, e.g. ``/sys/fs/cgroup is cgroup2 (cpu, memory, pids)``."""
        if self.mode is CgroupMode.UNIFIED:
            return f"{self.root} is cgroup2 ({_names(self.controllers) or 'no controllers'})"
        if self.mode is CgroupMode.HYBRID:
            return f"{self.root} is hybrid (cgroup v1 controllers, cgroup2 at {self.cgroup2_path})"
        if self.mode is CgroupMode.LEGACY:
            return f"{self.root} is cgroup v1 only ({_names(self.v1_controllers)})"
        return f"{self.root} is not a cgroup file system ({self.root_fstype or 'not mounted'})"


@record
class _Mount:
    mount_point: Path
    fstype: str
    super_options: tuple[str, ...]


def probe(
    root: Path = CGROUP_ROOT, mountinfo: Path = Path("/proc/self/mountinfo")
) -> Cgroup2Host:
    """Say how cgroups are mounted at ``root``; reads only, never writes.

    The mount table (proc(5), /proc/pid/mountinfo) tells the file system type of root and of
    the mounts directly below it; a cgroup2 mount is what statfs(2) reports as
    CGROUP2_SUPER_MAGIC (0x63677270).
    """
    mounts = _read_mountinfo(mountinfo)
    holder = _mount_holding(mounts, root)
    fstype = holder.fstype if holder else ""
    below = [m for m in mounts if m.mount_point.parent == root]
    v1 = frozenset(_v1_controllers(m) for m in below if m.fstype == "cgroup")
    v1_names = frozenset(name for group in v1 for name in group.split(","))
    cgroup2_below = [m.mount_point for m in below if m.fstype == "cgroup2"]

    if fstype == "cgroup2":
        mode, cgroup2_path = CgroupMode.UNIFIED, root
    elif v1_names and cgroup2_below:
        mode, cgroup2_path = CgroupMode.HYBRID, cgroup2_below[0]
    elif v1_names:
        mode, cgroup2_path = CgroupMode.LEGACY, None
    else:
        mode, cgroup2_path = CgroupMode.NONE, None

    controllers = _read_words(cgroup2_path / "cgroup.controllers") if cgroup2_path else set()
    host = Cgroup2Host(root, mode, fstype, cgroup2_path, frozenset(controllers), v1_names)
    log.debug("cgroup probe: %s", host.describe())
    return host


def require(host: Cgroup2Host, needed: set[str] | frozenset[str]) -> None:
    """Raise UnsupportedError unless ``host.root`` is a cgroup2 mount with ``needed``."""
    missing = sorted(set(needed) - host.controllers)
    lacking = f" without {', '.join(missing)}" if missing else ""
    if host.mode is CgroupMode.HYBRID:
        found = (
            f"{host.root} is hybrid (cgroup v1 controllers, cgroup2 at "
            f"{host.cgroup2_path}{lacking})"
        )
    elif host.mode is CgroupMode.UNIFIED and missing:
        found = (
            f"{host.root} is cgroup2 but lacks the {', '.join(missing)} controller"
            f"{'s' if len(missing) > 1 else ''} (available: "
            f"{_names(host.controllers) or 'none'})"
        )
    elif host.mode is CgroupMode.UNIFIED:
        return
    else:
        found = host.describe()
    raise UnsupportedError(f"cgroup v2 is not usable here: {found}", _REMEDY)


def _read_mountinfo(path: Path) -> list[_Mount]:
    mounts = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        mount_point = Path(_unescape(fields[4]))
        super_options = tuple(fields[dash + 3].split(",")) if len(fields) > dash + 3 else ()
        mounts.append(_Mount(mount_point, fields[dash + 1], super_options))
    return mounts


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_holding(mounts: list[_Mount], path: Path) -> _Mount | None:
    """The mount whose mount point is the longest prefix of path; the last one stacked wins."""
    best: _Mount | None = None
    for mount in mounts:
        holds = path == mount.mount_point or mount.mount_point in path.parents
        if holds and (best is None or len(mount.mount_point.parts) >= len(best.mount_point.parts)):
            best = mount
    return best


_V1_CONTROLLERS = frozenset({
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory", "misc",
    "net_cls", "net_prio", "perf_event", "pids", "rdma",
})


def _v1_controllers(mount: _Mount) -> str:
    """"cpu,cpuacct" from super options such as "rw,cpu,cpuacct"; named ones as "name=x"."""
    return ",".join(opt for opt in mount.super_options
                    if opt in _V1_CONTROLLERS or opt.startswith("name="))


def _read_words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def _names(items: set[str] | frozenset[str]) -> str:
    return ", ".join(sorted(items))


# ----------------------------------------------------------------------------------------------
# OCI linux.resources -> cgroup v2 files
# ----------------------------------------------------------------------------------------------

# Kernel bounds for cpu.max (kernel/sched/core.c): the period is 1 ms .. 1 s, the quota at least
# 1 ms and at most 2^44 - 1 us (about 203 days); both in microseconds.
CPU_PERIOD_MIN = 1000
CPU_PERIOD_MAX = 1_000_000
CPU_PERIOD_DEFAULT = 100_000
CPU_QUOTA_MIN = 1000
CPU_QUOTA_MAX = (1 << 44) - 1

# cgroup v1 cpu.shares range (the kernel clamps to it); v2 cpu.weight is 1..10000.
_SHARES_MIN, _SHARES_MAX = 2, 262144
# cgroup v1 blkio.weight range; v2 io.weight is 1..10000, io.bfq.weight 1..1000.
_BLKIO_WEIGHT_MIN, _BLKIO_WEIGHT_MAX = 10, 1000

# Files the runtime itself drives; a "unified" entry must not write them.
_RUNTIME_FILES = frozenset(
    {"cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.kill",
     "cgroup.freeze", "cgroup.type"}
)

# Written only when the kernel offers them: BFQ's weight replaces io.weight when the device
# uses the BFQ scheduler, hugetlb reservation limits need Linux 5.7.
_PREFERRED_OVER = {"io.bfq.weight": "io.weight"}
_OPTIONAL_SUFFIX = ".rsvd.max"

_Json = Mapping[str, "Any"]


def resources_to_files(resources: Mapping[str, Any], source: str) -> dict[str, str]:
    """Turn an OCI ``linux.resources`` object into cgroup v2 file writes, in write order.

    ``source`` names the input file in errors. Values are validated here, so a bad value is a
    ConfigError naming its JSON path rather than an EINVAL from the kernel. Values with several
    lines are written one line per write(2). ``unified`` entries come last and win.
    """
    files: dict[str, str] = {}
    convert = _Converter(source)
    files.update(convert.memory(_object(resources, "memory", source)))
    files.update(convert.pids(_object(resources, "pids", source)))
    files.update(convert.cpu(_object(resources, "cpu", source)))
    files.update(convert.block_io(_object(resources, "blockIO", source)))
    files.update(convert.hugepages(resources.get("hugepageLimits")))
    files.update(convert.rdma(_object(resources, "rdma", source)))
    convert.refuse_network(_object(resources, "network", source))
    files.update(convert.unified(_object(resources, "unified", source)))
    return files


def controllers_needed(files: Mapping[str, str]) -> set[str]:
    """The controllers whose files appear in ``files`` (``memory.max`` needs ``memory``)."""
    return {name.split(".", 1)[0] for name in files if not name.startswith("cgroup.")}


def cpu_shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2, 262144] -> v2 cpu.weight [1, 10000], linearly, as runc and crun."""
    shares = min(max(shares, _SHARES_MIN), _SHARES_MAX)
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    """cgroup v1 blkio.weight [10, 1000] -> v2 io.weight [1, 10000], linearly, as crun."""
    return 1 + ((weight - 10) * 9999) // 990


def _object(parent: Mapping[str, Any], key: str, source: str) -> _Json:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(source, f"linux.resources.{key}", "must be an object")
    return value


class _Converter:
    """One method per OCI resources section; each returns the files for that section."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, problem: str, hint: str | None = None) -> ConfigError:
        return ConfigError(self.source, f"linux.resources.{path}", problem, hint)

    def integer(self, section: _Json, key: str, path: str) -> int | None:
        value = section.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{path}.{key}", f"must be an integer, not {value!r}")
        return value

    def limit(self, section: _Json, key: str, path: str) -> str | None:
        """A byte or count limit: -1 means "max", other negative values are refused."""
        value = self.integer(section, key, path)
        if value is None:
            return None
        if value == -1:
            return "max"
        if value < 0:
            raise self.error(f"{path}.{key}", f"{value} is negative (only -1, unlimited, is)")
        return str(value)

    def memory(self, memory: _Json) -> dict[str, str]:
        files: dict[str, str] = {}
        limit = self.limit(memory, "limit", "memory")
        reservation = self.limit(memory, "reservation", "memory")
        swap = self.swap(memory, limit)
        for key in ("kernel", "kernelTCP"):
            value = self.integer(memory, key, "memory")
            if value is not None and value != -1:
                # Kernel memory is counted in memory.max on cgroup v2; no separate limit exists.
                log.warning("linux.resources.memory.%s=%d is ignored: cgroup v2 has no separate"
                            " kernel memory limit, memory.max counts it", key, value)
        if self.integer(memory, "swappiness", "memory") is not None:
            raise self.error("memory.swappiness", "cgroup v2 has no per-cgroup swappiness",
                             "remove the field (podman/docker: drop --memory-swappiness)")
        if memory.get("disableOOMKiller") is True:
            raise self.error("memory.disableOOMKiller",
                             "cgroup v2 cannot disable the OOM killer for a cgroup",
                             "remove the field or set it to false")
        if memory.get("useHierarchy") is False:
            raise self.error("memory.useHierarchy", "cgroup v2 accounting is always hierarchical")
        if limit is not None:
            files["memory.max"] = limit
        if reservation is not None:
            files["memory.low"] = reservation
        if swap is not None:
            files["memory.swap.max"] = swap
        return files

    def swap(self, memory: _Json, limit: str | None) -> str | None:
        """OCI ``swap`` is memory+swap; cgroup v2 memory.swap.max is swap alone."""
        swap = self.integer(memory, "swap", "memory")
        if swap is None:
            return None
        if swap == -1:
            return "max"
        if swap < 0:
            raise self.error("memory.swap", f"{swap} is negative (only -1, unlimited, is)")
        if limit == "max" and swap == 0:
            # runc's reading: unlimited memory with swap 0 means "unlimited swap too".
            return "max"
        if limit is None or limit == "max":
            raise self.error("memory.swap", "a memory+swap limit needs a memory.limit too",
                             "set memory.limit, or drop memory.swap")
        if swap < int(limit):
            raise self.error("memory.swap",
                             f"{swap} is less than memory.limit {limit} (swap counts "
                             "memory+swap, so it must be >= limit)")
        return str(swap - int(limit))

    def pids(self, pids: _Json) -> dict[str, str]:
        # runtime-spec (since PR 1279): -1 is "max", 0 is a real limit (no forks at all), an
        # unset limit leaves pids.max alone. Older runtimes mapped 0 to unlimited; we do not.
        value = self.limit(pids, "limit", "pids")
        return {} if value is None else {"pids.max": value}

    def cpu(self, cpu: _Json) -> dict[str, str]:
        files: dict[str, str] = {}
        for key in ("realtimeRuntime", "realtimePeriod"):
            if self.integer(cpu, key, "cpu") is not None:
                raise self.error(f"cpu.{key}", "cgroup v2 has no realtime scheduler limits",
                                 "remove the field (realtime tasks need the root cgroup on v2)")
        shares = self.integer(cpu, "shares", "cpu")
        if shares:  # 0 means "not set" to runc and crun (Go's zero value)
            files["cpu.weight"] = str(cpu_shares_to_weight(shares))
        cpu_max = self.cpu_max(cpu)
        if cpu_max is not None:
            files["cpu.max"] = cpu_max
        burst = self.integer(cpu, "burst", "cpu")
        if burst is not None:
            files["cpu.max.burst"] = self.cpu_burst(burst, cpu_max)
        idle = self.integer(cpu, "idle", "cpu")
        if idle is not None:
            if idle not in (0, 1):
                raise self.error("cpu.idle", f"{idle} is not 0 (normal) or 1 (SCHED_IDLE)")
            files["cpu.idle"] = str(idle)
        for key in ("cpus", "mems"):
            value = self.cpu_list(cpu, key)
            if value:
                files[f"cpuset.{key}"] = value
        return files

    def cpu_max(self, cpu: _Json) -> str | None:
        quota = self.integer(cpu, "quota", "cpu")
        period = self.integer(cpu, "period", "cpu")
        if quota is None and period is None:
            return None
        if period is not None and not CPU_PERIOD_MIN <= period <= CPU_PERIOD_MAX:
            raise self.error("cpu.period", f"{period} us is outside the kernel's range "
                             f"{CPU_PERIOD_MIN}..{CPU_PERIOD_MAX} us (1 ms .. 1 s)")
        if quota is None or quota == -1:
            quota_text = "max"
        elif not CPU_QUOTA_MIN <= quota <= CPU_QUOTA_MAX:
            raise self.error("cpu.quota", f"{quota} us is not -1 (unlimited) nor in the kernel's "
                             f"range {CPU_QUOTA_MIN}..{CPU_QUOTA_MAX} us (min 1 ms)")
        else:
            quota_text = str(quota)
        return f"{quota_text} {period if period is not None else CPU_PERIOD_DEFAULT}"

    def cpu_burst(self, burst: int, cpu_max: str | None) -> str:
        if burst < 0:
            raise self.error("cpu.burst", f"{burst} is negative")
        quota = cpu_max.split()[0] if cpu_max else "max"
        if quota != "max" and burst > int(quota):
            raise self.error("cpu.burst", f"{burst} us is more than cpu.quota {quota} us")
        return str(burst)

    def cpu_list(self, cpu: _Json, key: str) -> str | None:
        value = cpu.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not re.fullmatch(r"[0-9,\- ]*", value):
            raise self.error(f"cpu.{key}", f"{value!r} is not a list like '0-3,6'")
        return value.replace(" ", "")

    def block_io(self, block_io: _Json) -> dict[str, str]:
        files: dict[str, str] = {}
        if self.integer(block_io, "leafWeight", "blockIO") is not None:
            raise self.error("blockIO.leafWeight", "cgroup v2 has no leaf weight",
                             "remove the field")
        bfq: list[str] = []
        iocost: list[str] = []
        weight = self.integer(block_io, "weight", "blockIO")
        if weight:  # 0 means "not set" to runc and crun
            self.check_weight(weight, "blockIO.weight")
            bfq.append(str(weight))
            iocost.append(f"default {blkio_weight_to_io_weight(weight)}")
        for index, entry in enumerate(self.entries(block_io, "weightDevice")):
            path = f"blockIO.weightDevice[{index}]"
            device = self.device(entry, path)
            if self.integer(entry, "leafWeight", path) is not None:
                raise self.error(f"{path}.leafWeight", "cgroup v2 has no leaf weight")
            weight = self.integer(entry, "weight", path)
            if weight is None:
                continue
            self.check_weight(weight, f"{path}.weight")
            bfq.append(f"{device} {weight}")
            iocost.append(f"{device} {blkio_weight_to_io_weight(weight)}")
        if bfq:
            files["io.bfq.weight"] = "\n".join(bfq)
            files["io.weight"] = "\n".join(iocost)
        io_max = self.io_max(block_io)
        if io_max:
            files["io.max"] = io_max
        return files

    def io_max(self, block_io: _Json) -> str:
        keys = {"throttleReadBpsDevice": "rbps", "throttleWriteBpsDevice": "wbps",
                "throttleReadIOPSDevice": "riops", "throttleWriteIOPSDevice": "wiops"}
        per_device: dict[str, dict[str, str]] = {}
        for field, io_key in keys.items():
            for index, entry in enumerate(self.entries(block_io, field)):
                path = f"blockIO.{field}[{index}]"
                device = self.device(entry, path)
                rate = self.integer(entry, "rate", path)
                if rate is None or rate < 0:
                    raise self.error(f"{path}.rate", "must be a number >= 0")
                # A rate of 0 removed the rule on cgroup v1; on v2 that is "max".
                per_device.setdefault(device, {})[io_key] = str(rate) if rate else "max"
        return "\n".join(
            f"{device} " + " ".join(f"{key}={value}" for key, value in limits.items())
            for device, limits in per_device.items()
        )

    def check_weight(self, weight: int, path: str) -> None:
        if not _BLKIO_WEIGHT_MIN <= weight <= _BLKIO_WEIGHT_MAX:
            raise self.error(path, f"{weight} is outside {_BLKIO_WEIGHT_MIN}.."
                             f"{_BLKIO_WEIGHT_MAX}")

    def entries(self, section: _Json, key: str) -> list[_Json]:
        value = section.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
            raise self.error(f"blockIO.{key}", "must be an array of objects")
        return value

    def device(self, entry: _Json, path: str) -> str:
        major = self.integer(entry, "major", path)
        minor = self.integer(entry, "minor", path)
        if major is None or minor is None or major < 0 or minor < 0:
            raise self.error(path, "needs major and minor device numbers >= 0")
        return f"{major}:{minor}"

    def hugepages(self, limits: object) -> dict[str, str]:
        if limits is None:
            return {}
        if not isinstance(limits, list):
            raise self.error("hugepageLimits", "must be an array of objects")
        files: dict[str, str] = {}
        for index, entry in enumerate(limits):
            path = f"hugepageLimits[{index}]"
            if not isinstance(entry, Mapping):
                raise self.error(path, "must be an object")
            size = entry.get("pageSize")
            if not isinstance(size, str) or not re.fullmatch(r"[1-9][0-9]*[KMG]B", size):
                raise self.error(f"{path}.pageSize", f"{size!r} is not a size like 2MB or 1GB")
            limit = self.integer(entry, "limit", path)
            if limit is None or limit < 0:
                raise self.error(f"{path}.limit", "must be a number of bytes >= 0")
            files[f"hugetlb.{size}.max"] = str(limit)
            files[f"hugetlb.{size}{_OPTIONAL_SUFFIX}"] = str(limit)
        return files

    def rdma(self, rdma: _Json) -> dict[str, str]:
        lines = []
        for device, entry in rdma.items():
            path = f"rdma.{device}"
            if not isinstance(entry, Mapping) or not re.fullmatch(r"[\w.-]+", device):
                raise self.error(path, "must be an object named by an RDMA device")
            handles = self.limit(entry, "hcaHandles", path) or "max"
            objects = self.limit(entry, "hcaObjects", path) or "max"
            lines.append(f"{device} hca_handle={handles} hca_object={objects}")
        return {"rdma.max": "\n".join(lines)} if lines else {}

    def refuse_network(self, network: _Json) -> None:
        if network:
            raise self.error("network", "net_cls and net_prio exist only in cgroup v1",
                             "remove the field; on cgroup v2 use nftables with socket cgroupv2")

    def unified(self, unified: _Json) -> dict[str, str]:
        files: dict[str, str] = {}
        for name, value in unified.items():
            path = f'unified["{name}"]'
            if not _is_plain_name(name):
                raise self.error(path, "must name a file in the cgroup directory itself "
                                 "(no '/', not '.' or '..')")
            if name in _RUNTIME_FILES:
                raise self.error(path, "is managed by the runtime and cannot be set")
            if not isinstance(value, str):
                raise self.error(path, f"must be a string, not {value!r}")
            files[name] = value
        return files


def _is_plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


# ----------------------------------------------------------------------------------------------
# The manager: one cgroup directory, created, filled, emptied and removed
# ----------------------------------------------------------------------------------------------


class CgroupManager:
    """Create, use and remove one container's cgroup under ``root`` (a cgroup2 mount).

    ``path`` is ``linux.cgroupsPath``: absolute means relative to root, relative means under
    ``root/minirun``. Only directories this manager created are removed. ``_mkdir`` and
    ``_rmdir`` are the two places where cgroupfs behaves unlike a plain directory tree (the
    kernel fills and empties control files itself); tests on a temporary tree override them.
    """

    def __init__(self, root: Path, path: str, source: str = "config.json") -> None:
        self.root = root
        self.relative = _relative_path(path, source)
        self.path = root / self.relative
        self.created: list[Path] = []  # outermost first
        self.prepared = False

    @classmethod
    def for_container(
        cls, root: Path, cgroups_path: str | None, container_id: str, source: str = "config.json"
    ) -> CgroupManager:
        """``cgroups_path`` from the spec, or ``minirun/<container-id>`` when it is unset."""
        return cls(root, cgroups_path or container_id, source)

    # -- set-up --

    def create(self, files: Mapping[str, str], also: frozenset[str] = frozenset()) -> None:
        """Make the cgroup (and missing parents), enable controllers, write ``files``.

        ``also`` names controllers to enable even without a limit, where the root offers them
        (so the container can read pids.current or memory.current, as under runc)."""
        available = _read_words(self.root / "cgroup.controllers")
        needed = controllers_needed(files) | (also & available)
        missing = needed - available
        if missing:
            raise UnsupportedError(
                f"cgroup v2 controller{'s' if len(missing) > 1 else ''} {_names(missing)} "
                f"not available in {self.root}/cgroup.controllers "
                f"(available: {_names(available) or 'none'})",
                "the kernel lacks them or they are bound to a cgroup v1 hierarchy; " + _REMEDY,
            )
        try:
            self._make_chain(needed)
            self._check_empty()
            self._write_files(files)
        except BaseException:
            self._remove_created()
            raise
        self.prepared = True
        log.info("cgroup %s ready (%s)", self.path, _names(needed) or "no controllers")

    def chain(self) -> list[Path]:
        """The cgroup's directory and its parents below the root, outermost first."""
        paths = []
        parent = self.root
        for part in self.relative.parts:
            parent = parent / part
            paths.append(parent)
        return paths

    def _make_chain(self, needed: set[str]) -> None:
        # Top-down: a controller can be enabled in a cgroup's subtree_control only when its
        # parent enabled it (cgroup-v2.rst, "Enabling and Disabling").
        for attempt in range(3):
            try:
                parent = self.root
                for part in self.relative.parts:
                    self._enable(parent, needed)
                    parent = parent / part
                    self._mkdir_once(parent)
                return
            except _Vanished as gone:
                # Another minirun removed a shared parent (root/minirun) between our steps.
                if attempt == 2:
                    raise SyscallError(gone.call, gone.path, errno.ENOENT) from gone

    def _enable(self, cgroup: Path, needed: set[str]) -> None:
        control = cgroup / "cgroup.subtree_control"
        missing = needed - _read_words(control)
        if not missing:
            return
        value = " ".join(f"+{name}" for name in sorted(missing))
        log.debug("write %s: %s", control, value)
        try:
            _write_once(control, value)
        except FileNotFoundError as err:
            raise _Vanished("write cgroup.subtree_control", str(control)) from err
        except OSError as err:
            raise SyscallError("write cgroup.subtree_control", f"{control}, {value!r}",
                               err.errno or errno.EIO) from err

    def _mkdir_once(self, path: Path) -> None:
        try:
            self._mkdir(path)
        except FileExistsError:
            return
        except FileNotFoundError as err:
            raise _Vanished("mkdir", str(path)) from err
        except OSError as err:
            raise SyscallError("mkdir", str(path), err.errno or errno.EIO) from err
        self.created.append(path)
        log.debug("mkdir %s", path)

    def _mkdir(self, path: Path) -> None:
        path.mkdir()

    def _check_empty(self) -> None:
        # runtime-spec: a cgroup with processes, or a frozen one, is unfit for a new container.
        pids = self.pids()
        if pids:
            raise MiniRunError(
                f"cgroup {self.path} already has processes: {', '.join(map(str, pids[:5]))}",
                "another container uses this cgroupsPath; choose another or delete that one",
            )
        with contextlib.suppress(FileNotFoundError):
            if _read_keyed(self.path / "cgroup.events").get("frozen") == 1:
                raise MiniRunError(f"cgroup {self.path} is frozen",
                                   f"thaw it first: echo 0 > {self.path}/cgroup.freeze")

    def _write_files(self, files: Mapping[str, str]) -> None:
        for name, value in files.items():
            if name in _PREFERRED_OVER.values() and _preferred_written(self.path, name, files):
                continue
            target = self.path / name
            if not target.exists() and (name in _PREFERRED_OVER or name.endswith(
                    _OPTIONAL_SUFFIX)):
                continue
            # One line per write(2): the kernel parses one device entry per write (io.max).
            for line in [line for line in value.splitlines() if line.strip()] or [value]:
                self._write(target, line)

    def _write(self, target: Path, value: str) -> None:
        log.debug("write %s: %s", target, value)
        try:
            _write_once(target, value)
        except OSError as err:
            hint = _WRITE_HINTS.get(err.errno or 0)
            raise SyscallError("write", f"{target}, {value!r}", err.errno or errno.EIO,
                               hint) from err

    # -- use --

    def add(self, pid: int) -> None:
        """Move process ``pid`` into the cgroup (its future children are born there)."""
        self._write(self.path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        """Processes in the cgroup and in any cgroups the container made below it."""
        found: list[int] = []
        for cgroup in self._tree():
            with contextlib.suppress(FileNotFoundError):
                found.extend(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
        return found

    def oom_killed(self) -> bool:
        """True once the kernel's OOM killer has killed a process in this cgroup."""
        try:
            events = _read_keyed(self.path / "memory.events")
        except FileNotFoundError:
            return False  # no memory controller here, so no OOM kill of ours either
        return events.get("oom_kill", 0) > 0

    def freeze(self, timeout: float = 5.0) -> None:
        """Stop every process (cgroup.freeze, Linux 5.2); returns when all are frozen."""
        self._write(self.path / "cgroup.freeze", "1")
        self._wait_for("frozen", 1, timeout)

    def thaw(self, timeout: float = 5.0) -> None:
        self._write(self.path / "cgroup.freeze", "0")
        self._wait_for("frozen", 0, timeout)

    def kill(self) -> None:
        """SIGKILL every process: cgroup.kill (Linux 5.14) or, before that, one by one."""
        if not self.path.exists():
            return
        if (self.path / "cgroup.kill").exists():
            self._write(self.path / "cgroup.kill", "1")
            return
        self._kill_one_by_one()

    def _kill_one_by_one(self) -> None:
        # Freeze first, so nothing forks between reading cgroup.procs and the kills; a frozen
        # task still dies of SIGKILL on cgroup v2.
        can_freeze = (self.path / "cgroup.freeze").exists()
        if can_freeze:
            self._write(self.path / "cgroup.freeze", "1")
        for _ in range(100):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        if can_freeze:
            self._write(self.path / "cgroup.freeze", "0")

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill everything, wait until empty, remove the directories this manager created."""
        if self.path.exists():
            self.kill()
            self._wait_for("populated", 0, timeout)
        self._remove_created()

    # -- clean-up helpers --

    def _remove_created(self) -> None:
        # Deepest first; the container's own sub-cgroups go too when the cgroup is ours.
        if self.path in self.created:
            for child in sorted(self._tree(), key=lambda p: len(p.parts), reverse=True):
                if child != self.path:
                    self._remove(child, shared=False)
        for path in reversed(self.created):
            self._remove(path, shared=path != self.path)
        self.created = []

    def _remove(self, path: Path, shared: bool) -> None:
        try:
            self._rmdir(path)
            log.debug("rmdir %s", path)
        except FileNotFoundError:
            pass
        except OSError as err:
            if shared and err.errno in (errno.EBUSY, errno.ENOTEMPTY):
                log.debug("keep %s: another container still uses it", path)
                return
            raise SyscallError("rmdir", str(path), err.errno or errno.EIO) from err

    def _rmdir(self, path: Path) -> None:
        path.rmdir()

    def _tree(self) -> Iterator[Path]:
        if not self.path.is_dir():
            return
        yield self.path
        for dirpath, dirnames, _ in os.walk(self.path):
            for name in dirnames:
                yield Path(dirpath) / name

    def _wait_for(self, key: str, value: int, timeout: float) -> None:
        events = self.path / "cgroup.events"
        deadline = time.monotonic() + timeout
        while True:
            try:
                current = _read_keyed(events).get(key)
            except FileNotFoundError:
                return  # the cgroup is gone: nothing left to wait for
            if current == value:
                return
            if time.monotonic() > deadline:
                raise MiniRunError(
                    f"cgroup {self.path}: {key} is still {current} after {timeout:g} s "
                    f"(processes: {', '.join(map(str, self.pids()[:10])) or 'none'})",
                    "a process may be stuck in uninterruptible sleep (state D in ps); "
                    "retry once it returns from the kernel",
                )
            time.sleep(0.01)


class _Vanished(Exception):
    """A directory on the way to the cgroup disappeared: worth one more try."""

    def __init__(self, call: str, path: str) -> None:
        super().__init__(f"{call}({path})")
        self.call = call
        self.path = path


def _write_once(path: Path, value: str) -> None:
    """One write(2) to an existing file. No O_CREAT: on cgroupfs that turns a missing file
    (a controller not enabled) into a misleading EACCES instead of ENOENT."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _relative_path(path: str, source: str) -> Path:
    """cgroupsPath -> a path relative to the cgroup root, refusing escapes and systemd slices."""
    where = "linux.cgroupsPath"
    if ":" in path:
        raise UnsupportedError(
            f"{source}: {where}: {path!r} is a systemd slice path; minirun has no systemd "
            "cgroup driver", "use a path such as /minirun/<name>")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ConfigError(source, where, f"{path!r} names the root cgroup; a container needs "
                          "its own cgroup")
    if any(p in (".", "..") or "\0" in p for p in parts):
        raise ConfigError(source, where, f"{path!r} must not contain '.' or '..' components")
    if not path.startswith("/"):
        parts.insert(0, DEFAULT_PARENT)
    return Path(*parts)


def _preferred_written(cgroup: Path, name: str, files: Mapping[str, str]) -> bool:
    """True when a preferred file (io.bfq.weight) replaces ``name`` and exists here."""
    return any(
        fallback == name and preferred in files and (cgroup / preferred).exists()
        for preferred, fallback in _PREFERRED_OVER.items()
    )


def _read_keyed(path: Path) -> dict[str, int]:
    """Parse a flat keyed file such as cgroup.events or memory.events ("key value" lines)."""
    result: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            result[key] = int(value)
    return result


_WRITE_HINTS = {
    errno.EINVAL: "the kernel refused the value; Documentation/admin-guide/cgroup-v2.rst "
                  "gives each file's format and range",
    errno.ENOENT: "this kernel has no such cgroup file: the controller is not enabled for "
                  "this cgroup, or the kernel is too old for it",
    errno.EOPNOTSUPP: "the cgroup's type (threaded or domain) does not allow this",
}


# ----------------------------------------------------------------------------------------------
# Clean-up guard: a watchdog that destroys the cgroup when minirun dies
# ----------------------------------------------------------------------------------------------

_DISARM = b"D"
GUARD_NAME = "minirun-guard"


def guard(manager: CgroupManager) -> int:
    """Fork a watchdog that calls ``manager.destroy()`` when minirun goes away; return its fd.

    The watchdog blocks reading a pipe whose only write end is the returned fd (close-on-exec,
    so the container never holds it; a process minirun forks later holds a copy until it execs
    or exits). EOF, which the kernel delivers however minirun ends, SIGKILL included, makes it
    destroy the cgroup. Call :func:`disarm` after a normal clean-up.
    Call this before ``manager.create()``, so no moment exists in which minirun could die
    and leave a cgroup behind: the watchdog removes whichever of the directories missing now
    exist when it wakes (it works on a copy of the manager). Double fork: the middle child
    exits at once and is reaped here, so the watchdog is adopted by init (or the nearest
    subreaper) and never becomes minirun's zombie.
    """
    _check_outside(manager)
    if not manager.prepared:
        manager = copy.copy(manager)
        manager.created = [path for path in manager.chain() if not path.exists()]
    read_end, write_end = os.pipe()  # both O_CLOEXEC (PEP 446)
    middle = os.fork()
    if middle == 0:
        _middle_child(manager, read_end, write_end)  # never returns
    os.close(read_end)
    with contextlib.suppress(ChildProcessError):  # a caller's wait(-1) loop may reap it first
        os.waitpid(middle, 0)
    log.debug("cgroup guard armed for %s (fd %d)", manager.path, write_end)
    return write_end


def disarm(fd: int) -> None:
    """Tell the watchdog that minirun cleaned up itself, so it exits without touching anything."""
    try:
        with contextlib.suppress(BrokenPipeError):  # the watchdog is gone already
            os.write(fd, _DISARM)
    finally:
        os.close(fd)


def _check_outside(manager: CgroupManager) -> None:
    """The watchdog is forked from us, so we must not be in the cgroup it will kill."""
    own = Path("/proc/self/cgroup").read_text()
    for line in own.splitlines():
        if line.startswith("0::"):
            mine = manager.root / line[3:].lstrip("/")
            if mine == manager.path or manager.path in mine.parents:
                raise MiniRunError(f"minirun itself is in {manager.path}; its guard would be "
                                   "killed with the container")


def _middle_child(manager: CgroupManager, read_end: int, write_end: int) -> None:
    # Everything in the children ends in os._exit: no atexit handlers, no flushing of
    # buffers copied from minirun (which would print minirun's pending output twice).
    status = 1
    try:
        os.close(write_end)
        os.setsid()  # leave minirun's session: Ctrl-C and terminal hang-up are not ours
        if os.fork() == 0:
            _watchdog(manager, read_end)
        status = 0
    finally:
        os._exit(status)


def _watchdog(manager: CgroupManager, read_end: int) -> None:
    status = 1
    try:
        _become_quiet(read_end)
        status = 0 if _wait_for_owner(read_end, manager.destroy) else 1
    finally:
        os._exit(status)


def _become_quiet(keep: int) -> None:
    """Drop every inherited fd but ``keep``: a caller reading minirun's stdout must see EOF."""
    os.chdir("/")  # do not keep a bundle's mount busy
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(GUARD_NAME)  # what ps and top show; same effect as prctl(PR_SET_NAME)


def _wait_for_owner(read_end: int, cleanup: Callable[[], None]) -> bool:
    """Block until the owner disarms (return True at once) or vanishes (run cleanup)."""
    while True:
        data = os.read(read_end, 1)
        if data == _DISARM:
            return True
        if not data:
            break
    try:
        cleanup()
    except MiniRunError:
        return False
    return True
