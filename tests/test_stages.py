"""One real container per stage: what the process inside sees, stage by stage."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO, minirun

pytestmark = pytest.mark.root

PROBE = (
    "echo pid=$$; echo hostname=$(hostname); echo uid=$(id -u); echo gid=$(id -g); "
    "echo groups=\"$(id -G)\"; echo ifaces=$(ls /sys/class/net 2>/dev/null | tr '\\n' ' '); "
    "echo procs=$(ls /proc 2>/dev/null | grep -c '^[0-9]'); "
    "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status 2>/dev/null | tr -d '\\t' | "
    "sed 's/:/=/'; kill -0 1 2>/dev/null && echo host-init-reachable=yes; "
    "echo cwd=$(pwd); echo path=$PATH; echo umask=$(umask)"
)


def probe(bundle: Path, stage: str) -> dict[str, str]:
    result = minirun("run", "--stage", stage, str(bundle), check=True)
    values = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        values[key] = value.strip()
    return values


@pytest.fixture(scope="module")
def escape_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("escape") / "escape"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out),
                    str(REPO / "stages" / "chroot" / "escape.c")], check=True)
    return out


def test_chroot_shares_pids_hostname_and_network(make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", PROBE])
    seen = probe(bundle, "chroot")
    assert seen["pid"] != "1"
    assert seen["host-init-reachable"] == "yes"
    assert seen["hostname"] == subprocess.run(["hostname"], capture_output=True,
                                              text=True).stdout.strip()
    assert seen["procs"] == "0"  # nothing mounted /proc: the chroot is only a directory


def test_chroot_escape_reaches_the_host(make_bundle: Callable[..., Path],
                                        escape_binary: Path) -> None:
    bundle = make_bundle(["/escape", str(REPO / "stages" / "chroot" / "escape.c")])
    shutil.copy(escape_binary, bundle / "rootfs" / "escape")
    result = minirun("run", "--stage", "chroot", str(bundle), check=True)
    assert result.stdout.startswith("ESCAPED:"), result.stdout


def test_jail_holds_the_root_and_isolates_host_and_network(
        make_bundle: Callable[..., Path], escape_binary: Path) -> None:
    bundle = make_bundle(["sh", "-c", PROBE + "; /escape " + str(REPO / "README.md")])
    shutil.copy(escape_binary, bundle / "rootfs" / "escape")
    seen = probe(bundle, "jail")
    assert seen["hostname"] == "minirun"
    assert seen["ifaces"] == "lo"
    assert seen["pid"] != "1"  # no pid namespace before the namespaces stage
    escape = minirun("run", "--stage", "jail", str(bundle), check=True).stdout
    assert "CONTAINED:" in escape and "ESCAPED" not in escape


def test_namespaces_gives_pid_1_fresh_proc_and_configured_identity(
        make_bundle: Callable[..., Path]) -> None:
    def edit(config: dict) -> None:
        config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 20],
                                     "umask": 0o027}
        config["process"]["cwd"] = "/home/work"

    seen = probe(make_bundle(["sh", "-c", PROBE], edit), "namespaces")
    assert seen["pid"] == "1"
    assert 1 <= int(seen["procs"]) <= 5  # the shell, a subshell, ls, grep: no host process
    assert seen["uid"] == "1000" and seen["gid"] == "1000"
    assert seen["groups"].split() == ["1000", "10", "20"]
    assert seen["CapEff"] == "0000000000000000"  # a non-root uid keeps no effective caps
    assert seen["CapBnd"] == "0000000020000420"
    assert seen["CapInh"] == "0000000000000000" and seen["CapAmb"] == "0000000000000000"
    assert seen["cwd"] == "/home/work"
    assert seen["umask"] == "0027"
    assert seen["path"].startswith("/usr/local/sbin")  # process.env, not the caller's


def test_namespaces_root_keeps_exactly_the_configured_capabilities(
        make_bundle: Callable[..., Path]) -> None:
    def edit(config: dict) -> None:
        caps = ["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN"]
        config["process"]["capabilities"] = {"bounding": caps, "effective": caps[:1],
                                             "permitted": caps[:2]}

    seen = probe(make_bundle(["sh", "-c", PROBE], edit), "namespaces")
    assert seen["CapBnd"] == f"{(1 << 0) | (1 << 13) | (1 << 21):016x}"
    assert seen["CapPrm"] == f"{(1 << 0) | (1 << 13):016x}"
    # execve as uid 0 makes every permitted capability effective (capabilities(7)).
    assert seen["CapEff"] == seen["CapPrm"]


def test_user_namespace_maps_root_to_an_unprivileged_host_range(
        make_bundle: Callable[..., Path]) -> None:
    def edit(config: dict) -> None:
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]

    script = "id -u; cat /proc/self/uid_map; touch /made-by-container; echo pid=$$"
    bundle = make_bundle(["sh", "-c", script], edit)
    # The mapped root is uid 100000 on the host: it must be able to reach and own its rootfs.
    for parent in [bundle, *bundle.parents]:
        if parent == Path("/tmp"):
            break
        parent.chmod(0o755)
    for path in [bundle / "rootfs", *(bundle / "rootfs").rglob("*")]:
        os.chown(path, 100000, 100000, follow_symlinks=False)
    result = minirun("run", "--stage", "namespaces", str(bundle), check=True)
    lines = result.stdout.split()
    assert lines[0] == "0"
    assert lines[1:4] == ["0", "100000", "65536"]
    assert (bundle / "rootfs" / "made-by-container").stat().st_uid == 100000


def test_each_stage_keeps_the_host_mount_table_unchanged(
        make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "cat /proc/self/mountinfo 2>/dev/null | wc -l"])
    counts = {}
    for stage in ("jail", "namespaces", "oci"):
        counts[stage] = int(minirun("run", "--stage", stage, str(bundle), check=True).stdout)
    # Inside, only the container's own mounts: far fewer than the host's.
    host = len(Path("/proc/self/mountinfo").read_text().splitlines())
    assert counts["namespaces"] < host and counts["oci"] > counts["namespaces"]


def test_explain_lists_the_steps_it_runs_and_runs_nothing(
        make_bundle: Callable[..., Path]) -> None:
    bundle = make_bundle(["sh", "-c", "touch /ran"])
    for stage, must, must_not in (("chroot", "chroot(", "pivot_root"),
                                  ("jail", "pivot_root", "CLONE_NEWPID"),
                                  ("namespaces", "CLONE_NEWPID", "(maskedPaths)"),
                                  ("oci", "(maskedPaths)", "chroot(")):
        out = minirun("run", "--explain", "--stage", stage, str(bundle), check=True).stdout
        assert must in out and must_not not in out, out
        assert out.splitlines()[0].startswith(f"stage {stage} (")
    assert not (bundle / "rootfs" / "ran").exists()


def test_cgroups_stage_on_a_host_without_cgroup_v2_says_what_is_missing(
        make_bundle: Callable[..., Path]) -> None:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("this host has cgroup v2; the VM tests cover the cgroups stage")
    result = minirun("run", "--stage", "cgroups", str(make_bundle(["true"])))
    assert result.returncode == 2
    assert "cgroup v2 is not usable here" in result.stderr
    assert "hint:" in result.stderr
