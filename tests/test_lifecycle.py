"""The OCI lifecycle with minirun's own command line, as podman and containerd call it."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import MINIRUN, detached, minirun

pytestmark = pytest.mark.root

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def root(tmp_path: Path) -> Iterator[str]:
    """A state directory; the test process is a subreaper, as conmon and containerd-shim are,
    so created containers become its children and are reaped here."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    state = tmp_path / "state"
    yield str(state)
    for container_id in os.listdir(state) if state.exists() else []:
        minirun("--root", str(state), "delete", "--force", container_id)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.02)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def status(root: str, container_id: str) -> str:
    out = minirun("--root", root, "state", container_id, check=True).stdout
    return str(json.loads(out)["status"])


def wait_status(root: str, container_id: str, wanted: str) -> None:
    deadline = time.monotonic() + 10
    while status(root, container_id) != wanted:
        assert time.monotonic() < deadline, f"{container_id} never became {wanted}"
        time.sleep(0.05)
        _reap()


def _reap() -> None:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pass


def test_create_waits_for_start_with_no_minirun_process_left(
        root: str, make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    bundle = make_bundle(["sh", "-c", "echo started > /started; sleep 30"])
    pid_file = tmp_path / "pid"
    detached("--root", root, "create", "--bundle", str(bundle), "--pid-file", str(pid_file),
             "c1")
    state = json.loads(minirun("--root", root, "state", "c1", check=True).stdout)
    assert state["status"] == "created" and state["id"] == "c1"
    assert state["pid"] == int(pid_file.read_text())
    assert state["bundle"] == str(bundle)
    assert not (bundle / "rootfs" / "started").exists()  # the program has not run
    # Only the container's own process remains (still minirun's code, waiting on the fifo).
    assert [pid for pid, _ in _processes_named(root)] == [state["pid"]]

    minirun("--root", root, "start", "c1", check=True)
    deadline = time.monotonic() + 5
    while not (bundle / "rootfs" / "started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert status(root, "c1") == "running"
    assert Path(f"/proc/{state['pid']}/comm").read_text().strip() == "sleep"


def _processes_named(word: str) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if word.encode() in cmdline:
                found.append((int(name), cmdline.decode(errors="replace")))
    return found


def test_kill_stops_and_delete_cleans_up(root: str, make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sleep", "30"])
    detached("--root", root, "create", "-b", str(bundle), "c2")
    minirun("--root", root, "start", "c2", check=True)
    minirun("--root", root, "kill", "c2", "KILL", check=True)
    wait_status(root, "c2", "stopped")
    again = minirun("--root", root, "kill", "c2", "TERM")
    assert again.returncode != 0 and "not running" in again.stderr
    minirun("--root", root, "delete", "c2", check=True)
    assert not (Path(root) / "c2").exists()
    gone = minirun("--root", root, "state", "c2")
    assert gone.returncode != 0 and "does not exist" in gone.stderr


def test_lifecycle_errors_are_the_ones_the_spec_requires(
        root: str, make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sleep", "30"])
    unknown = minirun("--root", root, "start", "nope")
    assert unknown.returncode != 0 and "does not exist" in unknown.stderr
    detached("--root", root, "create", "-b", str(bundle), "c3")
    twice = detached("--root", root, "create", "-b", str(bundle), "c3", check=False)
    assert twice.returncode != 0 and "exists already" in twice.stderr
    minirun("--root", root, "start", "c3", check=True)
    restart = minirun("--root", root, "start", "c3")
    assert restart.returncode != 0 and "not created" in restart.stderr
    running = minirun("--root", root, "delete", "c3")
    assert running.returncode != 0 and "--force" in running.stderr
    minirun("--root", root, "delete", "--force", "c3", check=True)
    assert not (Path(root) / "c3").exists()


def test_exec_joins_the_container(root: str, make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sleep", "30"], lambda c: c.update(hostname="inside"))
    detached("--root", root, "create", "-b", str(bundle), "c4")
    minirun("--root", root, "start", "c4", check=True)
    out = minirun("--root", root, "exec", "--env", "EXTRA=1", "c4", "sh", "-c",
                  "echo pid=$$ host=$(hostname) extra=$EXTRA; ls /proc | grep -c '^[0-9]'",
                  check=True).stdout.split()
    assert out[0] != "pid=1" and out[1] == "host=inside" and out[2] == "extra=1"
    assert int(out[3]) <= 4  # sleep, sh, ls, grep: the container's own pid namespace
    failed = minirun("--root", root, "exec", "c4", "sh", "-c", "exit 9")
    assert failed.returncode == 9
    pids = json.loads(minirun("--root", root, "ps", "--format", "json", "c4",
                              check=True).stdout)
    assert len(pids) == 1


def test_list_and_features(root: str, make_bundle: Callable[..., Path]) -> None:
    detached("--root", root, "create", "-b", str(make_bundle(["sleep", "30"])), "c5")
    rows = json.loads(minirun("--root", root, "list", "--format", "json", check=True).stdout)
    assert [(r["id"], r["status"]) for r in rows] == [("c5", "created")]
    features = json.loads(minirun("features", check=True).stdout)
    assert "pid" in features["linux"]["namespaces"]
    assert features["linux"]["cgroup"]["v2"] is True


def test_run_detach_then_signals(root: str, make_bundle: Callable[..., Path]) -> None:
    script = "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done"
    bundle = make_bundle(["sh", "-c", script])
    detached("--root", root, "run", "--detach", "--bundle", str(bundle), "c6")
    wait_status(root, "c6", "running")
    minirun("--root", root, "kill", "c6", "TERM", check=True)
    wait_status(root, "c6", "stopped")


def test_create_failure_leaves_nothing(root: str, make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["/no/such/program"])
    result = detached("--root", root, "create", "-b", str(bundle), "c7", check=False)
    assert result.returncode != 0
    assert "execve" in result.stderr and "ENOENT" in result.stderr
    assert not (Path(root) / "c7").exists()


def test_console_socket_receives_the_pty(root: str, make_bundle: Callable[..., Path],
                                         tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    bundle = make_bundle(["sh", "-c", "tty; echo over-the-pty"],
                         lambda c: c["process"].update(terminal=True))
    creator = subprocess.Popen([str(MINIRUN), "--root", root, "create", "-b", str(bundle),
                                "--console-socket", path, "c8"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    connection, _ = listener.accept()
    _, fds, _, _ = socket.recv_fds(connection, 1024, 1)
    assert creator.wait(timeout=30) == 0
    master = fds[0]
    minirun("--root", root, "start", "c8", check=True)
    output = b""
    deadline = time.monotonic() + 10
    while b"over-the-pty" not in output and time.monotonic() < deadline:
        try:
            output += os.read(master, 1024)
        except OSError:
            break
    os.close(master)
    connection.close()
    listener.close()
    assert b"/dev/pts/0" in output and b"over-the-pty" in output
    wait_status(root, "c8", "stopped")


def test_sigkill_of_create_leaves_no_orphan(root: str, make_bundle: Callable[..., Path],
                                           tmp_path: Path) -> None:
    """minirun killed half-way through create: the half-made container dies with it.

    A createRuntime hook holds create in the middle (the container process exists and
    waits), so the kill lands there every time, whatever the machine's load."""
    mark = tmp_path / "hook.pid"
    bundle = make_bundle(["sleep", "30"], lambda c: c.update(hooks={"createRuntime": [
        {"path": "/bin/sh", "args": ["sh", "-c", f"echo $$ > {mark}; exec sleep 30"]}]}))
    proc = subprocess.Popen([str(MINIRUN), "--root", root, "create", "-b", str(bundle), "c9"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not mark.exists() or not mark.read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, "the hook never ran"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    os.kill(int(mark.read_text()), signal.SIGKILL)  # the hook is this test's own process
    deadline = time.monotonic() + 5
    while [p for p, _ in _processes_named(str(bundle)) if p != os.getpid()]:
        assert time.monotonic() < deadline, "the container outlived a killed create"
        time.sleep(0.05)
        _reap()


def test_poststart_and_poststop_hooks_run_at_start_and_delete(
        root: str, make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"

    def hook(kind: str) -> dict[str, object]:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"echo {kind} >> {log}"]}

    bundle = make_bundle(["sleep", "30"], lambda c: c.update(hooks={
        "createRuntime": [hook("createRuntime")], "poststart": [hook("poststart")],
        "poststop": [hook("poststop")]}))
    detached("--root", root, "create", "-b", str(bundle), "h1")
    assert log.read_text().split() == ["createRuntime"]
    minirun("--root", root, "start", "h1", check=True)
    assert log.read_text().split() == ["createRuntime", "poststart"]
    minirun("--root", root, "delete", "--force", "h1", check=True)
    assert log.read_text().split() == ["createRuntime", "poststart", "poststop"]
