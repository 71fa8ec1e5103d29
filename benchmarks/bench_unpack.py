#!/usr/bin/python3 -I
"""Unpack a real ~130 MB image: minirun's unpacker against umoci, in the same run.

The image is Debian bookworm minbase (rootfs-fetch/debian-rootfs.sh) imported into an OCI
layout by umoci (one gzip layer) and copied by skopeo into an oci-archive; both are cached
in /var/cache/minirun/bench/. Four ways, interleaved, each into a fresh directory:

  minirun-layout    minirun unpack oci:LAYOUT           (a new python3 process each time)
  umoci-layout      umoci unpack --image LAYOUT
  minirun-archive   minirun unpack oci-archive:FILE
  skopeo+umoci      skopeo copy oci-archive:FILE oci:TMP, then umoci unpack (what umoci
                    needs for an archive)

Prints the median and spread of each in wall-clock seconds, the median CPU time (user+sys
of the child processes: steadier than wall time on a shared, busy host) and the ratios.
minirun verifies every digest in a first pass before writing (as it always does), umoci
writes its mtree manifest: both do what they do by default. The page cache is warm for the
inputs (nothing is dropped); sync(2) runs between runs, untimed, so no run pays for the
previous one's writeback.

With --tmpfs the outputs go to a tmpfs mounted in a private mount namespace (made by
unshare(1) for this run only, gone when it ends), which takes the disk's noise out and
leaves the unpackers' own work; without it they go to a temporary directory on disk.

Usage: bench_unpack.py [--repeat N] [--cache DIR] [--tmpfs]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_LAUNCH = (
    "import sys; sys.path[:0] = [{repo!r}, {repo!r} + '/rootfs-fetch']\n"
    "import argparse\n"
    "from rootfs_fetch.commands import add_unpack_arguments, unpack_command\n"
    "p = argparse.ArgumentParser(); add_unpack_arguments(p)\n"
    "sys.exit(unpack_command(p.parse_args(sys.argv[1:])))\n"
)


def quiet(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL)


def fixture(cache: Path) -> tuple[Path, Path]:
    layout, archive = cache / "debian-oci", cache / "debian.oci.tar"
    if not (layout / "index.json").exists():
        rootfs = cache / "debian-rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        quiet("sh", REPO / "rootfs-fetch/debian-rootfs.sh", rootfs)
        partial = cache / "debian-oci.partial"
        shutil.rmtree(partial, ignore_errors=True)
        quiet("umoci", "init", "--layout", partial)
        quiet("umoci", "new", "--image", f"{partial}:bookworm")
        quiet("umoci", "insert", "--image", f"{partial}:bookworm", rootfs, "/")
        partial.rename(layout)
        shutil.rmtree(rootfs)
    if not archive.exists():
        quiet("skopeo", "copy", f"oci:{layout}:bookworm", f"oci-archive:{archive}.partial:bookworm")
        Path(f"{archive}.partial").rename(archive)
    return layout, archive


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ways(layout: Path, archive: Path, work: Path) -> dict[str, Callable[[Path], None]]:
    launch = _LAUNCH.format(repo=str(REPO))

    def minirun(image: str) -> Callable[[Path], None]:
        return lambda out: quiet(sys.executable, "-I", "-c", launch, image, out)

    def umoci(out: Path) -> None:
        quiet("umoci", "unpack", "--image", f"{layout}:bookworm", out)

    def skopeo_umoci(out: Path) -> None:
        copy = work / "skopeo-copy"
        quiet("skopeo", "copy", f"oci-archive:{archive}:bookworm", f"oci:{copy}:bookworm")
        quiet("umoci", "unpack", "--image", f"{copy}:bookworm", out)
        shutil.rmtree(copy)

    return {"minirun-layout": minirun(f"oci:{layout}:bookworm"), "umoci-layout": umoci,
            "minirun-archive": minirun(f"oci-archive:{archive}:bookworm"),
            "skopeo+umoci": skopeo_umoci}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/var/cache/minirun/bench"))
    parser.add_argument("--tmpfs", action="store_true", help="unpack into a private tmpfs")
    args = parser.parse_args()
    if args.tmpfs and os.environ.get("BENCH_UNPACK_NS") != "1":
        # Re-run inside a new mount namespace: the tmpfs can never show up on the host.
        os.environ["BENCH_UNPACK_NS"] = "1"
        os.execvp("unshare", ["unshare", "-m", "--propagation", "private", sys.executable,
                              "-I", __file__, *sys.argv[1:]])
    args.cache.mkdir(parents=True, exist_ok=True)
    layout, archive = fixture(args.cache)
    size = sum(p.stat().st_size for p in (layout / "blobs").rglob("*") if p.is_file())
    print(f"image: Debian bookworm minbase, {size / 1e6:.0f} MB of blobs in {layout}")
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-unpack-") as tmp:
        work = Path(tmp)
        if args.tmpfs:
            quiet("mount", "-t", "tmpfs", "-o", "size=4g,mode=700", "tmpfs", work)
        print(f"output on {'tmpfs' if args.tmpfs else 'disk'} ({work})")
        chosen = ways(layout, archive, work)
        for _round in range(args.repeat):
            for name, way in chosen.items():
                out = work / "bundle"
                before = _children_cpu()
                start = time.perf_counter()
                way(out)
                times.setdefault(name, []).append(time.perf_counter() - start)
                cpu.setdefault(name, []).append(_children_cpu() - before)
                shutil.rmtree(out)
                # Write back and discard this run's files before the next one is timed, so
                # no way pays for the previous one's dirty pages.
                os.sync()
        if args.tmpfs:
            quiet("umount", work)
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    print("wall seconds (median, min, max) and CPU seconds user+sys (median) per way")
    for name, values in times.items():
        print(f"{name:<16} wall {medians[name]:6.2f} s  (min {min(values):.2f}, "
              f"max {max(values):.2f}, n={len(values)})  cpu {cpu_medians[name]:6.2f} s")
    for slow, fast in (("umoci-layout", "minirun-layout"), ("skopeo+umoci", "minirun-archive")):
        print(f"{slow} / {fast}: wall {medians[slow] / medians[fast]:.2f}x, "
              f"cpu {cpu_medians[slow] / cpu_medians[fast]:.2f}x (above 1: minirun is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
