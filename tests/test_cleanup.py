"""Every way a run can end leaves nothing behind: no process, no mount, no file in the bundle.

The autouse ``no_leftovers`` fixture checks the host's mounts and this test process's
children. A container process that outlives minirun is reparented away from the test, so the
tests here also follow minirun's descendants by pid, and look for any process still running
with the bundle's path in its command line (the forked set-up processes keep minirun's).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from running import Running, alive, wait_gone
from support import MINIRUN, minirun
from test_errors import tree_state

pytestmark = pytest.mark.root

STAGES = ["chroot", "jail", "namespaces", "oci"]


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (a bundle path is unique per test)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(text in part for part in proc.info["cmdline"] or ()) and alive(proc.pid):
            found.append(proc.pid)
    return found


def assert_nothing_left(bundle: Path, pids: list[int]) -> None:
    assert wait_gone(pids) == [], "container processes outlived minirun"
    deadline = time.monotonic() + 5
    while processes_mentioning(str(bundle)):
        assert time.monotonic() < deadline, "set-up processes outlived minirun"
        time.sleep(0.05)


@pytest.mark.parametrize("stage", ["namespaces", "oci"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_kills_a_pid_1_that_ignores_the_first(
        make_bundle: Callable[..., Path], signum: int, stage: str) -> None:
    bundle = make_bundle(["sleep", "30"])
    with Running("run", "--stage", stage, str(bundle)) as run:
        run.send(signum)  # forwarded; pid 1 without a handler ignores it (pid_namespaces(7))
        time.sleep(0.5)
        assert run.running() and alive(run.container_pid), run.stderr
        run.send(signum)
        code, _, err = run.finish()
    assert code in (137, 128 + signum), err
    assert f"{signal.Signals(signum).name} again: killing the container" in err
    assert_nothing_left(bundle, run.descendants)


@pytest.mark.parametrize("stage", ["chroot", "jail"])
def test_a_forwarded_signal_ends_a_program_that_is_not_pid_1(
        make_bundle: Callable[..., Path], stage: str) -> None:
    # Without a pid namespace the program is an ordinary process: SIGTERM's default kills it.
    bundle = make_bundle(["sleep", "30"])
    with Running("run", "--stage", stage, str(bundle)) as run:
        run.send(signal.SIGTERM)
        code, _, err = run.finish()
    assert code == 128 + signal.SIGTERM, err
    assert "killed by signal 15 (SIGTERM)" in err
    assert_nothing_left(bundle, run.descendants)


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_of_minirun_takes_the_container_with_it(
        make_bundle: Callable[..., Path], stage: str) -> None:
    bundle = make_bundle(["sleep", "30"])
    with Running("run", "--stage", stage, str(bundle)) as run:
        assert run.container_pid in run.descendants
        run.send(signal.SIGKILL)
        code, _, _ = run.finish()
    assert code == -signal.SIGKILL
    # PR_SET_PDEATHSIG: the init process dies with minirun, the container with the init.
    assert_nothing_left(bundle, run.descendants)


def test_sigkill_of_minirun_ends_the_containers_background_processes(
        make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "sleep 30 & exec sleep 31"])
    with Running("run", str(bundle)) as run:
        deadline = time.monotonic() + 10
        while not any(child.cmdline() == ["sleep", "30"] for child in
                      psutil.Process(run.container_pid).children()):
            assert time.monotonic() < deadline, "the background sleep never started"
            time.sleep(0.05)
        everything = [child.pid for child in
                      psutil.Process(run.proc.pid).children(recursive=True)]
        run.send(signal.SIGKILL)
        run.finish()
    # The background sleep has no parent-death signal; the pid namespace ends it with pid 1.
    assert_nothing_left(bundle, everything)


@pytest.mark.parametrize("stage", [
    "chroot",
    "jail",
    "namespaces", "oci"])
def test_a_background_process_ends_with_the_container(
        make_bundle: Callable[..., Path], stage: str) -> None:
    def edit(config: dict) -> None:
        # sh's `&` opens /dev/null: below stage namespaces there are no devices, so keep the
        # rootfs's own /dev (a plain file stands in) instead of the config's empty tmpfs.
        config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/dev"]

    bundle = make_bundle(["sh", "-c", "sleep 30 >/tmp/out 2>&1 & echo $!"], edit)
    (bundle / "rootfs" / "dev" / "null").touch()
    before = {proc.pid for proc in psutil.process_iter()}
    result = minirun("run", "--stage", stage, str(bundle), check=True)
    time.sleep(0.2)
    left = [proc.pid for proc in psutil.process_iter(["cmdline"])
            if proc.pid not in before and proc.info["cmdline"] == ["sleep", "30"]
            and alive(proc.pid)]
    for pid in left:  # they are ours: this test started them through minirun
        psutil.Process(pid).kill()
    assert left == [], f"left running: {left} ({result.stdout.strip()})"


@pytest.mark.parametrize("stage", STAGES)
def test_a_container_that_fails_to_start_leaves_nothing(
        make_bundle: Callable[..., Path], stage: str) -> None:
    bundle = make_bundle(["/no/such/program"])
    result = minirun("run", "--stage", stage, str(bundle))
    assert result.returncode == 127
    assert re.search(r"^minirun: execve\(/no/such/program.*\): ENOENT", result.stderr, re.M)
    assert_nothing_left(bundle, [])


def test_a_set_up_that_fails_halfway_leaves_nothing(make_bundle: Callable[..., Path]) -> None:
    # The third mount fails after two succeeded, inside the container's mount namespace.
    def edit(config: dict) -> None:
        config["mounts"].insert(2, {"destination": "/mnt", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["no-such-tmpfs-option"]})

    bundle = make_bundle(["true"], edit)
    result = minirun("run", str(bundle))
    assert result.returncode == 1
    assert "mount(tmpfs -> /mnt (mounts[2])" in result.stderr
    assert_nothing_left(bundle, [])  # and no_leftovers: no mount reached the host


@pytest.mark.parametrize("stage", STAGES)
def test_explain_creates_nothing(make_bundle: Callable[..., Path], stage: str) -> None:
    def edit(config: dict) -> None:
        config["process"]["cwd"] = "/does/not/exist/yet"
        config["mounts"].append({"destination": "/new/mount/point", "type": "tmpfs",
                                 "source": "tmpfs"})

    bundle = make_bundle(["sh", "-c", "touch /ran"], edit)
    before = tree_state(bundle)
    result = minirun("run", "--explain", "--stage", stage, str(bundle), check=True)
    assert "execve(sh" in result.stdout
    assert tree_state(bundle) == before
    assert_nothing_left(bundle, [])


def test_explain_needs_no_root(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["true"])
    for path in [bundle, *bundle.parents]:
        if path == Path("/tmp"):
            break
        path.chmod(0o755)
    before = tree_state(bundle)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             str(Path(__file__).resolve().parents[1] / "bin" / "minirun"),
                             "run", "--explain", str(bundle)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pivot_root" in result.stdout
    assert tree_state(bundle) == before


@pytest.mark.parametrize("hook", ["createRuntime", "createContainer"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_set_up_stops_it_and_leaves_nothing(
        make_bundle: Callable[..., Path], hook: str, signum: int) -> None:
    # A slow hook holds the set-up; the program must never start once asked to stop.
    bundle = make_bundle(["sh", "-c", "touch /started"], lambda config: config.update(
        hooks={hook: [{"path": "/bin/sleep", "args": ["sleep", "5"]}]}))
    proc = subprocess.Popen([str(MINIRUN), "run", str(bundle)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not any(child.cmdline() == ["sleep", "5"]
                      for child in psutil.Process(proc.pid).children(recursive=True)):
            assert time.monotonic() < deadline, "the hook never started"
            time.sleep(0.05)
        started = time.monotonic()
        everything = [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - started < 3, "the set-up waited for the hook to finish"
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name} during set-up" in err
    assert not (bundle / "rootfs" / "started").exists()
    assert_nothing_left(bundle, everything)
