"""The handed hostile cases (../shared/cases/BR-*), each run as its README says, with the
host sentinel /tmp/minirun-victim checked after every run.

Each case folder has a config.json and a configs/ directory of variants; a variant is copied
over config.json and run with ``minirun run -b CASE case-SLUG``. The cases run at the default
stage (oci) and at the namespaces stage.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from running import Running, alive, leaking_fds
from support import MINIRUN, SHARED, minirun, only_line

pytestmark = pytest.mark.root

STAGES = [pytest.param([], id="oci"), pytest.param(["--stage", "namespaces"], id="namespaces")]
# The cwd is made and entered at every stage, chroot included: BR-28 runs at all of them.
ALL_STAGES = [*STAGES, pytest.param(["--stage", "jail"], id="jail"),
              pytest.param(["--stage", "chroot"], id="chroot")]

Victim = Callable[[], None]
Case = Callable[[str], Path]


def use_config(bundle: Path, name: str) -> str:
    """Copy configs/NAME over config.json (with @BUNDLE@ made the bundle's absolute path);
    return the container id for it."""
    text = (bundle / "configs" / name).read_text().replace("@BUNDLE@", str(bundle))
    (bundle / "config.json").write_text(text)
    return "case-" + name.removesuffix(".json")


def run_case(bundle: Path, name: str | None, stage: list[str],
             cwd: str | None = None) -> tuple[int, str, str]:
    container_id = use_config(bundle, name) if name else "case-default"
    result = minirun("run", *stage, "-b", str(bundle), container_id, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


def config_names(prefix: str) -> list[str]:
    folder = next(SHARED.glob(f"cases/{prefix}-*"))
    return sorted(path.name for path in (folder / "configs").glob("*.json"))


# --- BR-28: process.cwd and root.path edge cases --------------------------------------------


@pytest.fixture
def br28(case: Case) -> Path:
    bundle = case("BR-28")
    for name in ("escape", "escape-rel"):  # the case fixture restores the flattened links
        assert (bundle / "rootfs" / name).is_symlink(), name
    return bundle


# config -> (exit status, first stdout line or the error's JSON path and problem)
BR28: dict[str, tuple[int, str]] = {
    "cwd-not-exist.json": (0, "cwd=/does/not/exist"),
    "cwd-relative.json": (2, "process.cwd: must be an absolute path, got 'relative/dir'"),
    "cwd-missing-key.json": (2, "process.cwd: is required but missing"),
    "cwd-symlink-abs-out.json": (0, "cwd=/tmp/minirun-victim"),
    "cwd-symlink-rel-out.json": (0, "cwd=/tmp/minirun-victim"),
    "cwd-dotdot.json": (0, "cwd=/"),
    "root-path-absolute-placeholder.json": (0, "cwd=/"),
}


def test_br28_every_config_has_an_expected_outcome() -> None:
    assert sorted(BR28) == config_names("BR-28")


def host_only_names(rootfs: Path) -> set[str]:
    """Names in the host's / that the container's root does not have."""
    return set(os.listdir("/")) - set(os.listdir(rootfs))


@pytest.mark.parametrize("stage", ALL_STAGES)
@pytest.mark.parametrize("name", sorted(BR28))
def test_br28_cwd_and_root_path(br28: Path, victim: Victim, name: str,
                                stage: list[str]) -> None:
    status, expected = BR28[name]
    code, out, err = run_case(br28, name, stage)
    victim()
    assert code == status, err
    if status == 2:
        assert only_line(err) == f"minirun: {br28 / 'config.json'}: {expected}"
        return
    lines = out.splitlines()
    assert lines[0] == expected, out
    listing = set(lines[1:])
    assert "canary" not in listing and not listing & host_only_names(br28 / "rootfs"), out
    cwd = expected.removeprefix("cwd=")
    # A missing cwd is made inside the rootfs, even through a link that points out of it.
    assert (br28 / "rootfs" / cwd.lstrip("/")).is_dir()
    if cwd == "/":
        assert {"bin", "escape", "escape-rel", "etc"} <= listing, out
    else:
        assert listing == set(), out  # the fresh directory inside the rootfs, not the host's


@pytest.mark.parametrize("stage", ALL_STAGES)
def test_br28_relative_root_path_is_taken_from_the_bundle_not_the_callers_cwd(
        br28: Path, victim: Victim, stage: list[str]) -> None:
    # The default config.json: root.path "rootfs", cwd /escape (a link out of the rootfs).
    for cwd, bundle_arg in (("/", str(br28)), (str(br28.parent), br28.name)):
        result = minirun("run", *stage, "-b", bundle_arg, "case-default", cwd=cwd)
        victim()
        assert result.returncode == 0, result.stderr
        assert result.stdout == "cwd=/tmp/minirun-victim\n"
    assert (br28 / "rootfs" / "tmp" / "minirun-victim").is_dir()
    # The positional form: BUNDLE [ID].
    result = minirun("run", *stage, br28.name, "case-positional", cwd=str(br28.parent))
    assert result.returncode == 0 and result.stdout == "cwd=/tmp/minirun-victim\n", result.stderr


# --- BR-30: exit statuses and signals to pid 1 ----------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name,status,out", [
    ("exit-3.json", 3, ""),
    ("child-sigkill-137.json", 137, ""),
    ("child-sigsegv-139.json", 139, ""),
    ("pid1-self-term-ignored.json", 0, "survived\n"),
])
def test_br30_exit_status(case: Case, victim: Victim, name: str, status: int, out: str,
                          stage: list[str]) -> None:
    code, stdout, err = run_case(case("BR-30"), name, stage)
    victim()
    assert (code, stdout) == (status, out), err
    assert "Traceback" not in err


@pytest.mark.parametrize("stage", STAGES)
def test_br30_default_config_exits_3(case: Case, victim: Victim, stage: list[str]) -> None:
    code, _, err = run_case(case("BR-30"), None, stage)
    victim()
    assert code == 3, err


def sig_caught(pid: int) -> int:
    with open(f"/proc/{pid}/status") as stream:
        return int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", stream.read(), re.M).group(1), 16)


@pytest.mark.parametrize("stage", STAGES)
def test_br30_pid1_without_a_handler_ignores_term_until_asked_twice(
        case: Case, victim: Victim, stage: list[str]) -> None:
    # `minirun kill` does not exist yet: minirun forwards the signals it receives instead.
    bundle = case("BR-30")
    container_id = use_config(bundle, "pid1-no-handler-long.json")
    with Running("run", *stage, "-b", str(bundle), container_id) as run:
        run.send(signal.SIGTERM)
        time.sleep(1)
        assert run.running() and alive(run.container_pid), run.stderr
        run.send(signal.SIGTERM)  # asked again: the runtime kills the container
        code, _, err = run.finish()
    victim()
    assert code == 137, err
    assert "SIGTERM again: killing the container" in err
    assert "killed by signal 9 (SIGKILL)" in err
    assert not alive(run.container_pid)


@pytest.mark.parametrize("stage", STAGES)
def test_br30_pid1_that_traps_term_runs_its_handler(case: Case, victim: Victim,
                                                    stage: list[str]) -> None:
    bundle = case("BR-30")
    container_id = use_config(bundle, "pid1-traps-term.json")
    with Running("run", *stage, "-b", str(bundle), container_id) as run:
        deadline = time.monotonic() + 10
        while not sig_caught(run.container_pid) & (1 << (signal.SIGTERM - 1)):
            assert time.monotonic() < deadline, "the shell never set its TERM trap"
            time.sleep(0.05)
        run.send(signal.SIGTERM)
        code, out, err = run.finish()
    victim()
    assert (code, out) == (42, "got TERM\n"), err


# --- BR-23: inheritable and ambient capabilities --------------------------------------------

DEFAULT_CAPS = "0000000020000420"  # CAP_AUDIT_WRITE | CAP_KILL | CAP_NET_BIND_SERVICE


def capabilities(out: str) -> dict[str, str]:
    return {key: value.strip() for key, _, value in
            (line.partition(":") for line in out.splitlines())}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name,expected", [
    (None, {"CapInh": "0" * 16, "CapPrm": DEFAULT_CAPS, "CapEff": DEFAULT_CAPS,
            "CapBnd": DEFAULT_CAPS, "CapAmb": "0" * 16}),
    ("default-no-inheritable.json", {
        "CapInh": "0" * 16, "CapPrm": DEFAULT_CAPS, "CapEff": DEFAULT_CAPS,
        "CapBnd": DEFAULT_CAPS, "CapAmb": "0" * 16}),
    ("explicit-inheritable-net-raw.json", {
        "CapInh": "0000000000002000", "CapPrm": DEFAULT_CAPS, "CapEff": DEFAULT_CAPS,
        "CapBnd": "0000000020002420", "CapAmb": "0" * 16}),
])
def test_br23_capability_sets(case: Case, victim: Victim, name: str | None,
                              expected: dict[str, str], stage: list[str]) -> None:
    code, out, err = run_case(case("BR-23"), name, stage)
    victim()
    assert code == 0, err
    assert capabilities(out) == expected


# --- BR-12: cwd through /proc/self/fd/N with leaked host descriptors ------------------------


def test_br12_every_config_is_covered() -> None:
    names = config_names("BR-12")
    assert names == sorted([f"cwd-fd{n}.json" for n in range(3, 13)] + ["fd-inventory.json"])


def run_leaking(bundle: Path, name: str, stage: list[str]) -> tuple[int, str, str]:
    container_id = use_config(bundle, name)
    result = subprocess.run(
        [*leaking_fds("/tmp/minirun-victim"), str(MINIRUN), "run", *stage, "-b", str(bundle),
         container_id], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "MINIRUN_LOG": "warning"})
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("fd", range(3, 13))
def test_br12_cwd_through_a_leaked_fd_never_reaches_the_host(
        case: Case, victim: Victim, fd: int, stage: list[str]) -> None:
    bundle = case("BR-12")
    code, out, err = run_leaking(bundle, f"cwd-fd{fd}.json", stage)
    victim()
    lines = out.splitlines()
    assert socket.gethostname() not in lines, out
    assert not set(lines) & host_only_names(bundle / "rootfs"), out
    assert "CANARY" not in out and "canary" not in lines, out
    # Refused before execve (the README also allows a cwd inside the container): the cwd is
    # looked up with RESOLVE_NO_MAGICLINKS, so /proc/self/fd/N is never followed.
    assert code == 1 and out == "", out + err
    # This host has no cgroup v2: minirun warns once that the container runs without one.
    errors = [line for line in err.splitlines() if "no cgroup for this container" not in line]
    assert len(errors) == 1, err
    assert re.fullmatch(rf"minirun: process.cwd /proc/self/fd/{fd}: "
                        rf"openat2\(proc/self/fd/{fd}, RESOLVE_IN_ROOT\): ELOOP .*",
                        errors[0]), err


def fd_numbers(listing: str, directory: str) -> set[int]:
    """The descriptor numbers that `ls -l DIRECTORY` printed in its section of ``listing``."""
    section = listing.split(f"{directory}:\n", 1)[1].split("\n\n", 1)[0]
    return {int(line.split()[8]) for line in section.splitlines()
            if line.startswith("l")}


@pytest.mark.parametrize("stage", STAGES)
def test_br12_the_container_starts_with_only_stdio_open(case: Case, victim: Victim,
                                                        stage: list[str]) -> None:
    code, out, err = run_leaking(case("BR-12"), "fd-inventory.json", stage)
    victim()
    assert code == 0, err
    # pid 1 is ls itself (sh execs a lone command); 3 is the directory ls is reading.
    for directory in ("/proc/self/fd", "/proc/1/fd"):
        assert fd_numbers(out, directory) == {0, 1, 2, 3}, out
