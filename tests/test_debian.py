"""A real distribution's root file system, at every stage this host supports.

The Debian bookworm rootfs comes from debootstrap (rootfs-fetch/debian-rootfs.sh) and is
cached in /var/cache/minirun/debian-bookworm: the first run downloads about 40 MB of packages
from Debian's mirror and takes two to five minutes; later runs copy the cache in seconds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import REPO, minirun

from minirun.spec import default_config

pytestmark = [pytest.mark.root, pytest.mark.slow]

PROBE = ("echo pid=$$; . /etc/os-release; echo os=$ID-$VERSION_ID; echo user=$(id -un); "
         "echo hostname=$(cat /proc/sys/kernel/hostname 2>/dev/null || hostname); "
         "echo apt=$(command -v apt-get)")


@pytest.fixture(scope="module")
def debian_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("debian")
    subprocess.run([str(REPO / "rootfs-fetch" / "debian-rootfs.sh"), str(bundle / "rootfs")],
                   check=True, capture_output=True, timeout=1200)
    config = default_config(["/bin/bash", "-c", PROBE])
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


@pytest.mark.parametrize("stage", ["chroot", "jail", "namespaces", "oci"])
def test_debian_runs_at_every_stage(debian_bundle: Path, stage: str) -> None:
    out = minirun("run", "--stage", stage, str(debian_bundle), check=True).stdout
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert seen["os"] == "debian-12"
    assert seen["user"] == "root"
    assert seen["apt"] == "/usr/bin/apt-get"
    assert (seen["pid"] == "1") == (stage in ("namespaces", "oci"))
    if stage != "chroot":
        assert seen["hostname"] == "minirun"
