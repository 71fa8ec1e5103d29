"""overlayfs: one root file system stacked from read-only image layers and a writable top.

Each image layer is unpacked once into the content store and never changed; the container
writes only to its own upper directory, so any number of containers share the same layers
(Documentation/filesystems/overlayfs.rst). The image stage (2013, Docker) introduced it.
The mount is made inside the container's mount namespace, so it disappears with the
container even if minirun is killed.
"""

from __future__ import annotations

import os

from minirun.errors import MiniRunError
from minirun.isolation import syscalls
from minirun.record import record

# The whole option string must fit in one page (mount(2) copies at most PAGE_SIZE of data).
MAX_OPTIONS = 4095


@record
class Overlay:
    lowerdirs: tuple[str, ...]  # top-most first
    upperdir: str
    workdir: str

    def options(self) -> str:
        for path in (*self.lowerdirs, self.upperdir, self.workdir):
            if any(c in path for c in ",:="):
                raise MiniRunError(f"overlay: {path}: a layer path may not contain ',', ':' "
                                   "or '='")
        text = (f"lowerdir={':'.join(self.lowerdirs)},upperdir={self.upperdir},"
                f"workdir={self.workdir}")
        if len(text) > MAX_OPTIONS:
            raise MiniRunError(f"overlay: {len(self.lowerdirs)} layers make the mount options "
                               f"{len(text)} bytes long, over the kernel's {MAX_OPTIONS}")
        return text

    def describe(self, target: str) -> str:
        return (f"mount(overlay -> {target}, overlay, lowerdir={len(self.lowerdirs)} layers,"
                f"upperdir={self.upperdir},workdir={self.workdir})")


def mount(overlay: Overlay, target: str) -> None:
    for path in (overlay.upperdir, overlay.workdir):
        os.makedirs(path, mode=0o755, exist_ok=True)
    syscalls.mount("overlay", target, "overlay", 0, overlay.options())

