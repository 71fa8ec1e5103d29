"""Config fields of the oci stage, each checked from inside a real container."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import MINIRUN, minirun

pytestmark = pytest.mark.root


def _is_mount_point(path: str) -> bool:
    with open("/proc/self/mountinfo") as stream:
        return any(line.split()[4] == path for line in stream)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own. `ip netns add` makes /run/netns a mount point
    the first time; when it did so here, the test unmounts it again."""
    name = f"minirun-test-{os.getpid()}"
    mounted_before = _is_mount_point("/run/netns")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)
        if not mounted_before and not os.listdir("/run/netns"):
            subprocess.run(["umount", "/run/netns"], check=True)


def test_namespace_path_joins_an_existing_network_namespace(
        make_bundle: Callable[..., Path], netns: str) -> None:
    def edit(config: dict) -> None:
        for entry in config["linux"]["namespaces"]:
            if entry["type"] == "network":
                entry["path"] = netns

    bundle = make_bundle(["readlink", "/proc/self/ns/net"], edit)
    inode = os.stat(netns).st_ino
    assert minirun("run", str(bundle), check=True).stdout.strip() == f"net:[{inode}]"
    explain = minirun("run", "--explain", str(bundle), check=True).stdout
    assert f"setns({netns}, CLONE_NEWNET)" in explain


def test_seccomp_denies_what_the_profile_denies(make_bundle: Callable[..., Path]) -> None:
    def edit(config: dict) -> None:
        config["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 1}]}

    bundle = make_bundle(["sh", "-c", "mkdir /made 2>&1; grep Seccomp: /proc/self/status"],
                         edit)
    out = minirun("run", str(bundle), check=True).stdout
    assert "Operation not permitted" in out and "Seccomp:\t2" in out
    assert not (bundle / "rootfs" / "made").exists()


def test_podmans_default_seccomp_profile_loads(make_bundle: Callable[..., Path]) -> None:
    profile = Path("/usr/share/containers/seccomp.json")
    bundle = make_bundle(["sh", "-c", "grep Seccomp: /proc/self/status"],
                         lambda c: c["linux"].update(seccomp=json.loads(profile.read_text())))
    assert "Seccomp:\t2" in minirun("run", str(bundle), check=True).stdout


def test_preserve_fds_passes_exactly_those(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "ls /proc/self/fd | tr '\\n' ' '"])
    # Three descriptors from 3 up; only the first two may reach the container.
    command = (f"exec {MINIRUN} run --preserve-fds 2 {bundle} "
               "3</dev/null 4</dev/null 5</dev/null")
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True,
                            env={**os.environ, "MINIRUN_LOG": "error"})
    seen = sorted(int(fd) for fd in result.stdout.split())
    # 0-2, the two kept, and the directory ls itself reads (the lowest free number: 5).
    assert seen == [0, 1, 2, 3, 4, 5], result.stdout


def test_no_pivot_moves_the_root(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "echo pid=$$; cat /etc/hostname"])
    out = minirun("run", "--no-pivot", str(bundle), check=True).stdout.split()
    assert out == ["pid=1", "minirun"]
    assert "MS_MOVE" in minirun("run", "--explain", "--no-pivot", str(bundle),
                                check=True).stdout


def test_readonly_root_and_sysctl(make_bundle: Callable[..., Path]) -> None:
    def edit(config: dict) -> None:
        config["root"]["readonly"] = True
        config["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
        config["process"]["oomScoreAdj"] = 500

    script = ("touch /x 2>/dev/null && echo writable || echo read-only; "
              "cat /proc/sys/net/ipv4/ip_forward; cat /proc/self/oom_score_adj")
    out = minirun("run", str(make_bundle(["sh", "-c", script], edit)), check=True).stdout
    assert out.split() == ["read-only", "1", "500"]


def _hook_script(log: Path, kind: str) -> dict[str, object]:
    """A hook that records its kind, the state's status and pid, and where it ran."""
    command = (f"read -r state; echo \"{kind} $(echo \"$state\" | "
               "sed -E 's/.*\"status\": \"([a-z]+)\".*\"pid\": ([0-9]+).*/\\1 \\2/') "
               f"$(readlink /proc/self/ns/uts)\" >> {log}")
    return {"path": "/bin/sh", "args": ["sh", "-c", command]}


def test_all_six_hook_kinds_run_in_order(make_bundle: Callable[..., Path],
                                         tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    log.touch()
    log.chmod(0o666)

    def edit(config: dict) -> None:
        config["hostname"] = "inside"
        config["hooks"] = {kind: [_hook_script(log, kind)] for kind in
                           ("prestart", "createRuntime", "createContainer", "poststart",
                            "poststop")}
        # startContainer runs inside the container: its log is a path there.
        config["hooks"]["startContainer"] = [
            {"path": "/bin/sh", "args": ["sh", "-c", "cat > /start-state; hostname > /where"]}]

    bundle = make_bundle(["sh", "-c", "echo main"], edit)
    assert minirun("run", str(bundle), "hooked", check=True).stdout == "main\n"
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [line[0] for line in lines] == ["prestart", "createRuntime", "createContainer",
                                           "poststart", "poststop"]
    host = os.readlink("/proc/self/ns/uts")
    pids = {line[2] for line in lines}
    assert len(pids) == 1 and pids != {"1"}  # the host's view of the container's pid
    assert lines[0][3] == host and lines[1][3] == host  # the runtime's namespaces
    assert lines[2][3] != host  # createContainer: the container's namespaces
    assert lines[3][3] == host and lines[4][3] == host
    assert (bundle / "rootfs" / "where").read_text().strip() == "inside"
    start_state = json.loads((bundle / "rootfs" / "start-state").read_text())
    assert start_state["id"] == "hooked" and start_state["bundle"] == str(bundle)


def test_a_failing_create_hook_stops_the_container(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "touch /ran"], lambda c: c.update(
        hooks={"createRuntime": [{"path": "/bin/false"}]}))
    result = minirun("run", str(bundle))
    assert result.returncode == 1
    assert "hooks.createRuntime[0] /bin/false exited with status 1" in result.stderr
    assert not (bundle / "rootfs" / "ran").exists()


def test_devices_personality_io_priority_and_scheduler(make_bundle: Callable[..., Path]) -> None:
    def edit(config: dict) -> None:
        config["linux"]["devices"] = [{"path": "/dev/mynull", "type": "c", "major": 1,
                                       "minor": 3, "fileMode": 0o640, "uid": 7, "gid": 8}]
        config["linux"]["personality"] = {"domain": "LINUX32"}
        config["process"]["ioPriority"] = {"class": "IOPRIO_CLASS_IDLE", "priority": 0}
        config["process"]["scheduler"] = {"policy": "SCHED_BATCH", "nice": 5}
        config["process"]["capabilities"]["bounding"].append("CAP_MKNOD")

    script = ("stat -c '%F %t:%T %a %u:%g' /dev/mynull; uname -m; ionice -p $$; "
              "cut -d' ' -f41 /proc/self/stat; cut -d' ' -f19 /proc/self/stat")
    out = minirun("run", str(make_bundle(["sh", "-c", script], edit)),
                  check=True).stdout.splitlines()
    assert out[0] == "character special file 1:3 640 7:8"
    assert out[1] in ("i686", "i386")
    assert out[2] == "idle"
    assert out[3] == "3"  # SCHED_BATCH
    assert out[4] == "5"
