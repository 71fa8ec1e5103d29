"""Shared fixtures: busybox bundles, handed cases, leftover checks.

Helpers that test modules import live in support.py: a second conftest.py (tests/vm_guest)
makes ``from conftest import ...`` ambiguous.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import BUSYBOX, SHARED, make_rootfs

from minirun.spec import default_config


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One busybox rootfs for the session; bundles copy it (it is small)."""
    return make_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def make_bundle(tmp_path: Path, busybox_rootfs: Path) -> Callable[..., Path]:
    """make_bundle(args, **edits) -> a bundle dir with a fresh copy of the busybox rootfs."""

    def make(args: list[str], edit: Callable[[dict], None] | None = None,
             name: str = "bundle") -> Path:
        bundle = tmp_path / name
        bundle.mkdir()
        shutil.copytree(busybox_rootfs, bundle / "rootfs", symlinks=True)
        config = default_config(args)
        if edit is not None:
            edit(config)
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        return bundle

    return make


@pytest.fixture
def case(tmp_path: Path) -> Callable[[str], Path]:
    """case("BR-28") -> a writable copy of the handed case, with busybox in its rootfs."""

    def copy(prefix: str) -> Path:
        matches = sorted(SHARED.glob("cases/" + prefix + "-*"))
        if not matches:
            pytest.fail(f"handed case {prefix} not found under {SHARED / 'cases'}")
        dest = tmp_path / matches[0].name
        shutil.copytree(matches[0], dest, symlinks=True)
        for path in [dest, *dest.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
            elif path.is_file() and not path.is_symlink():
                path.chmod(0o644)
        for rootfs in dest.rglob("rootfs"):
            restore_symlinks(rootfs)
            if (rootfs / "bin").is_dir() and not (rootfs / "bin").is_symlink():
                shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
                for applet in ("sh", "ls", "cat", "echo", "pwd", "id", "grep", "sleep",
                               "kill", "true", "false", "env", "readlink", "head", "wc",
                               "printf", "test", "mount", "ps", "stat", "tr", "cut", "sed"):
                    link = rootfs / "bin" / applet
                    if not link.exists() and not link.is_symlink():
                        link.symlink_to("busybox")
        return dest

    return copy


def restore_symlinks(rootfs: Path) -> None:
    """The shared case folders reach us with their symlinks flattened into small files that
    hold the link's target (one line, no newline, a path): turn those back into symlinks."""
    for path in list(rootfs.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 4096:
            continue
        if path.parent == rootfs / "bin":
            continue
        text = path.read_bytes()
        if b"\n" in text or not text.startswith((b"/", b"../")):
            continue
        path.unlink()
        path.symlink_to(text.decode())


@pytest.fixture
def victim() -> Iterator[Callable[[], None]]:
    """The host-side sentinel of the handed cases; the returned check fails on any change."""
    script = SHARED / "cases" / "tools" / "victim.sh"
    subprocess.run(["sh", str(script), "prepare"], check=True, capture_output=True)

    def check() -> None:
        result = subprocess.run(["sh", str(script), "check"], capture_output=True, text=True)
        assert "VICTIM UNCHANGED" in result.stdout, result.stdout + result.stderr

    yield check
    check()


def _mounts() -> set[str]:
    with open("/proc/self/mountinfo") as stream:
        return {line.split()[4] for line in stream}


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _children() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """After every test: no new mount, network namespace or child process on the host."""
    mounts, netns = _mounts(), _netns()
    yield
    assert _mounts() - mounts == set(), "mounts left behind"
    assert _netns() - netns == set(), "network namespaces left behind"
    assert _children() == set(), "processes left behind"
