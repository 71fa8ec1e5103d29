"""minirun driven as a tool that wires runtimes drives runc: the runtime-spec's lifecycle rules
(runtime.md: state, create, start, kill, delete and their errors), features.md, and the runc
command-line habits callers rely on (--pid-file, --log-format json, exec --process, list, ps).

Created containers are reparented to this test process, which makes itself a child subreaper
(as conmon and containerd-shim are) and reaps them.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import MINIRUN, detached, minirun

pytestmark = pytest.mark.root

PR_SET_CHILD_SUBREAPER = 36
LOOP = "while :; do sleep 0.1; done"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[str]:
    """A private --root; this process is a subreaper while the test runs, and every container
    is force-deleted and every child reaped afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    state = tmp_path / "state"
    try:
        yield str(state)
    finally:
        for container_id in os.listdir(state) if state.exists() else []:
            minirun("--root", str(state), "delete", "--force", container_id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and reap():
            time.sleep(0.02)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap() -> bool:
    """Reap what has exited; True while children remain."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def state(root: str, container_id: str) -> dict[str, object]:
    return dict(json.loads(minirun("--root", root, "state", container_id, check=True).stdout))


def wait_status(root: str, container_id: str, wanted: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while (current := state(root, container_id))["status"] != wanted:
        assert time.monotonic() < deadline, f"{container_id} stayed {current['status']}"
        reap()
        time.sleep(0.05)
    return current


def started(root: str, bundle: Path, container_id: str) -> int:
    detached("--root", root, "create", "-b", str(bundle), container_id)
    minirun("--root", root, "start", container_id, check=True)
    return int(state(root, container_id)["pid"])  # type: ignore[call-overload]


def test_state_of_an_exited_container_is_stopped_without_pid(
        root: str, make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["true"])
    detached("--root", root, "create", "-b", str(bundle), "exits")
    minirun("--root", root, "start", "exits", check=True)
    stopped = wait_status(root, "exits", "stopped")
    assert "pid" not in stopped  # runtime.md: pid is required only while created or running
    assert stopped["id"] == "exits" and stopped["bundle"] == str(bundle)
    rows = json.loads(minirun("--root", root, "list", "--format", "json", check=True).stdout)
    assert [(r["id"], r["status"], r["pid"]) for r in rows] == [("exits", "stopped", 0)]
    again = minirun("--root", root, "start", "exits")
    assert again.returncode != 0 and "not created" in again.stderr
    minirun("--root", root, "delete", "exits", check=True)  # stopped: no --force needed


@pytest.mark.parametrize("given,expected", [
    ("TERM", "TERM"), ("SIGUSR1", "USR1"), ("usr2", "USR2"), ("1", "HUP"), ("15", "TERM"),
    (None, "TERM")])
def test_kill_takes_signal_names_and_numbers(root: str, make_bundle: Callable[..., Path],
                                             given: str | None, expected: str) -> None:
    traps = " ".join(f"trap 'echo {s} > /caught' {s};" for s in ("HUP", "TERM", "USR1", "USR2"))
    bundle = make_bundle(["sh", "-c", f"{traps} echo > /ready; {LOOP}"])
    started(root, bundle, "sig")
    deadline = time.monotonic() + 10
    while not (bundle / "rootfs/ready").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    minirun("--root", root, "kill", "sig", *([given] if given else []), check=True)
    while not (bundle / "rootfs/caught").exists() or not (bundle / "rootfs/caught").read_text():
        assert time.monotonic() < deadline, "the signal never arrived"
        time.sleep(0.02)
    assert (bundle / "rootfs/caught").read_text().strip() == expected


@pytest.mark.parametrize("bad", ["BOGUS", "0", "99", "-9", "SIG"])
def test_kill_refuses_what_is_not_a_signal(root: str, make_bundle: Callable[..., Path],
                                           bad: str) -> None:
    started(root, make_bundle(["sleep", "30"]), "bad")
    result = minirun("--root", root, "kill", "bad", bad)
    assert result.returncode == 2, result.stderr
    assert "not a signal" in result.stderr
    assert state(root, "bad")["status"] == "running"


def test_kill_all_reaches_exec_processes_too(root: str, make_bundle: Callable[..., Path],
                                             tmp_path: Path) -> None:
    init = started(root, make_bundle(["sh", "-c", "trap '' TERM; " + LOOP]), "all")
    pid_file = tmp_path / "exec.pid"
    detached("--root", root, "exec", "-d", "--pid-file", str(pid_file), "all", "sleep", "30")
    extra = int(pid_file.read_text())
    listed = json.loads(minirun("--root", root, "ps", "--format", "json", "all",
                                check=True).stdout)
    assert init in listed and extra in listed and all(isinstance(p, int) for p in listed)
    minirun("--root", root, "kill", "--all", "all", "TERM", check=True)
    time.sleep(0.3)
    assert state(root, "all")["status"] == "running", "the init ignores TERM"
    assert not Path(f"/proc/{extra}").exists() or _zombie(extra), "exec'd sleep got TERM"
    minirun("--root", root, "kill", "--all", "all", "9", check=True)
    wait_status(root, "all", "stopped")
    minirun("--root", root, "delete", "all", check=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_delete_of_a_created_container_ends_its_waiting_init(
        root: str, make_bundle: Callable[..., Path], tmp_path: Path) -> None:
    bundle = make_bundle(["sh", "-c", "echo ran > /ran"])
    pid_file = tmp_path / "pid"
    detached("--root", root, "create", "-b", str(bundle), "--pid-file", str(pid_file), "never")
    pid = int(pid_file.read_text())
    assert state(root, "never") == {**state(root, "never"), "status": "created", "pid": pid}
    minirun("--root", root, "delete", "never", check=True)  # runc: created needs no --force
    waited, status = os.waitpid(pid, 0)  # ours as subreaper: it must end, not stay blocked
    assert waited == pid and os.WIFSIGNALED(status)
    assert not (bundle / "rootfs/ran").exists(), "delete must not start the program"
    gone = minirun("--root", root, "state", "never")
    assert gone.returncode != 0 and "does not exist" in gone.stderr
    assert json.loads(minirun("--root", root, "list", "--format", "json",
                              check=True).stdout) == []


def test_start_twice_fails_the_second_time(root: str, make_bundle: Callable[..., Path]) -> None:
    started(root, make_bundle(["sleep", "30"]), "twice")
    again = minirun("--root", root, "start", "twice")
    assert again.returncode != 0 and "not created" in again.stderr
    assert state(root, "twice")["status"] == "running"


def test_two_concurrent_creates_of_one_id_one_wins(root: str,
                                                   make_bundle: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    bundle = make_bundle(["sleep", "30"])
    for attempt in range(3):
        container_id = f"race{attempt}"
        with tempfile.TemporaryFile("w+") as first, tempfile.TemporaryFile("w+") as second:
            racers = [subprocess.Popen([str(MINIRUN), "--root", root, "create", "-b",
                                        str(bundle), container_id], stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=out) for out in (first, second)]
            codes = sorted(racer.wait(timeout=60) for racer in racers)
            texts = []
            for out in (first, second):
                out.seek(0)
                texts.append(out.read())
        assert codes[0] == 0 and codes[1] != 0, texts
        assert any("exists already" in text for text in texts), texts
        assert state(root, container_id)["status"] == "created"
        minirun("--root", root, "delete", "--force", container_id, check=True)
    assert json.loads(minirun("--root", root, "list", "--format", "json",
                              check=True).stdout) == []


def test_exec_with_a_process_json_and_with_a_user(root: str, make_bundle: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    started(root, make_bundle(["sleep", "30"]), "ex")
    process = {"args": ["sh", "-c", "echo $(id -u):$(id -g) $(pwd) $FOO"], "cwd": "/tmp",
               "env": ["PATH=/bin", "FOO=bar"], "user": {"uid": 1000, "gid": 1000}}
    file = tmp_path / "process.json"
    file.write_text(json.dumps(process))
    by_file = minirun("--root", root, "exec", "--process", str(file), "ex", check=True)
    assert by_file.stdout.split() == ["1000:1000", "/tmp", "bar"]
    by_flag = minirun("--root", root, "exec", "-u", "1000:1000", "ex", "sh", "-c",
                      "echo $(id -u):$(id -g)", check=True)
    assert by_flag.stdout.strip() == "1000:1000"
    broken = tmp_path / "broken.json"
    broken.write_text('{"args": "sh"}')
    refused = minirun("--root", root, "exec", "--process", str(broken), "ex")
    assert refused.returncode == 2 and str(broken) in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_json_log_gets_one_json_line_per_error(root: str, tmp_path: Path) -> None:
    log = tmp_path / "runtime.log"
    for args in (["state", "missing"], ["start", "missing"],
                 ["create", "-b", str(tmp_path / "nothing"), "nobundle"]):
        result = minirun("--root", root, "--log", str(log), "--log-format", "json", *args)
        assert result.returncode != 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [line for line in lines if line.get("level") == "error"]
    assert len(errors) == 3, lines
    assert all(isinstance(e["msg"], str) and e["msg"] and "time" in e for e in errors)
    assert "missing" in errors[0]["msg"] and "nothing" in errors[2]["msg"]


def test_rootless_spec_runs_as_root_here(root: str, busybox_rootfs: Path,
                                         tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "rootless"
    bundle.mkdir()
    shutil.copytree(busybox_rootfs, bundle / "rootfs", symlinks=True)
    minirun("spec", "--rootless", "-b", str(bundle), "--", "sh", "-c",
            "id -u; cat /proc/self/uid_map", check=True)
    config = json.loads((bundle / "config.json").read_text())
    kinds = {n["type"] for n in config["linux"]["namespaces"]}
    assert "user" in kinds and "network" not in kinds
    assert config["linux"]["uidMappings"][0]["hostID"] == os.geteuid()
    result = minirun("--root", root, "run", "-b", str(bundle), "rootless", check=True)
    assert result.stdout.split() == ["0", "0", "0", "1"]


def test_features_document_follows_features_md() -> None:
    document = json.loads(minirun("features", check=True).stdout)
    allowed = {"ociVersionMin", "ociVersionMax", "hooks", "mountOptions", "linux",
               "annotations", "potentiallyUnsafeConfigAnnotations"}
    assert set(document) <= allowed and {"ociVersionMin", "ociVersionMax"} <= set(document)
    assert tuple(map(int, document["ociVersionMin"].split("."))) <= \
        tuple(map(int, document["ociVersionMax"].split(".")))
    assert {"ro", "rbind", "nosuid", "nodev"} <= set(document["mountOptions"])
    linux = document["linux"]
    assert set(linux) <= {"namespaces", "capabilities", "cgroup", "seccomp", "apparmor",
                          "selinux", "intelRdt", "mountExtensions", "netDevices"}
    assert {"pid", "network", "mount", "ipc", "uts", "user", "cgroup"} <= set(linux["namespaces"])
    assert all(c.startswith("CAP_") for c in linux["capabilities"])
    assert all(isinstance(v, bool) for v in linux["cgroup"].values())


def test_features_names_the_hooks_and_seccomp_minirun_applies() -> None:
    # features.md: the runtime MUST support every listed hook; an empty list claims none, and
    # seccomp.enabled false claims no seccomp, while minirun runs all six hooks and seccomp.
    document = json.loads(minirun("features", check=True).stdout)
    assert set(document["hooks"]) == {"prestart", "createRuntime", "createContainer",
                                      "startContainer", "poststart", "poststop"}
    assert document["linux"]["seccomp"]["enabled"] is True


def test_run_detach_then_kill_then_delete(root: str, make_bundle: Callable[..., Path],
                                          tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    detached("--root", root, "run", "--detach", "--pid-file", str(pid_file), "-b",
             str(make_bundle(["sleep", "30"])), "bg")
    running = wait_status(root, "bg", "running")
    assert running["pid"] == int(pid_file.read_text())
    busy = minirun("--root", root, "delete", "bg")
    assert busy.returncode != 0 and "--force" in busy.stderr
    minirun("--root", root, "kill", "bg", "KILL", check=True)
    wait_status(root, "bg", "stopped")
    late = minirun("--root", root, "kill", "bg", "TERM")
    assert late.returncode != 0 and "not running" in late.stderr
    minirun("--root", root, "delete", "bg", check=True)
    assert minirun("--root", root, "list", "--format", "json", check=True).stdout.strip() == "[]"
    assert not (Path(root) / "bg").exists()


def test_a_log_file_that_cannot_be_opened_is_one_line(root: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "runtime.log"
    result = minirun("--root", root, "--log", str(missing), "--log-format", "json", "list")
    assert result.returncode == 2
    assert result.stderr == f"minirun: --log {missing}: cannot open: No such file or directory\n"


def test_foreground_run_writes_the_pid_file(root: str, make_bundle: Callable[..., Path],
                                            tmp_path: Path) -> None:
    pid_file = tmp_path / "fg.pid"
    bundle = make_bundle(["sh", "-c", "sleep 0.3; echo done"])
    result = minirun("--root", root, "run", "--pid-file", str(pid_file), "-b", str(bundle),
                     "fg", check=True)
    assert result.stdout.strip() == "done"
    assert int(pid_file.read_text()) > 1  # the container's pid as the host sees it


def test_kill_of_a_created_container_stops_it_and_start_then_fails(
        root: str, make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "echo ran > /ran"])
    detached("--root", root, "create", "-b", str(bundle), "ck")
    assert minirun("--root", root, "list", "-q", check=True).stdout.split() == ["ck"]
    minirun("--root", root, "kill", "ck", "KILL", check=True)
    wait_status(root, "ck", "stopped")
    late = minirun("--root", root, "start", "ck")
    assert late.returncode != 0 and "not created" in late.stderr
    assert not (bundle / "rootfs/ran").exists()
    minirun("--root", root, "delete", "ck", check=True)
