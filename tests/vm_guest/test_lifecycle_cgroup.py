"""The OCI lifecycle where the container has a cgroup: pause and resume freeze it, ps and
kill --all find every process through it, delete removes it. Runs inside the test VM."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MINIRUN = REPO / "bin" / "minirun"
PR_SET_CHILD_SUBREAPER = 36


def minirun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MINIRUN), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


def detached(*args: str) -> None:
    # The container keeps what it inherits open: no pipes of ours, so we do not wait on it.
    done = subprocess.run([str(MINIRUN), *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, args


@pytest.fixture
def root(tmp_path: Path) -> Iterator[str]:
    """A state directory; this process adopts created containers, as a shim would."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    state = str(tmp_path / "state")
    yield state
    for name in os.listdir(state) if os.path.isdir(state) else []:
        minirun("--root", state, "delete", "--force", name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.05)
        except ChildProcessError:
            break


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    where = tmp_path / "bundle"
    rootfs = where / "rootfs"
    for name in ("bin", "proc", "sys", "dev", "tmp"):
        (rootfs / name).mkdir(parents=True)
    shutil.copyfile("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "sleep"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    subprocess.run([str(MINIRUN), "spec", "-b", str(where), "--", "sh", "-c",
                    "sleep 300 & exec sleep 300"], check=True)
    config = json.loads((where / "config.json").read_text())
    config["linux"]["resources"] = {"pids": {"limit": 32}}
    (where / "config.json").write_text(json.dumps(config))
    return where


def status(root: str, name: str) -> str:
    return str(json.loads(minirun("--root", root, "state", name).stdout)["status"])


def test_pause_resume_ps_and_delete_through_the_cgroup(root: str, bundle: Path) -> None:
    detached("--root", root, "create", "--bundle", str(bundle), "p1")
    assert minirun("--root", root, "start", "p1").returncode == 0
    cgroup = Path("/sys/fs/cgroup/minirun/p1")
    assert (cgroup / "pids.max").read_text().strip() == "32"
    deadline = time.monotonic() + 30
    while len(json.loads(minirun("--root", root, "ps", "--format", "json", "p1").stdout)) < 2:
        assert time.monotonic() < deadline, "the background sleep never started"
        time.sleep(0.1)

    assert minirun("--root", root, "pause", "p1").returncode == 0
    assert status(root, "p1") == "paused"
    assert "frozen 1" in (cgroup / "cgroup.events").read_text()
    refused = minirun("--root", root, "delete", "p1")
    assert refused.returncode != 0 and "paused" in refused.stderr

    assert minirun("--root", root, "resume", "p1").returncode == 0
    assert status(root, "p1") == "running"

    assert minirun("--root", root, "kill", "--all", "p1", "KILL").returncode == 0
    deadline = time.monotonic() + 30
    while status(root, "p1") != "stopped":
        assert time.monotonic() < deadline, "kill --all did not stop it"
        time.sleep(0.1)
    assert minirun("--root", root, "delete", "p1").returncode == 0
    assert not cgroup.exists()
    assert not (Path(root) / "p1").exists()
