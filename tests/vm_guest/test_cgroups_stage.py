"""The cgroups stage end to end: ``bin/minirun run`` in the test VM, limits that bite.

Each test builds a bundle, runs it through bin/minirun and checks what the kernel did and
what minirun said: a memory hog OOM-killed past memory.max (exit 137 and a line on stderr),
the same hog surviving with no limit and at stage jail, a fork bomb stopped at pids.max while
the VM still forks, cpu.max throttling a busy loop seen from inside the container's own cgroup
namespace, the handed cases BR-24, BR-25 and BR-26, a cgroup even without limits, and the
clean-up guard after ``kill -9`` of minirun. After every test no cgroup under
/sys/fs/cgroup/minirun, no new process and no new mount is left.

The busybox root file system is made here in Python (Debian's static busybox, one symlink per
applet): rootfs-fetch/busybox-rootfs.sh forks three programs per applet, which takes minutes
under the VM's software emulation. Memory hogs use busybox awk: a shell reading a command
substitution gets only about 2 MB/s in the VM, awk fills a string in one go.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MINIRUN = REPO / "bin" / "minirun"
CASES = REPO.parent / "shared" / "cases"
BUSYBOX = Path("/bin/busybox")
CGROUPS = Path("/sys/fs/cgroup")
PARENT = CGROUPS / "minirun"  # where minirun puts a container without linux.cgroupsPath
GUARD_NAME = "minirun-guard"  # the clean-up guard's process name (minirun.isolation.cgroups)

MIB = 1 << 20
# Holds 64 MiB in one awk string, then says how much it held.
HOG = "awk 'BEGIN { s = sprintf(\"%67108864s\", \"\"); print \"held\", length(s) }'"
OOM_LINE = "minirun: the container was killed by the OOM killer (memory.max reached)"
# Slow-guest allowances: everything in the VM runs 20 to 40 times slower than on the host.
RUN_TIMEOUT = 300.0
SETTLE = 30.0  # for clean-up that should be over already
GUARD_WAIT = 10.0  # "within a few seconds" for the guard, after minirun died


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_while(running: subprocess.Popen[str], condition: Callable[[], bool],
               timeout: float = 120, interval: float = 0.01) -> bool:
    """wait_for(condition), but give up (with minirun's output) when minirun has ended."""
    def done() -> bool:
        if running.poll() is not None:
            out, err = running.communicate()
            raise AssertionError(f"minirun ended first ({running.returncode}): {out} {err}")
        return condition()

    return wait_for(done, timeout, interval)


def minirun_run(bundle: Path, container_id: str, stage: str | None = None
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_run_command(bundle, container_id, stage), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL,
                          env=_env(), check=False)


def minirun_start(bundle: Path, container_id: str, stage: str | None = None
                  ) -> subprocess.Popen[str]:
    return subprocess.Popen(_run_command(bundle, container_id, stage), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def _run_command(bundle: Path, container_id: str, stage: str | None) -> list[str]:
    return [str(MINIRUN), "run", *(["--stage", stage] if stage else []), str(bundle),
            container_id]


def _env() -> dict[str, str]:
    return {**os.environ, "MINIRUN_LOG": "warning"}


def new_id() -> str:
    return f"cgst-{secrets.token_hex(4)}"


def values(output: str) -> dict[str, str]:
    """``key=value`` lines the container printed."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def keyed(path: Path) -> dict[str, int]:
    return {key: int(value) for key, value in (line.split() for line in
                                               path.read_text().splitlines())}


def dead(pid: int) -> bool:
    """Gone, or a zombie that is not ours to reap (the reaper owns it now)."""
    info = _stat(pid)
    return info is None or (info[0] == "Z" and info[1] != os.getpid())


def _stat(pid: int) -> tuple[str, int] | None:
    """State letter and parent pid of ``pid`` from /proc/PID/stat, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def user_processes() -> set[int]:
    """Every process but kernel threads (kthreadd, pid 2, and its children)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        info = _stat(pid)
        if info is not None and pid != 2 and info[1] != 2:
            found.add(pid)
    return found


def _cgroups_left() -> list[Path]:
    if not PARENT.is_dir():
        return []
    return sorted(path for path in PARENT.iterdir() if path.is_dir())


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def nothing_left(cgroup_root: Path) -> Iterator[None]:
    """After each test: no container cgroup, no new process, no new mount."""
    earlier = set(_cgroups_left())  # reported by the test that left them
    parent_existed = PARENT.exists()
    processes = user_processes()
    mounts = Path("/proc/self/mountinfo").read_text()
    yield

    def cgroups_left() -> set[Path]:
        return set(_cgroups_left()) - earlier

    def processes_left() -> dict[int, str]:
        return {pid: _comm(pid) for pid in user_processes() - processes if not dead(pid)}

    wait_for(lambda: not cgroups_left() and PARENT.exists() == parent_existed, SETTLE, 0.05)
    assert not cgroups_left(), f"cgroups left: {cgroups_left()}"
    assert PARENT.exists() == parent_existed, f"{PARENT} was made and not removed"
    wait_for(lambda: not processes_left(), SETTLE, 0.05)
    assert not processes_left(), f"processes left: {processes_left()}"
    assert Path("/proc/self/mountinfo").read_text() == mounts, "the mount table changed"


@pytest.fixture(scope="module")
def applets() -> list[str]:
    listed = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    return [name for name in listed if name != "busybox"]


def install_busybox(bin_dir: Path, applets: list[str]) -> None:
    """Debian's static busybox in ``bin_dir`` and a relative symlink for each applet."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BUSYBOX, bin_dir / "busybox")
    (bin_dir / "busybox").chmod(0o755)
    for name in applets:
        link = bin_dir / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory, applets: list[str]) -> Path:
    root = tmp_path_factory.mktemp("cgroups-stage") / "rootfs"
    for name in ("bin", "etc", "proc", "sys", "dev", "tmp", "root"):
        (root / name).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    install_busybox(root / "bin", applets)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


@pytest.fixture(scope="module")
def base_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What ``minirun spec`` writes, with a fresh tmpfs on /tmp for every container and the
    host's /dev/null: before stage namespaces /dev is an empty tmpfs, and busybox sh opens
    /dev/null as the stdin of every background job (or the job fails)."""
    where = tmp_path_factory.mktemp("spec")
    subprocess.run([str(MINIRUN), "spec", "-b", str(where), "--", "sh"], check=True,
                   capture_output=True)
    config: dict[str, Any] = json.loads((where / "config.json").read_text())
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                             "options": ["nosuid", "nodev", "mode=1777", "size=1m"]})
    config["mounts"].append({"destination": "/dev/null", "type": "bind", "source": "/dev/null",
                             "options": ["bind"]})
    return config


BundleMaker = Callable[[str, "dict[str, Any] | None"], Path]


@pytest.fixture()
def bundle(tmp_path: Path, rootfs: Path, base_config: dict[str, Any]) -> BundleMaker:
    """make(script, resources): a bundle running ``sh -c script`` with linux.resources."""
    def make(script: str, resources: dict[str, Any] | None) -> Path:
        where = tmp_path / f"bundle-{secrets.token_hex(3)}"
        where.mkdir()
        (where / "rootfs").symlink_to(rootfs)
        config = copy.deepcopy(base_config)
        config["process"]["args"] = ["sh", "-c", script]
        if resources is not None:
            config["linux"]["resources"] = resources
        (where / "config.json").write_text(json.dumps(config, indent=2))
        return where

    return make


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def test_memory_hog_is_oom_killed(bundle: BundleMaker) -> None:
    hog = bundle(HOG, {"memory": {"limit": 32 * MIB, "swap": 32 * MIB}})
    done = minirun_run(hog, new_id(), "cgroups")
    assert done.returncode == 137, (done.stdout, done.stderr)
    assert OOM_LINE in done.stderr.splitlines(), done.stderr
    assert "held" not in done.stdout


@pytest.mark.parametrize(("stage", "memory"), [
    ("cgroups", {"limit": -1}),
    ("jail", {"limit": 32 * MIB, "swap": 32 * MIB}),  # jail has no cgroup: nothing stops it
], ids=["cgroups-limit-minus-1", "jail-limit-32m"])
def test_memory_hog_survives_without_a_limit(bundle: BundleMaker, stage: str,
                                             memory: dict[str, int]) -> None:
    hog = bundle(HOG, {"memory": memory})
    done = minirun_run(hog, new_id(), stage)
    assert (done.returncode, done.stdout) == (0, f"held {64 * MIB}\n"), done
    assert OOM_LINE not in done.stderr


# ----------------------------------------------------------------------------------------------
# Pids
# ----------------------------------------------------------------------------------------------

# Forty sleepers of 3 s started from a subshell (busybox sh exits on a failed fork, so only the
# subshell dies); the container then counts them with shell built-ins only, and stays at the
# limit for 2 s (exec, not fork) so the test can look at the cgroup and fork outside it.
FORK_BOMB = (
    "( i=0; while [ $i -lt 40 ]; do sleep 3 & echo $! >> /tmp/started; i=$((i+1)); done )"
    " 2>/dev/null; n=0; while read p; do n=$((n+1)); done < /tmp/started; echo started=$n;"
    " exec sleep 2"
)


def test_fork_bomb_stops_at_pids_max(bundle: BundleMaker) -> None:
    bomb = bundle(FORK_BOMB, {"pids": {"limit": 10}})
    container_id = new_id()
    cgroup = PARENT / container_id
    running = minirun_start(bomb, container_id, "cgroups")
    try:
        assert wait_while(running, lambda: _limit_hit(cgroup)), "never hit pids.max"
        assert (cgroup / "pids.max").read_text() == "10\n"
        assert int((cgroup / "pids.current").read_text()) <= 10
        # The VM is still responsive: a fork and exec outside the container's cgroup work.
        started = time.monotonic()
        outside = subprocess.run([str(BUSYBOX), "true"], timeout=60, check=False)
        assert outside.returncode == 0
        assert time.monotonic() - started < 10
        out, err = running.communicate(timeout=RUN_TIMEOUT)
    finally:
        running.kill()
        running.wait()
    assert running.returncode == 0, (out, err)
    # Forty were asked for; the sh running the script and the subshell take two of the ten.
    assert 1 <= int(values(out)["started"]) <= 8, out


def _limit_hit(cgroup: Path) -> bool:
    try:
        return keyed(cgroup / "pids.events")["max"] >= 1
    except (FileNotFoundError, KeyError):
        return False


# ----------------------------------------------------------------------------------------------
# CPU, and what the container sees at /sys/fs/cgroup
# ----------------------------------------------------------------------------------------------

# A busy loop of one second of wall time (read from /proc/uptime with built-ins only), then
# what the container sees of its own cgroup.
BUSY_THEN_LOOK = (
    "read s _ < /proc/uptime; end=$(( ${s%.*}${s#*.} + 100 ));"
    " while :; do read u _ < /proc/uptime; [ ${u%.*}${u#*.} -ge $end ] && break; done;"
    " read c < /proc/self/cgroup; echo cgroup=$c;"
    " for f in memory.max memory.swap.max pids.max cpu.max; do"
    " read v < /sys/fs/cgroup/$f; echo $f=$v; done;"
    " while read k v; do echo cpu.stat.$k=$v; done < /sys/fs/cgroup/cpu.stat;"
    " for d in /sys/fs/cgroup/*; do [ -d $d ] && echo subdir=$d; done; true"
)


def test_cpu_max_throttles_and_the_container_sees_its_own_cgroup(bundle: BundleMaker) -> None:
    busy = bundle(BUSY_THEN_LOOK, {"memory": {"limit": 64 * MIB, "swap": 64 * MIB},
                                   "pids": {"limit": 20},
                                   "cpu": {"quota": 10000, "period": 100000}})
    done = minirun_run(busy, new_id())  # stage oci: with a cgroup namespace
    assert done.returncode == 0, (done.stdout, done.stderr)
    seen = values(done.stdout)
    # The cgroup namespace makes the container's cgroup its root, and the fresh cgroup2
    # mount shows that cgroup's files, not the host's tree (cgroup_namespaces(7)).
    assert seen["cgroup"] == "0::/", done.stdout
    assert "subdir" not in seen, done.stdout
    assert (seen["memory.max"], seen["memory.swap.max"]) == (str(64 * MIB), "0"), done.stdout
    assert (seen["pids.max"], seen["cpu.max"]) == ("20", "10000 100000"), done.stdout
    assert int(seen["cpu.stat.nr_throttled"]) > 0, done.stdout
    assert int(seen["cpu.stat.throttled_usec"]) > 0, done.stdout


# ----------------------------------------------------------------------------------------------
# A cgroup even without limits
# ----------------------------------------------------------------------------------------------


def test_cgroups_stage_without_resources_makes_and_removes_a_cgroup(
        bundle: BundleMaker) -> None:
    plain = bundle("sleep 3", None)
    container_id = new_id()
    cgroup = PARENT / container_id
    running = minirun_start(plain, container_id, "cgroups")
    try:
        assert wait_while(running, lambda: _has_processes(cgroup)), f"{cgroup} never had a process"
        out, err = running.communicate(timeout=RUN_TIMEOUT)
    finally:
        running.kill()
        running.wait()
    assert running.returncode == 0, (out, err)
    assert not cgroup.exists()


def _has_processes(cgroup: Path) -> bool:
    try:
        return bool((cgroup / "cgroup.procs").read_text().split())
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------------------------
# kill -9 of minirun: the guard cleans up
# ----------------------------------------------------------------------------------------------


def _kill_minirun_then_check(running: subprocess.Popen[str], cgroup: Path) -> list[int]:
    """SIGKILL minirun now; return the pids that were in the cgroup just before."""
    members = [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    running.send_signal(signal.SIGKILL)
    running.communicate(timeout=RUN_TIMEOUT)
    assert running.returncode == -signal.SIGKILL
    assert wait_for(lambda: not cgroup.exists(), GUARD_WAIT, 0.05), f"{cgroup} is still there"
    assert wait_for(lambda: all(dead(pid) for pid in members), GUARD_WAIT, 0.05), members
    return members


def test_kill_9_during_set_up_leaves_nothing(bundle: BundleMaker, rootfs: Path) -> None:
    marker = f"ran-{secrets.token_hex(4)}"
    container = bundle(f"touch /{marker}", {"pids": {"limit": 20}})
    container_id = new_id()
    cgroup = PARENT / container_id
    running = minirun_start(container, container_id)  # stage oci: the longest set-up
    try:
        # The init process is in the cgroup (so the guard is armed) and the container
        # process has not run its program yet: the middle of set-up.
        assert wait_while(running, lambda: _has_processes(cgroup)), f"{cgroup} never had a process"
        _kill_minirun_then_check(running, cgroup)
    finally:
        running.kill()
        running.wait()
    assert not (rootfs / marker).exists(), "the container ran: minirun was killed too late"


def test_kill_9_while_the_container_sleeps_leaves_nothing(bundle: BundleMaker) -> None:
    # Stage cgroups has no pid namespace: the background sleep is not killed with the
    # container's init, only the guard's cgroup.kill ends it.
    sleeper = bundle("sleep 60 & exec sleep 60", {"pids": {"limit": 20}})
    container_id = new_id()
    cgroup = PARENT / container_id
    running = minirun_start(sleeper, container_id, "cgroups")
    try:
        # The container process and the background sleep (minirun's init stays outside).
        assert wait_while(running, lambda: _count(cgroup) >= 2), f"{cgroup} never had 2 processes"
        members = _kill_minirun_then_check(running, cgroup)
    finally:
        running.kill()
        running.wait()
    assert len(members) >= 2


def test_kill_9_between_mkdir_and_guard_leaves_nothing(bundle: BundleMaker) -> None:
    container = bundle("true", {"pids": {"limit": 20}})
    container_id = new_id()
    cgroup = PARENT / container_id
    parent_existed = PARENT.exists()
    running = minirun_start(container, container_id)
    try:
        # The guard is armed before the first mkdir, so killing minirun the moment the
        # directory appears (while it may still be writing limits) must leave nothing.
        assert wait_while(running, cgroup.exists, interval=0.0005)
        running.send_signal(signal.SIGKILL)
        running.communicate(timeout=RUN_TIMEOUT)
        assert wait_for(lambda: not cgroup.exists(), GUARD_WAIT, 0.05), f"{cgroup} is still there"
    finally:
        running.kill()
        running.wait()
        _remove_leftover(cgroup, parent_existed)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _remove_leftover(cgroup: Path, parent_existed: bool) -> None:
    """Undo what a failed clean-up left, so later tests start from a clean tree."""
    if cgroup.exists():
        (cgroup / "cgroup.kill").write_text("1")
        wait_for(lambda: not _has_processes(cgroup), SETTLE)
        cgroup.rmdir()
    if PARENT.exists() and not parent_existed and not _cgroups_left():
        PARENT.rmdir()


def _count(cgroup: Path) -> int:
    try:
        return len((cgroup / "cgroup.procs").read_text().split())
    except FileNotFoundError:
        return 0


# ----------------------------------------------------------------------------------------------
# The handed cases BR-24, BR-25 and BR-26 (each README gives the right behaviour)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, applets: list[str]) -> Path:
    """Writable copies of the three cases, with busybox in each rootfs/bin."""
    where = tmp_path_factory.mktemp("cases")
    for name in ("BR-24-pids-limit-semantics", "BR-25-memory-swap-limits",
                 "BR-26-cpu-quota-period"):
        copy_dir = where / name
        shutil.copytree(CASES / name, copy_dir)
        for path in [copy_dir, *copy_dir.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
        install_busybox(copy_dir / "rootfs" / "bin", applets)
        # BR-24's script writes /tmp/started, but the case's rootfs has no /tmp.
        (copy_dir / "rootfs" / "tmp").mkdir(mode=0o1777, exist_ok=True)
    return where


def run_case(cases: Path, case: str, config: str,
             edit: Callable[[dict[str, Any]], None] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Copy configs/CONFIG.json over config.json (as the README says) and run the bundle."""
    bundle_dir = cases / case
    data = json.loads((bundle_dir / "configs" / f"{config}.json").read_text())
    if edit is not None:
        edit(data)
    (bundle_dir / "config.json").write_text(json.dumps(data, indent=2))
    (bundle_dir / "rootfs" / "tmp" / "started").unlink(missing_ok=True)
    return minirun_run(bundle_dir, f"case-{config}-{secrets.token_hex(2)}")


BR24 = "BR-24-pids-limit-semantics"


@pytest.mark.parametrize(("config", "pids_max"), [
    ("limit-64", {"64"}),
    ("limit-minus-1", {"max"}),
    # Unset: pids.max is not written; the pids controller is enabled all the same (for
    # pids.current), so the file reads the kernel's default.
    ("absent", {"max"}),
], ids=["limit-64", "limit-minus-1", "absent"])
def test_br24_pids_limit(cases: Path, config: str, pids_max: set[str]) -> None:
    done = run_case(cases, BR24, config)
    assert done.returncode == 0, (done.stdout, done.stderr)
    first = done.stdout.splitlines()[0]
    seen = dict(word.split("=") for word in first.split())
    assert seen["pids.max"] in pids_max, done.stdout
    if config == "limit-64":
        assert 1 <= int(seen["started"]) < 64, done.stdout
    else:
        assert seen["started"] == "300", done.stdout
    assert done.stdout.splitlines()[-1] == "done"


@pytest.mark.parametrize("config", ["limit-1", "limit-0"])
def test_br24_pids_limit_without_room_to_fork(cases: Path, config: str) -> None:
    # README: the container's shell runs and its first fork fails (busybox: "can't fork",
    # exit 2); for 0, a runtime that must fork inside the cgroup may instead refuse with a
    # clear error naming pids.limit. Never "unlimited".
    done = run_case(cases, BR24, config)
    assert "started=" not in done.stdout, done.stdout
    shell_refused = done.returncode == 2 and "can't fork" in done.stderr
    runtime_refused = done.returncode != 0 and "pids.limit" in done.stderr
    if config == "limit-1":
        assert shell_refused, (done.returncode, done.stdout, done.stderr)
    else:
        assert shell_refused or runtime_refused, (done.returncode, done.stdout, done.stderr)


BR25 = "BR-25-memory-swap-limits"
CASE_HOG = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}"


def _fast_hog(data: dict[str, Any]) -> None:
    """The case's hog, 200 MB through a command substitution, as one awk string instead
    (same size, same output): the original needs minutes in the VM."""
    script = data["process"]["args"][-1]
    assert CASE_HOG in script, script
    data["process"]["args"][-1] = script.replace(
        CASE_HOG, "awk 'BEGIN { x = sprintf(\"%200000000s\", \"\");"
                  " print \"survived\", length(x) }'")


def test_br25_limit_with_equal_swap_is_oom_killed(cases: Path) -> None:
    done = run_case(cases, BR25, "limit-64m-swap-eq-limit", _fast_hog)
    assert done.stdout.split() == [str(64 * MIB), "0"], done.stdout
    assert done.returncode == 137, (done.stdout, done.stderr)
    assert OOM_LINE in done.stderr.splitlines(), done.stderr


def test_br25_limit_minus_1_survives(cases: Path) -> None:
    done = run_case(cases, BR25, "limit-minus-1", _fast_hog)
    assert (done.returncode, done.stdout.split()) == (
        0, ["max", "max", "survived", "200000000"]), (done.stdout, done.stderr)


@pytest.mark.parametrize(("config", "field"), [
    ("swap-without-limit", "linux.resources.memory.swap"),
    ("limit-negative-5", "linux.resources.memory.limit"),
    ("swap-less-than-limit", "linux.resources.memory.swap"),
], ids=["swap-without-limit", "limit-negative-5", "swap-less-than-limit"])
def test_br25_bad_memory_values_are_refused(cases: Path, config: str, field: str) -> None:
    done = run_case(cases, BR25, config)
    assert (done.returncode, done.stdout) == (2, ""), (done.stdout, done.stderr)
    first = done.stderr.splitlines()[0]
    assert first.startswith("minirun: ") and field in first, done.stderr


BR26 = "BR-26-cpu-quota-period"


@pytest.mark.parametrize(("config", "cpu_max"), [
    ("quota-50000-period-100000", "50000 100000"),
    ("quota-minus-1", "max 100000"),
    ("quota-only", "20000 100000"),
], ids=["quota-50000-period-100000", "quota-minus-1", "quota-only"])
def test_br26_cpu_max_written(cases: Path, config: str, cpu_max: str) -> None:
    done = run_case(cases, BR26, config)
    assert (done.returncode, done.stdout.strip()) == (0, cpu_max), (done.stdout, done.stderr)


@pytest.mark.parametrize(("config", "field"), [
    ("quota-500", "linux.resources.cpu.quota"),
    ("quota-0", "linux.resources.cpu.quota"),
    ("period-500", "linux.resources.cpu.period"),
    ("period-2000000", "linux.resources.cpu.period"),
], ids=["quota-500", "quota-0", "period-500", "period-2000000"])
def test_br26_bad_cpu_values_are_refused(cases: Path, config: str, field: str) -> None:
    done = run_case(cases, BR26, config)
    assert (done.returncode, done.stdout) == (2, ""), (done.stdout, done.stderr)
    first = done.stderr.splitlines()[0]
    assert first.startswith("minirun: ") and field in first and "1000" in first, done.stderr
