"""Tests in this folder run inside the throw-away cgroup v2 VM, never on the host.

On the host they are not even collected (this host's cgroups are hybrid, and these tests
write to /sys/fs/cgroup). tests/test_vm.py boots one VM per session, runs
``/usr/bin/python3 -m pytest tests/vm_guest`` in it with MINIRUN_IN_VM=1, and turns each
guest result into one host test. To add guest tests, add a ``test_*.py`` file here: nothing
else is needed.

Rules for files here: plain pytest (Debian's pytest 7.2 on /usr/bin/python3), no network,
nothing that touches the system at import time (the host imports them with MINIRUN_IN_VM=1
to list their ids), and keep them few and quick: everything in the VM runs 20 to 40 times
slower than on the host. The guest's root is a tmpfs overlay over the host's root, so
writing anywhere is allowed and vanishes with the VM; the checkout is at the same path.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_VM = os.environ.get("MINIRUN_IN_VM") == "1"

# pytest reads this list while collecting this folder.
collect_ignore_glob = [] if IN_VM else ["test_*.py", "*_test.py"]

# The guest runs pytest with --confcutdir here, so put the checkout on sys.path for
# `import minirun` the way bin/minirun does.
_top = Path(__file__).resolve().parents[2]
for _path in (str(_top), str(_top / "rootfs-fetch")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "memory", "pids", "io")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A file named on the command line is collected even when ignored above: skip it.
    if not IN_VM:
        for item in items:
            if Path(str(item.fspath)).parent == Path(__file__).parent:
                item.add_marker(pytest.mark.skip(reason="runs only in the VM (tests/test_vm.py)"))


def _is_guest() -> bool:
    """The VM's init mounts cgroup2 on /sys/fs/cgroup; on this host it is a tmpfs (hybrid)."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return IN_VM and any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in mounts)


@pytest.fixture(scope="session")
def cgroup_root() -> Path:
    """The guest's cgroup v2 root, after checking that this really is the guest."""
    if not _is_guest():
        pytest.fail("not in the test VM: refusing to touch /sys/fs/cgroup", pytrace=False)
    return CGROUP_ROOT


@pytest.fixture()
def child_cgroup(cgroup_root: Path) -> Iterator[Path]:
    """A fresh child of the root with cpu, memory, pids and io enabled; removed afterwards."""
    enable = " ".join(f"+{name}" for name in CONTROLLERS)
    (cgroup_root / "cgroup.subtree_control").write_text(enable)
    path = cgroup_root / f"minirun-test-{secrets.token_hex(4)}"
    path.mkdir()
    try:
        yield path
    finally:
        # cgroup.kill (Linux 5.14) ends whatever a failed test left in it, so rmdir can work.
        (path / "cgroup.kill").write_text("1")
        _rmdir_when_empty(path)
    assert not path.exists(), f"{path} was not removed"


def _rmdir_when_empty(path: Path) -> None:
    for _ in range(100):
        try:
            path.rmdir()
            return
        except OSError:  # EBUSY until the killed processes are reaped
            time.sleep(0.05)
    path.rmdir()
