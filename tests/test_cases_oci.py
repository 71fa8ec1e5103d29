"""Handed hostile cases for the oci stage: paths inside the rootfs, /proc, masking."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support import minirun

pytestmark = pytest.mark.root


def _use(case_dir: Path, config: str | None) -> None:
    if config is not None:
        shutil.copy(case_dir / "configs" / config, case_dir / "config.json")


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")):
        digest.update(str(item.relative_to(path)).encode())
        if item.is_file():
            digest.update(item.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("config", ["bind-over-proc.json", "bind-over-proc-self.json"])
def test_br14_a_fake_proc_is_refused(case: Callable[[str], Path], victim: Callable[[], None],
                                     config: str) -> None:
    case_dir = case("BR-14")
    _use(case_dir, config)
    before = _tree_digest(case_dir / "fakeproc")
    result = minirun("run", "-b", str(case_dir), "br14")
    assert result.returncode == 2
    assert "only procfs may be mounted on /proc" in result.stderr
    assert "mounts[1].destination" in result.stderr
    assert _tree_digest(case_dir / "fakeproc") == before


@pytest.mark.parametrize("config", ["default.json", "mask-under-symlinked-dir.json"])
def test_br15_symlinked_proc_and_sys_stay_inside(case: Callable[[str], Path],
                                                 victim: Callable[[], None],
                                                 config: str) -> None:
    case_dir = case("BR-15")
    _use(case_dir, config)
    minirun("run", "-b", str(case_dir), "br15", check=True)
    # The mounts followed the links inside the rootfs, never onto the host.
    inside = case_dir / "rootfs" / "tmp" / "minirun-victim"
    assert (inside / "proc-target").is_dir() and (inside / "sys-target").is_dir()


def test_br18_mount_points_are_created_inside_the_rootfs(case: Callable[[str], Path],
                                                          victim: Callable[[], None]) -> None:
    case_dir = case("BR-18")
    out = minirun("run", "-b", str(case_dir), "br18", check=True).stdout
    assert "nameserver" in out  # the bundle's resolv.conf reached the container
    inside = case_dir / "rootfs" / "tmp" / "minirun-victim"
    assert (inside / "resolv.conf").is_file() and (inside / "datadir" / "sub").is_dir()
    assert not Path("/tmp/minirun-victim/resolv.conf").exists()
    assert not Path("/tmp/minirun-victim/datadir").exists()


def test_br22_proc_and_sys_are_masked_and_read_only(case: Callable[[str], Path],
                                                    victim: Callable[[], None]) -> None:
    out = minirun("run", "-b", str(case("BR-22")), "br22", check=True).stdout
    verdicts = [line for line in out.splitlines() if ": " in line]
    assert verdicts, out
    assert all(line.endswith("PASS") for line in verdicts), out
