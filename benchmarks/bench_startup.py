#!/usr/bin/python3 -I
"""Start-up of `minirun run --stage namespaces` against `crun run`: /bin/true in one bundle.

One run of this script measures both runtimes, interleaved, on the same busybox bundle
(rootfs-fetch/busybox-rootfs.sh plus `minirun spec -- /bin/true`), and prints the median,
p90 and min wall time of each, the children's CPU time, and the ratio minirun / crun. The
project's goal is a ratio of at most 2. Then it shows where minirun's time goes: interpreter
start, the slowest imports of a real run (-X importtime), and a timeline of one run split
into phases. Last comes one JSON line with every figure.

Why two private mount namespaces. This host's cgroups are hybrid, and crun refuses hybrid
mode: it runs only where /sys/fs/cgroup is a cgroup2 mount, with --cgroup-manager=disabled.
So crun gets a mount namespace of its own in which a fresh cgroup2 is mounted on
/sys/fs/cgroup. minirun must not run there: its cgroup probe would see cgroup v2 and make the
container a cgroup in the host's one cgroup2 hierarchy. minirun runs in a second private
namespace that looks like the host's. The script enters the first with `unshare --mount`
(re-executing itself), makes the second with unshare(2) once, and moves between the two with
setns(2) before starting each runtime, so neither is charged for namespace set-up. Both
namespaces and their mounts vanish when the script ends; no host cgroup is touched.

What crun's copy of the config changes: ociVersion 1.2.0 becomes 1.0.0, because crun 1.8.1
refuses 1.2.0 ("unknown version specified"). Nothing else.

runc is not run here: it always creates a cgroup, which this host forbids. It is measured in
the cgroup v2 VM only; on this host it was once measured at 3.4 times crun.

Usage: bench_startup.py [--repeat N]   (as root; needs crun, unshare and busybox-static)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "rootfs-fetch")]

from minirun.isolation import syscalls  # noqa: E402

PYTHON = "/usr/bin/python3"
MINIRUN = REPO / "bin" / "minirun"
STAGE = "namespaces"
CLONE_NEWNS = 0x00020000
INSIDE_FLAG = "--inside-private-namespace"  # set by the re-execution under unshare
RUNC_NOTE = ("runc: not run on this host (it always creates a cgroup); measured earlier "
             "at 3.4x crun here, and otherwise only in the cgroup v2 VM")
GOAL_RATIO = 2.0

# The phase timeline: a launcher that stamps the start of each phase with CLOCK_MONOTONIC, a
# clock shared by every process, so the benchmark's own stamp before spawning starts the
# timeline and children's stamps interleave with the parent's. It wraps minirun's functions
# from outside and logs at debug level (every log line is a stamp too); minirun is unchanged.
_TIMELINE_LAUNCHER = """\
import time
_up = time.monotonic()
import logging, os, sys
def mark(label, when=None):
    os.write(2, f"@@ {when or time.monotonic():.6f} {os.getpid()} {label}\\n".encode())
mark("launcher: logging set-up", _up)
repo = sys.argv[1]
sys.path[:0] = [repo, repo + "/rootfs-fetch"]
class Stamp(logging.Handler):
    def emit(self, record):
        mark("log: " + record.getMessage())
logging.getLogger().addHandler(Stamp())
logging.getLogger().setLevel(logging.DEBUG)
mark("import minirun.cli")
import minirun.cli as cli
mark("import run path (recipe, spec, runtime, cgroup_setup)")
import minirun.cgroup_setup, minirun.recipe, minirun.runtime, minirun.spec
def timed(module, name, label):
    inner = getattr(module, name)
    def wrapper(*args, **kwargs):
        mark(label)
        result = inner(*args, **kwargs)
        mark(f"cli after {name}")
        return result
    setattr(module, name, wrapper)
timed(cli, "_parser", "build the argparse parser")
timed(minirun.spec, "load_bundle", "load_bundle (config.json)")
timed(minirun.cgroup_setup, "hooks_for", "hooks_for (cgroup probe)")
timed(minirun.recipe, "build", "recipe.build")
timed(minirun.runtime, "run", "runtime.run: fork init, unshare, fork container")
mark("cli.main")
status = cli.main(sys.argv[2:])
mark("interpreter exit")
sys.exit(status)
"""


@dataclass(frozen=True)
class Trial:
    wall: float  # seconds from spawn to reaped
    cpu: float   # user + system time of the child and the descendants it waited for


@dataclass(frozen=True)
class ImportRow:
    module: str
    cumulative_ms: float
    self_ms: float
    depth: int  # how deep in the import tree it was first imported


@dataclass(frozen=True)
class Bundle:
    path: Path
    crun_config: Path


def _summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest rank
    return {"median": statistics.median(ordered), "p90": p90, "min": ordered[0],
            "max": ordered[-1]}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# --- namespaces ----------------------------------------------------------------------------


def _reexec_in_private_namespace(argv: list[str]) -> int:
    """Run this script again in a new mount namespace whose mounts are all private."""
    for tool in ("unshare", "crun"):
        if shutil.which(tool) is None:
            print(f"bench_startup: {tool} is not installed", file=sys.stderr)
            return 2
    if os.geteuid() != 0:
        print("bench_startup: needs root (namespaces and mounts)", file=sys.stderr)
        return 2
    command = ["unshare", "--mount", "--propagation", "private",
               PYTHON, "-I", str(Path(__file__).resolve()), INSIDE_FLAG, *argv]
    return subprocess.run(command, check=False).returncode


def _root_is_shared() -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return any(tag.startswith("shared:") for tag in fields[6:fields.index("-")])
    return True


def _namespace_for_crun() -> int:
    """Make, once, the mount namespace crun runs in; return its fd, staying where we were.

    Order matters: / is made private again in the new namespace before anything is mounted,
    so neither mount can propagate to the host (mount_namespaces(7), "Shared subtrees").
    """
    home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    syscalls.unshare(CLONE_NEWNS, "CLONE_NEWNS")
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount("none", "/sys/fs/cgroup", "tmpfs", 0)
    syscalls.mount("none", "/sys/fs/cgroup", "cgroup2", 0)
    crun_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    syscalls.setns(home, CLONE_NEWNS, "minirun's namespace, CLONE_NEWNS")
    os.close(home)
    return crun_ns


# --- the bundle ----------------------------------------------------------------------------


def _make_bundle(work: Path) -> Bundle:
    bundle = work / "bundle"
    subprocess.run(["sh", str(REPO / "rootfs-fetch" / "busybox-rootfs.sh"),
                    str(bundle / "rootfs")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(MINIRUN), "spec", "-b", str(bundle), "--", "/bin/true"], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["ociVersion"] = "1.0.0"  # crun 1.8.1: "unknown version specified" for 1.2.0
    crun_config = work / "crun-config.json"
    crun_config.write_text(json.dumps(config, indent=2))
    return Bundle(bundle, crun_config)


# --- timing --------------------------------------------------------------------------------


def _spawn_and_wait(argv: list[str], stderr_fd: int | None = None) -> Trial:
    """Start argv (output to /dev/null), wait; the same path for every runtime."""
    actions: list[tuple[int | str, ...]] = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
    if stderr_fd is None:
        actions.append((os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0))
    else:
        actions.append((os.POSIX_SPAWN_DUP2, stderr_fd, 2))
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit status "
                           f"{os.waitstatus_to_exitcode(status)} (run it by hand to see why)")
    return Trial(wall, usage.ru_utime + usage.ru_stime)


class Runtimes:
    """The two runtimes, each started from its own mount namespace."""

    def __init__(self, bundle: Bundle, crun_ns: int, state: Path) -> None:
        self.bundle = bundle
        self.crun_ns = crun_ns
        self.home_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self.state = state
        self.crun_path = shutil.which("crun") or "crun"
        self.count = 0

    def minirun(self) -> Trial:
        self.count += 1
        return _spawn_and_wait([str(MINIRUN), "run", "--stage", STAGE,
                                str(self.bundle.path), f"bench-m{self.count}"])

    def crun(self) -> Trial:
        self.count += 1
        argv = [self.crun_path, "--root", str(self.state), "--cgroup-manager=disabled", "run",
                "--bundle", str(self.bundle.path), "--config", str(self.bundle.crun_config),
                f"bench-c{self.count}"]
        syscalls.setns(self.crun_ns, CLONE_NEWNS, "crun's namespace, CLONE_NEWNS")
        try:
            return _spawn_and_wait(argv)
        finally:
            syscalls.setns(self.home_ns, CLONE_NEWNS, "minirun's namespace, CLONE_NEWNS")


    def _cycle(self, argv_for: Callable[[str, str], list[str]], name: str,
               use_crun_ns: bool) -> Trial:
        """create, start, delete --force of one container: the pattern youki and crun
        publish. The three commands' wall and CPU times are added up."""
        self.count += 1
        container_id = f"bench-{name[0]}{self.count}"
        total = Trial(0.0, 0.0)
        for command in ("create", "start", "delete"):
            if use_crun_ns:
                syscalls.setns(self.crun_ns, CLONE_NEWNS, "crun's namespace, CLONE_NEWNS")
            try:
                trial = _spawn_and_wait(argv_for(command, container_id))
            finally:
                if use_crun_ns:
                    syscalls.setns(self.home_ns, CLONE_NEWNS, "minirun's namespace")
            total = Trial(total.wall + trial.wall, total.cpu + trial.cpu)
            if command == "start":
                _wait_for_exit(container_id, self)
        _reap_orphans()
        return total

    def minirun_cycle(self) -> Trial:
        def argv(command: str, container_id: str) -> list[str]:
            base = [str(MINIRUN), "--root", str(self.state / "minirun"), command]
            extra = {"create": ["--bundle", str(self.bundle.path)], "delete": ["--force"]}
            return [*base, *extra.get(command, []), container_id]

        return self._cycle(argv, "minirun", use_crun_ns=False)

    def crun_cycle(self) -> Trial:
        def argv(command: str, container_id: str) -> list[str]:
            base = [self.crun_path, "--root", str(self.state / "crun"),
                    "--cgroup-manager=disabled", command]
            extra = {"create": ["--bundle", str(self.bundle.path), "--config",
                                str(self.bundle.crun_config)], "delete": ["--force"]}
            return [*base, *extra.get(command, []), container_id]

        return self._cycle(argv, "crun", use_crun_ns=True)


def _wait_for_exit(container_id: str, runtimes: Runtimes) -> None:
    """/bin/true ends at once; reap it (this process is the subreaper) before delete."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            return
        time.sleep(0.0005)


def _reap_orphans() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def compare_lifecycle(runtimes: Runtimes, repeat: int) -> dict[str, list[Trial]]:
    runtimes.minirun_cycle()
    runtimes.crun_cycle()
    trials: dict[str, list[Trial]] = {"minirun": [], "crun": []}
    for round_ in range(repeat):
        order = ("minirun", "crun") if round_ % 2 == 0 else ("crun", "minirun")
        for name in order:
            trials[name].append(getattr(runtimes, f"{name}_cycle")())
    return trials


def compare(runtimes: Runtimes, repeat: int) -> dict[str, list[Trial]]:
    for _warm_up in range(3):
        runtimes.minirun()
        runtimes.crun()
    trials: dict[str, list[Trial]] = {"minirun": [], "crun": []}
    for round_ in range(repeat):
        # Alternate who goes first, so a slow drift of the machine hits both alike.
        order = ("minirun", "crun") if round_ % 2 == 0 else ("crun", "minirun")
        for name in order:
            trials[name].append(getattr(runtimes, name)())
    return trials


# --- where minirun's time goes ---------------------------------------------------------------


def interpreter_start(repeat: int) -> dict[str, float]:
    """Median wall time of an empty interpreter, with and without the site module."""
    result = {}
    for label, argv in (("python3 -I -c pass", [PYTHON, "-I", "-c", "pass"]),
                        ("python3 -I -S -c pass", [PYTHON, "-I", "-S", "-c", "pass"])):
        _spawn_and_wait(argv)
        result[label] = statistics.median(_spawn_and_wait(argv).wall for _ in range(repeat))
    return result


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_times(bundle: Bundle, runs: int) -> tuple[list[ImportRow], float]:
    """Run `minirun run` under -X importtime; the top 10 modules by median cumulative time,
    and the median sum of the top-level imports (everything imported, in seconds)."""
    per_module: dict[str, list[tuple[int, int, int]]] = {}
    totals = []
    for run in range(runs + 1):
        read_fd, write_fd = os.pipe()
        argv = [PYTHON, "-I", "-X", "importtime", str(MINIRUN), "run", "--stage", STAGE,
                str(bundle.path), f"bench-i{run}"]
        with os.fdopen(read_fd) as stream:
            try:
                _spawn_and_wait(argv, stderr_fd=write_fd)
            finally:
                os.close(write_fd)
            text = stream.read()
        if run == 0:
            continue  # a warm-up: the first run after a change compiles the .pyc files
        total = 0
        seen: dict[str, tuple[int, int, int]] = {}
        for line in text.splitlines():
            match = _IMPORT_LINE.match(line)
            if not match:
                continue
            own, cumulative, depth = int(match[1]), int(match[2]), len(match[3]) // 2
            if depth == 0:
                total += cumulative
            seen[match[4]] = max(seen.get(match[4], (0, 0, 0)), (cumulative, own, depth))
        for name, value in seen.items():
            per_module.setdefault(name, []).append(value)
        totals.append(total / 1e6)
    rows = [ImportRow(name, statistics.median(v[0] for v in values) / 1000,
                      statistics.median(v[1] for v in values) / 1000, values[0][2])
            for name, values in per_module.items()]
    rows.sort(key=lambda row: -row.cumulative_ms)
    return rows[:10], statistics.median(totals)


def _phase_label(text: str, bundle: Bundle) -> str:
    label = text.removeprefix("log: ").replace(str(bundle.path), "BUNDLE")
    label = re.sub(r"\d+", "N", label)
    return label if len(label) <= 60 else label[:57] + "..."


# The timeline's phases summed into the parts a reader asks about, in order.
GROUPS = ("interpreter start (exec, site)", "imports before main (logging, minirun.cli, "
          "run path)", "argparse parser", "config, cgroup probe, recipe, logging",
          "fork init, unshare, fork container", "container steps before execve",
          "execve, /bin/true, exit, reap", "interpreter exit (finalization)")


def _group(label: str) -> str:
    if label.startswith("exec, interpreter"):
        return GROUPS[0]
    if label.startswith(("launcher:", "import ")):
        return GROUPS[1]
    if label.startswith(("build the argparse", "cli after _parser")):
        return GROUPS[2]
    if label.startswith("runtime.run"):
        return GROUPS[4]
    if label.startswith("step: execve") or label.startswith(("container process",
                                                             "cli after run")):
        return GROUPS[6]
    if label.startswith("step: "):
        return GROUPS[5]
    if label.startswith("interpreter exit"):
        return GROUPS[7]
    return GROUPS[3]


def timeline(bundle: Bundle, runs: int) -> tuple[dict[str, float], dict[str, float]]:
    """Phases of one `minirun run`, median over ``runs``: each lasts until the next stamp;
    and the median of each group of phases (seconds)."""
    per_phase: dict[str, list[float]] = {}
    per_group: dict[str, list[float]] = {group: [] for group in GROUPS}
    order: list[str] = []
    for run in range(runs + 1):
        read_fd, write_fd = os.pipe()
        argv = [PYTHON, "-I", "-c", _TIMELINE_LAUNCHER, str(REPO), "run", "--stage", STAGE,
                str(bundle.path), f"bench-t{run}"]
        with os.fdopen(read_fd) as stream:
            spawned = time.monotonic()
            try:
                trial = _spawn_and_wait(argv, stderr_fd=write_fd)
            finally:
                os.close(write_fd)
            text = stream.read()
        if run == 0:
            continue
        stamps = [(float(when), label) for _, when, _pid, label in
                  (line.split(" ", 3) for line in text.splitlines() if line.startswith("@@ "))]
        stamps.sort()
        # Each stamp starts a phase that lasts until the next stamp.
        stamps = [(spawned, "exec, interpreter start, site"), *stamps,
                  (spawned + trial.wall, "end")]
        counts: dict[str, int] = {}
        sums = dict.fromkeys(GROUPS, 0.0)
        for (when, text_label), (after, _) in itertools.pairwise(stamps):
            label = _phase_label(text_label, bundle)
            sums[_group(label)] += after - when
            counts[label] = counts.get(label, 0) + 1
            if counts[label] > 1:
                label = f"{label} #{counts[label]}"
            if label not in per_phase:
                order.append(label)
            per_phase.setdefault(label, []).append(after - when)
        for group, total in sums.items():
            per_group[group].append(total)
    phases = {label: statistics.median(per_phase[label]) for label in order}
    return phases, {group: statistics.median(values) for group, values in per_group.items()}


# --- output --------------------------------------------------------------------------------


def _plain_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    for line in (header, *rows):
        cells = [cell.rjust(w) if i else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(line, widths, strict=True))]
        print("  " + "  ".join(cells).rstrip())


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title=title, title_justify="left")
            for i, name in enumerate(header):
                table.add_column(name, justify="right" if i else "left")
            for row in rows:
                table.add_row(*row)
            Console().print(table)
            return
    _plain_table(title, header, rows)


def report(trials: dict[str, list[Trial]], interpreter: dict[str, float],
           imports: list[ImportRow], import_total: float,
           phases: dict[str, float], groups: dict[str, float], repeat: int,
           load: tuple[float, float]) -> dict[str, object]:
    wall = {name: _summary([t.wall for t in values]) for name, values in trials.items()}
    cpu = {name: statistics.median(t.cpu for t in values) for name, values in trials.items()}
    ratio = wall["minirun"]["median"] / wall["crun"]["median"]
    ratio_p90 = wall["minirun"]["p90"] / wall["crun"]["p90"]
    ratio_cpu = cpu["minirun"] / cpu["crun"]
    rows = [[name, _ms(w["median"]), _ms(w["p90"]), _ms(w["min"]), _ms(w["max"]),
             _ms(cpu[name])] for name, w in wall.items()]
    _table(f"run /bin/true, stage {STAGE}, {repeat} runs each, interleaved (ms; load "
           f"average {load[0]:.1f} before, {load[1]:.1f} after)",
           ["runtime", "median", "p90", "min", "max", "cpu median"], rows)
    verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
    print(f"  minirun / crun: {ratio:.2f}x median, {ratio_p90:.2f}x p90, {ratio_cpu:.2f}x cpu "
          f"(goal <= {GOAL_RATIO:.0f}x median: {verdict})")
    print(f"  {RUNC_NOTE}")

    _table("where minirun's time goes: interpreter (median, ms)", ["command", "ms"],
           [[label, _ms(value)] for label, value in interpreter.items()])
    _table(f"imports of a real run under -X importtime: top 10 by cumulative (median ms; "
           f"all imports {_ms(import_total)} ms)", ["module", "cumulative", "self"],
           [["  " * row.depth + row.module, f"{row.cumulative_ms:.1f}", f"{row.self_ms:.1f}"]
            for row in imports])
    _table("timeline of one run, debug logging on (median ms; a phase lasts until the next)",
           ["phase", "ms"], [[label, f"{value * 1000:.2f}"] for label, value in phases.items()])
    _table("the timeline in parts (median of each part's sum, ms)", ["part", "ms"],
           [*([group, _ms(value)] for group, value in groups.items()),
            ["sum of the parts (the timed runs' median above: "
             f"{_ms(wall['minirun']['median'])})", _ms(sum(groups.values()))]])
    return {"bench": "startup", "stage": STAGE, "repeat": repeat,
            "wall_ms": {name: {k: round(v * 1000, 2) for k, v in w.items()}
                        for name, w in wall.items()},
            "cpu_median_ms": {name: round(v * 1000, 2) for name, v in cpu.items()},
            "ratio_median": round(ratio, 3), "ratio_p90": round(ratio_p90, 3),
            "ratio_cpu": round(ratio_cpu, 3), "load_average_1min": [round(x, 2) for x in load],
            "goal_ratio": GOAL_RATIO, "runc_vs_crun_measured_earlier": 3.4,
            "interpreter_ms": {k: round(v * 1000, 2) for k, v in interpreter.items()},
            "imports_total_ms": round(import_total * 1000, 2),
            "imports_top10": [{"module": row.module, "cumulative_ms": round(row.cumulative_ms, 2),
                               "self_ms": round(row.self_ms, 2), "depth": row.depth}
                              for row in imports],
            "timeline_ms": {label: round(value * 1000, 3) for label, value in phases.items()},
            "timeline_parts_ms": {group: round(value * 1000, 2)
                                  for group, value in groups.items()}}


def report_lifecycle(cycles: dict[str, list[Trial]], repeat: int) -> dict[str, object]:
    wall = {name: _summary([t.wall for t in values]) for name, values in cycles.items()}
    cpu = {name: statistics.median(t.cpu for t in values) for name, values in cycles.items()}
    ratio = wall["minirun"]["median"] / wall["crun"]["median"]
    _table(f"create + start + delete of /bin/true, {repeat} cycles each, interleaved (ms)",
           ["runtime", "median", "p90", "min", "max", "cpu median"],
           [[name, _ms(w["median"]), _ms(w["p90"]), _ms(w["min"]), _ms(w["max"]),
             _ms(cpu[name])] for name, w in wall.items()])
    print(f"  minirun / crun: {ratio:.2f}x median, {cpu['minirun'] / cpu['crun']:.2f}x cpu")
    return {"wall_ms": {n: {k: round(v * 1000, 2) for k, v in w.items()}
                        for n, w in wall.items()},
            "cpu_median_ms": {n: round(v * 1000, 2) for n, v in cpu.items()},
            "ratio_median": round(ratio, 3)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if INSIDE_FLAG not in argv:
        return _reexec_in_private_namespace(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40, help="timed runs of each runtime")
    parser.add_argument(INSIDE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if _root_is_shared():
        print("bench_startup: / is a shared mount here; refusing to mount anything",
              file=sys.stderr)
        return 2
    detail_runs = max(3, args.repeat // 4)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        bundle = _make_bundle(work)
        state = work / "crun-state"
        state.mkdir()
        crun_ns = _namespace_for_crun()
        runtimes = Runtimes(bundle, crun_ns, state)
        load_before = os.getloadavg()[0]
        trials = compare(runtimes, args.repeat)
        # Created containers are reparented here (as to conmon or containerd-shim).
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER, 1")
        cycles = compare_lifecycle(runtimes, args.repeat)
        load = (load_before, os.getloadavg()[0])
        interpreter = interpreter_start(args.repeat)
        imports, import_total = import_times(bundle, detail_runs)
        phases, groups = timeline(bundle, detail_runs)
    figures = report(trials, interpreter, imports, import_total, phases, groups, args.repeat,
                     load)
    figures["lifecycle"] = report_lifecycle(cycles, args.repeat)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
