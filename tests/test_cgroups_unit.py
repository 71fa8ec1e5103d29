"""minirun.isolation.cgroups on the host, without root and without touching /sys/fs/cgroup.

Three layers: the OCI -> cgroup v2 conversion table (including the handed cases BR-24, BR-25
and BR-26), probe() on fake mount tables and on this real host, and CgroupManager / guard()
against a temporary directory tree that imitates cgroupfs (FakeCgroupManager below). The
same manager against a real cgroup2 mount is tested inside the test VM by
tests/vm_guest/test_cgroups_manager.py.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from minirun.errors import ConfigError, MiniRunError, SyscallError, UnsupportedError
from minirun.isolation import cgroups
from minirun.isolation.cgroups import CgroupManager, CgroupMode

SHARED = Path(__file__).resolve().parents[2] / "shared"
SOURCE = "bundle/config.json"


# ----------------------------------------------------------------------------------------------
# Conversion table
# ----------------------------------------------------------------------------------------------

CONVERSIONS: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("empty", {}, {}),
    ("memory limit", {"memory": {"limit": 67108864}}, {"memory.max": "67108864"}),
    ("memory unlimited", {"memory": {"limit": -1}}, {"memory.max": "max"}),
    ("memory reservation", {"memory": {"reservation": 1048576}}, {"memory.low": "1048576"}),
    ("swap equal to limit is no swap", {"memory": {"limit": 100, "swap": 100}},
     {"memory.max": "100", "memory.swap.max": "0"}),
    ("swap is memory+swap", {"memory": {"limit": 100, "swap": 300}},
     {"memory.max": "100", "memory.swap.max": "200"}),
    ("swap unlimited without limit", {"memory": {"swap": -1}}, {"memory.swap.max": "max"}),
    ("swap 0 with unlimited memory", {"memory": {"limit": -1, "swap": 0}},
     {"memory.max": "max", "memory.swap.max": "max"}),
    ("kernel memory ignored", {"memory": {"kernel": -1, "kernelTCP": 1 << 20}}, {}),
    ("oom killer kept", {"memory": {"disableOOMKiller": False}}, {}),
    ("pids", {"pids": {"limit": 64}}, {"pids.max": "64"}),
    ("pids zero is a limit", {"pids": {"limit": 0}}, {"pids.max": "0"}),
    ("pids unlimited", {"pids": {"limit": -1}}, {"pids.max": "max"}),
    ("shares default", {"cpu": {"shares": 1024}}, {"cpu.weight": "39"}),
    ("shares minimum", {"cpu": {"shares": 2}}, {"cpu.weight": "1"}),
    ("shares maximum", {"cpu": {"shares": 262144}}, {"cpu.weight": "10000"}),
    ("shares clamped like v1", {"cpu": {"shares": 1}}, {"cpu.weight": "1"}),
    ("shares 0 is unset", {"cpu": {"shares": 0}}, {}),
    ("quota and period", {"cpu": {"quota": 50000, "period": 100000}},
     {"cpu.max": "50000 100000"}),
    ("period only", {"cpu": {"period": 20000}}, {"cpu.max": "max 20000"}),
    ("burst", {"cpu": {"quota": 50000, "burst": 10000}},
     {"cpu.max": "50000 100000", "cpu.max.burst": "10000"}),
    ("idle", {"cpu": {"idle": 1}}, {"cpu.idle": "1"}),
    ("cpuset", {"cpu": {"cpus": "0-1,3", "mems": "0"}},
     {"cpuset.cpus": "0-1,3", "cpuset.mems": "0"}),
    ("cpuset empty is unset", {"cpu": {"cpus": ""}}, {}),
    ("io weight", {"blockIO": {"weight": 500}},
     {"io.bfq.weight": "500", "io.weight": "default 4950"}),
    ("io weight per device", {"blockIO": {"weightDevice": [
        {"major": 8, "minor": 0, "weight": 1000}, {"major": 8, "minor": 16, "weight": 10}]}},
     {"io.bfq.weight": "8:0 1000\n8:16 10", "io.weight": "8:0 10000\n8:16 1"}),
    ("io.max merges per device", {"blockIO": {
        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
        "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 300},
                                    {"major": 253, "minor": 1, "rate": 0}]}},
     {"io.max": "8:0 rbps=600 wiops=300\n253:1 wiops=max"}),
    ("hugepages", {"hugepageLimits": [{"pageSize": "2MB", "limit": 209715200}]},
     {"hugetlb.2MB.max": "209715200", "hugetlb.2MB.rsvd.max": "209715200"}),
    ("rdma", {"rdma": {"mlx5_1": {"hcaHandles": 3}}},
     {"rdma.max": "mlx5_1 hca_handle=3 hca_object=max"}),
    ("unified wins", {"memory": {"limit": 100}, "unified": {"memory.max": "200",
                                                           "memory.high": "150"}},
     {"memory.max": "200", "memory.high": "150"}),
]


@pytest.mark.parametrize(("resources", "expected"), [c[1:] for c in CONVERSIONS],
                         ids=[c[0] for c in CONVERSIONS])
def test_conversion(resources: dict[str, Any], expected: dict[str, str]) -> None:
    assert cgroups.resources_to_files(resources, SOURCE) == expected


REFUSALS: list[tuple[dict[str, Any], str, str]] = [
    ({"memory": {"limit": -5}}, "memory.limit", "-5 is negative (only -1, unlimited, is)"),
    ({"memory": {"limit": "64m"}}, "memory.limit", "must be an integer, not '64m'"),
    ({"memory": {"limit": True}}, "memory.limit", "must be an integer, not True"),
    ({"memory": {"swap": 1 << 27}}, "memory.swap", "a memory+swap limit needs a memory.limit"),
    ({"memory": {"limit": -1, "swap": 1 << 27}}, "memory.swap", "needs a memory.limit"),
    ({"memory": {"limit": 200, "swap": 100}}, "memory.swap", "100 is less than memory.limit"),
    ({"memory": {"limit": 200, "swap": -2}}, "memory.swap", "-2 is negative"),
    ({"memory": {"swappiness": 0}}, "memory.swappiness", "no per-cgroup swappiness"),
    ({"memory": {"disableOOMKiller": True}}, "memory.disableOOMKiller", "cannot disable"),
    ({"memory": {"useHierarchy": False}}, "memory.useHierarchy", "always hierarchical"),
    ({"pids": {"limit": -2}}, "pids.limit", "-2 is negative"),
    ({"cpu": {"quota": 999}}, "cpu.quota", "999 us is not -1 (unlimited) nor in the kernel"),
    ({"cpu": {"quota": -2}}, "cpu.quota", "min 1 ms"),
    ({"cpu": {"quota": 1 << 44}}, "cpu.quota", "1000..17592186044415 us"),
    ({"cpu": {"period": 999}}, "cpu.period", "outside the kernel's range 1000..1000000 us"),
    ({"cpu": {"quota": 5000, "burst": 6000}}, "cpu.burst", "more than cpu.quota 5000 us"),
    ({"cpu": {"realtimeRuntime": 950000}}, "cpu.realtimeRuntime", "no realtime"),
    ({"cpu": {"realtimePeriod": 1000000}}, "cpu.realtimePeriod", "no realtime"),
    ({"cpu": {"idle": 2}}, "cpu.idle", "not 0 (normal) or 1"),
    ({"cpu": {"cpus": "0-3; rm -rf"}}, "cpu.cpus", "is not a list like '0-3,6'"),
    ({"blockIO": {"weight": 5}}, "blockIO.weight", "5 is outside 10..1000"),
    ({"blockIO": {"leafWeight": 10}}, "blockIO.leafWeight", "no leaf weight"),
    ({"blockIO": {"weightDevice": [{"major": 8, "weight": 10}]}}, "blockIO.weightDevice[0]",
     "needs major and minor"),
    ({"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "leafWeight": 10}]}},
     "blockIO.weightDevice[0].leafWeight", "no leaf weight"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0}]}},
     "blockIO.throttleReadBpsDevice[0].rate", "must be a number >= 0"),
    ({"blockIO": {"throttleReadBpsDevice": {"major": 8}}}, "blockIO.throttleReadBpsDevice",
     "must be an array of objects"),
    ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, "hugepageLimits[0].pageSize",
     "'2M' is not a size like 2MB"),
    ({"hugepageLimits": [{"pageSize": "../2MB", "limit": 1}]}, "hugepageLimits[0].pageSize",
     "is not a size"),
    ({"network": {"classID": 1}}, "network", "only in cgroup v1"),
    ({"unified": {"../memory.max": "1"}}, 'unified["../memory.max"]', "no '/'"),
    ({"unified": {"..": "1"}}, 'unified[".."]', "not '.' or '..'"),
    ({"unified": {"cgroup.procs": "1"}}, 'unified["cgroup.procs"]', "managed by the runtime"),
    ({"unified": {"memory.max": 5}}, 'unified["memory.max"]', "must be a string, not 5"),
    ({"memory": [1]}, "memory", "must be an object"),
]


@pytest.mark.parametrize(("resources", "json_path", "problem"), REFUSALS,
                         ids=[r[1] + ":" + r[2][:20] for r in REFUSALS])
def test_refusal(resources: dict[str, Any], json_path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cgroups.resources_to_files(resources, SOURCE)
    assert caught.value.file == SOURCE
    assert caught.value.path == f"linux.resources.{json_path}"
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_refusal_message_is_one_line_with_file_and_path() -> None:
    with pytest.raises(ConfigError) as caught:
        cgroups.resources_to_files({"memory": {"limit": 67108864, "swap": 33554432}}, SOURCE)
    assert str(caught.value) == (
        "bundle/config.json: linux.resources.memory.swap: 33554432 is less than memory.limit "
        "67108864 (swap counts memory+swap, so it must be >= limit)")


def test_kernel_memory_is_ignored_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert cgroups.resources_to_files({"memory": {"kernel": 1 << 20}}, SOURCE) == {}
    assert "memory.kernel=1048576 is ignored" in capsys.readouterr().err


def test_controllers_needed() -> None:
    files = {"memory.max": "1", "cpu.max": "max 100000", "cpuset.cpus": "0",
             "hugetlb.2MB.max": "1", "cgroup.max.depth": "2", "io.max": "8:0 rbps=1"}
    assert cgroups.controllers_needed(files) == {"memory", "cpu", "cpuset", "hugetlb", "io"}


# ----------------------------------------------------------------------------------------------
# Handed cases: BR-24 (pids), BR-25 (memory+swap), BR-26 (cpu quota/period)
# ----------------------------------------------------------------------------------------------

# config name -> the files expected, or (json path, problem) of the refusal.
CASES: dict[str, dict[str, dict[str, str] | tuple[str, str]]] = {
    "BR-24-pids-limit-semantics": {
        "absent": {},
        "limit-0": {"pids.max": "0"},
        "limit-1": {"pids.max": "1"},
        "limit-64": {"pids.max": "64"},
        "limit-minus-1": {"pids.max": "max"},
    },
    "BR-25-memory-swap-limits": {
        "limit-64m-swap-eq-limit": {"memory.max": "67108864", "memory.swap.max": "0"},
        "limit-minus-1": {"memory.max": "max"},
        "swap-without-limit": ("memory.swap", "needs a memory.limit too"),
        "limit-negative-5": ("memory.limit", "-5 is negative"),
        "swap-less-than-limit": ("memory.swap", "33554432 is less than memory.limit 67108864"),
    },
    "BR-26-cpu-quota-period": {
        "quota-50000-period-100000": {"cpu.max": "50000 100000"},
        "quota-minus-1": {"cpu.max": "max 100000"},
        "quota-only": {"cpu.max": "20000 100000"},
        "quota-500": ("cpu.quota", "500 us is not -1 (unlimited) nor in the kernel's range"),
        "quota-0": ("cpu.quota", "0 us is not -1 (unlimited) nor in the kernel's range"),
        "period-500": ("cpu.period", "500 us is outside the kernel's range 1000..1000000"),
        "period-2000000": ("cpu.period", "2000000 us is outside the kernel's range"),
    },
}


def copy_case(name: str, tmp_path: Path) -> Path:
    """The shared cases are read-only input: work on a copy."""
    source = SHARED / "cases" / name
    if not source.is_dir():
        pytest.fail(f"handed case {source} is missing (shared/ belongs next to the repository)")
    return Path(shutil.copytree(source, tmp_path / name, symlinks=True))


@pytest.mark.parametrize("case", sorted(CASES))
def test_handed_case(case: str, tmp_path: Path) -> None:
    bundle = copy_case(case, tmp_path)
    configs = {p.stem: p for p in (bundle / "configs").glob("*.json")}
    assert set(configs) == set(CASES[case]), "every config of the case has an expectation"
    for name, expected in CASES[case].items():
        config = json.loads(configs[name].read_text())
        resources = config["linux"].get("resources", {})
        if isinstance(expected, dict):
            assert cgroups.resources_to_files(resources, str(configs[name])) == expected, name
            continue
        json_path, problem = expected
        with pytest.raises(ConfigError) as caught:
            cgroups.resources_to_files(resources, str(configs[name]))
        assert caught.value.path == f"linux.resources.{json_path}", name
        assert problem in str(caught.value), name
        assert str(caught.value).startswith(f"{configs[name]}: "), name


# ----------------------------------------------------------------------------------------------
# probe() and require()
# ----------------------------------------------------------------------------------------------

HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory,clone_children
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""


def fake_host(tmp_path: Path, mounts: str, controllers: str | None) -> cgroups.Cgroup2Host:
    """probe() on a made-up mount table; root is a temporary directory named in it."""
    root = tmp_path / "cg root"
    (root / "unified").mkdir(parents=True)
    if controllers is not None:
        target = root / "unified" if "unified" in mounts else root
        (target / "cgroup.controllers").write_text(controllers + "\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(mounts.replace("/sys/fs/cgroup", str(root).replace(" ", "\\040")))
    return cgroups.probe(root, mountinfo)


def test_probe_unified(tmp_path: Path) -> None:
    host = fake_host(tmp_path, "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
                     "cpuset cpu io memory pids")
    assert host.mode is CgroupMode.UNIFIED
    assert host.cgroup2_path == host.root
    assert host.controllers == {"cpuset", "cpu", "io", "memory", "pids"}
    cgroups.require(host, {"memory", "pids"})
    with pytest.raises(UnsupportedError) as caught:
        cgroups.require(host, {"memory", "hugetlb", "rdma"})
    assert str(caught.value) == (
        f"cgroup v2 is not usable here: {host.root} is cgroup2 but lacks the hugetlb, rdma "
        "controllers (available: cpu, cpuset, io, memory, pids)")


def test_probe_hybrid(tmp_path: Path) -> None:
    host = fake_host(tmp_path, HYBRID_MOUNTS, "")
    assert host.mode is CgroupMode.HYBRID
    assert host.root_fstype == "tmpfs"
    assert host.cgroup2_path == host.root / "unified"
    assert host.controllers == frozenset()
    assert host.v1_controllers == {"cpu", "cpuacct", "memory", "name=systemd"}
    with pytest.raises(UnsupportedError) as caught:
        cgroups.require(host, set())
    assert str(caught.value) == (
        f"cgroup v2 is not usable here: {host.root} is hybrid (cgroup v1 controllers, "
        f"cgroup2 at {host.root}/unified)")
    assert caught.value.hint is not None
    assert "systemd.unified_cgroup_hierarchy=1" in caught.value.hint
    assert "/usr/bin/python3 -m tests.vm run -- " in caught.value.hint


def test_probe_legacy_and_none(tmp_path: Path) -> None:
    legacy = "\n".join(HYBRID_MOUNTS.splitlines()[:4]) + "\n"
    host = fake_host(tmp_path, legacy, None)
    assert host.mode is CgroupMode.LEGACY
    with pytest.raises(UnsupportedError, match=r"is cgroup v1 only \(cpu, cpuacct, memory"):
        cgroups.require(host, {"memory"})
    shutil.rmtree(tmp_path / "cg root")
    host = fake_host(tmp_path, "22 1 0:21 / / rw - ext4 /dev/vda rw\n", None)
    assert host.mode is CgroupMode.NONE
    assert host.root_fstype == "ext4"
    with pytest.raises(UnsupportedError, match=r"is not a cgroup file system \(ext4\)"):
        cgroups.require(host, set())


def test_probe_this_host() -> None:
    """This host's real /sys/fs/cgroup; the expectation comes from a plain reading of mountinfo."""
    fstypes = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstypes[fields[4]] = fields[fields.index("-") + 1]
    host = cgroups.probe()
    assert host.root_fstype == fstypes["/sys/fs/cgroup"]
    if fstypes["/sys/fs/cgroup"] == "cgroup2":
        assert host.mode is CgroupMode.UNIFIED
        return
    v1 = {path for path, fstype in fstypes.items() if fstype == "cgroup"}
    unified = fstypes.get("/sys/fs/cgroup/unified")
    assert host.mode is (CgroupMode.HYBRID if unified == "cgroup2" and v1 else
                         CgroupMode.LEGACY if v1 else CgroupMode.NONE)
    if host.mode is not CgroupMode.HYBRID:
        return
    # The build host of this project: v1 controllers, an (almost) empty cgroup2 at unified.
    assert host.cgroup2_path == Path("/sys/fs/cgroup/unified")
    assert "memory" in host.v1_controllers and "memory" not in host.controllers
    expected = Path("/sys/fs/cgroup/unified/cgroup.controllers").read_text().split()
    assert host.controllers == set(expected)
    missing = sorted({"cpu", "io", "memory", "pids"} - set(expected))
    with pytest.raises(UnsupportedError) as caught:
        cgroups.require(host, {"cpu", "io", "memory", "pids"})
    assert str(caught.value) == (
        "cgroup v2 is not usable here: /sys/fs/cgroup is hybrid (cgroup v1 controllers, "
        f"cgroup2 at /sys/fs/cgroup/unified without {', '.join(missing)})")


# ----------------------------------------------------------------------------------------------
# CgroupManager on a temporary tree
# ----------------------------------------------------------------------------------------------


# The control files the fake kernel makes in each new cgroup (the manager never creates files:
# it opens them without O_CREAT, so a write to a file missing here fails with ENOENT).
FAKE_FILES = (
    "cgroup.subtree_control", "cgroup.procs", "cgroup.kill", "cgroup.freeze",
    "memory.max", "memory.low", "memory.high", "memory.swap.max", "memory.events",
    "pids.max", "pids.events", "cpu.max", "cpu.max.burst", "cpu.weight", "cpu.idle", "cpu.stat",
    "cpuset.cpus", "cpuset.mems", "io.max", "io.weight", "hugetlb.2MB.max", "rdma.max",
)


class FakeCgroupManager(CgroupManager):
    """The manager on a plain directory tree, with the two cgroupfs behaviours imitated.

    mkdir creates the control files as the kernel does (every controller's files, as if all
    were enabled: a plain file cannot accumulate "+memory" writes the way subtree_control
    does); rmdir removes them again and, like the kernel, refuses with EBUSY while the cgroup
    has children or processes.
    """

    extra_files: tuple[str, ...] = ()

    def _mkdir(self, path: Path) -> None:
        path.mkdir()
        for name in FAKE_FILES + self.extra_files:
            (path / name).write_text("")
        (path / "cgroup.events").write_text("populated 0\nfrozen 0\n")

    def _rmdir(self, path: Path) -> None:
        if any(p.is_dir() for p in path.iterdir()) or (path / "cgroup.procs").read_text():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "cgroup"
    top.mkdir()
    (top / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (top / "cgroup.subtree_control").write_text("")
    return top


FILES = {"memory.max": "67108864", "memory.swap.max": "0", "pids.max": "64",
         "cpu.max": "50000 100000"}


def test_create_default_path(root: Path) -> None:
    manager = FakeCgroupManager.for_container(root, None, "c1")
    assert manager.path == root / "minirun" / "c1"
    manager.create(FILES)
    assert manager.created == [root / "minirun", root / "minirun" / "c1"]
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (root / "minirun" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (manager.path / "cgroup.subtree_control").read_text() == "", "the leaf enables none"
    for name, value in FILES.items():
        assert (manager.path / name).read_text() == value
    manager.add(4242)
    assert (manager.path / "cgroup.procs").read_text() == "4242"
    (manager.path / "cgroup.procs").write_text("")
    manager.destroy()
    assert sorted(p.name for p in root.iterdir()) == ["cgroup.controllers",
                                                      "cgroup.subtree_control"]


def test_paths(root: Path) -> None:
    assert FakeCgroupManager(root, "/a/b").path == root / "a" / "b"
    assert FakeCgroupManager(root, "a/b").path == root / "minirun" / "a" / "b"
    assert FakeCgroupManager.for_container(root, "/x", "c1").path == root / "x"
    with pytest.raises(ConfigError, match=r"config.json: linux.cgroupsPath: '/a/../b' must not"):
        FakeCgroupManager(root, "/a/../b")
    with pytest.raises(ConfigError, match="names the root cgroup"):
        FakeCgroupManager(root, "/")
    with pytest.raises(UnsupportedError, match="systemd slice path"):
        FakeCgroupManager(root, "system.slice:minirun:c1")


def test_keeps_what_it_did_not_create(root: Path) -> None:
    first = FakeCgroupManager(root, "c1")
    first.create({"pids.max": "10"})
    second = FakeCgroupManager(root, "c2")
    second.create({"pids.max": "20"})
    assert second.created == [root / "minirun" / "c2"]
    first.destroy()  # minirun/ is still used by c2: kept without an error
    assert sorted(p.name for p in (root / "minirun").iterdir() if p.is_dir()) == ["c2"]
    second.destroy()
    assert (root / "minirun").is_dir(), "c2 did not create minirun/, so it does not remove it"
    first.destroy()  # a second destroy is harmless


def test_removes_subcgroups_the_container_made(root: Path) -> None:
    manager = FakeCgroupManager(root, "/c1")
    manager.create({})
    manager._mkdir(manager.path / "inner")
    manager._mkdir(manager.path / "inner" / "deeper")
    manager.destroy()
    assert not manager.path.exists()


def test_missing_controller_is_unsupported(root: Path) -> None:
    manager = FakeCgroupManager(root, "c1")
    with pytest.raises(UnsupportedError) as caught:
        manager.create({"misc.max": "x 1", "memory.max": "1"})
    assert str(caught.value) == (
        f"cgroup v2 controller misc not available in {root}/cgroup.controllers "
        "(available: cpu, cpuset, hugetlb, io, memory, pids, rdma)")
    assert not (root / "minirun").exists()


def test_refuses_a_populated_cgroup_and_rolls_back(root: Path) -> None:
    FakeCgroupManager(root, "/busy").create({})
    (root / "busy" / "cgroup.procs").write_text("1234\n")
    again = FakeCgroupManager(root, "/busy")
    with pytest.raises(MiniRunError, match=r"busy already has processes: 1234"):
        again.create({})
    assert again.created == []
    assert (root / "busy").is_dir(), "not created by this manager, so not removed"
    (root / "busy" / "cgroup.procs").write_text("")
    (root / "busy" / "cgroup.events").write_text("populated 0\nfrozen 1\n")
    with pytest.raises(MiniRunError, match=r"busy is frozen"):
        again.create({})


def test_write_error_names_file_and_value_and_rolls_back(root: Path) -> None:
    class Broken(FakeCgroupManager):
        def _mkdir(self, path: Path) -> None:
            super()._mkdir(path)
            if path.name == "c1":
                (path / "memory.max").unlink()
                (path / "memory.max").mkdir()  # any write to it fails with EISDIR

        def _rmdir(self, path: Path) -> None:
            if (path / "memory.max").is_dir():
                (path / "memory.max").rmdir()
            super()._rmdir(path)

    manager = Broken(root, "c1")
    with pytest.raises(SyscallError) as caught:
        manager.create({"pids.max": "5", "memory.max": "1"})
    assert str(caught.value) == (
        f"write({manager.path}/memory.max, '1'): EISDIR (Is a directory)")
    assert not (root / "minirun").exists(), "directories made before the failure are removed"


def test_missing_control_file_is_enoent_with_hint(root: Path) -> None:
    manager = FakeCgroupManager(root, "c1")
    with pytest.raises(SyscallError) as caught:
        manager.create({"memory.zswap.max": "0"})
    assert str(caught.value) == (
        f"write({manager.path}/memory.zswap.max, '0'): ENOENT (No such file or directory)")
    assert caught.value.hint is not None and "no such cgroup file" in caught.value.hint
    assert not (root / "minirun").exists()


def test_multiline_values_are_written_line_by_line(root: Path) -> None:
    manager = FakeCgroupManager(root, "c1")
    manager.create({"io.max": "8:0 rbps=1\n8:16 wbps=2"})
    # The kernel takes one device per write(2); a plain file keeps only the last write.
    assert (manager.path / "io.max").read_text() == "8:16 wbps=2"
    manager.destroy()
    again = FakeCgroupManager(root, "c2")
    again.create({"io.max": "8:0 rbps=1\n", "memory.high": ""})
    assert (again.path / "io.max").read_text() == "8:0 rbps=1", "no empty write after the end"
    assert (again.path / "memory.high").read_text() == ""
    again.destroy()


def test_bfq_weight_preferred_when_present(root: Path) -> None:
    files = cgroups.resources_to_files({"blockIO": {"weight": 500},
                                        "hugepageLimits": [{"pageSize": "2MB", "limit": 4}]},
                                       SOURCE)
    plain = FakeCgroupManager(root, "plain")
    plain.create(files)
    assert (plain.path / "io.weight").read_text() == "default 4950"
    assert not (plain.path / "io.bfq.weight").exists()
    assert not (plain.path / "hugetlb.2MB.rsvd.max").exists(), "optional: only if the kernel has it"
    assert (plain.path / "hugetlb.2MB.max").read_text() == "4"

    class WithBfq(FakeCgroupManager):
        extra_files = ("io.bfq.weight", "io.weight", "hugetlb.2MB.rsvd.max")

    bfq = WithBfq(root, "bfq")
    bfq.create(files)
    assert (bfq.path / "io.bfq.weight").read_text() == "500"
    assert (bfq.path / "io.weight").read_text() == "", "io.weight is left to BFQ's weight"
    assert (bfq.path / "hugetlb.2MB.rsvd.max").read_text() == "4"


def test_oom_killed(root: Path) -> None:
    manager = FakeCgroupManager(root, "c1")
    manager.create({})
    (manager.path / "memory.events").unlink()
    assert manager.oom_killed() is False, "no memory.events: no memory controller, no OOM kill"
    (manager.path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 0\n")
    assert manager.oom_killed() is False
    (manager.path / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n")
    assert manager.oom_killed() is True


def test_freeze_and_thaw(root: Path) -> None:
    manager = FakeCgroupManager(root, "c1")
    manager.create({})
    (manager.path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    manager.freeze()
    assert (manager.path / "cgroup.freeze").read_text() == "1"
    with pytest.raises(MiniRunError, match=r"c1: frozen is still 1 after 0.05 s"):
        manager.thaw(timeout=0.05)
    assert (manager.path / "cgroup.freeze").read_text() == "0"


def test_destroy_times_out_while_populated(root: Path) -> None:
    manager = FakeCgroupManager(root, "c1")
    manager.create({})
    (manager.path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(MiniRunError, match=r"populated is still 1 after 0.05 s"):
        manager.destroy(timeout=0.05)
    assert (manager.path / "cgroup.kill").read_text() == "1"
    assert manager.path.exists()


def test_kill_without_cgroup_kill_signals_each_process(root: Path) -> None:
    manager = FakeCgroupManager(root, "c1")
    manager.create({})
    (manager.path / "cgroup.kill").unlink()  # a kernel older than 5.14
    sleeper = subprocess.Popen(["/bin/sleep", "60"])
    procs = manager.path / "cgroup.procs"
    procs.write_text(f"{sleeper.pid}\n")

    def kernel_forgets_the_dead() -> None:
        sleeper.wait()
        procs.write_text("")

    reaper = threading.Thread(target=kernel_forgets_the_dead)
    reaper.start()
    manager.kill()
    reaper.join(timeout=5)
    assert sleeper.returncode == -signal.SIGKILL
    assert (manager.path / "cgroup.freeze").read_text() == "0", "frozen for the kill, thawed"
    manager.destroy()


# ----------------------------------------------------------------------------------------------
# guard(): the watchdog that cleans up after kill -9 of minirun
# ----------------------------------------------------------------------------------------------


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def pipe_holders(fd: int) -> list[int]:
    """Pids of other processes holding an end of the pipe behind our ``fd``."""
    target = f"pipe:[{os.fstat(fd).st_ino}]"
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(link) == target for link in (proc / "fd").iterdir()):
                holders.append(int(proc.name))
        except OSError:
            continue
    return holders


PR_SET_CHILD_SUBREAPER = 36  # prctl(2)

Reap = Callable[[], dict[int, int]]


@pytest.fixture
def reaper() -> Iterator[Reap]:
    """Make this process the subreaper of the orphaned watchdogs, and reap them.

    A watchdog is orphaned on purpose (double fork) and adopted by pid 1, whose job is to reap
    it; the pid 1 of some sandboxes never does. As subreaper, the test adopts and reaps them.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

    def reap(timeout: float = 10.0) -> dict[int, int]:
        """Wait for every adopted child to exit: {pid: exit status}."""
        statuses: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.02)
                continue
            statuses[pid] = os.waitstatus_to_exitcode(status)
        return statuses

    try:
        yield reap
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        reap(timeout=5.0)


def test_guard_armed_before_create_removes_what_create_made(root: Path, reaper: Reap) -> None:
    """No moment between mkdir and arming: the guard comes first, and on minirun's death
    removes the directories that did not exist when it was armed."""
    manager = FakeCgroupManager(root, "c1")
    ready_r, ready_w = os.pipe()
    owner = os.fork()
    if owner == 0:  # plays minirun: arms the guard, creates, then is killed with SIGKILL
        try:
            cgroups.guard(manager)
            manager.create({"pids.max": "5"})
            os.write(ready_w, b"1")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    assert manager.path.is_dir()
    os.kill(owner, signal.SIGKILL)
    os.waitpid(owner, 0)
    assert list(reaper().values()) == [0]
    assert not (root / "minirun").exists(), "the watchdog removed what create made"


def test_guard_disarmed_leaves_the_cgroup(root: Path, reaper: Reap) -> None:
    manager = FakeCgroupManager(root, "c1")
    manager.create({"pids.max": "5"})
    fd = cgroups.guard(manager)
    try:
        assert wait_until(lambda: len(pipe_holders(fd)) == 1)
        (watchdog,) = pipe_holders(fd)
        proc = Path(f"/proc/{watchdog}")
        assert (proc / "comm").read_text().strip() == "minirun-guard"
        fds = {int(name): os.readlink(proc / "fd" / name) for name in os.listdir(proc / "fd")}
        assert {fds[0], fds[1], fds[2]} == {"/dev/null"}, "stdout/stderr of minirun not held"
        assert len(fds) == 4, f"only the pipe besides 0, 1, 2: {fds}"
        assert f"pipe:[{os.fstat(fd).st_ino}]" in fds.values()
        status = dict(line.split(":\t", 1) for line in (proc / "status").read_text().splitlines())
        # Double fork: the middle child has exited, so the subreaper (this test) adopted it.
        assert int(status["PPid"]) == os.getpid()
        assert os.getsid(watchdog) != os.getsid(0), "own session"
    finally:
        cgroups.disarm(fd)
    assert reaper() == {watchdog: 0}, "the watchdog exits, with status 0"
    assert manager.path.is_dir(), "a disarmed guard touches nothing"
    manager.destroy()


def test_guard_cleans_up_after_sigkill_of_owner(root: Path, reaper: Reap) -> None:
    manager = FakeCgroupManager(root, "c1")
    manager.create({"pids.max": "5"})
    ready_r, ready_w = os.pipe()
    owner = os.fork()
    if owner == 0:  # plays minirun: arms the guard, then is killed with SIGKILL
        try:
            cgroups.guard(manager)
            os.write(ready_w, b"1")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    assert manager.path.is_dir()
    os.kill(owner, signal.SIGKILL)
    os.waitpid(owner, 0)
    statuses = reaper()
    assert list(statuses.values()) == [0], "one watchdog, done with status 0"
    assert not (root / "minirun").exists(), "the watchdog removed it all"


def test_disarm_after_the_watchdog_is_gone() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    cgroups.disarm(write_end)  # EPIPE is not an error here: there is nothing left to tell
    with pytest.raises(OSError):
        os.fstat(write_end)
