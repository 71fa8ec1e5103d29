"""podman drives minirun as its OCI runtime (on this host with cgroups disabled).

podman 4.3 accepts a runtime without cgroups only when containers.conf lists it in
``runtime_supports_nocgroup``. The host cannot raise RLIMIT_NOFILE or RLIMIT_NPROC above its
own hard limits (no CAP_SYS_RESOURCE here), so the containers ask for limits it has. The VM
tests run podman and containerd with real cgroups.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import MINIRUN, make_rootfs

pytestmark = [pytest.mark.root, pytest.mark.slow]

IMAGE = "docker.io/library/minirun-busybox:latest"


class Podman:
    def __init__(self, home: Path) -> None:
        self.home = home
        conf = home / "containers.conf"
        conf.write_text(
            "[engine]\n"
            'runtime_supports_nocgroup = ["crun", "minirun"]\n'
            'runtime_supports_json = ["crun", "runc", "minirun"]\n'
            "[engine.runtimes]\n"
            f'minirun = ["{MINIRUN}"]\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "TMPDIR": str(home)}
        self.base = ["podman", "--root", str(home / "storage"), "--runroot", str(home / "run"),
                     "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                     "--events-backend", "file", "--runtime", "minirun"]
        # Below any hard limit this host hands down (podman's defaults are above them).
        limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
        self.run_options = ["--cgroups=disabled", "--network", "none", *limits]

    def __call__(self, *args: str, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.base, *args], capture_output=True, text=True,
                                env=self.env, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    home = tmp_path_factory.mktemp("podman")
    layout = home / "layout"
    rootfs = make_rootfs(home / "rootfs")
    for command in (["umoci", "init", "--layout", str(layout)],
                    ["umoci", "new", "--image", f"{layout}:latest"],
                    ["umoci", "insert", "--image", f"{layout}:latest", str(rootfs), "/"],
                    ["umoci", "config", "--image", f"{layout}:latest", "--config.cmd", "sh"],
                    ["skopeo", "copy", "-q", f"oci:{layout}:latest",
                     f"oci-archive:{home / 'image.tar'}:{IMAGE}"]):
        subprocess.run(command, check=True, capture_output=True)
    tool = Podman(home)
    tool("load", "-q", "-i", str(home / "image.tar"))
    yield tool
    tool("rm", "--all", "--force", check=False)
    tool("rmi", "--all", "--force", check=False)


def test_run_rm_passes_the_exit_code(podman: Podman) -> None:
    result = podman("run", "--rm", *podman.run_options, IMAGE, "sh", "-c",
                    "echo hello; grep CapEff /proc/self/status; echo pid=$$; exit 7",
                    check=False)
    assert result.returncode == 7, result.stderr
    lines = result.stdout.split()
    assert lines[0] == "hello" and "pid=1" in lines


def test_detached_exec_logs_stop_rm(podman: Podman) -> None:
    script = "echo started; trap 'echo got term; exit 3' TERM; while :; do sleep 0.2; done"
    cid = podman("run", "-d", *podman.run_options, IMAGE, "sh", "-c", script).stdout.strip()
    try:
        exec_out = podman("exec", cid, "sh", "-c", "echo exec-ok; ps -o pid,comm").stdout
        assert "exec-ok" in exec_out and "sleep" in exec_out
        podman("stop", "-t", "10", cid)
        assert podman("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == "3"
        assert podman("logs", cid).stdout.split() == ["started", "got", "term"]
    finally:
        podman("rm", "-f", cid, check=False)


def test_terminal_session(podman: Podman) -> None:
    command = " ".join([*podman.base, "run", "--rm", "-it", *podman.run_options, IMAGE,
                        "sh", "-c", "'tty; echo on-a-pty; exit 4'"])
    result = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                            text=True, env=podman.env, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "/dev/pts/0" in result.stdout and "on-a-pty" in result.stdout
