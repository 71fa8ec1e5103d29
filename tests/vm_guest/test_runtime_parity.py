"""runc, crun and minirun run one busybox bundle and must show it the same world (runs only
in the test VM, on real cgroup v2).

One config.json, made by ``minirun spec`` (ociVersion lowered to 1.0.2: crun 1.8 refuses
1.2.0) with memory and pids limits, runs under each runtime as ``RUNTIME --root DIR run
--bundle BUNDLE ID``. Its process is a shell script that prints probes: pid, hostname, ids
and groups, environment, working directory, umask, open-files limit, capability sets and
no_new_privs, namespaces, the cgroup and its limits as seen inside, the mount table, /dev,
whether /proc/sys is writable, what the masked paths show, oom_score_adj. A second config
runs the same probes as an unprivileged user with extra groups, another cwd and rlimit.

Probes are normalised where runc and crun legitimately differ from each other or where
the difference is an implementation detail that no container can rely on:

- device nodes: runc and crun mknod /dev/null, zero, full, random, urandom and tty in the
  container's /dev; minirun bind-mounts the host's nodes. The nodes are the same (type,
  mode, major:minor, owner); only minirun's show up in the mount table, so those six mount
  entries are dropped;
- a masked file is a bind mount of some /dev/null: of the container's tmpfs /dev (runc) or
  of the host's devtmpfs (crun, minirun), with differing mount flags; only "masked by a null
  device" is compared;
- runc and crun add a /dev/core -> /proc/kcore link; the runtime-spec does not list it
  among the default devices and links, and minirun does not make it;
- mount order and mount sources ("cgroup" or "cgroup2") differ and are ignored.

Everything else must match exactly. HOME, which runc and minirun take from the
container's /etc/passwd (or use /) when process.env has none, is compared on its own
(test_home_is_set_like_runc_and_crun): crun 1.8 sets none for a uid /etc/passwd lacks.
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from oci_clients_support import MINIRUN, busybox_rootfs, cgroup_dirs, scratch, sh

RUNTIMES = {"runc": "runc", "crun": "crun", "minirun": str(MINIRUN)}
REFERENCE = "runc"
MEMORY_LIMIT = 64 * 1024 * 1024
PIDS_LIMIT = 64
# Device nodes runc and crun create with mknod(2) and minirun binds from the host.
BOUND_DEVICES = {f"/dev/{name}" for name in ("null", "zero", "full", "random", "urandom",
                                            "tty")}

PROBE = r"""
echo "== pid"; echo $$
echo "== hostname"; hostname
echo "== id"; id
echo "== env"; env | sort
echo "== cwd"; pwd
echo "== umask"; umask
echo "== nofile"; ulimit -Sn; ulimit -Hn
echo "== status"; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status
echo "== ns"
for n in pid net ipc uts mnt cgroup user; do echo "$n $(readlink /proc/self/ns/$n)"; done
echo "== cgroup"; cat /proc/self/cgroup
echo "memory.max $(cat /sys/fs/cgroup/memory.max)"; echo "pids.max $(cat /sys/fs/cgroup/pids.max)"
echo "== mounts"; cat /proc/self/mountinfo
echo "== dev"; for f in /dev/*; do stat -c '%n %F %a %t:%T %u:%g' "$f"; done
echo "== procsys"; (echo probe > /proc/sys/kernel/domainname) 2>&1 && echo writable
echo "== masked"
for p in MASKED; do
  if [ -d "$p" ]; then echo "$p dir $(ls -A "$p" | wc -l)"
  elif [ -e "$p" ]; then echo "$p file $(wc -c < "$p")"
  else echo "$p absent"; fi
done
echo "== oom"; cat /proc/self/oom_score_adj
"""


@dataclass(frozen=True)
class Variant:
    name: str
    change: Callable[[dict[str, Any]], None]


def _as_root(config: dict[str, Any]) -> None:
    pass


def _as_user(config: dict[str, Any]) -> None:
    process = config["process"]
    process["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}
    process["cwd"] = "/var/tmp"
    process["env"].append("PROBE_VALUE=with spaces=and equals")
    process["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 2048}]
    config["hostname"] = "parity-user"


VARIANTS = (Variant("root", _as_root), Variant("user", _as_user))


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: str
    stderr: str
    leftovers: list[str]


def _make_config(bundle: Path, rootfs: Path, variant: Variant) -> dict[str, Any]:
    bundle.mkdir()
    sh(MINIRUN, "spec", "--bundle", bundle, "--", "sh", "/probe.sh")
    config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    config["ociVersion"] = "1.0.2"
    config["root"] = {"path": str(rootfs), "readonly": False}
    config["linux"]["resources"] = {"memory": {"limit": MEMORY_LIMIT},
                                    "pids": {"limit": PIDS_LIMIT}}
    variant.change(config)
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    return config


def _run(runtime: str, bundle: Path, state: Path) -> Outcome:
    container_id = f"parity-{runtime}-{secrets.token_hex(3)}"
    before = cgroup_dirs()
    done = subprocess.run([RUNTIMES[runtime], "--root", str(state), "run", "--bundle",
                           str(bundle), container_id], cwd=bundle, input="",
                          capture_output=True, text=True, timeout=120, check=False)
    leftovers = [f"cgroup {path}" for path in sorted(cgroup_dirs() - before)]
    if state.exists():
        leftovers += [f"state {state / name}" for name in os.listdir(state)]
    return Outcome(done.returncode, done.stdout, done.stderr, leftovers)


@pytest.fixture(scope="module")
def outcomes() -> Iterator[dict[str, dict[str, Outcome]]]:
    """variant name -> runtime -> what its run printed and left behind."""
    with scratch("minirun-parity") as top:
        yield _run_all(top)


def _run_all(top: Path) -> dict[str, dict[str, Outcome]]:
    rootfs = busybox_rootfs(top / "rootfs")
    configs = {variant.name: _make_config(top / variant.name, rootfs, variant)
               for variant in VARIANTS}
    masked = " ".join(configs["root"]["linux"]["maskedPaths"])
    (rootfs / "probe.sh").write_text(PROBE.replace("MASKED", masked))
    return {variant.name: {runtime: _run(runtime, top / variant.name, top / f"state-{runtime}")
                           for runtime in RUNTIMES}
            for variant in VARIANTS}


def sections(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("== "):
            current = found.setdefault(line[3:].strip(), [])
        else:
            current.append(line)
    return found


def _mounts(lines: list[str]) -> list[str]:
    """Mount point, type and per-mount flags (ro, nosuid, ...) of each mount, sorted.

    Superblock options are left out: crun mounts sysfs with "rw" there (the per-mount
    "ro" still applies) and sizes its empty tmpfs masks differently."""
    rows = []
    for line in lines:
        fields = line.split()
        separator = fields.index("-")
        root, point, options, fstype = fields[3], fields[4], fields[5], fields[separator + 1]
        if point in BOUND_DEVICES:
            continue
        if root in ("/null", "/dev/null"):
            rows.append(f"{point} masked by a null device")
            continue
        rows.append(f"{point} {fstype} {options}")
    return sorted(rows)


def _namespaces(lines: list[str]) -> list[str]:
    """Whether each namespace is the guest's own or a new one."""
    rows = []
    for line in lines:
        kind, link = line.split()
        own = os.readlink(f"/proc/self/ns/{kind}")
        rows.append(f"{kind} {'shared with the host' if link == own else 'new'}")
    return rows


def normalised(runtime: str, text: str) -> dict[str, list[str]]:
    found = sections(text)
    found["mounts"] = _mounts(found.get("mounts", []))
    found["ns"] = _namespaces(found.get("ns", []))
    found["env"] = [line for line in found.get("env", []) if not line.startswith("HOME=")]
    found["dev"] = [line for line in found.get("dev", []) if not line.startswith("/dev/core ")]
    return found


def _differences(runs: dict[str, Outcome]) -> list[str]:
    views = {runtime: normalised(runtime, run.stdout) for runtime, run in runs.items()}
    reference = views[REFERENCE]
    problems = []
    for runtime, view in views.items():
        for probe in sorted(set(reference) | set(view)):
            if view.get(probe) != reference.get(probe):
                diff = difflib.unified_diff(reference.get(probe, []), view.get(probe, []),
                                            f"{REFERENCE} {probe}", f"{runtime} {probe}",
                                            lineterm="")
                problems.append("\n".join(diff))
    return problems


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_probes_agree(outcomes: dict[str, dict[str, Outcome]], variant: str) -> None:
    runs = outcomes[variant]
    failed = [f"{runtime}: exit {run.status}\n{run.stderr[-2000:]}"
              for runtime, run in runs.items() if run.status != 0]
    assert not failed, "\n".join(failed)
    problems = _differences(runs)
    assert not problems, "the runtimes disagree:\n" + "\n".join(problems)

    # Agreement alone would pass if all three were wrong the same way: check what the
    # config asks for, as minirun shows it.
    seen = sections(runs["minirun"].stdout)
    assert seen["pid"] == ["1"]
    assert seen["hostname"] == ["minirun" if variant == "root" else "parity-user"]
    assert seen["cgroup"] == ["0::/", f"memory.max {MEMORY_LIMIT}", f"pids.max {PIDS_LIMIT}"]
    assert all(row.endswith(" new") for row in _namespaces(seen["ns"]) if
               not row.startswith("user ")), seen["ns"]
    assert "Read-only file system" in seen["procsys"][0], seen["procsys"]
    assert "/proc/kcore file 0" in seen["masked"]
    if variant == "user":
        assert seen["id"] == ["uid=1000 gid=1000 groups=10,20"], seen["id"]
        assert seen["cwd"] == ["/var/tmp"] and seen["nofile"] == ["512", "2048"]
        assert "PROBE_VALUE=with spaces=and equals" in seen["env"]


def test_runs_leave_nothing(outcomes: dict[str, dict[str, Outcome]]) -> None:
    left = {f"{variant} {runtime}": run.leftovers for variant, runs in outcomes.items()
            for runtime, run in runs.items() if run.leftovers}
    assert not left, left
    # stdin is a pipe, not /dev/null: crun chowns a /dev/null stdin to the container's user.
    assert os.stat("/dev/null").st_uid == 0


@pytest.mark.parametrize("variant", [v.name for v in VARIANTS])
def test_home_is_set_like_runc_and_crun(outcomes: dict[str, dict[str, Outcome]],
                                        variant: str) -> None:
    homes = {runtime: [line for line in sections(run.stdout).get("env", [])
                       if line.startswith("HOME=")]
             for runtime, run in outcomes[variant].items()}
    # crun 1.8 sets no HOME for a uid without an /etc/passwd entry; runc sets "/".
    assert homes["crun"] in (homes["runc"], []), homes
    assert homes["minirun"] == homes["runc"], homes
    assert homes["minirun"] == (["HOME=/root"] if variant == "root" else ["HOME=/"])
