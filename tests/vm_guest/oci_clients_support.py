"""Shared pieces of the guest tests that drive minirun through podman and containerd, and
compare it with runc and crun: the checkout's paths, a busybox rootfs, a busybox image as an
oci-archive, and a subprocess wrapper that says what ran when it fails.

Imported by test_oci_clients.py and test_runtime_parity.py only; nothing happens at import.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MINIRUN = REPO / "bin" / "minirun"
# Debian's busybox-static (the same binary rootfs-fetch/busybox-rootfs.sh copies).
BUSYBOX = Path("/bin/busybox")

# The name podman and containerd know the image by: skopeo writes it into the archive's
# index (without a name podman loads the image unnamed and containerd imports nothing).
IMAGE = "docker.io/library/minirun-busybox:latest"


def sh(*args: str | Path, timeout: float = 120, check: bool = True,
       **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; on failure raise with the command and output."""
    command = [str(arg) for arg in args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          check=False, **kwargs)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}: {shlex.join(command)}\n"
                             f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}")
    return done  # type: ignore[no-any-return]


def busybox_rootfs(dest: Path) -> Path:
    """The tree rootfs-fetch/busybox-rootfs.sh makes, made in-process.

    The script forks three times per applet (about 400 applets): 4 s on the host, a minute or
    two in the software-emulated VM. This makes the same files with one fork.
    """
    for name in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp",
                 "root", "var/tmp"):
        (dest / name).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    (dest / "var" / "tmp").chmod(0o1777)
    (dest / "root").chmod(0o700)
    shutil.copyfile(BUSYBOX, dest / "bin" / "busybox")
    (dest / "bin" / "busybox").chmod(0o755)
    for applet in sh(BUSYBOX, "--list-full").stdout.split():
        if applet != "bin/busybox":
            link = dest / applet
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to("/bin/busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (dest / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (dest / "etc" / "hostname").write_text("minirun\n")
    return dest


def busybox_image(work: Path) -> Path:
    """An oci-archive of one busybox layer, named IMAGE, with ``sh`` as its command."""
    rootfs = busybox_rootfs(work / "image-rootfs")
    layout = work / "layout"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:latest")
    sh("umoci", "insert", "--image", f"{layout}:latest", rootfs, "/")
    sh("umoci", "config", "--image", f"{layout}:latest", "--config.cmd", "sh",
       "--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
    archive = work / "busybox.oci.tar"
    sh("skopeo", "copy", "--quiet", f"oci:{layout}:latest", f"oci-archive:{archive}:{IMAGE}")
    return archive


def mounts_under(*prefixes: Path) -> list[str]:
    """Mount points at or below any of ``prefixes`` (from /proc/self/mountinfo)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(p) or point.startswith(f"{p}/") for p in prefixes):
            found.append(point)
    return found


def cgroup_dirs(root: Path = Path("/sys/fs/cgroup")) -> set[str]:
    """Every cgroup directory below ``root``, relative to it."""
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_dir()}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A fresh directory under /var/tmp (the VM's tmpfs), removed afterwards.

    Not under /tmp: that is the VM's overlayfs root, and an image layer made from files
    there holds something podman's layer unpacker may not apply ("ApplyLayer ... operation
    not permitted"); made on the tmpfs it loads.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
