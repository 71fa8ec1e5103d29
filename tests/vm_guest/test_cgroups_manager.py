"""CgroupManager and guard() on the VM's real cgroup v2 (runs only in the test VM).

Each test makes its own manager under the guest's /sys/fs/cgroup, runs /usr/bin/python3
workloads in it and checks what the kernel did: an OOM kill past memory.max, a fork refused
at pids.max (BR-24's 0 included), throttling by cpu.max, a cgroup emptied and removed by
destroy(), and a guard that cleans up after the owning process is killed with SIGKILL.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from minirun.errors import SyscallError
from minirun.isolation import cgroups
from minirun.isolation.cgroups import CgroupManager

PYTHON = "/usr/bin/python3"

# Workloads wait for a line on stdin, so the test can move them into the cgroup first.
GATE = "import sys\nsys.stdin.readline()\n"

FORK_UNTIL_REFUSED = GATE + """
import errno, os
read_end, write_end = os.pipe()
children, failure = [], "none"
try:
    for _ in range(50):
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            os.read(read_end, 1)
            os._exit(0)
        children.append(pid)
except OSError as error:
    failure = errno.errorcode[error.errno]
os.close(write_end)
for pid in children:
    os.waitpid(pid, 0)
print(len(children), failure)
"""


def start(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-c", GATE + code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def release(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate("\n", timeout=timeout)
    return process.returncode, out, err


def keyed(path: Path) -> dict[str, int]:
    return {key: int(value) for key, value in (line.split() for line in
                                               path.read_text().splitlines())}


@pytest.fixture()
def manager(cgroup_root: Path) -> Iterator[CgroupManager]:
    """A manager for minirun/<random id>; destroyed afterwards, and checked to leave nothing."""
    parent_existed = (cgroup_root / "minirun").exists()
    made = CgroupManager.for_container(cgroup_root, None, f"test-{secrets.token_hex(4)}")
    yield made
    made.destroy()
    assert not made.path.exists()
    assert (cgroup_root / "minirun").exists() == parent_existed


def resources(**sections: object) -> dict[str, str]:
    return cgroups.resources_to_files(sections, "test")


def test_probe_sees_a_unified_host(cgroup_root: Path) -> None:
    host = cgroups.probe(cgroup_root)
    assert host.mode is cgroups.CgroupMode.UNIFIED
    cgroups.require(host, {"cpu", "memory", "pids", "io"})


def test_create_writes_limits_and_destroy_removes_all(cgroup_root: Path) -> None:
    parent_existed = (cgroup_root / "minirun").exists()
    manager = CgroupManager(cgroup_root, f"/minirun-mgr-{secrets.token_hex(4)}/c1")
    files = resources(memory={"limit": 64 << 20, "swap": 64 << 20}, pids={"limit": 16},
                      cpu={"quota": 20000, "period": 100000, "shares": 1024})
    manager.create(files)
    assert [p.name for p in manager.created] == [manager.path.parent.name, "c1"]
    assert {"cpu", "memory", "pids"} <= set(
        (manager.path.parent / "cgroup.subtree_control").read_text().split())
    assert (manager.path / "memory.max").read_text().strip() == str(64 << 20)
    assert (manager.path / "memory.swap.max").read_text().strip() == "0"
    assert (manager.path / "pids.max").read_text().strip() == "16"
    assert (manager.path / "cpu.max").read_text().split() == ["20000", "100000"]
    assert (manager.path / "cpu.weight").read_text().strip() == "39"
    sleeper = subprocess.Popen(["/bin/sleep", "600"])
    manager.add(sleeper.pid)
    assert manager.pids() == [sleeper.pid]

    manager.destroy()

    assert sleeper.wait(timeout=30) == -signal.SIGKILL
    assert not manager.path.parent.exists(), "both created directories are gone"
    assert (cgroup_root / "minirun").exists() == parent_existed


def test_oom_kill_past_memory_max(manager: CgroupManager) -> None:
    manager.create(resources(memory={"limit": 64 << 20, "swap": 64 << 20}))
    hog = start("data = b'x' * (200 << 20)\nprint('survived', len(data))")
    manager.add(hog.pid)
    status, out, _ = release(hog)
    assert status == -signal.SIGKILL, out
    assert manager.oom_killed() is True


def test_no_oom_below_memory_max(manager: CgroupManager) -> None:
    manager.create(resources(memory={"limit": 64 << 20}))
    small = start("data = b'x' * (8 << 20)\nprint(len(data))")
    manager.add(small.pid)
    assert release(small)[:2] == (0, f"{8 << 20}\n")
    assert manager.oom_killed() is False


@pytest.mark.parametrize(("limit", "forks"), [(8, 7), (0, 0)])
def test_fork_bomb_stops_at_pids_max(manager: CgroupManager, limit: int, forks: int) -> None:
    # BR-24: 0 is a real limit. Moving a process in is not limited, its first fork fails.
    manager.create(resources(pids={"limit": limit}))
    bomb = start(FORK_UNTIL_REFUSED.removeprefix(GATE))
    manager.add(bomb.pid)
    status, out, err = release(bomb)
    assert (status, out.split()) == (0, [str(forks), "EAGAIN"]), err
    assert keyed(manager.path / "pids.events")["max"] >= 1


def test_cpu_max_throttles_a_busy_loop(manager: CgroupManager) -> None:
    manager.create(resources(cpu={"quota": 10000, "period": 100000}))
    busy = start("import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end:"
                 " pass\n")
    manager.add(busy.pid)
    assert release(busy)[0] == 0
    stat = keyed(manager.path / "cpu.stat")
    assert stat["nr_throttled"] >= 3, stat
    assert stat["throttled_usec"] > 0, stat
    # About one quota (10 ms) of CPU time per 100 ms period, not the whole period a busy loop
    # takes unthrottled; the slack is for enforcement at timer-tick granularity (slow guest).
    assert stat["usage_usec"] / stat["nr_periods"] < 25_000, stat


def test_destroy_kills_a_process_tree(manager: CgroupManager) -> None:
    manager.create(resources(pids={"limit": 32}))
    tree = start("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n"
                 "        time.sleep(600)\nprint('forked', flush=True)\ntime.sleep(600)\n")
    manager.add(tree.pid)
    assert tree.stdin is not None and tree.stdout is not None
    tree.stdin.write("\n")
    tree.stdin.flush()
    assert tree.stdout.readline() == "forked\n"
    assert len(manager.pids()) == 4
    manager.destroy()
    assert tree.wait(timeout=30) == -signal.SIGKILL
    assert not manager.path.exists()


def test_freeze_and_thaw(manager: CgroupManager) -> None:
    manager.create({})
    sleeper = subprocess.Popen(["/bin/sleep", "600"])
    manager.add(sleeper.pid)
    manager.freeze()
    assert keyed(manager.path / "cgroup.events")["frozen"] == 1
    manager.thaw()
    assert keyed(manager.path / "cgroup.events")["frozen"] == 0
    manager.destroy()
    assert sleeper.wait(timeout=30) == -signal.SIGKILL


def test_subtree_control_ebusy_has_the_hint(cgroup_root: Path) -> None:
    # The rule covers domain controllers (memory, io); threaded ones (pids, cpu) are exempt.
    busy = CgroupManager(cgroup_root, f"/minirun-busy-{secrets.token_hex(4)}")
    busy.create({})
    sleeper = subprocess.Popen(["/bin/sleep", "600"])
    busy.add(sleeper.pid)
    try:
        inner = CgroupManager(cgroup_root, f"/{busy.path.name}/c1")
        with pytest.raises(SyscallError) as caught:
            inner.create(resources(memory={"limit": 64 << 20}))
        assert str(caught.value) == (
            f"write cgroup.subtree_control({busy.path}/cgroup.subtree_control, '+memory'): "
            "EBUSY (Device or resource busy)")
        assert caught.value.hint is not None and "no-internal-processes" in caught.value.hint
        assert not inner.path.exists()
    finally:
        busy.destroy()
    assert sleeper.wait(timeout=30) == -signal.SIGKILL


def test_guard_cleans_up_after_sigkill_of_its_owner(manager: CgroupManager) -> None:
    manager.create(resources(pids={"limit": 16}))
    victim = subprocess.Popen(["/bin/sleep", "600"])
    manager.add(victim.pid)
    ready_read, ready_write = os.pipe()
    owner = os.fork()
    if owner == 0:  # plays minirun: arms the guard, then dies of SIGKILL
        try:
            cgroups.guard(manager)
            os.write(ready_write, b"1")
            time.sleep(600)
        finally:
            os._exit(1)
    os.close(ready_write)
    assert os.read(ready_read, 1) == b"1"
    os.close(ready_read)

    os.kill(owner, signal.SIGKILL)
    os.waitpid(owner, 0)

    assert victim.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 60
    while manager.path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not manager.path.exists(), "the watchdog removed the cgroup"


def test_disarmed_guard_leaves_the_cgroup(manager: CgroupManager) -> None:
    manager.create({})
    fd = cgroups.guard(manager)
    cgroups.disarm(fd)
    time.sleep(1)
    assert manager.path.is_dir()


def test_missing_file_is_enoent_and_rolled_back(manager: CgroupManager) -> None:
    # Opened without O_CREAT: cgroupfs would answer a create with a misleading EACCES.
    with pytest.raises(SyscallError) as caught:
        manager.create({"memory.no-such-file": "1"})
    assert str(caught.value) == (
        f"write({manager.path}/memory.no-such-file, '1'): ENOENT (No such file or directory)")
    assert not manager.path.exists()
