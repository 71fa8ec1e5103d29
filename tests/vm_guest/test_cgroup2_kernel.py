"""The VM's cgroup v2 is real: the kernel enforces limits (no minirun code involved).

If these fail, every other guest test about cgroups means nothing. See the kernel's
Documentation/admin-guide/cgroup-v2.rst for the files used here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PYTHON = "/usr/bin/python3"

# Forks until the kernel refuses, keeping every child alive on a pipe, then prints how many
# forks worked and the errno name of the one that failed.
FORK_UNTIL_REFUSED = """
import errno, os
read_end, write_end = os.pipe()
children = []
failure = "none"
try:
    for _ in range(20):
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


def _events(cgroup: Path, name: str) -> dict[str, int]:
    lines = (cgroup / name).read_text().splitlines()
    return {key: int(value) for key, value in (line.split() for line in lines)}


def _run_in(cgroup: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Start python in ``cgroup``: the child moves itself there before exec ("0" = myself)."""
    def join() -> None:
        (cgroup / "cgroup.procs").write_text("0")

    return subprocess.run([PYTHON, "-c", code], preexec_fn=join, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_guest_python_is_debians() -> None:
    assert sys.executable == PYTHON


def test_root_offers_the_controllers(cgroup_root: Path) -> None:
    offered = (cgroup_root / "cgroup.controllers").read_text().split()
    assert {"cpu", "memory", "pids", "io"} <= set(offered), offered


def test_child_gets_the_enabled_controllers(child_cgroup: Path) -> None:
    assert set((child_cgroup / "cgroup.controllers").read_text().split()) >= {
        "cpu", "memory", "pids", "io"}
    (child_cgroup / "cpu.max").write_text("50000 100000")
    assert (child_cgroup / "cpu.max").read_text().split() == ["50000", "100000"]


def test_memory_max_kills_a_bigger_allocation(child_cgroup: Path) -> None:
    (child_cgroup / "memory.max").write_text(str(32 << 20))
    (child_cgroup / "memory.swap.max").write_text("0")
    before = _events(child_cgroup, "memory.events")["oom_kill"]

    # Bytes multiplied out are written, so every page of the 100 MB is really charged.
    done = _run_in(child_cgroup, "data = b'x' * (100 << 20); print(len(data))")

    assert done.returncode == -9, (done.returncode, done.stdout, done.stderr)
    assert _events(child_cgroup, "memory.events")["oom_kill"] == before + 1


def test_memory_allows_a_smaller_allocation(child_cgroup: Path) -> None:
    (child_cgroup / "memory.max").write_text(str(64 << 20))
    done = _run_in(child_cgroup, "data = b'x' * (8 << 20); print(len(data))")
    assert (done.returncode, done.stdout.strip()) == (0, str(8 << 20)), done.stderr
    assert _events(child_cgroup, "memory.events")["oom_kill"] == 0


def test_pids_max_limits_forks(child_cgroup: Path) -> None:
    (child_cgroup / "pids.max").write_text("5")

    done = _run_in(child_cgroup, FORK_UNTIL_REFUSED)

    # The python process itself is one of the five.
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", "EAGAIN"]
    assert _events(child_cgroup, "pids.events")["max"] >= 1
